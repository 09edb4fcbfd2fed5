"""What a study produced: its trials, the best one, `best_params.yaml` and the table of trials."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from flywheel.modeling.tuning.objective import ATTR_RUN_ID, StudyDirection
from flywheel.modeling.tuning.space import TuneError, tidy

if TYPE_CHECKING:
    import optuna
    from rich.console import Console

BEST_PARAMS_YAML = "best_params.yaml"
TRIALS_CSV = "trials.csv"
TAG_BEST_TRIAL = "flywheel.tune.best_trial"


@dataclass(frozen=True)
class TrialRecord:
    """One trial of the study, as it ended.

    Attributes:
        number: Optuna's trial number (0-based, per study).
        state: COMPLETE, PRUNED, FAIL (or RUNNING/WAITING for a trial a killed process left).
        value: the objective (best epoch's metric), None unless COMPLETE.
        params: the sampled values by dotted params.yaml key.
        epochs: epochs reported (the epoch it was pruned at, for a pruned trial).
        run_id: the trial's MLflow run, None when training never started a run.
        seconds: wall time of the trial.
    """

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    epochs: int | None
    run_id: str | None
    seconds: float | None


@dataclass(frozen=True)
class TuneResult:
    """What a `tune` call produced.

    Attributes:
        study_name: the Optuna study (pass it again to resume).
        storage: the Optuna storage URL holding it.
        parent_run_id: the MLflow run every trial is a child of.
        metric: the objective, a validation metric.
        direction: whether it was maximised or minimised.
        trials: every trial of the study, including those of earlier invocations.
        new_trials: how many trials this call ran.
        best: the best completed trial, None when no trial completed.
        best_params_path: the YAML of the best values, None when no trial completed.
    """

    study_name: str
    storage: str
    parent_run_id: str
    metric: str
    direction: StudyDirection
    trials: list[TrialRecord]
    new_trials: int
    best: TrialRecord | None = None
    best_params_path: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)


def _record(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        value=trial.value if trial.state.name == "COMPLETE" else None,
        params={key: tidy(value) for key, value in trial.params.items()},  # as trained
        epochs=trial.last_step,
        run_id=trial.user_attrs.get(ATTR_RUN_ID),
        seconds=duration,
    )


def summarise(
    study: optuna.Study,
    url: str,
    parent_run_id: str,
    metric: str,
    direction: StudyDirection,
    trials_before: int,
) -> TuneResult:
    records = [_record(t) for t in study.trials]
    counts: dict[str, int] = {}
    for record in records:
        counts[record.state] = counts.get(record.state, 0) + 1
    complete = [r for r in records if r.state == "COMPLETE"]
    best = None
    if complete:
        best = next(r for r in complete if r.number == study.best_trial.number)
    return TuneResult(
        study_name=study.study_name,
        storage=url,
        parent_run_id=parent_run_id,
        metric=metric,
        direction=direction,
        trials=records,
        new_trials=len(records) - trials_before,
        best=best,
        counts=counts,
    )


def write_best_params(path: Path, result: TuneResult) -> Path:
    """Write the best trial's values as a flat YAML of dotted keys (a comment says where from).

    The mapping is what `load_params(..., overrides=yaml.safe_load(path.read_text()))`
    takes, and each line reads as a `--set key=value` of the CLI.

    Raises:
        TuneError: the result has no completed trial.
    """
    if result.best is None:
        raise TuneError(f"study {result.study_name!r} has no completed trial")
    header = (
        f"# Best trial {result.best.number} of Optuna study {result.study_name!r}: "
        f"{result.metric} = {result.best.value:.6g} ({result.direction}).\n"
        f"# MLflow parent run {result.parent_run_id}. Dotted params.yaml keys:\n"
        "#   flywheel train "
        + " ".join(f"--set {a}" for a in set_arguments(result.best.params))
        + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(result.best.params, sort_keys=False))
    return path


def set_arguments(values: Mapping[str, Any]) -> list[str]:
    """`key=value` strings for the CLI's `--set`, each value written as YAML reads it back.

    >>> set_arguments({"train.lr": 1e-05, "train.optimizer": "sgd", "train.batch_size": 32})
    ['train.lr=1.0e-05', 'train.optimizer=sgd', 'train.batch_size=32']
    """
    return [f"{key}={_yaml_scalar(value)}" for key, value in values.items()]


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n").removesuffix("\n...")


def record_best(result: TuneResult, out_dir: Path, study: optuna.Study) -> TuneResult:
    """Log the trials table and the outcome on the parent run; write best_params.yaml."""
    import mlflow

    trials_csv = out_dir / TRIALS_CSV
    study.trials_dataframe().to_csv(trials_csv, index=False)
    mlflow.log_artifact(str(trials_csv))
    mlflow.log_metrics(
        {f"n_{state.lower()}": float(n) for state, n in result.counts.items()}
        | {"n_trials": float(len(result.trials))}
    )
    if result.best is None:
        mlflow.set_tag(TAG_BEST_TRIAL, "none")
        return result
    path = write_best_params(out_dir / BEST_PARAMS_YAML, result)
    mlflow.log_artifact(str(path))
    best_value = result.best.value if result.best.value is not None else math.nan
    mlflow.log_metric(f"best_{result.metric}", best_value)
    mlflow.set_tags(
        {TAG_BEST_TRIAL: str(result.best.number)}
        | {f"flywheel.tune.best.{k}": _yaml_scalar(v) for k, v in result.best.params.items()}
    )
    return replace(result, best_params_path=path)


def print_report(result: TuneResult, console: Console) -> None:
    """A table of the study's trials (number, values, objective, state, epochs) and the best."""
    from rich.markup import escape
    from rich.table import Table

    keys = list(dict.fromkeys(k for t in result.trials for k in t.params))
    # Headers without the section every key shares ("train."), so narrow terminals keep them.
    shared = keys[0].split(".")[0] + "." if keys else ""
    strip = bool(shared) and all(k.startswith(shared) and k != shared for k in keys)
    where = f" (values of {shared.rstrip('.')}.*)" if strip else ""
    title = f"study {result.study_name}: {result.metric}, {result.direction}{where}"
    table = Table(title=escape(title))
    table.add_column("trial", justify="right", no_wrap=True)
    for key in keys:
        table.add_column(escape(key.removeprefix(shared) if strip else key), justify="right")
    table.add_column(result.metric, justify="right")
    table.add_column("state")
    table.add_column("epochs", justify="right")
    table.add_column("s", justify="right")
    styles = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}
    best_number = result.best.number if result.best else None
    for t in result.trials:
        style = styles.get(t.state, "")
        table.add_row(
            f"{t.number}{' *' if t.number == best_number else ''}",
            *(_format_value(t.params.get(k)) for k in keys),
            "-" if t.value is None else f"{t.value:.4f}",
            f"[{style}]{t.state.lower()}[/{style}]" if style else t.state.lower(),
            "-" if t.epochs is None else str(t.epochs),
            "-" if t.seconds is None else f"{t.seconds:.1f}",
            style="bold" if t.number == best_number else None,
        )
    console.print(table)
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(result.counts.items()))
    console.print(
        f"{result.new_trials} new trials ({len(result.trials)} in the study: {counts}); "
        f"MLflow parent run {result.parent_run_id}"
    )
    console.print(
        escape(
            f"study {result.study_name} is stored in {result.storage}: the same set-up (or "
            f"--study-name {result.study_name} --storage ...) adds trials to it"
        )
    )
    if result.best is None or result.best_params_path is None:
        console.print("[red]no trial completed[/red]: nothing to recommend")
        return
    console.print(
        f"best: trial {result.best.number}, {result.metric} [bold]{result.best.value:.4f}[/bold]"
        f" → {result.best_params_path}"
    )
    console.print(
        "train with them: flywheel train "
        + " ".join(f"--set {escape(a)}" for a in set_arguments(result.best.params))
    )


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)
