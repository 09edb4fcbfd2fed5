"""Stage 5: evaluate a candidate on the frozen test split, compare it with the champion, bless it.

Evaluation talks to the `Task` interface only: the task decodes the model's
output, gives each image's true answer (`Task.evaluation_targets`) and scores
one against the other (`Task.evaluation_metrics` → `flywheel.tasks.SplitMetrics`);
its `primary_metric` is what the accuracy-type gates judge (classification:
accuracy, whose metric code is `flywheel.tasks.classification_metrics`). A
second task is evaluated, gated, logged and rendered without a change here.

The core is pure: `slice_masks`, `evaluate_predictions` and `check_gates`
work on a task's decoded outputs, its targets and the manifest's slice
columns, and are unit-tested on small tables. Around it:

* `predict_split` runs a logged MLflow model (`runs:/…`, `models:/name/version`)
  over a dataset split with the pre-processing of the Task the model was logged
  with (its metadata), in batches, without gradients;
* `plot_confusion_matrix`, `plot_slice_metric` and `log_evaluation` put the
  results into the candidate's MLflow run;
* `evaluate_candidate` is the stage: it evaluates a registered version and the
  current `production` version on the same images, applies the gates of
  `params.yaml` (`evaluate.gates`) and records the blessing on the version
  (`flywheel.registry.record_blessing`; a blessed version becomes `staging`).

`evaluate_pair` scores the formula-page pair end to end (pages in, LaTeX
out: the share of true expressions found and transcribed exactly, per slice),
the measure a promotion of either model of the pair is held to.

Slices are named `column=value` for each value of each slice column (e.g.
`style=handwritten`, `noise=shadow`) and `style=handwritten,noise=shadow` for
each combination present in the data.

The parts: `metrics` (the pure core), `gates` (the blessing decision),
`prediction` (running a logged model over a split), `pair` (the page pair end
to end), `plots`, `candidate` (the stage and its MLflow logging), `errors`.
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
    EvaluationReport,
    evaluate_predictions,
    fingerprint_rows,
    score,
    slice_masks,
)
from flywheel.evaluation.pair import PairScore, evaluate_pair, score_pages
from flywheel.evaluation.plots import plot_confusion_matrix, plot_slice_metric
from flywheel.evaluation.prediction import Predictions, evaluate_model, load_task, predict_split

__all__ = [
    "ARTIFACT_DIR",
    "EPSILON",
    "EvaluationError",
    "EvaluationOutcome",
    "EvaluationReport",
    "PairScore",
    "Predictions",
    "check_gates",
    "evaluate_candidate",
    "evaluate_model",
    "evaluate_pair",
    "evaluate_predictions",
    "fingerprint_rows",
    "has_split",
    "load_task",
    "log_evaluation",
    "plot_confusion_matrix",
    "plot_slice_metric",
    "predict_split",
    "score",
    "score_pages",
    "slice_masks",
]
