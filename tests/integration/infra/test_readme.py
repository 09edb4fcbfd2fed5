"""infra/README.md's commands against the rendered manifests: every name it tells a user to type.

The README walks a user from an empty cluster to a submitted run and a drift
dashboard. A name it gets wrong (a Service, a port, a CronJob, a Secret's key,
the DVC remote's bucket) fails only on a real cluster, step by step: here every
`kubectl` line that names an object of the `flywheel` namespace is looked up in
the rendered overlays and jobs, every port-forward must reach a port its Service
has, the laptop's DVC remote and MinIO port must be the ConfigMap's, the KFP API
the one the monitor CronJob calls, and every `flywheel` and `make` command must
parse (the real CLI; the Makefile's targets and variables).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from pipelines.cluster import MIN_KFP_BACKEND, ClusterSettings
from tests.support import REPO
from tests.support.k8s import (
    INFRA,
    OVERLAYS,
    Doc,
    find,
    pod_specs,
    pod_templates,
    resolve_cli,
    secret_data,
)

README = INFRA / "README.md"
WALKTHROUGH = "<!-- walkthrough:"
KINDS = {
    "deploy": "Deployment",
    "deployment": "Deployment",
    "svc": "Service",
    "service": "Service",
    "statefulset": "StatefulSet",
    "job": "Job",
    "cronjob": "CronJob",
    "configmap": "ConfigMap",
    "secret": "Secret",
    "experiment": "Experiment",
    "pytorchjob": "PyTorchJob",
}


def bash_lines(text: str) -> Iterator[str]:
    """Each command line of the ```bash blocks: continuations joined, comments dropped."""
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\s*\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"(^|\s)#\s.*$", "", line).strip()
            if line:
                yield line


def walkthrough() -> list[str]:
    """The command lines of the walkthrough block (the one after its marker)."""
    text = README.read_text()
    assert WALKTHROUGH in text, "infra/README.md has lost its walkthrough marker"
    after = text[text.index(WALKTHROUGH) :]
    start = after.index("```bash")
    return list(bash_lines(after[start : after.index("```\n", start + 7) + 4]))


def everything(rendered: dict[str, list[Doc]]) -> list[Doc]:
    return [doc for docs in rendered.values() for doc in docs]


def exists(docs: list[Doc], kind: str, name: str) -> bool:
    return any(d["kind"] == kind and d["metadata"]["name"] == name for d in docs)


def service_ports(rendered: dict[str, list[Doc]], name: str) -> set[int]:
    """The ports Service `name` has in every overlay (a command works on both)."""
    ports = [
        {p["port"] for p in find(rendered[o], "Service", name)["spec"]["ports"]} for o in OVERLAYS
    ]
    return set.intersection(*ports)


