"""The pipelines compiled to KFP IR and read back by structure; the CLI around them; the
validation step against real DVC and Great Expectations.

The IR checks load the compiled YAML (the pipeline spec and the Kubernetes
platform spec) and look tasks, executors and settings up by name, never by
position or by matching text.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import components
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import ClusterConfig, Params, TrainPlacement, load_params
from flywheel.data.versioning import DataVersionError, track_dataset
from flywheel.workflows import (
    DataGateError,
    resolve_params,
    validate_data,
)
from pipelines.catalog import PIPELINES, get_pipeline
from pipelines.cluster import ClusterSettings, compile_pipeline
from pipelines.flywheel import build_flywheel_pipeline
from pipelines.local import TaskEvent, exception_message, parse_runner_line
from pipelines.training import OUTPUT_TASKS, build_training_pipeline
from tests.support.plans import tiny_plan
from tests.support.project import dvc, make_project

ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = ROOT / "params.yaml"
PARAMS = load_params(PARAMS_FILE)
IMAGE = "registry.example/flywheel:test"
STEPS = ("validate-data", "train-model", "find-champion", "evaluate-model", "promote-model")


def _load(package: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pipeline spec and the platform spec of a compiled package."""
    documents = list(yaml.safe_load_all(package.read_text()))
    spec = documents[0]
    platform = documents[1] if len(documents) > 1 else {}
    return spec, platform


def _dag_tasks(spec: dict[str, Any], component: str | None = None) -> dict[str, Any]:
    """Tasks of the root DAG, or of a (condition / nested pipeline) component's DAG."""
    dag = spec["root"]["dag"] if component is None else spec["components"][component]["dag"]
    return dag["tasks"]


