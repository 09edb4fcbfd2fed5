"""The training pipeline end to end through the KFP local runner, on a tiny project.

A throw-away project (a DVC repository holding a tiny dataset from the real
collector, a params.yaml with a shrunk model and two epochs) is the working
directory; the state folder is left at its relative default, `.flywheel`, so the
run proves that the step subprocesses find the same MLflow store and GX context
as the process that launched them. Every step is a real subprocess running the
real library against real DVC, Great Expectations and an MLflow SQLite store.

1. a first run trains, registers, blesses and promotes version 1;
2. the same run again re-uses validation, training and the verdict (the
   champion did not change) and only reads the registry;
3. a run with new epochs and an unreachable accuracy gate reuses the
   cached validation, trains version 2, which is not blessed and not promoted;
4. a run on a recorded but broken dataset stops at validation: nothing trains.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import EvaluateConfig, GatesConfig, Params, TrainConfig
from flywheel.data.manifest import load_manifest
from flywheel.data.versioning import track_dataset
from flywheel.registry import read_blessing, version_for_alias
from flywheel.tracking import configure_tracking
from flywheel.workflows import RegisteredCandidate
from pipelines.arguments import pipeline_arguments
from pipelines.catalog import get_pipeline
from pipelines.local import LocalRun, run_locally
from tests.support.plans import TINY_MODEL, tiny_plan
from tests.support.project import in_project, make_project

pytestmark = pytest.mark.slow

MODEL = "e2e-digits"
PARAMS = Params(
    data=tiny_plan(12, 4, 4),
    train=TrainConfig(
        experiment="e2e",
        epochs=2,
        batch_size=16,
        patience=10,
        model=TINY_MODEL,
    ),
    evaluate=EvaluateConfig(
        registered_model=MODEL, gates=GatesConfig(min_accuracy=0.0, min_slice_accuracy=None)
    ),
)
STEPS = {"validate-data", "train-model", "find-champion", "evaluate-model", "promote-model"}
TEST_IMAGES = 8 * 4  # 8 strata × 4 test images


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The project as the working directory, with the embedded defaults (no env overrides)."""
    root, version = make_project(tmp_path_factory.mktemp("e2e") / "project", PARAMS)
    with in_project(root):
        yield root, version


@pytest.fixture(scope="module")
def first_run(project: tuple[Path, str]) -> LocalRun:
    _, version = project
    entry = get_pipeline("training")
    pipeline = entry.build(PARAMS, data_version=version, target="local")
    return run_locally(
        pipeline,
        pipeline_arguments(PARAMS, [], data_version=version, repo=str(Path.cwd())),
        name=entry.name,
        output_tasks=entry.outputs,
        caching=True,
    )


def _store(project: Path) -> str:
    return f"sqlite:///{project / '.flywheel' / 'mlflow' / 'mlflow.db'}"


def test_first_run_runs_every_step_and_promotes(
    project: tuple[Path, str], first_run: LocalRun
) -> None:
    root, _ = project

    assert set(first_run.task_seconds) == STEPS
    assert not first_run.cached
    assert first_run.outputs["blessed"] is True
    configure_tracking()
    assert version_for_alias(MODEL, "production") == "1"
    blessing = read_blessing(MODEL, "1")
    assert blessing is not None
    assert blessing.blessed
    assert blessing.champion_version is None
    assert not (root / ".flywheel" / "kfp" / "tmp" / first_run.run_id).exists()  # cleaned
    messages = [e.text for e in first_run.events if e.kind == "message"]
    assert any(m.startswith("epoch 2/2:") for m in messages)


def test_outputs_land_in_the_state_folder_with_their_metadata(
    project: tuple[Path, str], first_run: LocalRun
) -> None:
    root, version = project
    outputs = first_run.outputs
    state = root / ".flywheel" / "kfp" / "outputs"

    for record in first_run.records:
        if record.kind != "parameter":
            assert Path(record.location).is_relative_to(state), record
            assert Path(record.location).exists(), record  # or the cache would never hit
    dataset = outputs["dataset"]
    assert dataset.metadata["data_version"] == version
    assert len(load_manifest(Path(dataset.path))) == 8 * (12 + 4 + 4)
    assert "<html" in Path(outputs["data_docs"].path).read_text().lower()
    candidate = RegisteredCandidate.from_metadata(outputs["model"].metadata)
    assert (candidate.name, candidate.version, candidate.data_version) == (MODEL, "1", version)
    assert outputs["train_metrics"].metadata["val_accuracy"] == pytest.approx(candidate.best_metric)
    scalars = outputs["metrics"].metadata
    assert scalars["images"] == TEST_IMAGES
    assert 0.0 <= scalars["accuracy"] <= 1.0
    assert scalars["images[style=handwritten]"] == TEST_IMAGES / 2
    matrix = outputs["confusion"].metadata["confusionMatrix"]
    assert [s["displayName"] for s in matrix["annotationSpecs"]] == list(PARAMS.data.classes)
    assert sum(sum(row["row"]) for row in matrix["rows"]) == TEST_IMAGES
    report = Path(outputs["evaluation"].path).read_text()
    assert "blessed: every gate passed" in report