def test_every_flywheel_object_named_in_a_kubectl_line_exists(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = everything(rendered)
    created: set[tuple[str, str]] = set()  # what the README itself creates
    checked = 0
    for line in bash_lines(README.read_text()):
        if "kubectl -n flywheel " not in line:
            continue
        line = line[line.index("kubectl -n flywheel ") :]  # also inside "$(...)"
        if m := re.search(r"create job --from=\S+ ([a-z0-9-]+)", line):
            created.add(("Job", m.group(1)))
        if m := re.search(r"create secret generic ([a-z0-9-]+)", line):
            created.add(("Secret", m.group(1)))
        for short, name in re.findall(r"\b([a-z]+)/([a-z0-9][a-z0-9-]*)\b", line):
            if short not in KINDS:
                continue  # e.g. a path, not an object
            kind = KINDS[short]
            assert exists(docs, kind, name) or (kind, name) in created, f"{line}: no {kind} {name}"
            checked += 1
        for short, name in re.findall(r"\b(?:get|delete) ([a-z]+) ([a-z0-9][a-z0-9-]*)", line):
            if short not in KINDS:
                continue
            kind = KINDS[short]
            assert exists(docs, kind, name) or (kind, name) in created, f"{line}: no {kind} {name}"
            checked += 1
            if kind == "Secret" and (key := re.search(r"\{\.data\.([\w.-]+)\}", line)):
                values = secret_data(find(rendered["local"], "Secret", name))
                assert key.group(1) in values, f"{line}: Secret {name} has no key {key.group(1)}"
        if m := re.search(r"port-forward svc/([a-z0-9-]+) \d+:(\d+)", line):
            assert int(m.group(2)) in service_ports(rendered, m.group(1)), line
        for label in re.findall(r"-l (app\.kubernetes\.io/name=[a-z0-9-]+)", line):
            key, value = label.split("=")
            labelled = [
                t
                for d in docs
                for _, t in pod_templates(d)
                if t.get("metadata", {}).get("labels", {}).get(key) == value
            ]
            assert labelled, f"{line}: no pod is labelled {label}"
    assert checked >= 15, "the README's kubectl lines were not found"


def test_the_walkthrough_reaches_what_the_manifests_define(
    rendered: dict[str, list[Doc]],
) -> None:
    lines = walkthrough()
    text = "\n".join(lines)
    config = find(rendered["local"], "ConfigMap", "flywheel-config")["data"]

    # The laptop's DVC remote is the pods' (the ConfigMap's), through a forward to MinIO's S3 port.
    (remote,) = re.findall(r"^dvc remote add -d (\S+) (\S+)$", text, flags=re.M)
    assert remote[1] == config["FLYWHEEL_DVC_REMOTE"]
    (endpoint,) = re.findall(rf"^dvc remote modify {remote[0]} endpointurl (\S+)$", text, re.M)
    minio = urlsplit(config["AWS_ENDPOINT_URL"])
    forward = re.search(rf"port-forward svc/{minio.hostname} (\d+):(\d+)", text)
    assert forward is not None, "no port-forward to the S3 endpoint of the ConfigMap"
    assert int(forward.group(2)) == minio.port
    assert urlsplit(endpoint).port == int(forward.group(1))
    for option in ("access_key_id", "secret_access_key"):  # from the Secret the pods read
        assert re.search(rf"dvc remote modify --local {remote[0]} {option} ", text), option
    assert re.search(r"^flywheel data push$", text, re.M), "the tested push, not bare dvc push"
    assert not re.search(r"^dvc push", text, re.M)

    # KFP: the minimum backend, and the API the monitor CronJob submits to.
    assert re.search(rf"^export PIPELINE_VERSION={re.escape(MIN_KFP_BACKEND)}$", text, re.M)
    monitor = find(rendered["local"], "CronJob", "flywheel-monitor")
    ((_, pod),) = pod_specs(monitor)
    env = {e["name"]: e.get("value") for e in pod["containers"][-1]["env"]}
    kfp = urlsplit(str(env["KF_PIPELINES_ENDPOINT"]))
    service, namespace = str(kfp.hostname).split(".")[:2]
    api = re.search(rf"kubectl -n {namespace} port-forward svc/{service} (\d+):(\d+)", text)
    assert api is not None, "no port-forward to the KFP API the monitor CronJob calls"
    assert int(api.group(2)) == kfp.port
    submit = next(line for line in lines if line.startswith("flywheel pipeline submit"))
    assert f"--host http://127.0.0.1:{api.group(1)}" in submit

    # The settings the steps read, copied under the names the compiled spec references.
    settings = ClusterSettings()
    assert f"create configmap {settings.config_map} --from-env-file" in text
    assert f"create secret generic {settings.s3_secret} --from-env-file" in text
    assert exists(rendered["local"], "ConfigMap", settings.config_map)
    assert exists(rendered["local"], "Secret", settings.s3_secret)

    # Traffic to serving, then the monitor run by hand from its CronJob, then the dashboard.
    order = [
        next(i for i, line in enumerate(lines) if pattern in line)
        for pattern in (
            "flywheel pipeline submit",
            "port-forward svc/flywheel-serving",
            "flywheel simulate",
            "create job --from=cronjob/flywheel-monitor",
            "port-forward svc/flywheel-evidently",
        )
    ]
    assert order == sorted(order), order


def commands(lines: list[str], program: str) -> Iterator[list[str]]:
    """The arguments of every `program ...` run, at the start of a line or inside `$(...)`."""
    for line in lines:
        for inner in re.findall(rf"\$\(({program} [^)]*)\)", line):
            yield shlex.split(inner)[1:]
        if line.startswith(f"{program} "):
            words = shlex.split(re.sub(r"\s[|&]\s?.*$|\s&$", "", line))
            yield words[1:]


def test_every_flywheel_command_of_the_readme_parses() -> None:
    lines = list(bash_lines(README.read_text()))
    found = [resolve_cli(words) for words in commands(lines, "flywheel")]
    assert ["pipeline", "submit"] in found
    assert ["data", "push"] in found
    assert ["simulate"] in found


def test_every_make_target_and_variable_of_the_readme_exists() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, flags=re.M))
    variables = set(re.findall(r"^([A-Z_]+)\s*[?:]?=", makefile, flags=re.M))
    seen = 0
    for words in commands(list(bash_lines(README.read_text())), "make"):
        for word in words:
            if "=" in word:
                assert word.split("=", 1)[0] in variables, word
            else:
                assert word in targets, f"make {word}: no such target"
                seen += 1
    assert seen >= 4


