"""Tuning with real Optuna (SQLite storage) and a real MLflow SQLite store, on a tiny dataset.

The trials are short trainings of a shrunk CNN on 320 images (about a second
each), so a whole study fits in seconds while every component is the real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import DataPlan, Params, TrainConfig, TuneConfig, load_params
from flywheel.modeling.tuning import (
    BEST_PARAMS_YAML,
    TAG_PRUNED_EPOCH,
    TAG_STATE,
    TAG_STUDY,
    TAG_TRIAL,
    TuneError,
    TuneResult,
    tune,
)
from tests.support.plans import TINY_MODEL, tiny_plan

pytestmark = pytest.mark.slow

PLAN = tiny_plan(40, 4, 4)
SPACE: dict[str, Any] = {
    "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "train.batch_size": {"type": "categorical", "choices": [16, 32]},
    "train.model.width": {"type": "int", "low": 8, "high": 16, "step": 8},
}
EPOCHS_PER_TRIAL = 2
PARAMS = Params(
    data=PLAN,
    train=TrainConfig(
        experiment="test-tuning",
        seed=7,
        epochs=30,  # what a full training would use; trials run EPOCHS_PER_TRIAL
        batch_size=16,
        lr=5e-3,
        patience=10,
        model=TINY_MODEL,
    ),
    tune=TuneConfig.model_validate(
        {
            "n_trials": 3,
            "epochs_per_trial": EPOCHS_PER_TRIAL,
            "random_trials": 2,
            "pruner": {"enabled": False},
            "space": SPACE,
        }
    ),
)


@pytest.fixture(scope="module")
def store(mlflow_store: str) -> str:
    """The conftest's fresh SQLite store, selected through the environment."""
    return mlflow_store


@pytest.fixture(scope="module")
def data_plan() -> DataPlan:
    """What the conftest's `dataset` collects."""
    return PLAN


@pytest.fixture(scope="module")
def tune_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tune")


@pytest.fixture(scope="module")
def study(store: str, dataset: Path, tune_dir: Path) -> TuneResult:
    return tune(PARAMS, dataset, out_dir=tune_dir, data_version="v1", progress=False)


def _children(client: MlflowClient, parent_run_id: str) -> list[Run]:
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
    )
    return sorted(runs, key=lambda r: int(r.data.tags[TAG_TRIAL]))


def test_every_trial_is_a_nested_run_under_one_parent(store: str, study: TuneResult) -> None:
    client = MlflowClient(store)
    parent = client.get_run(study.parent_run_id)
    children = _children(client, study.parent_run_id)

    assert parent.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in parent.data.tags
    assert parent.data.tags[TAG_STUDY] == study.study_name
    assert parent.data.tags["flywheel.data_version"] == "v1"
    assert parent.data.params["tune.metric"] == "val_accuracy"
    assert parent.data.params["tune.space.train.lr.log"] == "True"
    assert [t.state for t in study.trials] == ["COMPLETE"] * 3
    assert [int(r.data.tags[TAG_TRIAL]) for r in children] == [0, 1, 2]
    for run, trial in zip(children, study.trials, strict=True):
        assert run.info.run_id == trial.run_id
        assert run.info.run_name == f"trial {trial.number}"
        assert run.info.status == "FINISHED"
        assert run.data.tags[TAG_STATE] == "COMPLETE"
        assert run.data.tags[TAG_STUDY] == study.study_name
        # The trial's sampled values are what training logged as its params.
        for key, value in trial.params.items():
            assert run.data.params[key] == str(value), key
        assert run.data.params["train.epochs"] == str(EPOCHS_PER_TRIAL)
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, EPOCHS_PER_TRIAL + 1))
        assert trial.value == max(m.value for m in history)
        assert run.data.metrics["trial_value"] == trial.value
    # Trials do not export models: nothing in the experiment but runs.
    assert not client.search_logged_models([parent.info.experiment_id])


def test_first_trial_is_the_params_yaml_baseline(study: TuneResult) -> None:
    assert study.trials[0].params == {
        "train.lr": 5e-3,
        "train.batch_size": 16,
        "train.model.width": 8,
    }
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 3


def test_best_params_are_written_logged_and_load_as_overrides(
    store: str, study: TuneResult, tune_dir: Path, tmp_path: Path
) -> None:
    assert study.best is not None
    completed = [t.value for t in study.trials if t.value is not None]
    assert study.best.value == max(completed)
    assert study.best_params_path == tune_dir / BEST_PARAMS_YAML

    overrides = yaml.safe_load(study.best_params_path.read_text())
    params_yaml = tmp_path / "params.yaml"
    params_yaml.write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    tuned = load_params(params_yaml, overrides)

    assert overrides == study.best.params
    assert tuned.train.lr == overrides["train.lr"]
    assert tuned.train.batch_size == overrides["train.batch_size"]
    assert tuned.train.model.width == overrides["train.model.width"]
    assert tuned.train.epochs == PARAMS.train.epochs  # the trials' short epochs stay out

    client = MlflowClient(store)
    parent = client.get_run(study.parent_run_id)
    artifacts = {a.path for a in client.list_artifacts(study.parent_run_id)}
    assert {BEST_PARAMS_YAML, "trials.csv"} <= artifacts
    assert parent.data.metrics["best_val_accuracy"] == study.best.value
    assert parent.data.metrics["n_complete"] == 3
    assert parent.data.tags["flywheel.tune.best_trial"] == str(study.best.number)
    logged = Path(client.download_artifacts(study.parent_run_id, BEST_PARAMS_YAML, str(tmp_path)))
    assert yaml.safe_load(logged.read_text()) == overrides


