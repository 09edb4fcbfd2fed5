"""Hyper-parameter search: an Optuna study whose trials are nested MLflow training runs.

`tune(params, dataset_dir, out_dir=...)` searches the space declared in
`params.yaml: tune.space` (dotted keys of params.yaml → search dimensions) with
a seeded TPE sampler and a MedianPruner:

* **One MLflow parent run per study**, each trial a child run made by
  `flywheel.modeling.training.train` itself (params, per-epoch metrics, lineage), tagged
  with the study, the trial number and its final state (COMPLETE / PRUNED /
  FAIL; a pruned run's status is KILLED, not FAILED). Trials do not log a model.
* **Pruning** reports the objective metric after every epoch through
  training's `on_epoch_end` hook and raises `optuna.TrialPruned` when the trial
  trails the median of the completed trials at that epoch.
* **Resumable**: the study lives in an Optuna storage (SQLite in the tune
  folder by default) under a name derived from everything that makes trials
  comparable, so re-running the same set-up adds trials to the same study and
  the same parent run; a changed set-up starts a new study.
* **Reusable output**: the best values are written as a flat YAML of dotted
  keys (`best_params.yaml`) that `load_params(path, overrides)` and
  `flywheel train --set key=value` take as they are.
"""

from __future__ import annotations

import difflib
import logging
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import ValidationError

from flywheel.config import (
    CategoricalDimension,
    FloatDimension,
    IntDimension,
    Params,
)
from flywheel.data.manifest import manifest_path, sha256_file
from flywheel.tasks import DatasetError, get_task
from flywheel.tracking import (
    configure_tracking,
    ensure_experiment,
    flatten_params,
    hash_params,
    lineage_tags,
)

if TYPE_CHECKING:
    import optuna
    from rich.console import Console

log = logging.getLogger(__name__)

StudyDirection = Literal["maximize", "minimize"]
Dimension = FloatDimension | IntDimension | CategoricalDimension

BEST_PARAMS_YAML = "best_params.yaml"
TRIALS_CSV = "trials.csv"
STORAGE_FILE = "optuna.db"
TRIALS_DIR = "trials"
"""Scratch folders of running trials (checkpoints); each is removed when its trial ends."""

TAG_STUDY = "flywheel.tune.study"
TAG_TRIAL = "flywheel.tune.trial"
TAG_STATE = "flywheel.tune.state"
TAG_PRUNED_EPOCH = "flywheel.tune.pruned_epoch"
TAG_BEST_TRIAL = "flywheel.tune.best_trial"
ATTR_SIGNATURE = "flywheel.signature"
ATTR_PARENT_RUN = "flywheel.mlflow_parent_run_id"
ATTR_RUN_ID = "mlflow_run_id"


class TuneError(ValueError):
    """The search cannot run as configured (names the offending `tune.*` key)."""


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


# --------------------------------------------------------------------------- the space


def validate_space(params: Params) -> dict[str, Dimension]:
    """Check `tune.space` against the configuration it tunes; the space when it is usable.

    Each key must name an existing value (not a section) of params.yaml; the
    dimension's kind must fit the value (no float range over an integer
    setting); every bound and choice must itself be a valid value of that key
    (`train.model.width: {low: 2}` fails here, not in trial 7); and `train.epochs`
    cannot be both searched and fixed by `tune.epochs_per_trial`.

    Raises:
        TuneError: naming the key and what is wrong with it.
    """
    space = dict(params.tune.space)
    tree = params.model_dump(mode="json")
    for key, dim in space.items():
        where = f"tune.space[{key!r}]"
        current = _lookup(tree, key, where)
        if isinstance(current, bool) and not isinstance(dim, CategoricalDimension):
            raise TuneError(
                f"{where}: {key} is a boolean; use type: categorical, choices [true, false]"
            )
        if isinstance(current, int) and isinstance(dim, FloatDimension):  # bool handled above
            raise TuneError(f"{where}: {key} is an integer setting; use type: int")
        if isinstance(current, str) and not isinstance(dim, CategoricalDimension):
            raise TuneError(f"{where}: {key} is a text setting; use type: categorical")
        for value in boundary_values(dim):
            try:
                apply_overrides(params, {key: value})
            except ValidationError as err:
                first = err.errors()[0]
                raise TuneError(
                    f"{where}: {value!r} is not a valid value of {key}: {first['msg']}"
                ) from None
    if "train.epochs" in space and params.tune.epochs_per_trial is not None:
        raise TuneError(
            "tune.space['train.epochs']: tune.epochs_per_trial fixes the epochs of every "
            "trial; set it to null to search train.epochs"
        )
    return space