@pytest.mark.parametrize(
    ("block", "lines"),
    [
        ("kubectl rollout status deploy/x  # why: deploy/y", ["kubectl rollout status deploy/x"]),
        ("a \\\n  --b 's#x#y#'\n\n# only a comment", ["a --b 's#x#y#'"]),
    ],
)
def test_bash_lines_joins_continuations_and_drops_comments(block: str, lines: list[str]) -> None:
    assert list(bash_lines(f"```bash\n{block}\n```")) == lines


def test_copying_the_settings_into_the_runs_namespace_gives_the_steps_the_services(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """Step 4 of the walkthrough, run offline by bash: each `kubectl -n flywheel get` reads the
    rendered object instead (`kubectl patch --local`, the same go-template printer), each
    `create` is a client-side dry run. The copied ConfigMap holds every key with the
    services' full names, which name Services of the manifests; the Secret is the same."""
    lines = walkthrough()
    start = next(i for i, line in enumerate(lines) if line.startswith("export RUNS_NS="))
    end = next(i for i, line in enumerate(lines) if line.startswith("rm flywheel-config.env"))
    local = rendered["local"]
    script = []
    for n, line in enumerate(lines[start : end + 1]):
        got = re.match(r"kubectl -n flywheel get (configmap|secret) ([a-z0-9-]+) (.*)$", line)
        if got:
            kind, name, rest = got.groups()
            source = tmp_path / f"{name}.yaml"
            source.write_text(yaml.safe_dump(find(local, KINDS[kind], name)))
            line = f"kubectl patch --local -f {source} --type merge -p '{{}}' {rest}"
        elif re.match(r'kubectl -n "\$RUNS_NS" create ', line):
            line = f"{line} --dry-run=client -o yaml > created-{n}.yaml"
        script.append(line)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    created = {
        (doc["kind"], doc["metadata"]["name"]): doc
        for path in sorted(tmp_path.glob("created-*.yaml"))
        for doc in [yaml.safe_load(path.read_text())]
    }
    assert not list(tmp_path.glob("*.env")), "the walkthrough leaves no credentials behind"

    settings = ClusterSettings()
    copied = created["ConfigMap", settings.config_map]
    secret = created["Secret", settings.s3_secret]
    assert (copied["metadata"]["name"], copied["metadata"]["namespace"]) == (
        settings.config_map,
        "kubeflow",
    )
    original = find(local, "ConfigMap", settings.config_map)["data"]
    assert copied["data"].keys() == original.keys()
    for key, value in original.items():
        url = urlsplit(value)
        if url.scheme == "http":  # a Service of `flywheel`, by the name every namespace resolves
            assert exists(local, "Service", str(url.hostname)), key
            full = f"{url.hostname}.flywheel.svc.cluster.local"
            expected = value.replace(f"//{url.hostname}:", f"//{full}:")
            assert copied["data"][key] == expected, key
        else:
            assert copied["data"][key] == value, key
    assert set(settings.config_keys) <= copied["data"].keys()
    assert secret_data(secret) == secret_data(find(local, "Secret", settings.s3_secret))
    # Label Studio's token, as the token Job wrote it (the rendered Secret has no key yet).
    token = created["Secret", settings.label_studio_secret]
    assert secret_data(token) == secret_data(find(local, "Secret", settings.label_studio_secret))
