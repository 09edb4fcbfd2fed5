"""Training against a real MLflow SQLite store, on a tiny dataset from the real collector.

One module-scoped run (a shrunk CNN, 4 classes, 320 training images) is shared
by the checks of what it logged, of the pt2 model it exported, of determinism,
of behaviour, and as the uninterrupted reference of the resume-after-kill test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.models import get_model_info
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import DataPlan, Params, TrainConfig
from flywheel.modeling.checkpoints import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    TrainingError,
    load_checkpoint,
)
from flywheel.modeling.training import TrainResult, train
from flywheel.tasks import DatasetError
from flywheel.tasks.classification import ClassificationTask
from flywheel.tracking import LINEAGE_TAGS
from tests.support.plans import TINY_MODEL, tiny_plan
from tests.support.tracking import tracking_env

pytestmark = pytest.mark.slow

PLAN = tiny_plan(40, 4, 4)
PARAMS = Params(
    data=PLAN,
    train=TrainConfig(
        experiment="test-training",
        seed=7,
        epochs=5,
        batch_size=16,
        lr=5e-3,
        patience=10,
        model=TINY_MODEL,
    ),
)
EPOCHS = list(range(1, PARAMS.train.epochs + 1))
DATA_VERSION = "0123abcd"
PIPELINE_RUN = "pipeline-run-7"


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint)["model"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh SQLite tracking store, selected the way deployments do: the environment."""
    root = tmp_path_factory.mktemp("mlflow")
    with tracking_env(root, FLYWHEEL_PIPELINE_RUN_ID=PIPELINE_RUN) as uri:
        yield uri


@pytest.fixture(scope="module")
def data_plan() -> DataPlan:
    """What the conftest's `dataset` collects."""
    return PLAN


@pytest.fixture(scope="module")
def trained(store: str, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("run")
    return train(PARAMS, dataset, out_dir=out, data_version=DATA_VERSION, progress=False)


def test_run_records_params_metrics_curves_and_lineage(store: str, trained: TrainResult) -> None:
    client = MlflowClient(store)
    run = client.get_run(trained.run_id)

    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.005"
    assert run.data.params["train.model.width"] == "8"
    assert run.data.params["data.classes"] == '["0", "1", "2", "3"]'
    for metric in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"):
        steps = [m.step for m in client.get_metric_history(trained.run_id, metric)]
        assert steps == EPOCHS, metric
    assert run.data.metrics["best_epoch"] == trained.best_epoch
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(trained.best_metric)
    assert set(LINEAGE_TAGS) <= set(run.data.tags)
    assert run.data.tags["flywheel.data_version"] == DATA_VERSION
    assert run.data.tags["flywheel.pipeline_run_id"] == PIPELINE_RUN
    assert run.data.tags["flywheel.device"] == "cpu"
    assert len(run.data.tags["flywheel.git_commit"]) == 40  # the tests run inside the repo
    assert len(run.data.tags["flywheel.manifest_sha256"]) == 64
    # What MLflow's own UI shows: a name saying what the run is, the code's
    # commit and source in MLflow's fields, the dataset as the run's input.
    assert run.info.run_name == f"{TINY_MODEL.name} · data {DATA_VERSION} · {run.info.run_id[:6]}"
    assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["flywheel.git_commit"]
    assert run.data.tags["mlflow.source.type"] == "JOB"  # launched by a pipeline run
    assert run.data.tags["mlflow.source.name"] == f"pipeline run {PIPELINE_RUN}"
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == f"{PLAN.name}@{DATA_VERSION}"
    assert dataset_input.dataset.digest == DATA_VERSION
    assert {tag.key: tag.value for tag in dataset_input.tags}["mlflow.data.context"] == "training"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    artifacts = {a.path for a in client.list_artifacts(trained.run_id)}
    assert {"learning_curves.png", "history.json"} <= artifacts
    assert trained.log_model_seconds is not None
    assert trained.log_model_seconds > 0
    assert [row["epoch"] for row in trained.history] == EPOCHS


def test_logged_model_is_pt2_with_a_dynamic_batch(trained: TrainResult, dataset: Path) -> None:
    assert trained.model_uri is not None
    info = get_model_info(trained.model_uri)
    assert info.metadata["task"] == "classification"
    assert info.metadata["classes"] == ["0", "1", "2", "3"]
    assert info.signature.inputs.inputs[0].shape == (-1, 1, 32, 32)
    local = Path(mlflow.artifacts.download_artifacts(trained.model_uri))
    assert (local / "data" / "model.pt2").is_file()
    assert not list(local.rglob("*.pth"))
    assert not list(local.rglob("*.pkl"))

    loaded = mlflow.pytorch.load_model(trained.model_uri)
    task = ClassificationTask.from_metadata(info.metadata)
    images = task.build_dataset(dataset, "val")
    batch = torch.stack([images[i][0] for i in range(32)])  # (32, 1, 32, 32)

    for size in (1, 32):
        output = loaded(batch[:size])  # (size, K + D)
        probabilities, embedding = task.split_output(output)
        assert probabilities.shape == (size, 4)
        assert embedding.shape == (size, 16)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    # The exported program computes what the best checkpoint computes in eager mode.
    eager = task.build_model(PARAMS.train.model)
    eager.load_state_dict(_weights(trained.best_checkpoint))
    expected = task.export_module(eager)(batch)
    torch.testing.assert_close(loaded(batch), expected, rtol=1e-4, atol=1e-5)

    # The pyfunc flavour (mlflow models serve) takes the same arrays.
    pyfunc = mlflow.pyfunc.load_model(trained.model_uri)
    assert pyfunc.predict(batch[:3].numpy()).shape == (3, 4 + 16)


def test_same_seed_gives_identical_weights(
    trained: TrainResult, dataset: Path, tmp_path: Path
) -> None:
    again = train(PARAMS, dataset, out_dir=tmp_path / "again", log_model=False, progress=False)
    other_seed = PARAMS.model_copy(
        update={"train": PARAMS.train.model_copy(update={"seed": 8, "epochs": 1})}
    )
    other = train(other_seed, dataset, out_dir=tmp_path / "other", log_model=False, progress=False)

    _assert_same_weights(_weights(trained.last_checkpoint), _weights(again.last_checkpoint))
    assert _without_timing(again.history) == _without_timing(trained.history)
    assert other.history[0]["train_loss"] != trained.history[0]["train_loss"]


def _without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in history]