def _lookup(tree: Mapping[str, Any], dotted: str, where: str) -> Any:
    """The value at `a.b.c` of a nested mapping; a clear error for a missing key or a section."""
    node: Any = tree
    walked: list[str] = []
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            raise TuneError(f"{where}: {'.'.join(walked)} is a value, not a section")
        if part not in node:
            close = difflib.get_close_matches(part, [str(k) for k in node], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            section = ".".join(walked) or "params.yaml"
            raise TuneError(f"{where}: unknown key {part!r} in {section}{hint}")
        node = node[part]
        walked.append(part)
    if isinstance(node, Mapping):
        raise TuneError(f"{where}: {dotted} is a section, not a value; name one of its keys")
    return node


def boundary_values(dim: Dimension) -> list[Any]:
    """The extreme values a dimension can produce: its bounds, or every choice.

    >>> boundary_values(IntDimension(type="int", low=8, high=32, step=8))
    [8, 32]
    >>> boundary_values(CategoricalDimension(type="categorical", choices=(32, 64)))
    [32, 64]
    """
    if isinstance(dim, CategoricalDimension):
        return list(dim.choices)
    return [dim.low, dim.high]


def contains(dim: Dimension, value: Any) -> bool:
    """Whether the dimension can produce `value` (used to seed trial 0 with params.yaml's values).

    >>> contains(FloatDimension(type="float", low=1e-4, high=1e-2, log=True), 3e-3)
    True
    >>> contains(IntDimension(type="int", low=8, high=32, step=8), 12)
    False
    """
    if isinstance(dim, CategoricalDimension):
        return any(type(c) is type(value) and c == value for c in dim.choices)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if not dim.low <= value <= dim.high:
        return False
    if isinstance(dim, IntDimension):
        return isinstance(value, int) and (value - dim.low) % dim.step == 0
    if dim.step is not None:
        steps = (value - dim.low) / dim.step
        return math.isclose(steps, round(steps), abs_tol=1e-9)
    return True


def suggest_params(trial: optuna.Trial, space: Mapping[str, Dimension]) -> dict[str, Any]:
    """Draw one value per dimension from the trial (the Optuna parameter name is the dotted key).

    Floats are tidied to 10 significant digits (`tidy`), so a stepped 0.3 is
    trained, logged and recommended as 0.3, not 0.30000000000000004.
    """
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if isinstance(dim, CategoricalDimension):
            values[key] = trial.suggest_categorical(key, list(dim.choices))
        elif isinstance(dim, IntDimension):
            values[key] = trial.suggest_int(key, dim.low, dim.high, step=dim.step, log=dim.log)
        else:
            values[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
    return {key: tidy(value) for key, value in values.items()}


def tidy(value: Any) -> Any:
    """A float rounded to 10 significant digits; anything else unchanged.

    >>> tidy(0.1 + 0.2), tidy(0.0020554062603827007), tidy(32), tidy("adamw")
    (0.3, 0.00205540626, 32, 'adamw')
    """
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.10g}")
    return value


def apply_overrides(params: Params, overrides: Mapping[str, Any]) -> Params:
    """A copy of `params` with dotted keys replaced, validated like a loaded params.yaml.

    Raises:
        pydantic.ValidationError: a value the schema refuses.
    """
    tree = params.model_dump(mode="json")
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[leaf] = value
    return Params.model_validate(tree)


def baseline_values(params: Params, space: Mapping[str, Dimension]) -> dict[str, Any]:
    """params.yaml's own value of every dimension that can produce it (trial 0 of a new study)."""
    tree = params.model_dump(mode="json")
    values = {key: _lookup(tree, key, key) for key in space}
    return {key: v for key, v in values.items() if contains(space[key], v)}


# --------------------------------------------------------------------------- the objective


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
            "manifest_sha256": sha256_file(manifest),
            "space": {k: v.model_dump(mode="json") for k, v in space.items()},
            "metric": metric,
            "direction": direction,
            "epochs_per_trial": params.tune.epochs_per_trial,
        }
    )


# --------------------------------------------------------------------------- the study


