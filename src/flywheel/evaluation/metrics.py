"""The pure core: metrics of class probabilities against labels, overall and per slice.

`classification_metrics` (accuracy, macro-F1, per-class precision/recall/F1,
ECE, confusion matrix) on numpy arrays; `slice_masks` names the slices of the
manifest's slice columns; `evaluate_predictions` puts both into an
`EvaluationReport`. Unit-tested on small tables.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from flywheel.evaluation.errors import EvaluationError

PROBABILITY_TOLERANCE = 1e-3
"""How far a row of probabilities may sum from 1 (float32 softmax)."""


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall, F1 and support (true count) of one class."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationMetrics:
    """The metrics of one set of predictions (the whole split or one slice).

    Attributes:
        n: number of images.
        accuracy: share of correct top-1 predictions.
        macro_f1: unweighted mean F1 over the classes present (in labels or predictions).
        ece: expected calibration error of the top-1 confidence.
        per_class: class name → its metrics (every class, support 0 if absent).
        confusion: `(K, K)` counts, rows are true classes, columns predictions.
    """

    n: int
    accuracy: float
    macro_f1: float
    ece: float
    per_class: Mapping[str, ClassMetrics]
    confusion: tuple[tuple[int, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "ece": self.ece,
            "per_class": {c: asdict(m) for c, m in self.per_class.items()},
            "confusion": [list(row) for row in self.confusion],
        }


def check_probabilities(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    """Fail clearly unless `probs` `(N, K)` are probabilities and `labels` `(N,)` class indices.

    Raises:
        EvaluationError: names the first offending row.
    """
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise EvaluationError(f"expected probabilities (N, {num_classes}), got shape {probs.shape}")
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise EvaluationError(
            f"expected labels ({probs.shape[0]},) to match the probabilities, got {labels.shape}"
        )
    if probs.shape[0] == 0:
        raise EvaluationError("nothing to evaluate: no predictions")
    if not np.issubdtype(labels.dtype, np.integer):
        raise EvaluationError(f"labels must be integer class indices, got dtype {labels.dtype}")
    bad_label = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad_label.size:
        i = int(bad_label[0])
        raise EvaluationError(f"row {i}: label {int(labels[i])} is not in [0, {num_classes})")
    sums = probs.sum(axis=1)  # (N,)
    bad = np.flatnonzero(
        ~np.isfinite(sums)
        | (np.abs(sums - 1.0) > PROBABILITY_TOLERANCE)
        | (probs.min(axis=1) < -PROBABILITY_TOLERANCE)
    )
    if bad.size:
        i = int(bad[0])
        raise EvaluationError(
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
    """
    if n_bins < 1:
        raise EvaluationError(f"n_bins must be >= 1, got {n_bins}")
    confidence = probs.max(axis=1)  # (N,)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)  # (N,)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)  # (N,)
    confidence_sum = np.bincount(bins, weights=confidence, minlength=n_bins)  # (n_bins,)
    correct_sum = np.bincount(bins, weights=correct, minlength=n_bins)  # (n_bins,)
    return float(np.abs(correct_sum - confidence_sum).sum() / len(labels))


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], *, n_bins: int
) -> ClassificationMetrics:
    """Accuracy, macro-F1, per-class precision/recall/F1, ECE and the confusion matrix.

    Args:
        probs: `(N, K)` class probabilities, columns in `classes` order.
        labels: `(N,)` true class indices.
        classes: class names.
        n_bins: ECE confidence bins.

    Raises:
        EvaluationError: shapes or values that are not probabilities and labels.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    check_probabilities(probs, labels, len(classes))
    predicted = probs.argmax(axis=1)  # (N,)
    every = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=every, zero_division=0
    )
    return ClassificationMetrics(
        n=len(labels),
        accuracy=float(accuracy_score(labels, predicted)),
        macro_f1=float(f1_score(labels, predicted, average="macro", zero_division=0)),
        ece=expected_calibration_error(probs, labels, n_bins),
        per_class={
            name: ClassMetrics(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
            for i, name in enumerate(classes)
        },
        confusion=tuple(
            tuple(int(v) for v in row) for row in confusion_matrix(labels, predicted, labels=every)
        ),
    )


def slice_masks(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Boolean row masks of every slice: each value of each column, and each combination.

    Combinations are only those present in the data, over all `columns`.

    >>> frame = pd.DataFrame({"style": ["a", "b", "a"], "noise": ["x", "x", "y"]})
    >>> {name: mask.tolist() for name, mask in slice_masks(frame, ["style", "noise"]).items()}
    ... # doctest: +NORMALIZE_WHITESPACE
    {'style=a': [True, False, True], 'style=b': [False, True, False],
     'noise=x': [True, True, False], 'noise=y': [False, False, True],
     'style=a,noise=x': [True, False, False], 'style=a,noise=y': [False, False, True],
     'style=b,noise=x': [False, True, False]}

    Raises:
        EvaluationError: a slice column is missing from `frame`.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EvaluationError(
            f"slice columns {missing} are not in the data (columns: {list(frame.columns)})"
        )
    values = {c: frame[c].astype(str).to_numpy() for c in columns}
    masks: dict[str, np.ndarray] = {}
    for column in columns:
        for value in sorted(set(values[column])):
            masks[f"{column}={value}"] = values[column] == value
    if len(columns) > 1:
        present = sorted(set(zip(*(values[c] for c in columns), strict=True)))
        for combo in present:
            mask = np.ones(len(frame), dtype=bool)
            for column, value in zip(columns, combo, strict=True):
                mask &= values[column] == value
            masks[",".join(f"{c}={v}" for c, v in zip(columns, combo, strict=True))] = mask
    return masks


def metric_key(*parts: str) -> str:
    """An MLflow-safe metric name from parts (`=` → `:`, `,` → `.`, brackets dropped).

    >>> metric_key("test_accuracy", "style=handwritten,noise=clean")
    'test_accuracy/style:handwritten.noise:clean'
    >>> metric_key("gate", "slice_regression[style=printed]")
    'gate/slice_regression/style:printed'
    """
    cleaned = []
    for part in parts:
        part = part.replace("=", ":").replace(",", ".").replace("[", "/").replace("]", "")
        cleaned.append(re.sub(r"[^/\w.\- :]", "_", part))
    return "/".join(cleaned)


def fingerprint_rows(frame: pd.DataFrame) -> str:
    """A short hash of which images (and labels) were evaluated, independent of row order.

    Uses the manifest's content hashes when present, else the paths.

    >>> a = pd.DataFrame({"image_id": ["1", "2"], "sha256": ["x", "y"], "label": ["0", "1"]})
    >>> fingerprint_rows(a) == fingerprint_rows(a.iloc[::-1])
    True
    """
    keys = [c for c in ("image_id", "sha256", "label") if c in frame.columns] or ["path"]
    rows = sorted("\t".join(map(str, row)) for row in frame[keys].itertuples(index=False))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EvaluationReport:
    """The evaluation of one model on one split: overall and per slice.

    Attributes:
        model_uri: the model evaluated.
        split: the split.
        classes: class names, in probability-column order.
        overall: metrics over the whole split.
        slices: slice name → metrics of the rows in that slice.
        calibration_bins: the ECE's bin count.
        dataset: folder, number of images, `fingerprint_rows` of the split.
    """

    model_uri: str
    split: str
    classes: tuple[str, ...]
    overall: ClassificationMetrics
    slices: Mapping[str, ClassificationMetrics]
    calibration_bins: int
    dataset: Mapping[str, Any] = field(default_factory=dict)

    def slice_table(self) -> pd.DataFrame:
        """One row per slice (and `all`): n, accuracy, macro-F1, ECE."""
        rows = [("all", self.overall), *self.slices.items()]
        return pd.DataFrame(
            [
                {
                    "slice": name,
                    "n": m.n,
                    "accuracy": m.accuracy,
                    "macro_f1": m.macro_f1,
                    "ece": m.ece,
                }
                for name, m in rows
            ]
        )

    def mlflow_metrics(self) -> dict[str, float]:
        """Flat metrics for the run: `<split>_accuracy`, per class, per slice."""
        s = self.split
        out = {
            f"{s}_accuracy": self.overall.accuracy,
            f"{s}_macro_f1": self.overall.macro_f1,
            f"{s}_ece": self.overall.ece,
            f"{s}_images": float(self.overall.n),
        }
        for name, per_class in self.overall.per_class.items():
            out[metric_key(f"{s}_f1", f"class_{name}")] = per_class.f1
        for name, m in self.slices.items():
            out[metric_key(f"{s}_accuracy", name)] = m.accuracy
            out[metric_key(f"{s}_macro_f1", name)] = m.macro_f1
            out[metric_key(f"{s}_ece", name)] = m.ece
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "model_uri": self.model_uri,
            "split": self.split,
            "classes": list(self.classes),
            "calibration_bins": self.calibration_bins,
            "dataset": dict(self.dataset),
            "overall": self.overall.to_dict(),
            "slices": {name: m.to_dict() for name, m in self.slices.items()},
        }


def evaluate_predictions(
    probs: np.ndarray,
    labels: np.ndarray,
    frame: pd.DataFrame,
    classes: Sequence[str],
    *,
    slice_columns: Sequence[str],
    n_bins: int,
    model_uri: str = "",
    split: str = "test",
    dataset: Mapping[str, Any] | None = None,
) -> EvaluationReport:
    """Metrics overall and per slice from predictions and the rows they belong to.

    Args:
        probs: `(N, K)` class probabilities.
        labels: `(N,)` true class indices.
        frame: the N manifest rows (slice columns), in the same order.
        classes: class names.
        slice_columns: columns of `frame` defining the slices.
        n_bins: ECE bins.
        model_uri: recorded in the report.
        split: recorded in the report.
        dataset: recorded in the report (default: rows and `fingerprint_rows(frame)`).

    Raises:
        EvaluationError: mismatched lengths, missing slice columns, non-probabilities.
    """
    if len(frame) != len(labels):
        raise EvaluationError(f"{len(frame)} manifest rows for {len(labels)} predictions")
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    overall = classification_metrics(probs, labels, classes, n_bins=n_bins)
    slices = {
        name: classification_metrics(probs[mask], labels[mask], classes, n_bins=n_bins)
        for name, mask in slice_masks(frame, slice_columns).items()
    }
    return EvaluationReport(
        model_uri=model_uri,
        split=split,
        classes=tuple(classes),
        overall=overall,
        slices=slices,
        calibration_bins=n_bins,
        dataset=dict(dataset)
        if dataset is not None
        else {"images": len(frame), "fingerprint": fingerprint_rows(frame)},
    )
