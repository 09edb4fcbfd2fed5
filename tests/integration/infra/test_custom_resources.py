"""The Kubeflow custom resources of the gpu overlay: the Katib Experiment and the PyTorchJob.

Validated against the schemas in infra/k8s/schemas/ with jsonschema (their pod
templates and the trial Job against Kubernetes' own schemas) and against the
admission rules of Katib's and the Training Operator's webhooks, ported from
their Go sources (tests/support/katib.py and tests/support/training_operator.py
name the upstream versions). The Experiment is checked as the twin of
`params.yaml: tune`, the PyTorchJob's command with torchrun's own parser.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from flywheel.config import load_params
from flywheel.modeling.tuning import resolve_objective
from tests.support import REPO
from tests.support.k8s import Doc, argv, find, ident, pod_specs
from tests.support.katib import TRIAL_PARAMETER, katib_admission_errors
from tests.support.processes import make
from tests.support.schemas import CUSTOM_SCHEMAS, validate_custom
from tests.support.training_operator import pytorchjob_admission_errors


def test_custom_resources_validate_against_their_crd_schemas(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = [d for d in rendered["jobs-gpu"] if (d["apiVersion"], d["kind"]) in CUSTOM_SCHEMAS]
    assert sorted(map(ident, docs)) == ["Experiment/flywheel-tune", "PyTorchJob/flywheel-train-ddp"]
    for doc in docs:
        assert validate_custom(doc) == []


def _misspell_spec_field(doc: Doc) -> None:
    doc["spec"]["parallelTrialCounts"] = doc["spec"].pop("parallelTrialCount")


def _string_count(doc: Doc) -> None:
    doc["spec"]["maxTrialCount"] = "12"


def _bad_trial_container(doc: Doc) -> None:
    pod = doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    pod["containers"][0]["env"] = {"FLYWHEEL_HOME": "/tmp"}  # a mapping where a list belongs


def _string_replicas(doc: Doc) -> None:
    doc["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "1"


def _bad_replica_pod(doc: Doc) -> None:
    doc["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["imag"] = "x"


def _misspell_run_policy(doc: Doc) -> None:
    doc["spec"]["runPolicy"]["cleanPodPolicies"] = "None"


@pytest.mark.parametrize(
    ("kind", "name", "mutate", "expected"),
    [
        ("Experiment", "flywheel-tune", _misspell_spec_field, "parallelTrialCounts"),
        ("Experiment", "flywheel-tune", _string_count, "maxTrialCount"),
        ("Experiment", "flywheel-tune", _bad_trial_container, "trialSpec"),
        ("PyTorchJob", "flywheel-train-ddp", _string_replicas, "replicas"),
        ("PyTorchJob", "flywheel-train-ddp", _bad_replica_pod, "imag"),
        ("PyTorchJob", "flywheel-train-ddp", _misspell_run_policy, "cleanPodPolicies"),
    ],
)
def test_crd_validation_rejects_broken_custom_resources(
    rendered: dict[str, list[Doc]],
    kind: str,
    name: str,
    mutate: Callable[[Doc], None],
    expected: str,
) -> None:
    doc = copy.deepcopy(find(rendered["jobs-gpu"], kind, name))
    mutate(doc)
    errors = validate_custom(doc)
    assert any(expected in e for e in errors), errors


def test_katib_experiment_passes_katibs_admission_rules(rendered: dict[str, list[Doc]]) -> None:
    assert katib_admission_errors(find(rendered["jobs-gpu"], "Experiment", "flywheel-tune")) == []


def _drop_trial_parameter(doc: Doc) -> None:
    doc["spec"]["trialTemplate"]["trialParameters"].pop(0)


def _one_group_filter(doc: Doc) -> None:
    doc["spec"]["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"] = ["val_acc=([0-9.]+)"]


def _unknown_tpe_setting(doc: Doc) -> None:
    doc["spec"]["algorithm"]["algorithmSettings"].append({"name": "n_startup_jobs", "value": "5"})


def _named_trial(doc: Doc) -> None:
    doc["spec"]["trialTemplate"]["trialSpec"]["metadata"] = {"name": "trial"}


def _too_parallel(doc: Doc) -> None:
    doc["spec"]["parallelTrialCount"] = doc["spec"]["maxTrialCount"] + 1


def _wrong_primary(doc: Doc) -> None:
    doc["spec"]["trialTemplate"]["primaryContainerName"] = "trainer"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_drop_trial_parameter, "not found in spec.trialParameters"),
        (_one_group_filter, "two top subexpressions"),
        (_unknown_tpe_setting, "unknown setting n_startup_jobs"),
        (_named_trial, "must be omitted"),
        (_too_parallel, "parallelTrialCount"),
        (_wrong_primary, "primary container"),
    ],
)
def test_katib_admission_rules_reject_broken_experiments(
    rendered: dict[str, list[Doc]], mutate: Callable[[Doc], None], expected: str
) -> None:
    doc = copy.deepcopy(find(rendered["jobs-gpu"], "Experiment", "flywheel-tune"))
    mutate(doc)
    errors = katib_admission_errors(doc)
    assert any(expected in e for e in errors), errors


def test_pytorchjob_passes_the_training_operators_admission_rules(
    rendered: dict[str, list[Doc]],
) -> None:
    job = find(rendered["jobs-gpu"], "PyTorchJob", "flywheel-train-ddp")
    assert pytorchjob_admission_errors(job) == []
    broken = copy.deepcopy(job)
    broken["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    broken["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["name"] = (
        "trainer"
    )
    broken["spec"]["pytorchReplicaSpecs"]["Chief"] = broken["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert set(pytorchjob_admission_errors(broken)) == {
        "Master replicas must be 1",
        "Worker: must have a container named pytorch",
        "replica type 'Chief' is not Master or Worker",
        "Chief: must have a container named pytorch",
    }


def test_pytorchjob_command_is_what_torchrun_runs_with_the_operators_env(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrun's own argument parser, fed the environment the Training Operator sets.

    The operator (v1.7+) passes the topology as PET_* variables, which torchrun
    reads as defaults of its options; the master port is the container port
    named pytorchjob-port.
    """
    from torch.distributed.run import get_args_parser

    job = find(rendered["jobs-gpu"], "PyTorchJob", "flywheel-train-ddp")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    nodes = sum(r["replicas"] for r in replicas.values())
    for role, replica in replicas.items():
        (container,) = replica["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        environment = {
            "PET_NNODES": str(nodes),
            "PET_NPROC_PER_NODE": job["spec"]["nprocPerNode"],
            "PET_NODE_RANK": "0" if role == "Master" else "1",
            "PET_MASTER_ADDR": "flywheel-train-ddp-master-0",
            "PET_MASTER_PORT": str(ports["pytorchjob-port"]),
        }
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        assert container["command"] == ["torchrun"]
        args = get_args_parser().parse_args(container["args"])
        assert args.no_python, role
        assert [args.training_script, *args.training_script_args] == [
            "flywheel",
            "train",
            "--data-version=$(FLYWHEEL_DATA_VERSION)",
        ]
        assert (args.nnodes, args.nproc_per_node) == (str(nodes), job["spec"]["nprocPerNode"])
        assert args.master_port == ports["pytorchjob-port"]
        assert args.node_rank == int(environment["PET_NODE_RANK"])


