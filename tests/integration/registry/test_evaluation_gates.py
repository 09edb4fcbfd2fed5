"""Real evaluations of the store's models: the gates they pass or fail, what is logged,
promotion and rollback of evaluated versions, and `flywheel evaluate`."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from flywheel import registry
from flywheel.cli.summaries import evaluation_pictures
from flywheel.evaluation import evaluate_candidate
from flywheel.registry import PromotionRefusedError
from tests.support.registry_store import CONFIG, PER_STRATUM, Store
from tests.support.registry_store import aliases as _aliases

pytestmark = pytest.mark.slow  # a real MLflow store and pt2 models: seconds, not milliseconds


def test_first_model_faces_absolute_gates_only_and_is_logged(uses_store: Store) -> None:
    name = "eval-first"
    version = registry.register(
        uses_store.models["first"], name, tags={"flywheel.git_commit": "abc"}
    )
    assert _aliases(name) == {"candidate": version}

    outcome = evaluate_candidate(name, version, uses_store.dataset, CONFIG, progress=False)

    blessing = outcome.blessing
    assert blessing.blessed
    assert blessing.champion_version is None
    assert [g.name for g in blessing.gates] == ["min_accuracy"]
    assert blessing.gate("min_accuracy").value == pytest.approx(0.75)
    assert outcome.report.slices["style=handwritten,noise=shadow"]["accuracy"] == 0.0
    assert outcome.report.slices["style=printed"]["accuracy"] == 1.0
    assert outcome.report.slices["noise=shadow"].n == 2 * PER_STRATUM
    assert _aliases(name) == {"candidate": version, "staging": version}

    mv = MlflowClient().get_model_version(name, version)
    assert mv.tags[registry.TAG_BLESSED] == "true"
    assert mv.tags["flywheel.gates"] == "blessed: 1/1 gates passed"
    assert mv.tags["flywheel.champion"] == "none"
    assert mv.tags["flywheel.eval_accuracy"] == "0.750000"
    assert registry.TAG_BLESSING not in mv.tags  # the JSON is an artifact of the run
    assert registry.read_blessing(name, version) == blessing
    record = f"registry/{name}/{version}/blessing.json"
    assert [
        a.path for a in MlflowClient().list_artifacts(mv.run_id, f"registry/{name}/{version}")
    ] == [record]
    long = {k: len(v) for k, v in mv.tags.items() if len(v) > 250 and k != "flywheel.history"}
    assert not long, long
    assert mv.description.startswith(
        "Blessed against no champion (a first model): 1 of 1 gates passed on the `test` split"
    )
    assert "| accuracy | 0.7500 |" in mv.description
    run = MlflowClient().get_run(mv.run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(0.75)
    assert run.data.metrics["blessed"] == 1.0
    # The headline only: per slice, per class and per gate are tables, not metrics.
    assert not [key for key in run.data.metrics if "/" in key]
    artifacts = {a.path for a in MlflowClient().list_artifacts(mv.run_id, "evaluation")}
    assert {
        "evaluation/blessing.json",
        "evaluation/report.json",
        "evaluation/slices.csv",
        "evaluation/slices.json",
        "evaluation/confusion_matrix.png",
        "evaluation/slice_accuracy.png",
        "evaluation/classes.json",
        "evaluation/gates.json",
        "evaluation/report.html",
        "evaluation/reliability.png",
        "evaluation/worst_mistakes.png",  # it gets a quarter wrong
    } <= artifacts
    pictures = evaluation_pictures(name, version)  # what the CLI prints for people to open
    assert set(pictures) == {"reliability", "worst mistakes"}
    for path in pictures.values():
        assert path.read_bytes().startswith(b"\x89PNG"), path
    page = mlflow.artifacts.load_text(f"runs:/{mv.run_id}/evaluation/report.html")
    assert page.lstrip().lower().startswith("<!doctype html>")
    assert "min_accuracy" in page
    slices = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="evaluation/slices.csv")
    )
    assert slices.set_index("slice").loc["style=handwritten", "accuracy"] == pytest.approx(0.5)

    change = registry.promote(name, version, reason="first model", who="alice")
    assert (change.production, change.previous, change.changed) == (version, None, True)
    assert _aliases(name)["production"] == version


def test_bad_model_is_refused_by_gates_and_promote_names_them(uses_store: Store) -> None:
    name = "eval-bad"
    first = registry.register(uses_store.models["first"], name)
    evaluate_candidate(name, first, uses_store.dataset, CONFIG, progress=False)
    registry.promote(name, first, reason="first model")
    bad = registry.register(uses_store.models["bad"], name)

    outcome = evaluate_candidate(name, bad, uses_store.dataset, CONFIG, progress=False)

    blessing = outcome.blessing
    assert not blessing.blessed
    assert blessing.champion_version == first
    failed = set(blessing.failed_gates)
    # 0.25 overall; right only on printed/clean, where the champion is right too, and
    # as wrong as the champion on handwritten/shadow: every other slice regresses.
    assert failed == {
        "min_accuracy",
        "beats_champion",
        "slice_regression[style=handwritten]",
        "slice_regression[style=printed]",
        "slice_regression[noise=clean]",
        "slice_regression[noise=shadow]",
        "slice_regression[style=handwritten,noise=clean]",
        "slice_regression[style=printed,noise=shadow]",
    }
    assert blessing.gate("slice_regression[style=handwritten,noise=shadow]").passed
    assert blessing.gate("slice_regression[style=printed,noise=clean]").value == 0.0
    assert blessing.gate("beats_champion").value == pytest.approx(0.25 - 0.75)
    assert _aliases(name) == {"candidate": bad, "production": first}  # bad took no staging

    with pytest.raises(PromotionRefusedError) as refused:
        registry.promote(name, bad, reason="ship it anyway")
    assert set(refused.value.failed_gates) == failed
    for gate in failed:
        assert gate in str(refused.value)
    assert _aliases(name)["production"] == first
    assert registry.read_history(name, bad)[-1].action == "reject"


def test_better_model_promoted_then_rollback_restores_previous(uses_store: Store) -> None:
    name = "eval-rollback"
    first = registry.register(uses_store.models["first"], name)
    evaluate_candidate(name, first, uses_store.dataset, CONFIG, progress=False)
    registry.promote(name, first, reason="first model")
    good = registry.register(uses_store.models["good"], name)

    outcome = evaluate_candidate(name, good, uses_store.dataset, CONFIG, progress=False)
    assert outcome.blessing.blessed, outcome.blessing.summary()
    assert outcome.blessing.gate("beats_champion").value == pytest.approx(0.25)
    assert outcome.champion is not None
    assert outcome.champion.overall["accuracy"] == 0.75

    change = registry.promote(name, good, reason="better on handwritten/shadow", who="alice")
    assert (change.production, change.previous) == (good, first)
    assert _aliases(name) == {"production": good, "previous": first}  # one stage alias each

    back = registry.rollback(name, reason="complaints from users", who="bob")
    assert (back.production, back.previous) == (first, good)
    assert _aliases(name)["production"] == first
    assert _aliases(name)["previous"] == good

    again = registry.rollback(name, reason="false alarm", who="bob")  # undoes the rollback
    assert (again.production, again.previous) == (good, first)

    history = registry.read_history(name, good)
    assert [t.action for t in history] == ["register", "bless", "promote", "rollback", "rollback"]
    promoted = history[2]
    assert (promoted.from_role, promoted.to_role, promoted.by) == ("staging", "production", "alice")
    assert "better on handwritten/shadow" in promoted.reason
    assert promoted.gates.startswith("blessed:")
    assert (history[3].from_role, history[3].to_role, history[3].by) == (
        "production",
        "previous",
        "bob",
    )
    tags = MlflowClient().get_model_version(name, good).tags
    assert tags["flywheel.transition"].startswith("rollback previous → production by bob at ")
    assert tags["flywheel.transition"].endswith(f"+00:00: false alarm (rolled back from {first})")
    demoted = registry.read_history(name, first)
    assert [t.action for t in demoted][-3:] == ["demote", "rollback", "rollback"]
    assert demoted[-3].reason == (
        f"replaced by version {good} (promoted by alice: better on handwritten/shadow)"
    )
    assert demoted[-1].reason == f"rolled back to version {good} by bob: false alarm"


def test_cli_evaluates_runs_and_refuses_the_bad_one(uses_store: Store, tmp_path: Path) -> None:
    from flywheel.cli import app

    name = "cli-eval"
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "evaluate": {
                    "registered_model": name,
                    "batch_size": 32,
                    "calibration_bins": 10,
                    "gates": {"min_accuracy": 0.7, "min_slice_accuracy": None},
                }
            }
        )
    )
    common = ["--params", str(params), "--dataset", str(uses_store.dataset)]
    runner = CliRunner()

    def run_id(kind: str) -> str:
        return uses_store.models[kind].removeprefix("runs:/").removesuffix("/model")

    first = runner.invoke(
        app, ["evaluate", "--run-id", run_id("first"), *common], env={"COLUMNS": "200"}
    )
    assert first.exit_code == 0, first.output
    assert "blessed" in first.output
    assert "style=handwritten,noise=shadow" in first.output
    tags = MlflowClient().get_model_version(name, "1").tags
    assert tags["flywheel.git_commit"] == "0123456789abcdef"  # lineage copied from the run
    promoted = runner.invoke(app, ["promote", "1", "--reason", "first", "--params", str(params)])
    assert promoted.exit_code == 0, promoted.output

    bad = runner.invoke(
        app,
        [
            "evaluate",
            "--run-id",
            run_id("bad"),
            *common,
            "--set",
            "evaluate.gates.min_accuracy=0.2",  # 0.25 passes; the champion gates do not
        ],
        env={"COLUMNS": "200"},
    )
    assert bad.exit_code == 1, bad.output
    assert "not blessed" in bad.output
    failed = bad.output.split("failed:")[-1]
    for gate in (
        "beats_champion",
        "slice_regression[style=handwritten]",
        "slice_regression[style=printed,noise=shadow]",
    ):
        assert gate in failed  # names, brackets included (not eaten as rich markup)
    assert "min_accuracy" not in failed
    assert _aliases(name) == {"candidate": "2", "production": "1"}

    refused = runner.invoke(app, ["promote", "2", "--reason", "try", "--params", str(params)])
    assert refused.exit_code == 1
    assert "slice_regression[noise=clean]: fail (0.5000 <= 0.0500)" in refused.output