def test_the_steps_used_this_process_store_and_recorded_the_run_as_lineage(
    project: tuple[Path, str], first_run: LocalRun
) -> None:
    root, version = project
    client = MlflowClient(_store(root))  # the relative default, resolved in the project
    candidate = RegisteredCandidate.from_metadata(first_run.outputs["model"].metadata)

    tags = client.get_run(candidate.run_id).data.tags
    assert tags["flywheel.pipeline_run_id"] == first_run.run_id
    assert tags["flywheel.data_version"] == version
    assert client.get_model_version(MODEL, "1").tags["flywheel.pipeline_run_id"] == (
        first_run.run_id
    )
    assert (root / ".flywheel" / "gx").is_dir()  # the validation step's GX context


def test_an_unchanged_rerun_reuses_every_verdict_while_the_champion_stays(
    project: tuple[Path, str], first_run: LocalRun
) -> None:
    """Validation, training and evaluation come from the cache; the registry is read again."""
    _, version = project
    entry = get_pipeline("training")
    pipeline = entry.build(PARAMS, data_version=version, target="local")

    again = run_locally(
        pipeline,
        pipeline_arguments(PARAMS, [], data_version=version, repo=str(Path.cwd())),
        name=entry.name,
        output_tasks=entry.outputs,
        caching=True,
    )

    assert again.cached == {"validate-data", "train-model", "evaluate-model"}
    assert set(again.task_seconds) == {"find-champion", "promote-model"}
    assert again.outputs["blessed"] is True
    messages = [e.text for e in again.events if e.kind == "message"]
    # version 1 is production now: judged against what it was judged against then
    assert f"{MODEL} version 1 is judged against {MODEL}@production=none" in messages
    assert f"{MODEL}: version 1 already is production; nothing changed" in messages


def test_a_rerun_reuses_validation_and_gates_the_new_candidate(
    project: tuple[Path, str], first_run: LocalRun
) -> None:
    root, _ = project

    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "run",
            "training",
            "--set",
            "train.epochs=1",
            "--set",
            "evaluate.gates.min_accuracy=1.0",
        ],
    )

    assert result.exit_code == 0, result.output
    out = result.output
    assert "↺ validate-data: cached (inputs unchanged)" in out  # epochs are not its input
    assert "▶ train-model" in out
    assert "▶ promote-model" not in out
    assert f"candidate not blessed: {MODEL} version 2; failed: min_accuracy" in out
    assert "production stays version 1" in out
    configure_tracking()
    assert version_for_alias(MODEL, "production") == "1"
    assert version_for_alias(MODEL, "candidate") == "2"
    blessing = read_blessing(MODEL, "2")
    assert blessing is not None
    assert blessing.champion_version == "1"
    assert "min_accuracy" in blessing.failed_gates
    assert "Data Docs: " in out
    assert f"evaluation picture, reliability: {root / '.flywheel'}" in out  # a file to open
    assert f"--backend-store-uri {_store(root)} --workers 1" in out


def test_a_failed_validation_stops_the_pipeline_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = make_project(tmp_path / "broken", PARAMS)
    images = sorted((root / "data" / "tiny" / "images").rglob("*.png"))
    images[3].write_bytes(b"\x89PNG truncated")
    track_dataset(root, PARAMS.data, push=False)  # recorded: only the gate can stop it
    monkeypatch.chdir(root)
    for key in ("FLYWHEEL_HOME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)

    result = CliRunner().invoke(app, ["pipeline", "run", "training"])

    assert result.exit_code == 1, result.output
    out = result.output
    assert "✗ validate-data failed" in out
    assert "pipeline 'training' failed at step 'validate-data'" in out
    assert "expectations failed, training will not start" in out
    assert "file_status" in out
    assert "▶ train-model" not in out
    assert not (root / ".flywheel" / "mlflow").exists()  # no step reached MLflow
