"""The pure core: a task's metrics overall and per slice, in one report.

`slice_masks` names the slices of the manifest's slice columns;
`evaluate_predictions` scores a decoded split and each of its slices with the
task's own metrics (`Task.evaluation_metrics` → `flywheel.tasks.SplitMetrics`)
and puts them into an `EvaluationReport`, which knows the task only by name,
its metric names, its primary metric and that metric's direction. Nothing here
is specific to classification. Unit-tested on small tables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flywheel.evaluation.errors import EvaluationError

if TYPE_CHECKING:  # evaluation is imported without torch; the tasks are loaded with a model
    from flywheel.tasks import DecodedBatch, SplitMetrics, Task
    from flywheel.tasks.base import Direction


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
        classes: the task's class names (for classification, the probability columns).
        overall: metrics over the whole split.
        slices: slice name → metrics of the rows in that slice.
        calibration_bins: the bins of any calibration metric (classification's ECE).
        dataset: folder, number of images, `fingerprint_rows` of the split.
        task: the task's registry name (`Task.name`).
        primary_metric: the metric the accuracy-type gates judge (`Task.primary_metric`).
        primary_direction: whether a larger (`max`) or smaller (`min`) primary metric is better.
        metric_labels: metric name → title in tables and pictures (`Task.metric_labels`).
    """

    model_uri: str
    split: str
    classes: tuple[str, ...]
    overall: SplitMetrics
    slices: Mapping[str, SplitMetrics]
    calibration_bins: int
    dataset: Mapping[str, Any] = field(default_factory=dict)
    task: str = field(kw_only=True)
    primary_metric: str = field(kw_only=True)
    primary_direction: Direction = field(kw_only=True)
    metric_labels: Mapping[str, str] = field(default_factory=dict, kw_only=True)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics the task computed, in its order (the columns of tables)."""
        return tuple(self.overall.values)

    def label(self, metric: str) -> str:
        """How tables and pictures title `metric` (e.g. `macro-F1`)."""
        return self.metric_labels.get(metric, metric)

    def primary(self, name: str = "all") -> float:
        """The primary metric over the whole split (`all`) or on slice `name`."""
        return (self.overall if name == "all" else self.slices[name])[self.primary_metric]

    def gain(self, ours: float, theirs: float) -> float:
        """How much better `ours` is than `theirs` on the primary metric (negative: worse).

        >>> from flywheel.tasks import SplitMetrics
        >>> EvaluationReport("m", "test", ("a", "b"), SplitMetrics(1, {"mae": 1.0}), {}, 10,
        ...                  task="count", primary_metric="mae", primary_direction="min"
        ...                  ).gain(0.5, 0.75)
        0.25
        """
        return ours - theirs if self.primary_direction == "max" else theirs - ours

    def slice_table(self) -> pd.DataFrame:
        """One row per slice (and `all`): n and every metric (accuracy, macro-F1, ECE, ...)."""
        rows = [("all", self.overall), *self.slices.items()]
        return pd.DataFrame([{"slice": name, "n": m.n, **m.values} for name, m in rows])

    def class_table(self) -> pd.DataFrame | None:
        """One row per class of the whole split (precision, recall, F1, support, ...).

        None for a task without per-class metrics.
        """
        if not self.overall.per_class:
            return None
        return pd.DataFrame([{"class": name, **m} for name, m in self.overall.per_class.items()])

    def mlflow_metrics(self) -> dict[str, float]:
        """The headline metrics for the run: `<split>_<metric>` overall and `<split>_images`.

        E.g. `test_accuracy`, `test_ece`. Per slice and per class they are tables
        (`slice_table`, `class_table`), not dozens of one-value metrics.
        """
        s = self.split
        out = {f"{s}_{name}": value for name, value in self.overall.values.items()}
        out[f"{s}_images"] = float(self.overall.n)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (`overall` and each slice as `SplitMetrics.to_dict`)."""
        return {
            "model_uri": self.model_uri,
            "split": self.split,
            "classes": list(self.classes),
            "calibration_bins": self.calibration_bins,
            "dataset": dict(self.dataset),
            "overall": self.overall.to_dict(),
            "slices": {name: m.to_dict() for name, m in self.slices.items()},
            "task": self.task,
            "primary_metric": self.primary_metric,
        }


def score(task: Task, decoded: DecodedBatch, targets: np.ndarray, *, n_bins: int) -> SplitMetrics:
    """The task's metrics of `decoded` against `targets`, checked to hold its primary metric.

    Raises:
        EvaluationError: the task cannot score them (its message), or computed
            no `primary_metric`.
    """
    try:
        metrics = task.evaluation_metrics(decoded, targets, calibration_bins=n_bins)
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    if task.primary_metric not in metrics.values:
        raise EvaluationError(
            f"task {task.name!r} declares primary metric {task.primary_metric!r} but its "
            f"evaluation computed only {sorted(metrics.values)}"
        )
    return metrics


def evaluate_predictions(
    task: Task,
    decoded: DecodedBatch,
    targets: np.ndarray,
    frame: pd.DataFrame,
    *,
    slice_columns: Sequence[str],
    n_bins: int,
    model_uri: str = "",
    split: str = "test",
    dataset: Mapping[str, Any] | None = None,
) -> EvaluationReport:
    """The task's metrics overall and per slice, from its decoded outputs and their manifest rows.

    Args:
        task: the model's task; it scores every set of samples (`Task.evaluation_metrics`).
        decoded: the model's decoded outputs, N samples.
        targets: `Task.evaluation_targets` of the N samples (a boolean mask selects a slice).
        frame: the N manifest rows (slice columns), in the same order.
        slice_columns: columns of `frame` defining the slices.
        n_bins: calibration bins.
        model_uri: recorded in the report.
        split: recorded in the report.
        dataset: recorded in the report (default: rows and `fingerprint_rows(frame)`).

    Raises:
        EvaluationError: mismatched lengths, missing slice columns, outputs the task cannot score.
    """
    try:
        direction = task.direction(task.primary_metric)
    except ValueError as err:
        raise EvaluationError(f"the primary metric has no direction: {err}") from None
    if not len(frame) == len(decoded) == len(targets):
        raise EvaluationError(
            f"{len(frame)} manifest rows for {len(decoded)} predictions and {len(targets)} targets"
        )
    overall = score(task, decoded, targets, n_bins=n_bins)
    slices = {
        name: score(task, decoded.select(mask), targets[mask], n_bins=n_bins)
        for name, mask in slice_masks(frame, slice_columns).items()
    }
    return EvaluationReport(
        model_uri=model_uri,
        split=split,
        classes=tuple(task.classes),
        overall=overall,
        slices=slices,
        calibration_bins=n_bins,
        dataset=dict(dataset)
        if dataset is not None
        else {"images": len(frame), "fingerprint": fingerprint_rows(frame)},
        task=task.name,
        primary_metric=task.primary_metric,
        primary_direction=direction,
        metric_labels=dict(task.metric_labels),
    )
