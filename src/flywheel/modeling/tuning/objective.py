"""The objective: which metric a study optimises, what makes trials comparable, one trial.

A trial samples the space, trains as a nested MLflow run made by
`flywheel.modeling.training.train` (no model logged), reports the metric after
every epoch so the pruner can stop it, and is judged by its best epoch.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from flywheel.config import Params
from flywheel.data.manifest import manifest_path, sha256_file
from flywheel.modeling.tuning.space import Dimension, TuneError, apply_overrides, suggest_params
from flywheel.tasks import DatasetError, get_task
from flywheel.tracking import flatten_params, hash_params

if TYPE_CHECKING:
    import optuna

StudyDirection = Literal["maximize", "minimize"]

TAG_STUDY = "flywheel.tune.study"
TAG_TRIAL = "flywheel.tune.trial"
TAG_STATE = "flywheel.tune.state"
TAG_PRUNED_EPOCH = "flywheel.tune.pruned_epoch"
ATTR_RUN_ID = "mlflow_run_id"
"""The Optuna trial's user attribute naming its MLflow run."""


def resolve_objective(params: Params) -> tuple[str, StudyDirection]:
    """The metric the study optimises and its direction (`tune.metric`/`direction` or defaults).

    Raises:
        TuneError: the task computes no such metric.
    """
    metric = params.tune.metric or params.train.monitor
    task = get_task(params.train.task).from_params(params)
    try:
        natural = task.direction(metric)
    except ValueError as err:
        raise TuneError(f"tune.metric: {err}") from None
    direction: StudyDirection = params.tune.direction or (
        "maximize" if natural == "max" else "minimize"
    )
    return metric, direction


def best_of(
    history: Sequence[Mapping[str, float]], metric: str, direction: StudyDirection
) -> float:
    """A trial's objective: the best epoch's value of `metric` (NaN when no epoch has one).

    The same epoch the best checkpoint would keep, so a trial is judged by the
    model it would hand over, not by wherever its last epoch happened to land.

    >>> best_of([{"val_loss": 0.5}, {"val_loss": 0.3}, {"val_loss": 0.4}], "val_loss", "minimize")
    0.3
    """
    values = [row[metric] for row in history if not math.isnan(row.get(metric, math.nan))]
    if not values:
        return math.nan
    return max(values) if direction == "maximize" else min(values)


def study_signature(
    params: Params, dataset_dir: Path, metric: str, direction: StudyDirection
) -> str:
    """Hash of everything that makes two trials comparable.

    The training configuration (minus the searched keys), the classes and image
    size, the dataset's manifest, the space, the objective and the epochs per
    trial. Sampler seed, pruner settings, trial count and timeout are left out:
    they change how the study proceeds, not what a trial's value means.

    Raises:
        DatasetError: the dataset folder has no manifest.
    """
    manifest = manifest_path(dataset_dir)
    if not manifest.is_file():
        raise DatasetError(f"{manifest}: no manifest (is {dataset_dir} a dataset folder?)")
    space = params.tune.space
    train = flatten_params({"train": params.train.model_dump(mode="json")})
    return hash_params(
        {
            "train": {k: v for k, v in train.items() if k not in space},
            "classes": list(params.data.classes),
            "image_size": params.data.image_size,
            "channels": params.data.channels,
            "white_level": params.data.white_level,
            "manifest_sha256": sha256_file(manifest),
            "space": {k: v.model_dump(mode="json") for k, v in space.items()},
            "metric": metric,
            "direction": direction,
            "epochs_per_trial": params.tune.epochs_per_trial,
        }
    )


@dataclass
class Objective:
    """One trial: sample, train briefly as a nested run, report every epoch, maybe prune."""

    base: Params
    space: Mapping[str, Dimension]
    dataset_dir: Path
    trials_dir: Path
    metric: str
    direction: StudyDirection
    study_name: str
    prune: bool
    data_version: str | None
    bar: Any = None

    def __call__(self, trial: optuna.Trial) -> float:
        import mlflow
        import optuna

        from flywheel.modeling.training import train

        values = suggest_params(trial, self.space)
        params = apply_overrides(self.base, values)
        epochs = params.train.epochs
        scratch = self.trials_dir / f"{trial.number:05d}"
        run_id: str | None = None
        pruned_at: int | None = None

        def report(epoch: int, row: dict[str, float]) -> None:
            nonlocal run_id, pruned_at
            active = mlflow.active_run()  # training's run for this trial
            run_id = run_id or (active.info.run_id if active else None)
            value = row[self.metric]
            trial.report(value, epoch)
            if self.bar is not None:
                self.bar.set_postfix_str(
                    f"trial {trial.number} epoch {epoch}/{epochs} {self.metric}={value:.4f}"
                )
            if self.prune and trial.should_prune():
                pruned_at = epoch
                raise optuna.TrialPruned(f"{self.metric}={value:.4f} after epoch {epoch}")

        state = "FAIL"
        try:
            result = train(
                params,
                self.dataset_dir,
                out_dir=scratch,
                data_version=self.data_version,
                log_model=False,
                on_epoch_end=report,
                progress=False,
            )
            run_id = result.run_id
            value = best_of(result.history, self.metric, self.direction)
            state = "FAIL" if math.isnan(value) else "COMPLETE"  # Optuna fails a NaN too
            if run_id is not None and state == "COMPLETE":
                mlflow.MlflowClient().log_metric(run_id, "trial_value", value)
            return value
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            if run_id is not None:
                trial.set_user_attr(ATTR_RUN_ID, run_id)
                self._tag_run(run_id, trial.number, state, pruned_at)

    def _tag_run(self, run_id: str, number: int, state: str, pruned_at: int | None) -> None:
        """Name the trial's run and record its outcome; a pruned run ends KILLED, not FAILED."""
        from mlflow import MlflowClient

        client = MlflowClient()
        tags = {TAG_STUDY: self.study_name, TAG_TRIAL: str(number), TAG_STATE: state}
        if pruned_at is not None:
            tags[TAG_PRUNED_EPOCH] = str(pruned_at)
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        client.update_run(
            run_id, status="KILLED" if state == "PRUNED" else None, name=f"trial {number}"
        )

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback: advance the bar; show the best so far."""
        if self.bar is None:
            return
        self.bar.update(1)
        try:
            best = f"best {self.metric}={study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:  # no trial completed yet
            best = "no trial completed yet"
        self.bar.set_postfix_str(f"trial {trial.number} {trial.state.name.lower()}; {best}")