def _condition(
    spec: dict[str, Any], *, holding: str, within: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The task (name, spec) of the root DAG (or of `within`'s) whose DAG holds `holding`."""
    for name, task in _dag_tasks(spec, within).items():
        component = task["componentRef"]["name"]
        if "dag" in spec["components"][component] and holding in _dag_tasks(spec, component):
            return name, task
    raise AssertionError(f"no condition holds {holding!r}")


def _all_tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task in the root DAG and the component DAGs below it, by name."""
    found = dict(_dag_tasks(spec))
    for component in spec["components"].values():
        found.update(component.get("dag", {}).get("tasks", {}))
    return found


def _executor(spec: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]


def _k8s(platform: dict[str, Any], spec: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][label]


@pytest.fixture(scope="module")
def cluster_training(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pipeline = build_training_pipeline(
        PARAMS,
        data_version="0123abcd",
        target="cluster",
        image=IMAGE,
        cluster=ClusterSettings(s3_secret="test-s3"),
    )
    return compile_pipeline(pipeline, tmp_path_factory.mktemp("ir") / "training.yaml")


# ------------------------------------------------------------ training, cluster


def test_training_has_its_five_steps_and_promotes_only_when_blessed(
    cluster_training: Path,
) -> None:
    spec, _ = _load(cluster_training)
    root = _dag_tasks(spec)

    assert {"validate-data", "train-model", "find-champion", "evaluate-model"} <= set(root)
    assert "promote-model" not in root
    name, condition = _condition(spec, holding="promote-model")
    assert set(root) == {"validate-data", "train-model", "find-champion", "evaluate-model", name}
    assert condition["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--evaluate-model-Output'] == true"
    )
    blessed = condition["inputs"]["parameters"]["pipelinechannel--evaluate-model-Output"]
    assert blessed["taskOutputParameter"] == {
        "producerTask": "evaluate-model",
        "outputParameterKey": "Output",
    }
    evaluate = root["evaluate-model"]
    returns = spec["components"][evaluate["componentRef"]["name"]]["outputDefinitions"]
    assert returns["parameters"]["Output"]["parameterType"] == "BOOLEAN"
    assert set(root["train-model"]["dependentTasks"]) == {"validate-data"}
    assert set(evaluate["dependentTasks"]) == {"validate-data", "train-model", "find-champion"}
    # the champion is an input of the evaluation: part of its cache key
    assert evaluate["inputs"]["parameters"]["champion"]["taskOutputParameter"] == {
        "producerTask": "find-champion",
        "outputParameterKey": "Output",
    }


def test_training_steps_run_in_the_one_image_without_installing_anything(
    cluster_training: Path,
) -> None:
    spec, _ = _load(cluster_training)
    tasks = _all_tasks(spec)

    for name in STEPS:
        container = _executor(spec, tasks[name])
        expected = f"{IMAGE}-cuda" if name == "train-model" else IMAGE  # the CUDA build
        assert container["image"] == expected, name
        program = " ".join(container["command"])
        assert "pip install" not in program, name  # install_kfp_package=False
        assert "    from flywheel import workflows\n" in program, name


def test_only_the_training_step_asks_for_a_gpu_on_gpu_nodes(cluster_training: Path) -> None:
    spec, platform = _load(cluster_training)
    tasks = _all_tasks(spec)

    train = _executor(spec, tasks["train-model"])
    accelerator = train["resources"]["accelerator"]
    assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "1")
    assert train["resources"]["resourceCpuRequest"] == "4"
    assert train["resources"]["resourceMemoryRequest"] == "16Gi"
    k8s = _k8s(platform, spec, tasks["train-model"])
    assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert k8s["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    for name in ("validate-data", "find-champion", "evaluate-model", "promote-model"):
        assert "accelerator" not in _executor(spec, tasks[name])["resources"], name
        assert "nodeSelector" not in _k8s(platform, spec, tasks[name]), name
        assert "tolerations" not in _k8s(platform, spec, tasks[name]), name


def test_every_step_reads_settings_credentials_and_the_run_id(cluster_training: Path) -> None:
    spec, platform = _load(cluster_training)
    tasks = _all_tasks(spec)

    for name in STEPS:
        k8s = _k8s(platform, spec, tasks[name])
        (config,) = k8s["configMapAsEnv"]
        assert config["configMapName"] == "flywheel-config", name
        assert {m["configMapKey"]: m["envVar"] for m in config["keyToEnv"]} == {
            "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
            "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL",
            "FLYWHEEL_USER": "FLYWHEEL_USER",
            "FLYWHEEL_STATE_URL": "FLYWHEEL_STATE_URL",
            "FLYWHEEL_DVC_REMOTE": "FLYWHEEL_DVC_REMOTE",
            "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
            "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION",
            "LABEL_STUDIO_URL": "LABEL_STUDIO_URL",
        }
        secrets = {secret["secretName"]: secret for secret in k8s["secretAsEnv"]}
        assert set(secrets) == {"test-s3", "flywheel-mlflow", "flywheel-label-studio-token"}, name
        token = secrets["flywheel-label-studio-token"]
        assert {m["secretKey"]: m["envVar"] for m in token["keyToEnv"]} == {
            "token": "LABEL_STUDIO_API_KEY"
        }
        assert token["optional"] is True  # the export labeller needs no server
        s3 = secrets["test-s3"]
        assert {m["secretKey"]: m["envVar"] for m in s3["keyToEnv"]} == {
            "access-key": "AWS_ACCESS_KEY_ID",
            "secret-key": "AWS_SECRET_ACCESS_KEY",
        }
        assert not s3.get("optional", False)  # no S3 keys: the pod does not start
        assert secrets["flywheel-mlflow"]["optional"] is True  # only a server with auth has it
        assert k8s["fieldPathAsEnv"] == [
            {
                "name": "FLYWHEEL_PIPELINE_RUN_ID",
                "fieldPath": "metadata.labels['pipeline/runid']",
            }
        ], name


@pytest.mark.parametrize(
    ("settings", "image", "expected"),
    [
        (
            ClusterSettings(),
            "ghcr.io/flywheel-ml/flywheel:0.1.0",
            "ghcr.io/flywheel-ml/flywheel:0.1.0-cuda",
        ),
        (ClusterSettings(train_image="x/gpu:1"), "x/cpu:1", "x/gpu:1"),
        (ClusterSettings(), "x/flywheel@sha256:abc", "x/flywheel@sha256:abc"),
        (  # CPU training: the CPU build
            ClusterSettings(
                placement=ClusterConfig(train=TrainPlacement(gpus=0)),
            ),
            "x/flywheel:1",
            "x/flywheel:1",
        ),
    ],
)
def test_the_training_image_is_the_cuda_build(
    settings: ClusterSettings, image: str, expected: str
) -> None:
    assert settings.training_image(image) == expected


def test_the_steps_are_cached_but_those_that_read_the_registry(
    cluster_training: Path,
) -> None:
    spec, _ = _load(cluster_training)
    tasks = _all_tasks(spec)

    def cached(name: str) -> bool:
        return bool(tasks[name].get("cachingOptions", {}).get("enableCache", False))

    assert {name: cached(name) for name in STEPS} == {
        "validate-data": True,
        "train-model": True,
        "find-champion": False,
        "evaluate-model": True,
        "promote-model": False,
    }


def test_parameters_default_to_params_yaml_and_the_data_version(cluster_training: Path) -> None:
    spec, _ = _load(cluster_training)
    inputs = spec["root"]["inputDefinitions"]["parameters"]

    assert resolve_params(inputs["params"]["defaultValue"]) == PARAMS
    assert inputs["overrides"]["defaultValue"] == []
    assert inputs["epochs"]["defaultValue"] == PARAMS.train.epochs
    assert inputs["learning_rate"]["defaultValue"] == PARAMS.train.lr
    assert inputs["min_accuracy"]["defaultValue"] == PARAMS.evaluate.gates.min_accuracy
    assert inputs["data_version"]["defaultValue"] == "0123abcd"
    assert inputs["repo"].get("defaultValue", "") == ""  # no repository: by hash from the remote


def test_the_page_plans_pipeline_takes_the_task_as_a_parameter(tmp_path: Path) -> None:
    """Compiled from the page plan: one pipeline for both models, the task its parameter."""
    pages = load_params(ROOT / "plans" / "pages.yaml")
    pipeline = build_training_pipeline(pages, target="cluster", image=IMAGE)
    spec, _ = _load(compile_pipeline(pipeline, tmp_path / "training.yaml"))
    inputs = spec["root"]["inputDefinitions"]["parameters"]

    assert inputs["task"]["defaultValue"] == "detection"
    assert inputs["epochs"]["defaultValue"] == pages.train.epochs  # the detector's section
    document = inputs["params"]["defaultValue"]
    recogniser = resolve_params(
        document, task="recognition", epochs=pages.train.epochs, learning_rate=pages.train.lr
    )
    assert recogniser == load_params(ROOT / "plans" / "pages.yaml", {"train.task": "recognition"})
    for step in ("train-model", "evaluate-model"):
        task = spec["root"]["dag"]["tasks"][step]["inputs"]["parameters"]["task"]
        assert task == {"componentInputParameter": "task"}


def test_the_compiled_package_loads_back_as_a_component(cluster_training: Path) -> None:
    component = components.load_component_from_file(str(cluster_training))

    assert component.name == "training"
    assert set(component.component_spec.inputs or {}) == {
        "params",
        "overrides",
        "task",
        "epochs",
        "learning_rate",
        "min_accuracy",
        "data_version",
        "repo",
    }
    assert set(component.component_spec.outputs or {}) == set(OUTPUT_TASKS)


def test_outputs_are_typed_for_the_kfp_ui(cluster_training: Path) -> None:
    spec, _ = _load(cluster_training)
    outputs = spec["root"]["outputDefinitions"]
    kinds = {name: o["artifactType"]["schemaTitle"] for name, o in outputs["artifacts"].items()}

    assert kinds == {
        "dataset": "system.Dataset",
        "data_docs": "system.HTML",
        "model": "system.Model",
        "train_metrics": "system.Metrics",
        "metrics": "system.Metrics",
        "confusion": "system.ClassificationMetrics",
        "evaluation": "system.HTML",
    }
    assert outputs["parameters"]["blessed"]["parameterType"] == "BOOLEAN"


# --------------------------------------------------------------- training, local


def test_the_local_variant_has_nothing_the_local_runner_would_warn_about(
    tmp_path: Path,
) -> None:
    pipeline = build_training_pipeline(PARAMS, target="local", image=IMAGE)
    spec, platform = _load(compile_pipeline(pipeline, tmp_path / "local.yaml"))

    tasks = _all_tasks(spec)
    for name in STEPS:
        assert "resources" not in _executor(spec, tasks[name]), name
    assert not platform  # no Kubernetes settings either


# -------------------------------------------------------------------- flywheel


def test_flywheel_retrains_through_the_nested_training_pipeline_when_drifted(
    tmp_path: Path,
) -> None:
    """The composition: the curation pipeline's steps, then the update pipeline's, in one run."""
    pipeline = build_flywheel_pipeline(PARAMS, target="cluster", image=IMAGE)
    spec, platform = _load(compile_pipeline(pipeline, tmp_path / "flywheel.yaml"))
    root = _dag_tasks(spec)

    name, condition = _condition(spec, holding="send-batch")
    assert set(root) == {"monitor-drift", name}
    assert condition["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--monitor-drift-Output'] == true"
    )
    inner = _dag_tasks(spec, condition["componentRef"]["name"])
    enough, threshold = _condition(
        spec, holding="update-dataset", within=condition["componentRef"]["name"]
    )
    assert set(inner) == {"curate-samples", "send-batch", "collect-labels", enough}
    assert inner["send-batch"]["dependentTasks"] == ["curate-samples"]
    assert inner["collect-labels"]["dependentTasks"] == ["send-batch"]  # sent, then read back
    assert threshold["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--collect-labels-Output'] == true"
    )
    updating = _dag_tasks(spec, threshold["componentRef"]["name"])
    assert set(updating) == {"update-dataset", "training"}
    version = updating["training"]["inputs"]["parameters"]["data_version"]
    assert version["taskOutputParameter"] == {
        "producerTask": "update-dataset",
        "outputParameterKey": "Output",
    }
    nested = _dag_tasks(spec, updating["training"]["componentRef"]["name"])
    assert {"validate-data", "train-model", "evaluate-model"} <= set(nested)
    tasks = _all_tasks(spec)
    steps = ("monitor-drift", "curate-samples", "send-batch", "collect-labels", "update-dataset")
    for step in steps:
        assert not tasks[step].get("cachingOptions", {}).get("enableCache"), step
        assert _executor(spec, tasks[step])["image"] == IMAGE
        assert _k8s(platform, spec, tasks[step])["configMapAsEnv"], step
        assert _k8s(platform, spec, tasks[step])["secretAsEnv"], step
    assert _executor(spec, tasks["train-model"])["resources"]["accelerator"]["resourceCount"] == "1"


@pytest.mark.parametrize(
    ("name", "root", "guarded"),
    [
        ("curation", {"monitor-drift"}, {"curate-samples", "send-batch"}),
        ("update", {"collect-labels"}, {"update-dataset", "training"}),
    ],
)
def test_the_loop_splits_into_curation_and_update(
    name: str, root: set[str], guarded: set[str], tmp_path: Path
) -> None:
    """Curation ends when the batch is sent; the update starts from the labels, alone."""
    pipeline = get_pipeline(name).build(PARAMS, target="cluster", image=IMAGE)
    spec, platform = _load(compile_pipeline(pipeline, tmp_path / f"{name}.yaml"))

    ((condition_name, condition),) = [
        (n, t) for n, t in _dag_tasks(spec).items() if "triggerPolicy" in t
    ]
    assert set(_dag_tasks(spec)) == root | {condition_name}
    assert set(_dag_tasks(spec, condition["componentRef"]["name"])) == guarded
    (decider,) = root
    assert condition["triggerPolicy"]["condition"] == (
        f"inputs.parameter_values['pipelinechannel--{decider}-Output'] == true"
    )
    tasks = _all_tasks(spec)
    for step in root | guarded - {"training"}:
        assert _executor(spec, tasks[step])["image"] == IMAGE, step
        assert _k8s(platform, spec, tasks[step])["secretAsEnv"], step
    inputs = set(spec["root"]["inputDefinitions"]["parameters"])
    if name == "curation":  # nothing of training: no data version, no repository
        assert inputs == {"params", "overrides"}
    else:  # the flywheel pipeline's parameters
        assert inputs == set(build_flywheel_pipeline(PARAMS, target="local").component_spec.inputs)


def test_the_catalog_knows_every_pipeline_and_names_unknown_ones() -> None:
    assert all(entry.ready for entry in PIPELINES.values())
    assert [n for n, e in PIPELINES.items() if e.new_data_version] == ["update", "flywheel"]
    with pytest.raises(KeyError, match="known: training, curation, update, flywheel"):
        get_pipeline("nope")


# ------------------------------------------------------------------------ CLI


def test_cli_compiles_every_ready_pipeline_to_dist(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "compile",
            "--out",
            str(tmp_path),
            "--params",
            str(PARAMS_FILE),
            "--image",
            IMAGE,
            "--train-image",
            "registry.example/flywheel:gpu",
            "--accelerator",
            "amd.com/gpu",
            "--config-map",
            "my-config",
            "--s3-secret",
            "my-s3",
        ],
    )

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "curation.yaml",
        "flywheel.yaml",
        "training.yaml",
        "update.yaml",
    ]
    spec, platform = _load(tmp_path / "training.yaml")
    tasks = _all_tasks(spec)
    train = _executor(spec, tasks["train-model"])
    assert train["image"] == "registry.example/flywheel:gpu"
    assert train["resources"]["accelerator"]["resourceType"] == "amd.com/gpu"
    assert _executor(spec, tasks["validate-data"])["image"] == IMAGE
    k8s = _k8s(platform, spec, tasks["validate-data"])
    assert k8s["configMapAsEnv"][0]["configMapName"] == "my-config"
    assert "my-s3" in {secret["secretName"] for secret in k8s["secretAsEnv"]}


def test_cli_compiles_a_named_pipeline(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["pipeline", "compile", "flywheel", "--out", str(tmp_path), "--params", str(PARAMS_FILE)],
    )

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flywheel.yaml"]
    assert "cannot run yet" not in result.output


@pytest.mark.parametrize("command", ["run", "submit"])
def test_cli_refuses_to_run_a_pipeline_whose_steps_are_not_built(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    unbuilt = dataclasses.replace(
        PIPELINES["flywheel"], ready=False, not_ready="its curate step is not built yet"
    )
    monkeypatch.setitem(PIPELINES, "flywheel", unbuilt)
    args = ["pipeline", command, "flywheel"]
    if command == "submit":
        args += ["--host", "http://127.0.0.1:9"]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 2
    assert "cannot run yet: its curate step is not built yet" in result.output


# ----------------------------------------------------------- runner output


@pytest.mark.parametrize(
    ("line", "current", "expected"),
    [
        (
            "10:26:38.789 - INFO - Executing task \x1b[96m'validate-data'\x1b[0m",
            None,
            TaskEvent("start", "validate-data"),
        ),
        (
            "10:26:38 - INFO - Task validate-data cache hit (key=1da0e47cf3ab); skipping",
            None,
            TaskEvent("cached", "validate-data"),
        ),
        (
            "INFO - Task \x1b[96m'train-model'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m",
            "train-model",
            TaskEvent("done", "train-model"),
        ),
        (
            "Task \x1b[96m'validate-data'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m",
            "validate-data",
            TaskEvent("failed", "validate-data"),
        ),
        (
            "    [flywheel] registered digits version 2",
            "train-model",
            TaskEvent("message", "train-model", "registered digits version 2"),
        ),
        ("    [flywheel] outside any step", None, None),
        ('    "inputs": {', "train-model", None),
        ("[KFP Executor 2026-11-23 INFO]: Got executor_input:", "train-model", None),
    ],
)
def test_parse_runner_line(line: str, current: str | None, expected: TaskEvent | None) -> None:
    assert parse_runner_line(line, current) == expected


TRACEBACK = [
    '    [KFP Executor 2026-11-23 INFO]: Got executor_input: {"inputs": {}}',
    "    Traceback (most recent call last):",
    '      File "<frozen runpy>", line 198, in _run_module_as_main',
    '      File "/app/ephemeral_component.py", line 29, in validate_data',
    "        result = steps.validate_data(",
    "                 ^^^^^^^^^^^^^^^^^^^^",
    "    flywheel.workflows.DataGateError: data/tiny: 1 of 40 expectations failed",
    "    ",
]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (TRACEBACK, "flywheel.workflows.DataGateError: data/tiny: 1 of 40 expectations failed"),
        ([*TRACEBACK[:2], "    KeyError: 'version'"], "KeyError: 'version'"),
        (["    [flywheel] epoch 1/2", "    Killed"], None),  # no traceback: nothing to name
        ([], None),
    ],
)
def test_exception_message_is_the_last_exception_without_its_traceback(
    lines: list[str], expected: str | None
) -> None:
    assert exception_message(lines) == expected


# --------------------------------------------- the validation step, real DVC and GX

TINY = Params(data=tiny_plan(8, 4, 4, seed=5))


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DVC repository (no git) holding the tiny dataset as its recorded version."""
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "state"))
    root, _ = make_project(tmp_path / "repo", TINY)
    return root


