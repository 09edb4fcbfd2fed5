"""Stage 5: evaluate a candidate on the frozen test split, compare it with the champion, bless it.

The core is pure: `classification_metrics`, `slice_masks`,
`evaluate_predictions` and `check_gates` work on numpy arrays (class
probabilities, labels) and the manifest's slice columns, and are unit-tested
on small tables. Around it:

* `predict_split` runs a logged MLflow model (`runs:/…`, `models:/name/version`)
  over a dataset split with the pre-processing of the Task the model was logged
  with (its metadata), in batches, without gradients;
* `plot_confusion_matrix`, `plot_slice_accuracy` and `log_evaluation` put the
  results into the candidate's MLflow run;
* `evaluate_candidate` is the stage: it evaluates a registered version and the
  current `production` version on the same images, applies the gates of
  `params.yaml` (`evaluate.gates`) and records the blessing on the version
  (`flywheel.registry.record_blessing`; a blessed version becomes `staging`).

Slices are named `column=value` for each value of each slice column (e.g.
`style=handwritten`, `noise=shadow`) and `style=handwritten,noise=shadow` for
each combination present in the data.

The parts: `metrics` (the pure core), `gates` (the blessing decision),
`prediction` (running a logged model over a split), `plots`, `candidate` (the
stage and its MLflow logging), `errors`.
"""

from __future__ import annotations

from flywheel.evaluation.candidate import (
    ARTIFACT_DIR,
    EvaluationOutcome,
    evaluate_candidate,
    has_split,
    log_evaluation,
)
from flywheel.evaluation.errors import EvaluationError
from flywheel.evaluation.gates import EPSILON, check_gates
from flywheel.evaluation.metrics import (
    PROBABILITY_TOLERANCE,
    ClassificationMetrics,
    ClassMetrics,
    EvaluationReport,
    check_probabilities,
    classification_metrics,
    evaluate_predictions,
    expected_calibration_error,
    fingerprint_rows,
    metric_key,
    slice_masks,
)
from flywheel.evaluation.plots import plot_confusion_matrix, plot_slice_accuracy
from flywheel.evaluation.prediction import Predictions, evaluate_model, load_task, predict_split

__all__ = [
    "ARTIFACT_DIR",
    "EPSILON",
    "PROBABILITY_TOLERANCE",
    "ClassMetrics",
    "ClassificationMetrics",
    "EvaluationError",
    "EvaluationOutcome",
    "EvaluationReport",
    "Predictions",
    "check_gates",
    "check_probabilities",
    "classification_metrics",
    "evaluate_candidate",
    "evaluate_model",
    "evaluate_predictions",
    "expected_calibration_error",
    "fingerprint_rows",
    "has_split",
    "load_task",
    "log_evaluation",
    "metric_key",
    "plot_confusion_matrix",
    "plot_slice_accuracy",
    "predict_split",
    "slice_masks",
]
