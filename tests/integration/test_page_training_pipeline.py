"""Both models of the page service through the `training` pipeline (kfp.local), one command.

A tiny page plan in a git + DVC project, the repository's `plans/pages.yaml`
shrunk to seconds of training: `flywheel pipeline run training` runs the
pipeline once per task, the detector then the recogniser, each validated,
trained, evaluated and promoted as its own registered model; the recogniser is
judged end to end with the detector just promoted. A second run of the
detector alone (the task as a parameter) faces its champion and the system
gate: the pair with the new detector against the pair with the old.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.data.versioning import ensure_dataset
from tests.support.pages import tiny_page_plan
from tests.support.project import in_project, make_git_dvc_repo

pytestmark = pytest.mark.slow  # two pipeline runs, three trainings

REPO = Path(__file__).resolve().parents[2]
DETECTOR, RECOGNISER = "flywheel-pages-detection", "flywheel-pages-recognition"


def _tiny(plan: dict[str, Any]) -> dict[str, Any]:
    """plans/pages.yaml with the tiny data plan, seconds of training and gates it can pass."""
    plan["data"] = {
        **tiny_page_plan(per_split=2).model_dump(mode="json"),
        "root": "data-pages",
    }
    plan["scenarios"] = {"in_distribution": {"mix": "plan"}}  # the tiny plan's strata are fewer
    plan["train"].update(batch_size=8, patience=3)
    plan["evaluate"]["batch_size"] = 16
    for task, section in plan["tasks"].items():
        section["train"].update(epochs=2)
        section["train"]["model"].update(width=8, embedding_dim=16)
        if task == "detection":
            section["train"]["model"]["input_size"] = 96
        # a floor of 0 on mAP, a ceiling of 1 on the CER: the tiny models pass them
        section["evaluate"]["gates"] = {
            "min_accuracy": 0.0 if task == "detection" else 1.0,
            "max_slice_regression": None,
            "min_improvement": -1.0,
            "max_system_regression": 1.0,
            "min_slice_support": 1,
        }
    return plan


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("pages-project")
    repo = make_git_dvc_repo(root / "repo", remote=root / "remote")
    plan = _tiny(yaml.safe_load((REPO / "plans" / "pages.yaml").read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    from flywheel.config import load_params

    ensure_dataset(load_params(repo / "params.yaml").data, repo)
    with in_project(repo):
        yield repo


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, ["pipeline", "run", "training", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _blessing(name: str, version: str) -> Any:
    from flywheel.registry import read_blessing
    from flywheel.tracking import configure_tracking

    configure_tracking()
    blessing = read_blessing(name, version)
    assert blessing is not None
    return blessing


def test_one_command_trains_evaluates_and_promotes_both_models(project: Path) -> None:
    from flywheel.registry import version_for_alias

    output = _run()

    assert "training: task detection → flywheel-pages-detection" in output
    assert "training: task recognition → flywheel-pages-recognition" in output
    assert "test map_50 of flywheel-pages-detection version 1" in output
    assert "test cer of flywheel-pages-recognition version 1" in output
    assert version_for_alias(DETECTOR, "production") == "1"
    assert version_for_alias(RECOGNISER, "production") == "1"

    detector = _blessing(DETECTOR, "1")
    assert any("has no production version" in note for note in detector.notes)
    recogniser = _blessing(RECOGNISER, "1")  # judged with the detector just promoted
    assert 0.0 <= recogniser.metrics["pair_end_to_end"] <= 1.0
    assert any("no champion to compare with" in note for note in recogniser.notes)
    assert "end to end: expressions found (IoU ≥ 0.5) and read exactly" in output


def test_a_detector_run_faces_its_champion_and_the_system_gate(project: Path) -> None:
    output = _run("--set", "train.task=detection", "--set", "train.seed=1")

    assert "training: task" not in output  # one task chosen: one run
    blessing = _blessing(DETECTOR, "2")
    assert blessing.champion_version == "1"
    gate = blessing.gate("system_end_to_end")
    assert gate.threshold == -1.0
    assert f"with {RECOGNISER} version 1" in gate.detail
    assert gate.value == pytest.approx(
        blessing.metrics["pair_end_to_end"] - blessing.metrics["champion_pair_end_to_end"]
    )
    assert "champion v1" in output  # the pair's table has the champion's pair beside it


@pytest.mark.parametrize("task", ["detection", "recognition"])
def test_tune_searches_either_models_training(project: Path, task: str) -> None:
    out = project / f"tune-{task}"
    result = CliRunner().invoke(
        app,
        [
            "tune",
            "--set",
            f"train.task={task}",
            "--set",
            "tune.epochs_per_trial=1",
            "--set",
            "tune.space={train.lr: {type: float, low: 0.001, high: 0.01, log: true}}",
            "--n-trials",
            "2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert 0.001 <= best["train.lr"] <= 0.01
