"""The kustomize overlays (`infra/k8s`), rendered and checked against what they promise.

Both overlays are rendered with `kubectl kustomize` (kubectl's built-in
kustomize); every built-in object is validated against the Kubernetes API
schemas with kubernetes-validate (strict: unknown fields are errors). Then the
semantics: GPUs where training runs, zero-downtime serving, non-root pods,
Secret references, the one image constant, Service types, ports and selectors,
shared settings, and every `flywheel ...` command against the real CLI.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import typer.main
import yaml

from flywheel.cli import app
from flywheel.config import load_params
from flywheel.env import DEFAULT_IMAGE
from flywheel.labeling.server import LABEL_STUDIO_VERSION
from pipelines.submission import IN_CLUSTER_TOKEN
from tests.support import REPO
from tests.support.k8s import (
    IMAGE_REPO,
    IMAGES,
    INFRA,
    JOBS,
    K8S,
    OVERLAYS,
    RENDERINGS,
    Doc,
    all_containers,
    argv,
    containers,
    documented_secrets,
    find,
    ident,
    of_kind,
    pod_specs,
    pod_templates,
    project_version,
    resolve_cli,
    secret_data,
    secret_references,
    validate_builtin,
)
from tests.support.katib import substitute_trial_parameters
from tests.support.processes import make
from tests.support.schemas import CUSTOM_SCHEMAS

PLACEHOLDERS = {"flywheel-component", "flywheel-tracking", "flywheel-serving", "label-studio"}
# NodePort Services the local overlay publishes (kind.yaml maps them to localhost).
LOCAL_NODE_PORTS = {
    "flywheel-mlflow", "flywheel-serving", "flywheel-evidently", "flywheel-label-studio",
}  # fmt: skip
# Secrets a Job writes (applied without data, so a later apply keeps the key): name → key.
WRITTEN_BY_JOBS = {"flywheel-label-studio-token": "token"}
GPU = "nvidia.com/gpu"


# ================================================================== rendering, schemas


def test_overlays_render_what_each_environment_runs(rendered: dict[str, list[Doc]]) -> None:
    kinds = {name: {d["kind"] for d in docs} for name, docs in rendered.items()}
    platform = {
        "Namespace", "ConfigMap", "Service", "StatefulSet",
        "Deployment", "Job", "CronJob", "HorizontalPodAutoscaler", "PodDisruptionBudget",
    }  # fmt: skip
    assert platform <= kinds["local"]
    assert platform <= kinds["gpu"]
    for overlay in OVERLAYS:  # `make deploy` starts no GPU job: tuning and training are on purpose
        assert not {"Experiment", "PyTorchJob"} & kinds[overlay], overlay
    for jobs in JOBS:  # `make tune`, `make train-distributed`
        assert kinds[jobs] == {"Experiment", "PyTorchJob"}, jobs
    assert "Secret" in kinds["local"]
    for secret in of_kind(rendered["gpu"], "Secret"):  # real credentials are created out of band
        assert secret["metadata"]["name"] in WRITTEN_BY_JOBS, "a credential in the gpu overlay"
        assert not secret.get("data"), "the Job writes it"
        assert not secret.get("stringData"), "the Job writes it"
    for docs in rendered.values():
        namespaced = [d for d in docs if d["kind"] != "Namespace"]
        assert {d["metadata"].get("namespace") for d in namespaced} == {"flywheel"}


def services_for(name: str, rendered: dict[str, list[Doc]]) -> list[Doc]:
    """What runs beside a rendering: a jobs variant with the services it reads (ConfigMap)."""
    paired = {"jobs-cpu": "local", "jobs-gpu": "gpu"}
    return rendered[name] + (rendered[paired[name]] if name in paired else [])


@pytest.mark.parametrize("overlay", RENDERINGS)
def test_builtin_objects_validate_against_the_kubernetes_api(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    errors, unknown = [], []
    for doc in rendered[overlay]:
        try:
            errors += validate_builtin(doc)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.append(doc)
    assert not errors, "\n".join(errors)
    # Whatever kubernetes-validate has no schema for is one of ours, validated below.
    assert {(d["apiVersion"], d["kind"]) for d in unknown} <= CUSTOM_SCHEMAS.keys()


def test_the_kubernetes_validator_rejects_broken_objects(rendered: dict[str, list[Doc]]) -> None:
    deployment = copy.deepcopy(find(rendered["local"], "Deployment", "flywheel-serving"))
    assert validate_builtin(deployment) == []
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "3000x"
    assert any("containerPort" in e for e in validate_builtin(deployment))
    deployment = copy.deepcopy(find(rendered["local"], "Deployment", "flywheel-serving"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert validate_builtin(deployment), "a misspelt field is an error (strict)"


# ================================================================== semantics


def test_gpu_jobs_run_training_on_gpu_nodes(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["jobs-gpu"]
    job = find(docs, "PyTorchJob", "flywheel-train-ddp")
    experiment = find(docs, "Experiment", "flywheel-tune")
    trainers = [*pod_specs(job), *pod_specs(experiment)]
    assert len(trainers) == 3  # Master, Worker, Katib trial
    for where, pod in trainers:
        main = pod["containers"][0]
        limits, requests = main["resources"]["limits"], main["resources"]["requests"]
        assert int(limits[GPU]) >= 1, where
        assert requests[GPU] == limits[GPU], f"{where}: GPU requests must equal limits"
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, where
        shm = next(v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory")
        assert {"name": shm["name"], "mountPath": "/dev/shm"} in main["volumeMounts"], where
        assert main["image"] == f"{IMAGES['component']}:{project_version()}-cuda", where
    # torchrun starts one process per GPU of the pod.
    for role in ("Master", "Worker"):
        pod = job["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]
        assert job["spec"]["nprocPerNode"] == pod["containers"][0]["resources"]["limits"][GPU]
    # Nothing else asks for GPUs: serving, MLflow and the rest stay on CPU nodes.
    gpu_users = {
        w
        for w, _, c in all_containers(services_for("jobs-gpu", rendered))
        if GPU in c.get("resources", {}).get("limits", {})
    }
    assert gpu_users == {
        "PyTorchJob/flywheel-train-ddp/Master/pytorch",
        "PyTorchJob/flywheel-train-ddp/Worker/pytorch",
        "Experiment/flywheel-tune/trial/training",
    }


@pytest.mark.parametrize("name", ["local", "gpu", "jobs-cpu"])
def test_only_the_gpu_jobs_ask_for_gpus(rendered: dict[str, list[Doc]], name: str) -> None:
    assert GPU not in json.dumps(rendered[name])


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_container_asks_for_cpu_and_memory(rendered: dict[str, list[Doc]], name: str) -> None:
    # Quota'd namespaces refuse pods without requests; a memory limit keeps a leak local.
    for where, _, c in all_containers(rendered[name]):
        resources = c.get("resources", {})
        assert {"cpu", "memory"} <= resources.get("requests", {}).keys(), where
        assert "memory" in resources.get("limits", {}), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_rolls_out_without_downtime(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    deployment = find(docs, "Deployment", "flywheel-serving")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert "http" in ports
    rolling = deployment["spec"]["strategy"]
    assert rolling["type"] == "RollingUpdate"
    assert rolling["rollingUpdate"]["maxUnavailable"] == 0
    assert rolling["rollingUpdate"]["maxSurge"] >= 1
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pre_stop < pod["terminationGracePeriodSeconds"]

    hpa = find(docs, "HorizontalPodAutoscaler", "flywheel-serving")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "flywheel-serving")
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = find(docs, "PodDisruptionBudget", "flywheel-serving")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    if overlay == "gpu":  # a real cluster: voluntary evictions always leave a serving pod
        assert hpa["spec"]["minReplicas"] - pdb["spec"]["maxUnavailable"] >= 1
        local = find(rendered["local"], "HorizontalPodAutoscaler", "flywheel-serving")
        assert hpa["spec"]["maxReplicas"] > local["spec"]["maxReplicas"]
    env_from = {e["configMapRef"]["name"] for e in container["envFrom"]}
    assert "MLFLOW_TRACKING_URI" in find(docs, "ConfigMap", next(iter(env_from)))["data"]


@pytest.mark.parametrize("overlay", RENDERINGS)
def test_no_container_runs_as_root(rendered: dict[str, list[Doc]], overlay: str) -> None:
    problems = []
    for doc in rendered[overlay]:
        for where, pod in pod_specs(doc):
            pod_ctx = pod.get("securityContext", {})
            if pod.get("automountServiceAccountToken") is not False:
                problems.append(f"{where}: mounts a service account token it does not use")
            for c in containers(pod):
                ctx = {**pod_ctx, **c.get("securityContext", {})}
                name = f"{where}/{c['name']}"
                if ctx.get("runAsNonRoot") is not True:
                    problems.append(f"{name}: runAsNonRoot is not true")
                if not ctx.get("runAsUser"):  # unset (the image decides) or 0
                    problems.append(f"{name}: no non-zero runAsUser")
                if ctx.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{name}: allowPrivilegeEscalation is not false")
                if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
                    problems.append(f"{name}: capabilities are not all dropped")
                if ctx.get("privileged"):
                    problems.append(f"{name}: privileged")
                if ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                    problems.append(f"{name}: no RuntimeDefault seccomp profile")
    assert not problems, "\n".join(problems)


def test_secret_references_are_defined_or_documented(rendered: dict[str, list[Doc]]) -> None:
    local = rendered["local"]
    defined = {s["metadata"]["name"]: secret_data(s) for s in of_kind(local, "Secret")}
    local_refs = secret_references(local)
    assert local_refs, "the platform reads credentials from Secrets"
    for name, key in local_refs:
        assert name in defined, (
            f"Secret {name} is referenced but not generated by the local overlay"
        )
        if name in WRITTEN_BY_JOBS:  # the Job's patch writes the key (test_label_studio_manifests)
            assert key == WRITTEN_BY_JOBS[name], name
            continue
        assert key is None or key in defined[name], f"Secret {name} has no key {key}"
    for name, values in defined.items():  # fake values, and visibly so
        if name in WRITTEN_BY_JOBS:
            assert not values, f"{name} is the Job's to write"
            continue
        secrets = [v for k, v in values.items() if k in ("password", "secret-key", "token")]
        assert secrets, name
        assert all(v.startswith("dev-only") for v in secrets), name

    documented = documented_secrets(INFRA / "README.md")
    for name, key in secret_references(services_for("jobs-gpu", rendered)):
        if name in WRITTEN_BY_JOBS:
            continue
        assert name in documented, (
            f"Secret {name} is neither created by the gpu overlay nor documented"
        )
        assert key is None or key in documented[name], f"README's {name} lacks key {key}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_credential_is_written_in_a_manifest(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    sensitive = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL|_KEY$", re.IGNORECASE)
    for where, _, c in all_containers(rendered[overlay]):
        for entry in c.get("env", []):
            if sensitive.search(entry["name"]):
                assert "valueFrom" in entry, f"{where}: {entry['name']} must come from a Secret"
    for config in of_kind(rendered[overlay], "ConfigMap"):
        assert not [k for k in config["data"] if sensitive.search(k)], config["data"].keys()
    # The backend URI is assembled from the Secret at start-up, never written out.
    mlflow = find(rendered[overlay], "Deployment", "flywheel-mlflow")["spec"]["template"]["spec"]
    uri = next(e for e in mlflow["containers"][0]["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert "$(POSTGRES_PASSWORD)" in uri["value"]


@pytest.mark.parametrize("overlay", RENDERINGS)
def test_every_image_is_the_one_constant_or_pinned(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    version = project_version()
    component_tag = f"{version}-cuda" if overlay == "jobs-gpu" else version
    expected = {IMAGES["component"]: component_tag}
    if overlay in OVERLAYS:
        expected |= {IMAGES["tracking"]: version, IMAGES["serving"]: version}
    seen = set()
    for where, _, c in all_containers(rendered[overlay]):
        image = c["image"]
        assert image not in PLACEHOLDERS, f"{where}: placeholder {image} not replaced"
        name, _, tag = image.rpartition(":")
        assert name, f"{where}: {image} has no tag"
        assert "/" not in tag, f"{where}: {image} has no tag"
        assert tag != "latest", f"{where}: {image}"
        if name in expected:
            assert tag == expected[name], f"{where}: {image}, expected tag {expected[name]}"
            seen.add(name)
        else:
            assert not name.startswith(IMAGE_REPO), f"{where}: unknown flywheel image {image}"
        # Our code (the CLI, torchrun, the Evidently UI) runs in the component image.
        if argv(c)[:1] in (["flywheel"], ["torchrun"], ["evidently"]):
            assert name == IMAGES["component"], where
    assert seen == set(expected)


def test_kustomize_images_carry_the_project_version() -> None:
    constant = yaml.safe_load((K8S / "images" / "kustomization.yaml").read_text())
    version = project_version()
    assert {(i["name"], i["newName"], i["newTag"]) for i in constant["images"]} == {
        ("flywheel-component", IMAGES["component"], version),
        ("flywheel-tracking", IMAGES["tracking"], version),
        ("flywheel-serving", IMAGES["serving"], version),
        ("label-studio", "heartexlabs/label-studio", LABEL_STUDIO_VERSION),
    }
    for user in ("base", "jobs/base"):  # the services and the jobs share it
        kustomization = yaml.safe_load((K8S / user / "kustomization.yaml").read_text())
        assert "images" not in kustomization, user
        assert [(K8S / user / c).resolve() for c in kustomization["components"]] == [K8S / "images"]
    # The library's default for pipeline steps (FLYWHEEL_IMAGE unset) is the same image.
    assert f"{IMAGES['component']}:{version}" == DEFAULT_IMAGE


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_are_internal_except_the_local_node_ports(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    for service in of_kind(rendered[overlay], "Service"):
        name, kind = service["metadata"]["name"], service["spec"].get("type", "ClusterIP")
        if overlay == "local" and name in LOCAL_NODE_PORTS:
            assert kind == "NodePort", name
        else:
            assert kind == "ClusterIP", f"{overlay}: {name} is {kind}"


def test_local_node_ports_are_published_by_the_kind_cluster(rendered: dict[str, list[Doc]]) -> None:
    kind = yaml.safe_load((K8S / "overlays" / "local" / "kind.yaml").read_text())
    mappings = {m["containerPort"]: m for m in kind["nodes"][0]["extraPortMappings"]}
    node_ports = {
        p["nodePort"]: (s["metadata"]["name"], p["port"])
        for s in of_kind(rendered["local"], "Service")
        if s["spec"].get("type") == "NodePort"
        for p in s["spec"]["ports"]
    }
    assert node_ports.keys() == mappings.keys()
    for node_port, (service, port) in node_ports.items():
        assert mappings[node_port]["listenAddress"] == "127.0.0.1", service
        assert mappings[node_port]["hostPort"] == port, f"{service}: host port = service port"


@pytest.mark.parametrize("overlay", RENDERINGS)
def test_references_between_objects_resolve(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = services_for(overlay, rendered)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc in docs:
        claim_templates = {
            t["metadata"]["name"] for t in doc.get("spec", {}).get("volumeClaimTemplates", [])
        }
        for where, pod in pod_specs(doc):
            volumes = {v["name"] for v in pod.get("volumes", [])} | claim_templates
            for volume in pod.get("volumes", []):
                if claim := volume.get("persistentVolumeClaim"):
                    assert ("PersistentVolumeClaim", claim["claimName"]) in names, where
            for c in containers(pod):
                declared = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    port = c.get(probe, {}).get("httpGet", {}).get("port")
                    if port is not None:
                        assert port in declared or port in declared.values(), f"{where}: {probe}"
                for source in c.get("envFrom", []):
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names, where
                mounts = {m["name"] for m in c.get("volumeMounts", [])}
                assert mounts <= volumes, f"{where}/{c['name']}: no volume {mounts - volumes}"
        if doc["kind"] in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), ident(doc)
    # Every Service selects exactly one pod template and targets its named ports.
    templates = [t for d in docs for _, t in pod_templates(d)]
    for service in of_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        matching = [t for t in templates if selector.items() <= t["metadata"]["labels"].items()]
        assert len(matching) == 1, f"{ident(service)} selects {len(matching)} pod templates"
        port_names = {p.get("name") for c in matching[0]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"{ident(service)}: {port['targetPort']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shared_settings_point_at_the_in_cluster_services(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    config = find(docs, "ConfigMap", "flywheel-config")["data"]
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL"):
        url = urlsplit(config[key])
        service = find(docs, "Service", str(url.hostname))
        assert url.port in {p["port"] for p in service["spec"]["ports"]}, key
    bucket = urlsplit(config["MLFLOW_ARTIFACTS_DESTINATION"]).hostname
    assert bucket in config["FLYWHEEL_BUCKETS"].split()
    endpoint = urlsplit(config["AWS_ENDPOINT_URL"])
    store = find(docs, "Service", str(endpoint.hostname))
    assert endpoint.port in {p["port"] for p in store["spec"]["ports"]}
    state = urlsplit(config["FLYWHEEL_STATE_URL"])
    assert state.scheme == "s3"
    assert state.hostname in config["FLYWHEEL_BUCKETS"].split()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_loop_shares_state_through_the_object_store_not_a_volume(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """Serving, the monitor and the Evidently UI reach FLYWHEEL_STATE_URL with the S3 Secret's
    keys; no pod mounts a shared claim (any node, any uid)."""
    docs = rendered[overlay]
    assert not of_kind(docs, "PersistentVolumeClaim")
    for kind, name in (
        ("Deployment", "flywheel-serving"),
        ("Deployment", "flywheel-evidently"),
        ("CronJob", "flywheel-monitor"),
        ("CronJob", "flywheel-label-sync"),
    ):
        ((_, pod),) = pod_specs(find(docs, kind, name))
        assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v], name
        main = pod["containers"][-1] if kind == "CronJob" else pod["containers"][0]
        assert {"configMapRef": {"name": "flywheel-config"}} in main["envFrom"], name
        secrets = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in main.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        for variable, key in (
            ("AWS_ACCESS_KEY_ID", "access-key"),
            ("AWS_SECRET_ACCESS_KEY", "secret-key"),
        ):
            assert secrets[variable]["name"] == "flywheel-s3", name
            assert secrets[variable]["key"] == key, name
    evidently = find(docs, "Deployment", "flywheel-evidently")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert evidently["command"] == ["python", "-m", "flywheel.monitoring.evidently_ui"]
    assert "--workspace=$(FLYWHEEL_STATE_URL)/evidently" in evidently["args"]


def flywheel_invocations(docs: list[Doc]) -> Iterator[tuple[str, list[str]]]:
    """`(where, arguments)` of every `flywheel ...` a container runs (under torchrun too)."""
    for doc in docs:
        subject = substitute_trial_parameters(doc) if doc["kind"] == "Experiment" else doc
        for where, pod in pod_specs(subject):
            for c in containers(pod):
                words = argv(c)
                if words[:2] == ["torchrun", "--no-python"]:
                    words = words[2:]
                if words and words[0] == "flywheel":
                    yield f"{where}/{c['name']}", words[1:]


def implemented(command: str) -> bool:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return command in group.commands


SCHEDULED = {
    "flywheel-monitor": [
        "monitor",
        "--trigger",
        f"--token-file={IN_CLUSTER_TOKEN}",
        "--out=/var/lib/flywheel/pipelines",
    ],
    "flywheel-label-sync": [
        "label",
        "sync",
        "--submit",
        f"--token-file={IN_CLUSTER_TOKEN}",
        "--out=/var/lib/flywheel/pipelines",
    ],
}
"""The CronJobs that submit pipelines through the KFP API, and the command each runs."""


def _scheduled(words: list[str]) -> bool:
    return words in SCHEDULED.values()


def test_every_flywheel_command_parses_with_the_real_cli(rendered: dict[str, list[Doc]]) -> None:
    invocations = dict(flywheel_invocations(services_for("jobs-gpu", rendered)))
    # The jobs train on a data version from the DVC remote by hash; nothing runs the
    # image's `flywheel data ensure` (the monitor reads only the state and the registry).
    assert {tuple(resolve_cli(w)) for w in invocations.values() if not _scheduled(w)} == {
        ("train",)
    }
    for where, words in invocations.items():
        if _scheduled(words):
            continue  # test_scheduled_cronjobs_submit_through_the_kfp_api
        overrides = {
            key: yaml.safe_load(value)
            for key, value in (
                w.removeprefix("--set=").split("=", 1) for w in words if w.startswith("--set=")
            )
        }
        # The overrides make a valid configuration: the keys exist, the values have their types.
        assert load_params(REPO / "params.yaml", overrides), where


@pytest.mark.parametrize("cronjob", sorted(SCHEDULED))
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scheduled_cronjobs_submit_through_the_kfp_api(
    rendered: dict[str, list[Doc]], overlay: str, cronjob: str
) -> None:
    """The monitor CronJob runs `flywheel monitor --trigger` (the curation pipeline on drift),
    the label-sync CronJob `flywheel label sync --submit` (the update pipeline when enough
    annotations are complete), both parsed by the real CLI, with the KFP endpoint, their own
    namespace and a projected token the KFP API accepts, read from where it is mounted; the
    Jobs are not retried (a verdict exits 0, an error fails)."""
    docs = rendered[overlay]
    expected = SCHEDULED[cronjob]
    job = find(docs, "CronJob", cronjob)
    *before, main_command = (w for _, w in flywheel_invocations([job]))
    assert main_command == expected
    assert before in ([], [["data", "ensure"]])  # the monitor needs the data version
    path = resolve_cli(expected)
    assert path == [w for w in expected if not w.startswith("--")]

    assert validate_builtin(job) == []
    assert job["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    ((_, pod),) = pod_specs(job)
    main = pod["containers"][-1]
    env = {e["name"]: e for e in main["env"]}
    assert env["KF_PIPELINES_ENDPOINT"]["value"] == (
        "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    )
    assert env["FLYWHEEL_KFP_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    token_path = IN_CLUSTER_TOKEN  # where Kubeflow projects it, and the command reads it
    mount = next(m for m in main["volumeMounts"] if m["mountPath"] == str(token_path.parent))
    assert mount.get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    (source,) = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["path"] == token_path.name
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    # The compiled pipeline goes to the pod's scratch volume, not the read-only image.
    scratch = {m["mountPath"] for m in main["volumeMounts"] if m["name"] == "state"}
    assert scratch == {"/var/lib/flywheel"}
    # The variables are the ones the command reads (its options' envvar).
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    envvars = {o.envvar for o in command.params if getattr(o, "envvar", None)}
    assert {"KF_PIPELINES_ENDPOINT", "FLYWHEEL_KFP_NAMESPACE"} <= envvars


def test_the_scheduled_jobs_do_not_start_together(rendered: dict[str, list[Doc]]) -> None:
    """The label sync runs out of step with the monitor (each hour, half an hour apart)."""
    docs = rendered["local"]
    schedules = {name: find(docs, "CronJob", name)["spec"]["schedule"] for name in SCHEDULED}
    assert schedules == {"flywheel-monitor": "0 * * * *", "flywheel-label-sync": "30 * * * *"}


# ================================================================== make render


def test_make_render_writes_every_overlay(rendered: dict[str, list[Doc]], tmp_path: Path) -> None:
    done = make("render", f"RENDER_DIR={tmp_path}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{o}.yaml" for o in RENDERINGS)
    for name in RENDERINGS:
        written = [d for d in yaml.safe_load_all((tmp_path / f"{name}.yaml").read_text()) if d]
        assert written == rendered[name]
        for _, _, c in all_containers(written):
            assert not c["image"].startswith("registry.example"), name
    # The databases' volumes (shared state lives in the object store: no PVC of its own).
    claims = [
        t
        for d in rendered["gpu"]
        if d["kind"] == "StatefulSet"
        for t in d["spec"]["volumeClaimTemplates"]
    ]
    assert claims
    assert all("storageClassName" not in t["spec"] for t in claims)  # the cluster's default


def test_make_render_carries_the_image_repository_and_storage_class(tmp_path: Path) -> None:
    done = make(
        "render",
        f"RENDER_DIR={tmp_path}",
        "IMAGE_REPO=registry.example:5000/team",
        "STORAGE_CLASS=standard-rwo",
    )
    assert done.returncode == 0, done.stdout + done.stderr

    version = project_version()
    for name in RENDERINGS:
        docs = [d for d in yaml.safe_load_all((tmp_path / f"{name}.yaml").read_text()) if d]
        ours = {c["image"] for _, _, c in all_containers(docs) if "flywheel" in c["image"]}
        assert ours, name
        for image in ours:
            repo, _, rest = image.rpartition("/")
            assert repo == "registry.example:5000/team", f"{name}: {image}"
            assert rest.split(":", 1)[1] in (version, f"{version}-cuda"), image
        claims = [d["spec"] for d in docs if d["kind"] == "PersistentVolumeClaim"]
        claims += [
            t["spec"]
            for d in of_kind(docs, "StatefulSet")
            for t in d["spec"]["volumeClaimTemplates"]
        ]
        assert all(c["storageClassName"] == "standard-rwo" for c in claims), name
        if name in OVERLAYS:
            assert len(claims) == 2, name  # PostgreSQL's and MinIO's (state is in the bucket)
