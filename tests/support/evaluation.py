"""Evaluation reports built from hand-made class probabilities, through the real task.

`classification_report` runs the classification task's own decode and metrics
(`ClassificationTask.decode`, `ClassificationTask.evaluation_metrics`) through
`flywheel.evaluation.evaluate_predictions`, as `evaluate_model` does after a
model's forward passes, so unit tests of the gates, the report and the HTML
need no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from flywheel.evaluation import EvaluationReport, evaluate_predictions
from flywheel.tasks.classification import ClassificationTask


def classification_report(
    probs: np.ndarray,
    labels: np.ndarray,
    frame: pd.DataFrame,
    classes: Sequence[str],
    **kwargs: Any,
) -> EvaluationReport:
    """The classification evaluation of `probs` `(N, K)` against class indices `labels` `(N,)`.

    The probabilities go through the exported layout (`(N, K + D)`, a one-wide
    zero embedding) and `ClassificationTask.decode`; `kwargs` are those of
    `evaluate_predictions` (`slice_columns`, `n_bins`, `model_uri`, `split`, ...).

    >>> report = classification_report(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 0]),
    ...                                pd.DataFrame({"style": ["a", "b"], "image_id": ["1", "2"]}),
    ...                                ("x", "y"),
    ...                                slice_columns=("style",), n_bins=10)
    >>> report.overall["accuracy"], report.slices["style=a"]["accuracy"]
    (0.5, 1.0)
    """
    task = ClassificationTask(classes, image_size=8)
    probs = np.asarray(probs, dtype=np.float64)
    output = np.concatenate([probs, np.zeros((len(probs), 1))], axis=1)  # (N, K + 1)
    return evaluate_predictions(task, task.decode(output), np.asarray(labels), frame, **kwargs)
