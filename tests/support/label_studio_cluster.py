"""The cluster's Label Studio, run as its manifests run it, on 127.0.0.1.

`infra/k8s/base/label-studio.yaml` in three steps, each the rendered
manifest's own command and environment with only the services' hosts, ports
and the pod's scratch folder swapped:

1. the Deployment's init container `create-database` (its shell script, with
   Debian's `psql` on PATH) creates Label Studio's role and database in the
   tests' PostgreSQL server (run twice: it is idempotent);
2. the `label-studio` container (`label-studio start ...` from the
   `make label-studio` environment, the manifest's port and bind address
   swapped), migrating that database;
3. the token Job: its init container's script (`ls_admin.py --secret-patch`,
   the copy the ConfigMap generator ships, with Label Studio's Python) writes
   the Secret patch, and its kubectl container's arguments run with
   `--local` against the rendered Secret give the Secret the cluster would hold.

The patched Secret replaces the rendered one, so whatever reads the manifests
afterwards (the pod runs) gets `LABEL_STUDIO_API_KEY` as a pod would.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.k8s import Doc, find, resolve_env, secret_data
from tests.support.postgres import Postgres
from tests.support.processes import free_port, stop, wait_until_up

TOKEN_SECRET = "flywheel-label-studio-token"
DEPLOYMENT = "flywheel-label-studio"
JOB = "flywheel-label-studio-token"


@dataclass(frozen=True)
class ClusterLabelStudio:
    """The server (URL), its owner's token as the Job wrote it, and the patched Secret."""

    url: str
    token: str
    secret: Doc
    log: Path


def _pod(docs: list[Doc], kind: str, name: str) -> Doc:
    spec: Doc = find(docs, kind, name)["spec"]["template"]["spec"]
    return spec


def _container(containers: list[Doc], name: str) -> Doc:
    return next(c for c in containers if c["name"] == name)


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv[:3]} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def base_env(executable: Path, home: Path, postgres: Postgres) -> dict[str, str]:
    """What the image gives every container: its PATH (Label Studio's venv, PostgreSQL's
    clients), a HOME; nothing of the test's own environment."""
    path = f"{executable.parent}:{postgres.bin}:/usr/bin:/bin"
    return {"PATH": path, "HOME": str(home)}


def create_database(
    docs: list[Doc], postgres: Postgres, folder: Path, base: dict[str, str]
) -> None:
    """The Deployment's `create-database` init container against the tests' server."""
    init = _container(_pod(docs, "Deployment", DEPLOYMENT)["initContainers"], "create-database")
    # The tests' server trusts loopback: the superuser is `postgres`, the password ignored.
    overrides = {"PGHOST": postgres.host, "PGPORT": str(postgres.port), "PGUSER": "postgres"}
    env = {**base, **resolve_env(init, docs, overrides)}
    _run([*init["command"], *init["args"]], env, folder, timeout=120)


def server_env(docs: list[Doc], postgres: Postgres, s3: str, data: Path) -> dict[str, str]:
    """The `label-studio` container's environment; only hosts, ports and the emptyDir swapped."""
    container = _container(_pod(docs, "Deployment", DEPLOYMENT)["containers"], "label-studio")
    overrides = {
        "POSTGRE_HOST": postgres.host,
        "POSTGRE_PORT": str(postgres.port),
        "S3_ENDPOINT": s3,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
    }
    return resolve_env(container, docs, overrides)


def server_argv(docs: list[Doc], executable: Path, port: int) -> list[str]:
    """The container's command, the executable from `make label-studio`, bound to 127.0.0.1."""
    container = _container(_pod(docs, "Deployment", DEPLOYMENT)["containers"], "label-studio")
    assert container["command"] == ["label-studio"]
    swapped = {"--internal-host": "127.0.0.1", "--port": str(port)}
    args = []
    for arg in container["args"]:
        flag = arg.split("=", 1)[0]
        args.append(f"{flag}={swapped[flag]}" if flag in swapped else arg)
    return [str(executable), *args]


def mint_token(
    docs: list[Doc], postgres: Postgres, url: str, folder: Path, base: dict[str, str]
) -> Doc:
    """The token Job: `mint` writes the patch, kubectl applies it (here `--local`)."""
    pod = _pod(docs, "Job", JOB)
    mint = _container(pod["initContainers"], "mint")
    scratch = folder / "token-job"
    (scratch / "data").mkdir(parents=True)
    (scratch / "token").mkdir()
    overrides = {
        "LABEL_STUDIO_HEALTH": f"{url}/health",
        "POSTGRE_HOST": postgres.host,
        "POSTGRE_PORT": str(postgres.port),
        "LABEL_STUDIO_BASE_DATA_DIR": str(scratch / "data"),
    }
    env = {**base, **resolve_env(mint, docs, overrides)}
    script = _script_folder(docs, pod, scratch)
    mounts = {m["name"]: m["mountPath"] for m in mint["volumeMounts"]}
    text = mint["args"][0].replace(mounts["token"], str(scratch / "token"))
    text = text.replace(mounts["script"], str(script))
    _run([*mint["command"], text], env, scratch)
    kubectl = _container(pod["containers"], "kubectl")
    patch_mount = next(m for m in kubectl["volumeMounts"] if m["name"] == "token")["mountPath"]
    args = [a.replace(patch_mount, str(scratch / "token")) for a in kubectl["args"]]
    rendered = scratch / "secret.yaml"
    rendered.write_text(yaml.safe_dump(find(docs, "Secret", TOKEN_SECRET)))
    # `kubectl patch secret NAME` against the API; the same patch `--local` on the rendered object.
    assert args[:3] == ["patch", "secret", TOKEN_SECRET], args
    patched = _run(
        ["kubectl", "patch", "--local", "-f", str(rendered), "-o", "yaml", *args[3:]],
        {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(scratch)},
        scratch,
    )
    secret: Doc = yaml.safe_load(patched)
    return secret


def _script_folder(docs: list[Doc], pod: Doc, scratch: Path) -> Path:
    """The ConfigMap volume `script` as the kubelet mounts it: its keys as files."""
    volume = next(v for v in pod["volumes"] if v["name"] == "script")
    config = find(docs, "ConfigMap", volume["configMap"]["name"])
    folder = scratch / "script"
    folder.mkdir()
    for key, value in config["data"].items():
        (folder / key).write_text(value)
    return folder


@contextmanager
def cluster_label_studio(
    docs: list[Doc], postgres: Postgres, s3: str, executable: Path, folder: Path
) -> Iterator[ClusterLabelStudio]:
    """Label Studio as deployed (database created twice: idempotent), its token minted."""
    base = base_env(executable, folder, postgres)
    for _ in range(2):
        create_database(docs, postgres, folder, base)
    data = folder / "label-studio-data"
    data.mkdir()
    port = free_port()
    env = {**base, **server_env(docs, postgres, s3, data)}
    log = folder / "label-studio.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            server_argv(docs, executable, port),
            env=env,
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(process, f"{url}/health", log, timeout=900)
        secret = mint_token(docs, postgres, url, folder, base)
        token = secret_data(secret)["token"]
        yield ClusterLabelStudio(url=url, token=token, secret=secret, log=log)
    finally:
        stop(process)


def with_secret(docs: list[Doc], secret: Doc) -> list[Doc]:
    """The rendered manifests with one Secret replaced (what the cluster holds after the Job)."""
    name = secret["metadata"]["name"]
    kept = [d for d in docs if not (d["kind"] == "Secret" and d["metadata"]["name"] == name)]
    return [*kept, copy.deepcopy(secret)]