def job_containers(docs: list[Doc]) -> list[tuple[str, Doc, Doc]]:
    """`(where, pod, training container)` of every job pod: PyTorchJob replicas, Katib trials."""
    found = []
    for kind, name in (("PyTorchJob", "flywheel-train-ddp"), ("Experiment", "flywheel-tune")):
        for where, pod in pod_specs(find(docs, kind, name)):
            (container,) = pod["containers"]
            found.append((where, pod, container))
    return found


@pytest.mark.parametrize("variant", ["jobs-cpu", "jobs-gpu"])
def test_jobs_materialise_their_data_version_from_the_s3_remote(
    rendered: dict[str, list[Doc]], variant: str
) -> None:
    """What tests/integration/test_ddp_remote.py runs and proves: `flywheel train
    --data-version=$(FLYWHEEL_DATA_VERSION)` (default `latest`), no init container
    running the image's `data ensure`, and the environment a pipeline step gets
    (pipelines.cluster.ClusterSettings): the ConfigMap's keys, among them the DVC
    remote and the S3 endpoint, and the S3 Secret's keys."""
    from pipelines.cluster import ClusterSettings

    settings = ClusterSettings()
    config = find(rendered["gpu"], "ConfigMap", settings.config_map)["data"]
    assert set(settings.config_keys) <= set(config)
    assert {"FLYWHEEL_DVC_REMOTE", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"} <= set(
        settings.config_keys
    )
    jobs = job_containers(rendered[variant])
    assert len(jobs) == 3  # Master, Worker, the trial
    for where, pod, container in jobs:
        assert "initContainers" not in pod, where
        words = argv(container)
        if words[:2] == ["torchrun", "--no-python"]:
            words = words[2:]
        assert words[:3] == ["flywheel", "train", "--data-version=$(FLYWHEEL_DATA_VERSION)"], where
        assert container["env"][0] == {"name": "FLYWHEEL_DATA_VERSION", "value": "latest"}, where
        assert {"configMapRef": {"name": settings.config_map}} in container["envFrom"], where
        secrets = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        for key, variable in settings.s3_keys.items():
            assert secrets[variable] == {"name": settings.s3_secret, "key": key}, where
        # No data from the image: nothing is mounted over /app/data.
        assert all(m["mountPath"] != "/app/data" for m in container["volumeMounts"]), where