def test_small_brightness_change_keeps_the_label(trained: TrainResult, dataset: Path) -> None:
    """Invariance (Made-With-ML): the served model's label survives a ±0.05 brightness shift."""
    model = mlflow.pytorch.load_model(trained.model_uri)
    task = ClassificationTask.from_params(PARAMS)
    data = task.build_dataset(dataset, "test")
    images = torch.stack([data[i][0] for i in range(len(data))])  # (N, 1, H, W)
    labels = data.targets.numpy()

    base, _ = task.split_output(model(images))
    accuracy = float((base.argmax(1) == labels).mean())
    assert accuracy > 0.6, f"the tiny model learnt too little to test behaviour ({accuracy:.2f})"
    for shift in (-0.05, 0.05):
        shifted, _ = task.split_output(model((images + shift).clamp(0, 1)))
        kept = float((shifted.argmax(1) == base.argmax(1)).mean())
        assert kept >= 0.9, f"brightness {shift:+}: only {kept:.0%} of labels kept"


def test_early_stopping_ends_a_stalled_run(store: str, dataset: Path, tmp_path: Path) -> None:
    stalled = PARAMS.model_copy(
        update={
            "train": PARAMS.train.model_copy(
                update={"lr": 1e-12, "patience": 1, "epochs": 6, "scheduler": "none"}
            )
        }
    )
    result = train(stalled, dataset, out_dir=tmp_path, log_model=False, progress=False)

    assert result.stopped_early
    assert result.epochs_run == 2
    assert result.best_epoch == 1
    run = MlflowClient(store).get_run(result.run_id)
    assert run.data.tags["flywheel.stopped_early"] == "true"
    assert run.data.metrics["stopped_early"] == 1.0
    assert (tmp_path / CHECKPOINT_DIR / BEST_CHECKPOINT).is_file()


def test_inside_a_callers_run_training_is_its_child(
    store: str, dataset: Path, tmp_path: Path
) -> None:
    """A tuning study keeps a parent run open; each trial's training nests under it."""
    one_epoch = PARAMS.model_copy(update={"train": PARAMS.train.model_copy(update={"epochs": 1})})
    mlflow.set_tracking_uri(store)
    with mlflow.start_run(experiment_id=mlflow.create_experiment("study")) as parent:
        child = train(one_epoch, dataset, out_dir=tmp_path, log_model=False, progress=False)
        assert mlflow.active_run().info.run_id == parent.info.run_id  # still the caller's

    run = MlflowClient(store).get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.info.status == "FINISHED"


def test_resume_refuses_a_checkpoint_of_other_params(trained: TrainResult, dataset: Path) -> None:
    changed = PARAMS.model_copy(update={"train": PARAMS.train.model_copy(update={"lr": 0.1})})
    with pytest.raises(TrainingError, match="other training params"):
        train(
            changed,
            dataset,
            out_dir=trained.last_checkpoint.parents[1],
            resume=True,
            log_model=False,
            progress=False,
        )


def test_bad_dataset_fails_before_any_run_starts(store: str, tmp_path: Path, dataset: Path) -> None:
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(PARAMS.train.experiment)
    runs_before = len(client.search_runs([experiment.experiment_id]))
    (tmp_path / "images").symlink_to(dataset / "images")
    (tmp_path / "manifest.csv").write_text(
        (dataset / "manifest.csv").read_text().replace(",val,", ",holdout,")
    )
    with pytest.raises(DatasetError, match="no rows with split='val'"):
        train(PARAMS, tmp_path, out_dir=tmp_path / "out", progress=False)
    assert len(client.search_runs([experiment.experiment_id])) == runs_before