@pytest.mark.slow
def test_validate_data_exports_the_recorded_version(repo: Path, tmp_path: Path) -> None:
    version = track_dataset(repo, TINY.data, push=False)

    result = validate_data(
        TINY,
        repo,
        expected_version=version,
        dataset_out=tmp_path / "out" / "dataset",
        docs_out=tmp_path / "out" / "docs",
    )

    assert result.data_version == version
    assert result.provenance == "present"
    exported = sorted(p.relative_to(result.exported_dir) for p in result.exported_dir.rglob("*"))
    source = sorted(p.relative_to(repo / "data" / "tiny") for p in (repo / "data/tiny").rglob("*"))
    assert exported == source
    assert result.n_rows == 8 * (8 + 4 + 4)  # 8 strata
    docs = (tmp_path / "out" / "docs").read_text()
    assert "<html" in docs.lower()
    assert "static/vendor/" not in docs  # one page, its assets inline (the KFP UI shows it alone)
    assert "https://unpkg.com" not in docs
    metadata = json.loads(json.dumps(result.metadata()))  # JSON-able, as KFP needs
    assert metadata["data_version"] == version
    assert metadata["counts"]["handwritten/clean"] == {"train": 8, "val": 4, "test": 4}


@pytest.mark.slow
def test_validate_data_names_a_version_the_remote_lacks(repo: Path, tmp_path: Path) -> None:
    """A version data.dvc does not record comes from the remote by hash; a missing one is named."""
    dvc(repo, "remote", "add", "-d", "store", str(tmp_path / "remote"))
    (tmp_path / "remote").mkdir()
    missing = "0123456789abcdef0123456789abcdef"

    with pytest.raises(DataVersionError, match=rf"does not hold data version {missing}"):
        validate_data(
            TINY,
            repo,
            expected_version=missing,
            dataset_out=tmp_path / "dataset",
            docs_out=tmp_path / "docs",
        )
    assert not (tmp_path / "dataset").exists()


@pytest.mark.slow
def test_validate_data_stops_on_bad_data_with_data_docs(repo: Path, tmp_path: Path) -> None:
    images = sorted((repo / "data" / "tiny" / "images").rglob("*.png"))
    images[0].write_bytes(b"not a png")
    shutil.copyfile(images[1], images[2])  # a duplicate that no longer matches its hash
    track_dataset(repo, TINY.data, push=False)  # the bad data is recorded: only the gate stops it

    with pytest.raises(DataGateError, match="expectations failed, training will not start") as err:
        validate_data(TINY, repo, dataset_out=tmp_path / "dataset", docs_out=tmp_path / "docs")

    assert "file_status" in str(err.value)
    assert "Data Docs:" in str(err.value)
    assert (tmp_path / "docs").is_file()  # written even though the gate failed
    assert not (tmp_path / "dataset").exists()  # nothing handed to training
