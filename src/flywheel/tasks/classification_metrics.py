"""Classification's evaluation metrics: class probabilities against true class indices.

`classification_metrics` (accuracy, macro-F1, per-class precision/recall/F1,
top-label ECE, confusion matrix) on numpy arrays, as `SplitMetrics`;
`ClassificationTask.evaluation_metrics` calls it for the whole split and for
each slice. A task of another kind computes its own metrics (mAP, CER, ...)
and evaluation renders whatever it returns. Unit-tested on small tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flywheel.tasks.base import MetricsError, SplitMetrics

PROBABILITY_TOLERANCE = 1e-3
"""How far a row of probabilities may sum from 1 (float32 softmax)."""

CLASS_METRICS = ("precision", "recall", "f1", "support")
"""What `SplitMetrics.per_class` holds per class, in this order."""


def check_probabilities(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    """Fail clearly unless `probs` `(N, K)` are probabilities and `labels` `(N,)` class indices.

    Raises:
        MetricsError: names the first offending row.
    """
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise MetricsError(f"expected probabilities (N, {num_classes}), got shape {probs.shape}")
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise MetricsError(
            f"expected labels ({probs.shape[0]},) to match the probabilities, got {labels.shape}"
        )
    if probs.shape[0] == 0:
        raise MetricsError("nothing to evaluate: no predictions")
    if not np.issubdtype(labels.dtype, np.integer):
        raise MetricsError(f"labels must be integer class indices, got dtype {labels.dtype}")
    bad_label = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad_label.size:
        i = int(bad_label[0])
        raise MetricsError(f"row {i}: label {int(labels[i])} is not in [0, {num_classes})")
    sums = probs.sum(axis=1)  # (N,)
    bad = np.flatnonzero(
        ~np.isfinite(sums)
        | (np.abs(sums - 1.0) > PROBABILITY_TOLERANCE)
        | (probs.min(axis=1) < -PROBABILITY_TOLERANCE)
    )
    if bad.size:
        i = int(bad[0])
        raise MetricsError(
            f"row {i}: {probs[i].round(4).tolist()} are not probabilities (sum {sums[i]:.4f}); "
            f"{bad.size} such rows — were logits passed instead of softmax outputs?"
        )


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Top-label ECE: how far the confidence is from the accuracy, over equal-width bins.

    `sum_b |B_b| / N · |accuracy(B_b) − mean confidence(B_b)|`, with bins
    `(i/n, (i+1)/n]` (the first also holds 0). scikit-learn's
    `calibration_curve` is binary-only, so the multi-class top-label form is
    written here (the standard definition of Guo et al., 2017).

    Args:
        probs: `(N, K)` class probabilities.
        labels: `(N,)` true class indices.
        n_bins: number of confidence bins.

    >>> probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    >>> round(expected_calibration_error(probs, np.array([0, 1]), n_bins=10), 4)
    0.35

    Raises:
        MetricsError: fewer than one bin.
    """
    if n_bins < 1:
        raise MetricsError(f"n_bins must be >= 1, got {n_bins}")
    confidence = probs.max(axis=1)  # (N,)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)  # (N,)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)  # (N,)
    confidence_sum = np.bincount(bins, weights=confidence, minlength=n_bins)  # (n_bins,)
    correct_sum = np.bincount(bins, weights=correct, minlength=n_bins)  # (n_bins,)
    return float(np.abs(correct_sum - confidence_sum).sum() / len(labels))


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], *, n_bins: int
) -> SplitMetrics:
    """Accuracy, macro-F1, ECE, per-class precision/recall/F1/support and the confusion matrix.

    `values` are `accuracy` (share of correct top-1 predictions), `macro_f1`
    (unweighted mean F1 over the classes present in labels or predictions) and
    `ece` (top-label calibration error); `per_class` lists every class (support
    0 where absent), and F1 per class is the one logged (`class_metric`). The
    readings name the correct count and the ECE's bins (the gates' details).

    Args:
        probs: `(N, K)` class probabilities, columns in `classes` order.
        labels: `(N,)` true class indices.
        classes: class names.
        n_bins: ECE confidence bins.

    Raises:
        MetricsError: shapes or values that are not probabilities and labels.
    """
    # scikit-learn is imported here, not at module level: serving imports the
    # tasks package and never scores anything.
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    check_probabilities(probs, labels, len(classes))
    predicted = probs.argmax(axis=1)  # (N,)
    every = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=every, zero_division=0
    )
    n = len(labels)
    accuracy = float(accuracy_score(labels, predicted))
    return SplitMetrics(
        n=n,
        values={
            "accuracy": accuracy,
            "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
            "ece": expected_calibration_error(probs, labels, n_bins),
        },
        per_class={
            name: dict(
                zip(
                    CLASS_METRICS,
                    (float(precision[i]), float(recall[i]), float(f1[i]), int(support[i])),
                    strict=True,
                )
            )
            for i, name in enumerate(classes)
        },
        class_metric="f1",
        confusion=tuple(
            tuple(int(v) for v in row) for row in confusion_matrix(labels, predicted, labels=every)
        ),
        readings={"accuracy": f"{round(accuracy * n)}/{n} correct", "ece": f"{n_bins} bins"},
    )