def test_cli_trains_and_reports(store: str, dataset: Path, tmp_path: Path) -> None:
    params_yaml = tmp_path / "params.yaml"
    params_yaml.write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    args = [
        "train",
        "-p",
        str(params_yaml),
        "--dataset",
        str(dataset),
        "--out",
        str(tmp_path),
        "--set",
        "train.epochs=1",
        "--no-log-model",
        "--allow-untracked",  # a dataset outside data/: no data version describes it
    ]

    done = CliRunner().invoke(app, args)

    assert done.exit_code == 0, done.output
    assert "best val_accuracy" in done.output
    assert (tmp_path / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file()
    nowhere = ["--dataset", str(tmp_path / "nowhere")]
    broken = CliRunner().invoke(app, [*args[:3], *nowhere, "--allow-untracked"])
    assert broken.exit_code == 2
    assert "no manifest" in broken.output
    untold = CliRunner().invoke(app, [*args[:3], "--dataset", str(dataset)])
    assert untold.exit_code == 2
    assert "no data version (data.dvc) describes it" in " ".join(untold.output.split())


_HANG_AFTER_FIRST_EPOCH = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path

    import torch

    from flywheel.config import Params
    from flywheel.modeling.training import train

    params_json, dataset, out_dir, threads = sys.argv[1:5]
    torch.set_num_threads(int(threads))  # same float reduction order as the reference run

    def hang_after_first_epoch(epoch, metrics):
        if epoch == 1:
            print("checkpointed epoch 1", flush=True)
            time.sleep(600)

    train(Params.model_validate_json(Path(params_json).read_text()), Path(dataset),
          out_dir=Path(out_dir), log_model=False, progress=False,
          on_epoch_end=hang_after_first_epoch)
    """
)


def test_resume_after_kill_gives_bit_identical_weights(
    store: str, trained: TrainResult, dataset: Path, tmp_path: Path
) -> None:
    """SIGKILL a training process after its first checkpoint, resume, compare with no kill."""
    script, params_json, out = tmp_path / "hang.py", tmp_path / "params.json", tmp_path / "out"
    script.write_text(_HANG_AFTER_FIRST_EPOCH)
    params_json.write_text(PARAMS.model_dump_json())
    process = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(params_json),
            str(dataset),
            str(out),
            str(torch.get_num_threads()),
        ],
        env={**os.environ, "MLFLOW_TRACKING_URI": store},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 180
        for line in process.stdout:  # blocks until the child reaches the callback
            if "checkpointed epoch 1" in line or time.monotonic() > deadline:
                break
        assert process.poll() is None, f"the child exited early:\n{process.stdout.read()}"
        killed_at = load_checkpoint(out / CHECKPOINT_DIR / LAST_CHECKPOINT)
        assert killed_at["epoch"] == 1
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    client = MlflowClient(store)
    assert client.get_run(killed_at["run_id"]).info.status == "RUNNING"  # died without a word

    resumed = train(PARAMS, dataset, out_dir=out, resume=True, log_model=False, progress=False)

    assert resumed.run_id == killed_at["run_id"]  # the same MLflow run goes on
    assert resumed.epochs_run == PARAMS.train.epochs
    _assert_same_weights(_weights(trained.last_checkpoint), _weights(resumed.last_checkpoint))
    _assert_same_weights(_weights(trained.best_checkpoint), _weights(resumed.best_checkpoint))
    run = client.get_run(resumed.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == EPOCHS


def test_cli_train_registers_the_candidate_with_its_reference_profile(
    store: str, dataset: Path, tmp_path: Path
) -> None:
    """`flywheel train` does what the pipeline's train step does: profile, then register."""
    from flywheel.monitoring.reference import load_reference
    from flywheel.registry import version_for_alias

    name = "test-cli-train"
    evaluate = PARAMS.evaluate.model_copy(update={"registered_model": name})
    params_yaml = tmp_path / "params.yaml"
    params_yaml.write_text(
        yaml.safe_dump(PARAMS.model_copy(update={"evaluate": evaluate}).model_dump(mode="json"))
    )
    args = ["train", "-p", str(params_yaml), "--dataset", str(dataset), "--out", str(tmp_path)]

    done = CliRunner().invoke(app, [*args, "--set", "train.epochs=1", "--allow-untracked"])

    assert done.exit_code == 0, done.output
    assert "best val_accuracy" in done.output
    assert "reference profile:" in done.output
    assert f"registered {name} version 1 as candidate" in done.output
    assert version_for_alias(name, "candidate") == "1"
    assert len(load_reference(name, "1")) > 0