def tune(
    params: Params,
    dataset_dir: Path,
    *,
    out_dir: Path,
    study_name: str | None = None,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout_s: float | None = None,
    data_version: str | None = None,
    enqueue: Sequence[Mapping[str, Any]] = (),
    progress: bool = True,
) -> TuneResult:
    """Search `params.tune.space` for the values that optimise the validation metric.

    Args:
        params: the whole configuration; `tune` configures the search, the rest
            is the base every trial overrides.
        dataset_dir: the dataset every trial trains and validates on.
        out_dir: the tune folder: `best_params.yaml`, the default SQLite storage,
            trials' scratch checkpoints.
        study_name: overrides `tune.study_name` (an existing study is resumed).
        storage: overrides `tune.storage` (an Optuna storage URL).
        n_trials: overrides `tune.n_trials`: trials this call runs.
        timeout_s: overrides `tune.timeout_s`: no trial starts after this many seconds.
        data_version: the DVC data version, for the lineage tags.
        enqueue: values (dotted keys) to try first, before the baseline and the sampler.
        progress: show a progress bar over the trials.

    Returns:
        The study's trials and the best one; the best values are also in
        `<out_dir>/best_params.yaml` and on the parent run.

    Raises:
        TuneError: the search space or the objective does not fit the configuration,
            or the named study was made for another set-up.
        flywheel.tasks.DatasetError: the dataset cannot be read.
        flywheel.modeling.training.TrainingError: a trial cannot train.
    """
    import mlflow
    import optuna

    cfg = params.tune
    space = validate_space(params)
    metric, direction = resolve_objective(params)
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    signature = study_signature(params, dataset_dir, metric, direction)
    name = study_name or cfg.study_name or f"{params.train.experiment}-{signature[:8]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    url = storage or cfg.storage or f"sqlite:///{(out_dir / STORAGE_FILE).resolve()}"
    base = params
    if cfg.epochs_per_trial is not None:
        base = apply_overrides(params, {"train.epochs": cfg.epochs_per_trial})

    tracking = configure_tracking()
    experiment_id = ensure_experiment(params.train.experiment, tracking)
    with _quiet_optuna():
        study = optuna.create_study(
            storage=url,
            study_name=name,
            direction=direction,
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.random_trials),
            pruner=_pruner(params),
        )
        _claim_study(study, signature, url)
        trials_before = len(study.trials)
        for values in enqueue:
            study.enqueue_trial(dict(values))
        if trials_before == 0 and cfg.baseline_first:
            baseline = baseline_values(params, space)
            if baseline:
                study.enqueue_trial(baseline, skip_if_exists=True)

        parent = _start_parent_run(study, experiment_id)
        try:
            _record_parent(params, name, url, metric, direction, signature, data_version)
            objective = _Objective(
                base=base,
                space=space,
                dataset_dir=dataset_dir,
                trials_dir=out_dir / TRIALS_DIR,
                metric=metric,
                direction=direction,
                study_name=name,
                prune=cfg.pruner.enabled,
                data_version=data_version,
            )
            total = n_trials if n_trials is not None else cfg.n_trials
            with _progress_bar(total, progress) as bar:
                objective.bar = bar
                study.optimize(
                    objective,
                    n_trials=total,
                    timeout=timeout_s if timeout_s is not None else cfg.timeout_s,
                    callbacks=[objective.after_trial],
                )
            result = _summarise(study, url, parent, metric, direction, trials_before)
            result = _record_best(result, out_dir, study)
        except BaseException as err:
            mlflow.end_run(status="KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        mlflow.end_run(status="FINISHED")
    return result


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO; the progress bar and the table say it once, better."""
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


@contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Any]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc="tune", unit="trial", disable=not enabled, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _pruner(params: Params) -> optuna.pruners.BasePruner:
    import optuna

    cfg = params.tune.pruner
    if not cfg.enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps
    )


def _claim_study(study: optuna.Study, signature: str, url: str) -> None:
    """Mark a new study with the set-up's signature; refuse to extend one of another set-up."""
    recorded = study.user_attrs.get(ATTR_SIGNATURE)
    if recorded is None:
        study.set_user_attr(ATTR_SIGNATURE, signature)
    elif recorded != signature:
        raise TuneError(
            f"study {study.study_name!r} in {url} was made for another set-up (space, "
            f"objective, training params or dataset changed: signature {recorded} vs "
            f"{signature}); pass another --study-name, or none to get one derived from the set-up"
        )


def _start_parent_run(study: optuna.Study, experiment_id: str) -> str:
    """Open the study's parent run: the one an earlier invocation made, else a new one."""
    import mlflow
    from mlflow.exceptions import MlflowException

    nested = mlflow.active_run() is not None
    previous = study.user_attrs.get(ATTR_PARENT_RUN)
    if previous is not None:
        try:
            if mlflow.get_run(previous).info.experiment_id == experiment_id:
                return str(mlflow.start_run(run_id=previous, nested=nested).info.run_id)
        except MlflowException:
            pass
        log.warning(
            "parent run %s of study %s is gone: starting a new one", previous, study.study_name
        )
    run = mlflow.start_run(
        experiment_id=experiment_id, run_name=f"tune {study.study_name}", nested=nested
    )
    study.set_user_attr(ATTR_PARENT_RUN, run.info.run_id)
    return str(run.info.run_id)


def _record_parent(
    params: Params,
    name: str,
    url: str,
    metric: str,
    direction: StudyDirection,
    signature: str,
    data_version: str | None,
) -> None:
    """The parent run's params (what defines the study) and lineage tags."""
    import mlflow
    import torch

    cfg = params.tune
    defining = {
        "metric": metric,
        "direction": direction,
        "epochs_per_trial": cfg.epochs_per_trial,
        "space": {k: v.model_dump(mode="json", exclude_none=True) for k, v in cfg.space.items()},
    }
    mlflow.log_params(flatten_params({"tune": defining}))
    use_cuda = params.train.device == "cuda" or (
        params.train.device == "auto" and torch.cuda.is_available()
    )
    tags = lineage_tags(
        data_version=data_version, params_hash=signature, device="cuda" if use_cuda else "cpu"
    )
    tags.update({TAG_STUDY: name, "flywheel.tune.storage": url, "flywheel.kind": "tune"})
    mlflow.set_tags(tags)


@dataclass
class _Objective:
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


# --------------------------------------------------------------------------- results


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


def _summarise(
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


def _record_best(result: TuneResult, out_dir: Path, study: optuna.Study) -> TuneResult:
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
