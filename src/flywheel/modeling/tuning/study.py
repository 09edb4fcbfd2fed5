"""The study: an Optuna study with a seeded TPE sampler and a MedianPruner, under one MLflow run.

The study is stored under a name derived from the set-up, so the same set-up
resumes it (and its parent run) and a changed one starts another.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.config import Params
from flywheel.env import tqdm_disable
from flywheel.modeling.distributed import wants_cuda
from flywheel.modeling.run_logging import ending_run
from flywheel.modeling.tuning.objective import (
    TAG_STUDY,
    Objective,
    StudyDirection,
    resolve_objective,
    study_signature,
)
from flywheel.modeling.tuning.results import TuneResult, record_best, summarise
from flywheel.modeling.tuning.space import (
    TuneError,
    apply_overrides,
    baseline_values,
    validate_space,
)
from flywheel.tracking import configure_tracking, ensure_experiment, flatten_params, lineage_tags

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

STORAGE_FILE = "optuna.db"
TRIALS_DIR = "trials"
"""Scratch folders of running trials (checkpoints); each is removed when its trial ends."""
ATTR_SIGNATURE = "flywheel.signature"
ATTR_PARENT_RUN = "flywheel.mlflow_parent_run_id"


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
        with ending_run():
            _record_parent(params, name, url, metric, direction, signature, data_version)
            objective = Objective(
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
            result = summarise(study, url, parent, metric, direction, trials_before)
            result = record_best(result, out_dir, study)
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

    bar = tqdm(
        total=total, desc="tune", unit="trial", disable=tqdm_disable(enabled), dynamic_ncols=True
    )
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

    cfg = params.tune
    defining = {
        "metric": metric,
        "direction": direction,
        "epochs_per_trial": cfg.epochs_per_trial,
        "space": {k: v.model_dump(mode="json", exclude_none=True) for k, v in cfg.space.items()},
    }
    mlflow.log_params(flatten_params({"tune": defining}))
    use_cuda = wants_cuda(params.train.device)
    tags = lineage_tags(
        data_version=data_version, params_hash=signature, device="cuda" if use_cuda else "cpu"
    )
    tags.update({TAG_STUDY: name, "flywheel.tune.storage": url, "flywheel.kind": "tune"})
    mlflow.set_tags(tags)
