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

The parts: `space` (the search space checked, sampled and applied), `objective`
(the metric, the study's signature, one trial), `study` (`tune`) and `results`
(the trials, `best_params.yaml`, the table).
"""

from flywheel.modeling.tuning.objective import (
    ATTR_RUN_ID,
    TAG_PRUNED_EPOCH,
    TAG_STATE,
    TAG_STUDY,
    TAG_TRIAL,
    StudyDirection,
    best_of,
    resolve_objective,
    study_signature,
)
from flywheel.modeling.tuning.results import (
    BEST_PARAMS_YAML,
    TAG_BEST_TRIAL,
    TRIALS_CSV,
    TrialRecord,
    TuneResult,
    print_report,
    set_arguments,
    write_best_params,
)
from flywheel.modeling.tuning.space import (
    Dimension,
    TuneError,
    apply_overrides,
    baseline_values,
    boundary_values,
    contains,
    suggest_params,
    tidy,
    validate_space,
)
from flywheel.modeling.tuning.study import (
    ATTR_PARENT_RUN,
    ATTR_SIGNATURE,
    STORAGE_FILE,
    TRIALS_DIR,
    tune,
)

__all__ = [
    "ATTR_PARENT_RUN",
    "ATTR_RUN_ID",
    "ATTR_SIGNATURE",
    "BEST_PARAMS_YAML",
    "STORAGE_FILE",
    "TAG_BEST_TRIAL",
    "TAG_PRUNED_EPOCH",
    "TAG_STATE",
    "TAG_STUDY",
    "TAG_TRIAL",
    "TRIALS_CSV",
    "TRIALS_DIR",
    "Dimension",
    "StudyDirection",
    "TrialRecord",
    "TuneError",
    "TuneResult",
    "apply_overrides",
    "baseline_values",
    "best_of",
    "boundary_values",
    "contains",
    "print_report",
    "resolve_objective",
    "set_arguments",
    "study_signature",
    "suggest_params",
    "tidy",
    "tune",
    "validate_space",
    "write_best_params",
]