def test_data_version_renders_into_every_job(tmp_path: Path) -> None:
    """`make tune|train-distributed DATA_VERSION=<hash>` (render.sh) pins the jobs' version."""
    version = "0123456789abcdef0123456789abcdef"
    done = make("render", f"RENDER_DIR={tmp_path}", f"DATA_VERSION={version}")
    assert done.returncode == 0, done.stdout + done.stderr
    for variant in ("jobs-cpu", "jobs-gpu"):
        docs = [d for d in yaml.safe_load_all((tmp_path / f"{variant}.yaml").read_text()) if d]
        values = [c["env"][0] for _, _, c in job_containers(docs)]
        assert values == [{"name": "FLYWHEEL_DATA_VERSION", "value": version}] * 3, variant
    local = (tmp_path / "local.yaml").read_text()
    assert version not in local


def test_katib_experiment_is_the_twin_of_flywheel_tune(rendered: dict[str, list[Doc]]) -> None:
    params = load_params(REPO / "params.yaml")
    experiment = find(rendered["jobs-gpu"], "Experiment", "flywheel-tune")
    spec = experiment["spec"]
    trial_pod = next(pod for _, pod in pod_specs(experiment))
    primary = next(
        c
        for c in trial_pod["containers"]
        if c["name"] == spec["trialTemplate"]["primaryContainerName"]
    )
    overrides = dict(
        a.removeprefix("--set=").split("=", 1) for a in argv(primary) if a.startswith("--set=")
    )
    references = {tp["name"]: tp["reference"] for tp in spec["trialTemplate"]["trialParameters"]}
    parameters = {p["name"]: p for p in spec["parameters"]}
    tuned = {
        key: parameters[references[m.group(1)]]
        for key, value in overrides.items()
        if (m := TRIAL_PARAMETER.fullmatch(value))
    }

    assert tuned.keys() == params.tune.space.keys()
    for key, dim in params.tune.space.items():
        katib = tuned[key]
        space = katib["feasibleSpace"]
        if dim.type == "categorical":
            assert katib["parameterType"] == "categorical", key
            assert space["list"] == [str(c) for c in dim.choices], key
            continue
        assert katib["parameterType"] == {"float": "double", "int": "int"}[dim.type], key
        assert (float(space["min"]), float(space["max"])) == (dim.low, dim.high), key
        assert (space.get("distribution") == "logUniform") == dim.log, key
        if dim.step is not None and not (dim.type == "int" and dim.step == 1):
            assert float(space["step"]) == dim.step, key
    assert overrides["train.epochs"] == str(params.tune.epochs_per_trial)
    metric, direction = resolve_objective(params)
    assert spec["objective"]["objectiveMetricName"] == metric
    assert spec["objective"]["type"] == direction
    assert spec["maxTrialCount"] == params.tune.n_trials
    assert spec["algorithm"]["algorithmName"] == "tpe"
    settings = {s["name"]: s["value"] for s in spec["algorithm"]["algorithmSettings"]}
    assert settings["random_state"] == str(params.tune.seed)
