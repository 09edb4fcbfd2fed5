"""The kustomize overlays of `infra/k8s`, rendered and walked as the cluster would read them.

Rendering uses kubectl's built-in kustomize; built-in objects are validated
against the Kubernetes API schemas with kubernetes-validate (strict: an unknown
field is an error). The walkers find pod specs wherever a workload keeps them
(Deployments, StatefulSets, Jobs, CronJobs, PyTorchJob replicas, the Katib
trial template), and `resolve_env` builds a container's environment the way the
kubelet does.
"""

from __future__ import annotations

import base64
import re
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from tests.support import REPO

Doc = dict[str, Any]

INFRA = REPO / "infra"
K8S = INFRA / "k8s"
OVERLAYS = ("local", "gpu")
"""The services' overlays (`make deploy OVERLAY=...`)."""
JOBS = ("jobs-cpu", "jobs-gpu")
"""The jobs submitted on purpose (`make tune|train-distributed`), CPU and GPU variants."""
RENDERINGS = {
    "local": "overlays/local",
    "gpu": "overlays/gpu",
    "jobs-cpu": "jobs/cpu",
    "jobs-gpu": "jobs/gpu",
}
"""Every kustomization a user renders, by the name `make render` writes it under."""
KUBERNETES_VERSION = "1.32"  # a version kubernetes-validate bundles, the kubectl client's

IMAGE_REPO = "ghcr.io/flywheel-ml"
IMAGES = {
    "component": f"{IMAGE_REPO}/flywheel",
    "tracking": f"{IMAGE_REPO}/flywheel-tracking",
    "serving": f"{IMAGE_REPO}/flywheel-serving",
}


def project_version() -> str:
    """`version` of pyproject.toml: the tag of every flywheel image."""
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


# ------------------------------------------------------------------ rendering


def render_overlay(name: str) -> list[Doc]:
    """`kubectl kustomize infra/k8s/<RENDERINGS[name]>`, as a list of objects."""
    done = subprocess.run(
        ["kubectl", "kustomize", str(K8S / RENDERINGS[name])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"kubectl kustomize {RENDERINGS[name]} failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def ident(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    """The one object of `kind` named `name`."""
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found; have {sorted(map(ident, docs))}"
    return hits[0]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """`(where, pod spec)` of every pod template an object holds."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "Job"):
        yield ident(doc), spec["template"]["spec"]
    elif kind == "CronJob":
        yield ident(doc), spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "PyTorchJob":
        for role, replica in spec["pytorchReplicaSpecs"].items():
            yield f"{ident(doc)}/{role}", replica["template"]["spec"]
    elif kind == "Experiment":
        trial = spec["trialTemplate"]["trialSpec"]
        assert trial["kind"] == "Job", "the trial template is a batch/v1 Job"
        yield f"{ident(doc)}/trial", trial["spec"]["template"]["spec"]


def pod_templates(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """`(where, pod template)` (metadata and spec) of the Deployments and StatefulSets."""
    if doc["kind"] in ("Deployment", "StatefulSet"):
        yield ident(doc), doc["spec"]["template"]


def containers(pod: Doc) -> list[Doc]:
    """Init containers and containers of a pod spec."""
    return [*pod.get("initContainers", []), *pod["containers"]]


def all_containers(docs: list[Doc]) -> Iterator[tuple[str, Doc, Doc]]:
    """`(where, pod spec, container)` over everything rendered."""
    for doc in docs:
        for where, pod in pod_specs(doc):
            for c in containers(pod):
                yield f"{where}/{c['name']}", pod, c


def argv(container: Doc) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


# ------------------------------------------------------------------ validation, environment


def validate_builtin(doc: Doc) -> list[str]:
    """Errors of a built-in object against the Kubernetes API schema (strict); [] if valid.

    Raises:
        kubernetes_validate.SchemaNotFoundError: not a built-in kind.
    """
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        where = ".".join(str(p) for p in err.path)
        return [f"{doc['kind']}/{doc.get('metadata', {}).get('name')}: {where}: {err.message}"]
    return []


def resolve_env(container: Doc, docs: list[Doc], overrides: Mapping[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (envFrom, then env, `$(VAR)` expanded).

    Secrets are read from the rendered Secrets; `overrides` replace entries
    whose value only makes sense in the cluster (URIs of services).
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        name = entry["name"]
        if name in overrides:
            env[name] = overrides[name]
        elif "value" in entry:
            env[name] = expand(entry["value"], env)
        elif ref := entry.get("valueFrom", {}).get("secretKeyRef"):
            secret = find(docs, "Secret", ref["name"])
            env[name] = secret_data(secret)[ref["key"]]
        elif ref := entry.get("valueFrom", {}).get("configMapKeyRef"):
            env[name] = find(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
    env.update(overrides)
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion (defined variables only, `$$` escapes)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def secret_data(secret: Doc) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    return {**data, **secret.get("stringData", {})}


def secret_references(docs: list[Doc]) -> set[tuple[str, str | None]]:
    """`(secret, key)` every pod reads; key None when the whole Secret is used."""
    refs: set[tuple[str, str | None]] = set()
    for _, pod, c in all_containers(docs):
        for entry in c.get("env", []):
            if ref := entry.get("valueFrom", {}).get("secretKeyRef"):
                refs.add((ref["name"], ref["key"]))
        for source in c.get("envFrom", []):
            if ref := source.get("secretRef"):
                refs.add((ref["name"], None))
        for volume in pod.get("volumes", []):
            if secret := volume.get("secret"):
                refs.add((secret["secretName"], None))
    return refs


def documented_secrets(readme: Path) -> dict[str, set[str]]:
    """The Secrets (and their keys) infra/README.md tells how to create with kubectl."""
    text = re.sub(r"\\\n\s*", " ", readme.read_text())  # join continued shell lines
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        if m := re.search(r"kubectl .*create secret generic ([a-z0-9-]+)", line):
            keys = set(re.findall(r"--from-literal=([\w.-]+)=", line))
            found.setdefault(m.group(1), set()).update(keys)  # also a copy: --from-env-file
    return found


def resolve_cli(words: list[str]) -> list[str]:
    """Parse `flywheel <words>` with the real CLI without running it; the command path.

    For the commands the manifests run and infra/README.md tells a user to run.

    Raises:
        AssertionError: no such command.
        click.UsageError: (Typer's) options the command does not take, or bad values.
    """
    import typer.core
    import typer.main

    from flywheel.cli import app

    command = typer.main.get_command(app)
    ctx = None
    path: list[str] = []
    rest = list(words)
    while isinstance(command, typer.core.TyperGroup):
        ctx = command.context_class(command, info_name=" ".join(["flywheel", *path]), parent=ctx)
        assert rest, f"flywheel {' '.join(path)} needs a command"
        name, *rest = rest
        sub = command.get_command(ctx, name)
        assert sub is not None, f"no command 'flywheel {' '.join([*path, name])}'"
        path.append(name)
        command = sub
    command.make_context(" ".join(["flywheel", *path]), rest, parent=ctx)
    return path
