"""The workflow layer: the pipeline steps as library functions, for the CLI and the components.

A component (`components/*.py`) is a handful of lines: it turns its KFP inputs
into plain values, calls ONE function of this package and writes what comes back
into its KFP outputs. Everything else a step does — resolving the parameters,
bringing the data to the recorded version, gating, training and registering,
judging, promoting, writing the reports the KFP UI shows — lives here, where
unit tests reach it. This package never imports kfp; the pipelines, their
arguments and the local runner live in `pipelines/`.

* `flywheel.workflows.training` — the training pipeline's steps:
  `validate_data` → `train_candidate` → (`judging_basis`, `judge_candidate`) → `promote_candidate`;
  `train_and_register` is the train step without its KFP outputs (`flywheel train`);
* `flywheel.workflows.judging` — `judge_candidate`, the evaluation step, and the
  Metrics scalars it writes (`evaluation_scalars`, read back by `slice_rows`);
* `flywheel.workflows.loop` — the retraining (`flywheel`) pipeline's steps in front
  of training: `detect_drift` → `curate_samples` → `label_samples` → `update_dataset`
  (each dispatching on a page plan; `detect_page_drift` says which stages drifted);
* `flywheel.workflows.label_sync` — asynchronous labelling: `send_batch` ends the
  `curation` pipeline, `collect_labels` starts the `update` pipeline (every completed
  annotation of every outstanding batch; the `label.sync.min_completed` threshold),
  `count_completed` and the recorded `SyncDecision`s of `flywheel label sync`;
* `flywheel.workflows.datasets` — the data at the version a step is given: the
  repository's folder, or materialised from the DVC remote by hash (no git);
  under `torchrun` only local rank 0 fetches (`materialise_once`);
* `flywheel.workflows.params` — the configuration a step runs with, from the
  pipeline's parameters (`resolve_params`, `params_document`);
* `flywheel.workflows.output` / `.errors` — what every step shares: its progress
  lines (`say`), its JSON outputs (`write_json`) and its errors (`StepError`).

`DEFAULT_IMAGE` (the components' base image, `flywheel.env.DEFAULT_IMAGE`) is
re-exported here so that the components import nothing but this package.
"""

from flywheel.env import DEFAULT_IMAGE
from flywheel.workflows.errors import DataGateError, StepError
from flywheel.workflows.judging import (
    Judgement,
    SliceRow,
    evaluation_scalars,
    judge_candidate,
    judging_basis,
    pair_rows,
    slice_rows,
)
from flywheel.workflows.label_sync import (
    SyncDecision,
    collect_labels,
    count_completed,
    send_batch,
)
from flywheel.workflows.loop import (
    LABELS_FILE,
    curate_samples,
    detect_drift,
    detect_page_drift,
    drifted_stages,
    label_samples,
    update_dataset,
)
from flywheel.workflows.output import LOG_PREFIX, say, write_json
from flywheel.workflows.params import (
    FIRST_CLASS_PARAMETERS,
    params_document,
    parse_overrides,
    resolve_params,
)
from flywheel.workflows.training import (
    RegisteredCandidate,
    TrainedModel,
    ValidatedDataset,
    epoch_line,
    model_description,
    promote_candidate,
    train_and_register,
    train_candidate,
    validate_data,
)

__all__ = [
    "DEFAULT_IMAGE",
    "FIRST_CLASS_PARAMETERS",
    "LABELS_FILE",
    "LOG_PREFIX",
    "DataGateError",
    "Judgement",
    "RegisteredCandidate",
    "SliceRow",
    "StepError",
    "SyncDecision",
    "TrainedModel",
    "ValidatedDataset",
    "collect_labels",
    "count_completed",
    "curate_samples",
    "detect_drift",
    "detect_page_drift",
    "drifted_stages",
    "epoch_line",
    "evaluation_scalars",
    "judge_candidate",
    "judging_basis",
    "label_samples",
    "model_description",
    "pair_rows",
    "params_document",
    "parse_overrides",
    "promote_candidate",
    "resolve_params",
    "say",
    "send_batch",
    "slice_rows",
    "train_and_register",
    "train_candidate",
    "update_dataset",
    "validate_data",
    "write_json",
]