def test_same_set_up_resumes_the_study_under_the_same_parent(
    store: str, study: TuneResult, dataset: Path, tune_dir: Path
) -> None:
    again = tune(PARAMS, dataset, out_dir=tune_dir, n_trials=1, progress=False)

    assert again.study_name == study.study_name
    assert again.parent_run_id == study.parent_run_id
    assert again.new_trials == 1
    assert [t.number for t in again.trials] == [0, 1, 2, 3]
    assert again.trials[:3] == study.trials
    children = _children(MlflowClient(store), study.parent_run_id)
    assert [r.data.tags[TAG_TRIAL] for r in children] == ["0", "1", "2", "3"]


def test_a_named_study_refuses_another_set_up(
    store: str, study: TuneResult, dataset: Path, tune_dir: Path
) -> None:
    narrower = Params.model_validate(
        PARAMS.model_dump(mode="json")
        | {"tune": PARAMS.tune.model_dump(mode="json") | {"space": {"train.lr": SPACE["train.lr"]}}}
    )

    with pytest.raises(TuneError, match="made for another set-up"):
        tune(narrower, dataset, out_dir=tune_dir, study_name=study.study_name, progress=False)


def test_a_trial_trailing_the_median_is_pruned(store: str, dataset: Path, tmp_path: Path) -> None:
    """Trial 0 learns (lr 5e-3); trial 1 (lr 1e-7) cannot lower the loss and is stopped early."""
    params = PARAMS.model_copy(
        update={
            "tune": TuneConfig.model_validate(
                {
                    "epochs_per_trial": 3,
                    "metric": "val_loss",
                    "baseline_first": False,
                    "pruner": {"enabled": True, "n_startup_trials": 1, "n_warmup_steps": 0},
                    "space": {
                        "train.lr": {"type": "float", "low": 1e-7, "high": 1e-2, "log": True}
                    },
                }
            )
        }
    )

    result = tune(
        params,
        dataset,
        out_dir=tmp_path,
        n_trials=2,
        enqueue=[{"train.lr": 5e-3}, {"train.lr": 1e-7}],
        progress=False,
    )

    good, bad = result.trials
    assert result.direction == "minimize"
    assert (good.state, good.epochs) == ("COMPLETE", 3)
    assert bad.state == "PRUNED"
    assert bad.value is None
    assert bad.epochs is not None
    assert bad.epochs < 3
    assert result.best == good
    storage = optuna.load_study(study_name=result.study_name, storage=result.storage)
    assert storage.trials[1].state == optuna.trial.TrialState.PRUNED

    client = MlflowClient(store)
    run = client.get_run(bad.run_id)
    assert run.info.status == "KILLED"  # stopped on purpose, not broken
    assert run.data.tags[TAG_STATE] == "PRUNED"
    assert run.data.tags[TAG_PRUNED_EPOCH] == str(bad.epochs)
    assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
    steps = [m.step for m in client.get_metric_history(bad.run_id, "val_loss")]
    assert steps == list(range(1, bad.epochs + 1))
    assert not list((tmp_path / "trials").iterdir())  # scratch checkpoints are cleaned up


def test_cli_tunes_prints_the_trials_and_the_best(
    store: str, dataset: Path, tmp_path: Path
) -> None:
    params_yaml = tmp_path / "params.yaml"
    params_yaml.write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    out = tmp_path / "tune"
    args = ["tune", "--params", str(params_yaml), "--dataset", str(dataset), "--out", str(out)]
    args.append("--allow-untracked")  # a dataset outside data/: no data version describes it

    done = CliRunner().invoke(app, [*args, "--n-trials", "1", "--study-name", "cli-study"])

    assert done.exit_code == 0, done.output
    assert "study cli-study" in done.output
    assert "complete" in done.output
    assert "best: trial 0" in done.output
    assert "--set train.lr=0.005" in done.output
    assert (out / BEST_PARAMS_YAML).is_file()
    assert (out / "optuna.db").is_file()

    bad = CliRunner().invoke(
        app, [*args, "--set", "tune.space={train.lrr: {type: float, low: 0.1, high: 1}}"]
    )
    assert bad.exit_code == 2
    assert "unknown key 'lrr' in train" in bad.output
