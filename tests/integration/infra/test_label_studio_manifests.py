"""The cluster's Label Studio (`infra/k8s/base/label-studio.yaml`): what its objects promise.

The Deployment on PostgreSQL with telemetry off, the token Job with the
least RBAC it needs, the script it runs identical to the library's, one
version of Label Studio everywhere, and every setting name one that Label
Studio's own settings read (checked in its installed source when
`make label-studio` installed it). That it runs is
tests/integration/infra/test_pipeline_pods.py's (tests/support/label_studio_cluster.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flywheel.labeling.server import LABEL_STUDIO_VERSION, OFFLINE_ENV, TOKEN_ENV, URL_ENV
from pipelines.cluster import ClusterSettings
from tests.support import REPO
from tests.support.k8s import K8S, OVERLAYS, Doc, find, of_kind, pod_specs
from tests.support.label_studio import label_studio_executable

DEPLOYMENT = "flywheel-label-studio"
JOB = "flywheel-label-studio-token"
TOKEN_SECRET = "flywheel-label-studio-token"


def _pod(docs: list[Doc], kind: str, name: str) -> Doc:
    ((_, pod),) = pod_specs(find(docs, kind, name))
    return pod


def _env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def test_the_script_the_job_runs_is_the_librarys() -> None:
    shipped = K8S / "base" / "label-studio" / "ls_admin.py"
    library = REPO / "src" / "flywheel" / "labeling" / "ls_admin.py"
    assert shipped.read_bytes() == library.read_bytes(), f"cp {library} {shipped}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_job_mounts_the_generated_script(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    pod = _pod(docs, "Job", JOB)
    volume = next(v for v in pod["volumes"] if v["name"] == "script")
    config = find(docs, "ConfigMap", volume["configMap"]["name"])
    library = REPO / "src" / "flywheel" / "labeling" / "ls_admin.py"
    assert config["data"] == {"ls_admin.py": library.read_text()}


def test_one_label_studio_version_everywhere(rendered: dict[str, list[Doc]]) -> None:
    pinned = re.search(
        r"^label-studio==(\S+)$",
        (REPO / "requirements" / "label-studio.txt").read_text(),
        re.MULTILINE,
    )
    assert pinned is not None
    assert pinned.group(1) == LABEL_STUDIO_VERSION
    images = {
        c["image"]
        for kind, name in (("Deployment", DEPLOYMENT), ("Job", JOB))
        for c in [
            *_pod(rendered["local"], kind, name).get("initContainers", []),
            *_pod(rendered["local"], kind, name)["containers"],
        ]
        if "label-studio" in c["image"]
    }
    assert images == {f"heartexlabs/label-studio:{LABEL_STUDIO_VERSION}"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_label_studio_runs_on_postgres_offline_without_a_volume(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    deployment = find(docs, "Deployment", DEPLOYMENT)
    assert deployment["spec"]["replicas"] == 1  # `label-studio start` migrates unlocked
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    (container,) = pod["containers"]
    env = _env(container)
    assert env["DJANGO_DB"]["value"] == "default"
    for name in ("POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "flywheel-label-studio", name
    assert env["POSTGRE_HOST"]["value"] == "flywheel-postgres"
    for name, value in OFFLINE_ENV.items():  # what the local server gets
        assert env[name]["value"] == value, name
    assert env["S3_ENDPOINT"]["valueFrom"]["configMapKeyRef"] == {
        "name": "flywheel-config",
        "key": "AWS_ENDPOINT_URL",
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    # The init container creates Label Studio's own role and database, in the server's
    # maintenance database, with the superuser only it sees.
    (init,) = pod["initContainers"]
    init_env = _env(init)
    assert init_env["PGDATABASE"]["value"] == "postgres"
    assert init_env["PGUSER"]["valueFrom"]["secretKeyRef"]["name"] == "flywheel-postgres"
    secrets = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in env.values()
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert secrets == {"flywheel-label-studio"}  # never the server's superuser
    script = init["args"][0]
    assert script.count("WHERE NOT EXISTS") == 2  # idempotent: role and database


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_token_job_may_patch_one_secret_only(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    job = find(docs, "Job", JOB)
    pod = job["spec"]["template"]["spec"]
    account = find(docs, "ServiceAccount", pod["serviceAccountName"])
    assert account.get("automountServiceAccountToken") is False
    (role,) = of_kind(docs, "Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [TOKEN_SECRET],
            "verbs": ["get", "patch"],
        }
    ]
    (binding,) = of_kind(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (subject,) = binding["subjects"]
    assert (subject["kind"], subject["name"]) == ("ServiceAccount", account["metadata"]["name"])
    # The API token is projected into kubectl only; the script's patch stays in memory.
    (mint,) = pod["initContainers"]
    (kubectl,) = pod["containers"]
    api = {v["name"] for v in pod["volumes"] if "projected" in v}
    assert api == {m["name"] for m in kubectl["volumeMounts"]} & api
    assert not api & {m["name"] for m in mint["volumeMounts"]}
    token = next(v for v in pod["volumes"] if v["name"] == "token")
    assert token["emptyDir"]["medium"] == "Memory"
    assert kubectl["args"][:3] == ["patch", "secret", TOKEN_SECRET]
    assert "--secret-patch=" in mint["args"][0]
    # Minted with the server's database and SECRET_KEY (the token is a JWT signed with it).
    server = _env(_pod(docs, "Deployment", DEPLOYMENT)["containers"][0])
    for name in ("DJANGO_DB", "POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "SECRET_KEY"):
        assert _env(mint)[name] == server[name], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_components_read_the_server_and_its_token(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    config = find(docs, "ConfigMap", "flywheel-config")["data"]
    url = config[URL_ENV]
    service = find(docs, "Service", DEPLOYMENT)
    assert url == f"http://{DEPLOYMENT}:{service['spec']['ports'][0]['port']}"
    settings = ClusterSettings()
    assert URL_ENV in settings.config_keys
    assert settings.label_studio_secret == TOKEN_SECRET
    assert settings.label_studio_keys == {"token": TOKEN_ENV}
    for cronjob in ("flywheel-monitor", "flywheel-label-sync"):
        ((_, pod),) = pod_specs(find(docs, "CronJob", cronjob))
        ref = _env(pod["containers"][-1])[TOKEN_ENV]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": TOKEN_SECRET, "key": "token", "optional": True}, cronjob


def _settings_source(executable: Path) -> str:
    site = next(executable.resolve().parent.parent.glob("lib/python*/site-packages"))
    folder = site / "label_studio" / "core"
    files = [
        *(folder / "settings").glob("*.py"),
        folder / "utils" / "params.py",
        folder / "utils" / "secret_key.py",  # SECRET_KEY, through django-environ
        site / "label_studio" / "server.py",
        site / "label_studio" / "io_storages" / "s3" / "utils.py",
    ]
    return "\n".join(f.read_text() for f in files)


def test_every_setting_is_one_label_studio_reads(rendered: dict[str, list[Doc]]) -> None:
    """The names are checked in the installed server's source: a misspelt one is ignored."""
    executable = label_studio_executable()
    if executable is None:
        pytest.skip("Label Studio is not installed: `make label-studio` (or FLYWHEEL_LABEL_STUDIO)")
    source = _settings_source(executable)
    (container,) = _pod(rendered["local"], "Deployment", DEPLOYMENT)["containers"]
    # get_env(NAME) also reads LABEL_STUDIO_NAME (core/utils/params.py).
    read = set(re.findall(r"get_(?:bool_)?env\(\s*'([A-Za-z0-9_]+)'", source))
    read |= set(re.findall(r"env_key = '([A-Z_]+)'", source))
    read |= {f"LABEL_STUDIO_{name}" for name in read}
    read |= {"LABEL_STUDIO_BASE_DATA_DIR", "DO_NOT_TRACK"}  # read by os.environ / other tools
    names = set(_env(container))
    assert names <= read, names - read
