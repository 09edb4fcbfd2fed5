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
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from flywheel import registry
from flywheel.config import HOLDOUT_SPLIT, EvaluateConfig, GatesConfig
from flywheel.registry import Blessing, GateResult, LockStrategy, utc_now

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from flywheel.tasks.classification import ClassificationTask

EPSILON = 1e-9
"""Slack in gate comparisons, so that 0.8 computed as 4/5 passes a 0.8 threshold."""
PROBABILITY_TOLERANCE = 1e-3
"""How far a row of probabilities may sum from 1 (float32 softmax)."""
ARTIFACT_DIR = "evaluation"
"""Folder of the evaluation artifacts in the candidate's run."""


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated (wrong shapes, logits instead of probabilities,
    a model without task metadata, reports on different data); the message names the culprit."""


# ------------------------------------------------------------------ metrics


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


# -------------------------------------------------------------------- gates


def _gate(name: str, value: float, threshold: float, comparison: str, detail: str) -> GateResult:
    passed = value >= threshold - EPSILON if comparison == ">=" else value <= threshold + EPSILON
    return GateResult(
        name,
        float(value),
        float(threshold),
        ">=" if comparison == ">=" else "<=",
        bool(passed),
        detail,
    )


def check_gates(
    candidate: EvaluationReport,
    champion: EvaluationReport | None,
    gates: GatesConfig,
    *,
    champion_version: str | None = None,
    model_name: str | None = None,
    candidate_version: str | None = None,
    evaluated_at: str | None = None,
    holdout: EvaluationReport | None = None,
    champion_holdout: EvaluationReport | None = None,
) -> Blessing:
    """Apply the gates of `params.yaml` to a candidate (and its champion) and return the verdict.

    Absolute gates: `min_accuracy`, optional `min_macro_f1`, `max_ece` and
    `min_slice_accuracy[<slice>]`. With a champion (the `production` model
    evaluated on the same images) also `slice_regression[<slice>]` (accuracy
    lost on the slice, at most `max_slice_regression`) and `beats_champion`
    (accuracy gained overall, at least `min_improvement`). Slices with fewer
    than `min_slice_support` images are reported but not gated (a note says so).

    With the production holdout (`holdout`, `champion_holdout`: both models on
    the dataset's `holdout` split, labelled production traffic that no model
    trained on) and a champion, `holdout_regression` caps the accuracy lost on
    it (`max_slice_regression`), and `beats_champion` is met by the better of
    the two gains, frozen test or holdout: after drift a retrained model must
    be able to win on the traffic it was retrained for while holding the test
    split. A holdout below `min_slice_support` images is reported, not gated.

    Args:
        candidate: the candidate's report.
        champion: the champion's report on the same data, None for a first model.
        gates: thresholds.
        champion_version: the champion's registry version (recorded).
        model_name: the registered model (recorded).
        candidate_version: the candidate's version (recorded).
        evaluated_at: UTC ISO time (default: now).
        holdout: the candidate's report on the holdout split (None: no holdout).
        champion_holdout: the champion's report on the same holdout.

    Raises:
        EvaluationError: the champion was evaluated on other images, split or classes.
    """
    ov = candidate.overall
    results = [
        _gate(
            "min_accuracy",
            ov.accuracy,
            gates.min_accuracy,
            ">=",
            f"{round(ov.accuracy * ov.n)}/{ov.n} correct",
        ),
    ]
    if gates.min_macro_f1 is not None:
        results.append(_gate("min_macro_f1", ov.macro_f1, gates.min_macro_f1, ">=", ""))
    if gates.max_ece is not None:
        results.append(
            _gate("max_ece", ov.ece, gates.max_ece, "<=", f"{candidate.calibration_bins} bins")
        )
    notes: list[str] = []
    gated = {}
    for name, m in candidate.slices.items():
        if m.n >= gates.min_slice_support:
            gated[name] = m
        else:
            notes.append(
                f"slice {name}: {m.n} images < min_slice_support "
                f"{gates.min_slice_support}, not gated"
            )
    if gates.min_slice_accuracy is not None:
        for name, m in gated.items():
            results.append(
                _gate(
                    f"min_slice_accuracy[{name}]",
                    m.accuracy,
                    gates.min_slice_accuracy,
                    ">=",
                    f"{m.n} images",
                )
            )
    metrics = {
        "accuracy": ov.accuracy,
        "macro_f1": ov.macro_f1,
        "ece": ov.ece,
        "images": float(ov.n),
    }
    holdout_gain: float | None = None
    if holdout is not None:
        metrics["holdout_accuracy"] = holdout.overall.accuracy
        metrics["holdout_images"] = float(holdout.overall.n)
        if champion_holdout is not None:
            _check_comparable(holdout, champion_holdout)
            metrics["champion_holdout_accuracy"] = champion_holdout.overall.accuracy
        if holdout.overall.n < gates.min_slice_support:
            notes.append(
                f"holdout: {holdout.overall.n} images < min_slice_support "
                f"{gates.min_slice_support}, not gated"
            )
        elif champion is not None and champion_holdout is not None:
            ours_h, theirs_h = holdout.overall.accuracy, champion_holdout.overall.accuracy
            holdout_gain = ours_h - theirs_h
            if gates.max_slice_regression is not None:
                results.append(
                    _gate(
                        "holdout_regression",
                        -holdout_gain,
                        gates.max_slice_regression,
                        "<=",
                        f"candidate {ours_h:.4f} vs champion {theirs_h:.4f} "
                        f"on {holdout.overall.n} production holdout images",
                    )
                )
    if champion is None:
        notes.append("no production model: absolute gates only")
    else:
        _check_comparable(candidate, champion)
        cov = champion.overall
        metrics["champion_accuracy"] = cov.accuracy
        if gates.max_slice_regression is not None:
            for name, m in gated.items():
                theirs = champion.slices[name]
                results.append(
                    _gate(
                        f"slice_regression[{name}]",
                        theirs.accuracy - m.accuracy,
                        gates.max_slice_regression,
                        "<=",
                        f"candidate {m.accuracy:.4f} vs champion {theirs.accuracy:.4f} "
                        f"on {m.n} images",
                    )
                )
        test_gain = ov.accuracy - cov.accuracy
        detail = (
            f"candidate {ov.accuracy:.4f} vs champion {cov.accuracy:.4f} "
            f"(version {champion_version or '?'})"
        )
        if holdout_gain is not None:
            detail = f"test: {detail}; holdout: {holdout_gain:+.4f}; the better gain counts"
        results.append(
            _gate(
                "beats_champion",
                max(test_gain, holdout_gain) if holdout_gain is not None else test_gain,
                gates.min_improvement,
                ">=",
                detail,
            )
        )
    return Blessing(
        candidate_uri=candidate.model_uri,
        champion_version=champion_version if champion is not None else None,
        gates=tuple(results),
        split=candidate.split,
        evaluated_at=evaluated_at or utc_now(),
        model_name=model_name,
        candidate_version=candidate_version,
        metrics=metrics,
        dataset=dict(candidate.dataset),
        notes=tuple(notes),
    )


def _check_comparable(candidate: EvaluationReport, champion: EvaluationReport) -> None:
    """A champion comparison is only meaningful on the same images, split and classes."""
    ours, theirs = candidate.dataset.get("fingerprint"), champion.dataset.get("fingerprint")
    problems = []
    if ours != theirs:
        problems.append(f"data fingerprint {ours} vs {theirs}")
    if candidate.split != champion.split:
        problems.append(f"split {candidate.split!r} vs {champion.split!r}")
    if candidate.classes != champion.classes:
        problems.append(f"classes {list(candidate.classes)} vs {list(champion.classes)}")
    if set(candidate.slices) != set(champion.slices):
        problems.append("different slices")
    if problems:
        raise EvaluationError(
            f"candidate {candidate.model_uri} and champion {champion.model_uri} were not "
            f"evaluated on the same data: {'; '.join(problems)}"
        )


# ------------------------------------------------------------ running models


@dataclass(frozen=True)
class Predictions:
    """A model's outputs on a split, aligned with the split's manifest rows.

    Attributes:
        probs: `(N, K)` class probabilities.
        labels: `(N,)` true class indices.
        frame: the N manifest rows.
        classes: class names of the probability columns.
    """

    probs: np.ndarray
    labels: np.ndarray
    frame: pd.DataFrame
    classes: tuple[str, ...]


def load_task(model_uri: str) -> ClassificationTask:
    """The classification Task a logged model was trained with, rebuilt from its metadata.

    Raises:
        EvaluationError: the model has no task metadata or is not a classifier.
    """
    from mlflow.models import get_model_info

    from flywheel.tasks import get_task
    from flywheel.tasks.classification import ClassificationTask

    metadata = get_model_info(model_uri).metadata or {}
    if "task" not in metadata:
        raise EvaluationError(
            f"{model_uri}: the logged model has no task metadata (log it with "
            "metadata=task.export_metadata(), as flywheel.modeling.training does)"
        )
    try:
        task = get_task(str(metadata["task"])).from_metadata(metadata)
    except ValueError as err:
        raise EvaluationError(f"{model_uri}: {err}") from None
    if not isinstance(task, ClassificationTask):
        raise EvaluationError(
            f"{model_uri}: evaluation supports classification models only, not task {task.name!r}"
        )
    return task


def predict_split(
    model_uri: str,
    dataset_dir: str | Path,
    split: str,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool = True,
) -> Predictions:
    """Run a logged model over one split of a manifest dataset.

    The images go through the pre-processing of the Task the model was logged
    with (`load_task`), in batches, under `torch.inference_mode`.

    Args:
        model_uri: e.g. `runs:/<id>/model`, `models:/<name>/<version>`.
        dataset_dir: folder with `manifest.csv`.
        split: the split to run.
        batch_size: images per forward pass.
        device: torch device.
        progress: show a progress bar.

    Raises:
        EvaluationError: no task metadata; outputs of the wrong shape.
        flywheel.tasks.DatasetError: the split cannot be read (names the rows).
    """
    import mlflow.pytorch
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    task = load_task(model_uri)
    dataset = task.build_dataset(Path(dataset_dir), split)
    model = mlflow.pytorch.load_model(model_uri, device=device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    chunks: list[np.ndarray] = []
    with torch.inference_mode():
        for images, _ in tqdm(
            loader, desc=f"evaluate {split}", unit="batch", disable=not progress, leave=False
        ):
            output = model(images.to(device))  # (B, K + D)
            try:
                probs, _embedding = task.split_output(output)  # (B, K), (B, D)
            except ValueError as err:
                raise EvaluationError(f"{model_uri}: {err}") from None
            chunks.append(probs.astype(np.float64))
    return Predictions(
        probs=np.concatenate(chunks),  # (N, K)
        labels=dataset.targets.numpy(),  # (N,)
        frame=dataset.frame,
        classes=tuple(task.classes),
    )


def evaluate_model(
    model_uri: str,
    dataset_dir: str | Path,
    config: EvaluateConfig,
    *,
    progress: bool = True,
    split: str | None = None,
) -> EvaluationReport:
    """`predict_split` then `evaluate_predictions`, as `config` says (split, slices, bins).

    `split` evaluates another split than `config.split` (e.g. the production holdout).
    """
    split = split or config.split
    predictions = predict_split(
        model_uri, dataset_dir, split, batch_size=config.batch_size, progress=progress
    )
    return evaluate_predictions(
        predictions.probs,
        predictions.labels,
        predictions.frame,
        predictions.classes,
        slice_columns=config.slice_columns,
        n_bins=config.calibration_bins,
        model_uri=model_uri,
        split=split,
        dataset={
            "path": str(dataset_dir),
            "images": len(predictions.frame),
            "fingerprint": fingerprint_rows(predictions.frame),
        },
    )


# ---------------------------------------------------------------- pictures


def plot_confusion_matrix(
    metrics: ClassificationMetrics, classes: Sequence[str], title: str = "confusion matrix"
) -> Figure:
    """The confusion matrix as a heat map with counts (rows true, columns predicted)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(4.0, 0.5 * len(classes) + 2)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(np.array(metrics.confusion), display_labels=list(classes)).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d"
    )
    ax.set_title(f"{title} (accuracy {metrics.accuracy:.3f}, n={metrics.n})")
    return fig


def plot_slice_accuracy(
    candidate: EvaluationReport,
    champion: EvaluationReport | None = None,
    min_slice_accuracy: float | None = None,
) -> Figure:
    """Horizontal bars of accuracy per slice, each labelled; the champion's beside it when given.

    The x-axis starts a little below the lowest bar, not
    at 0: slices of a good model sit between 0.95 and 1, where a 0-1 axis would
    hide the differences the gates are about. Bars carry their values; the slice
    threshold is a line when it falls on the axis, else named in the title.
    """
    from matplotlib.figure import Figure

    names = ["all", *candidate.slices]
    ours = [candidate.overall.accuracy, *(m.accuracy for m in candidate.slices.values())]
    theirs: list[float] = []
    if champion is not None:
        theirs = [
            champion.overall.accuracy,
            *(
                champion.slices[n].accuracy if n in champion.slices else np.nan
                for n in candidate.slices
            ),
        ]
    fig = Figure(figsize=(8, 0.4 * len(names) * (2 if champion else 1) + 1.8), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(names))
    height = 0.4 if champion is not None else 0.8
    bars = [ax.barh(y - (height / 2 if champion else 0), ours, height=height, label="candidate")]
    if champion is not None:
        bars.append(ax.barh(y + height / 2, theirs, height=height, label="champion (production)"))
    for group in bars:
        ax.bar_label(group, fmt="%.3f", padding=2, fontsize=8)
    lows = [v for v in (*ours, *theirs) if not np.isnan(v)]
    left = max(0.0, np.floor((min(lows) - 0.02) * 20) / 20)  # a 0.05 step below the lowest
    ax.set_xlim(left, 1.0 + (1.0 - left) * 0.12)  # room for the value labels
    if min_slice_accuracy is not None:
        if min_slice_accuracy >= left:
            ax.axvline(min_slice_accuracy, color="red", linestyle="--", label="min slice accuracy")
        else:  # far below every bar: say it rather than stretch the axis down to it
            ax.set_title(f"min slice accuracy {min_slice_accuracy:.2f}: every bar is above it")
    ax.set_yticks(
        y,
        [
            f"{n} (n={m})"
            for n, m in zip(
                names, [candidate.overall.n, *(s.n for s in candidate.slices.values())], strict=True
            )
        ],
    )
    ax.invert_yaxis()
    ax.set_xlabel(f"{candidate.split} accuracy (axis starts at {left:.2f})")
    fig.legend(loc="outside lower center", ncol=3, frameon=False)
    return fig


# ------------------------------------------------------------------ logging


def log_evaluation(
    run_id: str,
    report: EvaluationReport,
    blessing: Blessing,
    champion: EvaluationReport | None = None,
    *,
    min_slice_accuracy: float | None = None,
    holdout: EvaluationReport | None = None,
    champion_holdout: EvaluationReport | None = None,
) -> None:
    """Write the evaluation into an MLflow run (the candidate's training run).

    Metrics: `mlflow_metrics()` of the report (and of the holdout report:
    `holdout_accuracy`, per slice), `blessed` (1/0), `gates_failed` and
    `gate/<name>` values. Artifacts under `evaluation/`: the report and the
    blessing as JSON, the per-slice table (CSV and an MLflow table), the
    confusion matrix and the per-slice accuracy bars (PNG).
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient()
    now = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
    values = report.mlflow_metrics()
    values["blessed"] = float(blessing.blessed)
    values["gates_failed"] = float(len(blessing.failed_gates))
    for gate in blessing.gates:
        values[metric_key("gate", gate.name)] = gate.value
    if champion is not None:
        values[f"champion_{report.split}_accuracy"] = champion.overall.accuracy
    if holdout is not None:
        values.update(holdout.mlflow_metrics())
    if champion_holdout is not None:
        values[f"champion_{champion_holdout.split}_accuracy"] = champion_holdout.overall.accuracy
    metrics = [Metric(key, float(v), now, 0) for key, v in values.items()]
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    client.log_dict(run_id, report.to_dict(), f"{ARTIFACT_DIR}/report.json")
    if champion is not None:
        client.log_dict(run_id, champion.to_dict(), f"{ARTIFACT_DIR}/champion_report.json")
    if holdout is not None:
        client.log_dict(run_id, holdout.to_dict(), f"{ARTIFACT_DIR}/holdout_report.json")
    client.log_text(
        run_id, json.dumps(blessing.to_dict(), indent=2), f"{ARTIFACT_DIR}/blessing.json"
    )
    table = report.slice_table()
    client.log_text(run_id, table.to_csv(index=False), f"{ARTIFACT_DIR}/slices.csv")
    client.log_table(run_id, data=table, artifact_file=f"{ARTIFACT_DIR}/slices.json")
    client.log_figure(
        run_id,
        plot_confusion_matrix(report.overall, report.classes),
        f"{ARTIFACT_DIR}/confusion_matrix.png",
    )
    client.log_figure(
        run_id,
        plot_slice_accuracy(report, champion, min_slice_accuracy),
        f"{ARTIFACT_DIR}/slice_accuracy.png",
    )
    client.set_tag(run_id, "flywheel.blessed", str(blessing.blessed).lower())


# -------------------------------------------------------------------- stage


@dataclass(frozen=True)
class EvaluationOutcome:
    """What `evaluate_candidate` produced.

    Attributes:
        blessing: the gates' verdict (also stored on the version).
        report: the candidate's evaluation.
        champion: the champion's evaluation on the same data, None without one.
        holdout: the candidate on the production holdout split, None without one.
        champion_holdout: the champion on the same holdout.
    """

    blessing: Blessing
    report: EvaluationReport
    champion: EvaluationReport | None
    holdout: EvaluationReport | None = None
    champion_holdout: EvaluationReport | None = None


def evaluate_candidate(
    name: str,
    version: str,
    dataset_dir: str | Path,
    config: EvaluateConfig,
    *,
    who: str | None = None,
    lock: LockStrategy = "auto",
    progress: bool = True,
) -> EvaluationOutcome:
    """Stage 5: evaluate a registered version against `production`, bless it or not.

    Both models run on the same split of the same dataset. When the dataset has
    a production holdout (split `holdout`, merged labelled traffic), both also
    run on it and `check_gates` weighs it too. The result is logged to the
    candidate's training run (when the version has one) and recorded on the
    version (`registry.record_blessing`): a blessed version becomes `staging`.

    Args:
        name: the registered model.
        version: the candidate version.
        dataset_dir: the dataset folder (`manifest.csv`).
        config: `evaluate` of params.yaml (split, slices, bins, gates).
        who: recorded on the version (default `registry.resolve_user()`).
        lock: the registry lock strategy.
        progress: show progress bars.

    Raises:
        registry.ModelNotFoundError, registry.VersionNotFoundError: no such version.
        EvaluationError: the models or the data cannot be evaluated.
    """
    version = str(version)
    candidate_version = registry.get_version(name, version)
    champion_version = registry.version_for_alias(name, registry.ALIAS_PRODUCTION)
    if champion_version == version:
        champion_version = None  # re-evaluating production itself: absolute gates only
    report = evaluate_model(
        registry.model_uri(name, version), dataset_dir, config, progress=progress
    )
    champion = (
        evaluate_model(
            registry.model_uri(name, champion_version), dataset_dir, config, progress=progress
        )
        if champion_version is not None
        else None
    )
    holdout = champion_holdout = None
    if has_split(dataset_dir, HOLDOUT_SPLIT):
        holdout = evaluate_model(
            registry.model_uri(name, version),
            dataset_dir,
            config,
            progress=progress,
            split=HOLDOUT_SPLIT,
        )
        if champion_version is not None:
            champion_holdout = evaluate_model(
                registry.model_uri(name, champion_version),
                dataset_dir,
                config,
                progress=progress,
                split=HOLDOUT_SPLIT,
            )
    blessing = check_gates(
        report,
        champion,
        config.gates,
        champion_version=champion_version,
        model_name=name,
        candidate_version=version,
        holdout=holdout,
        champion_holdout=champion_holdout,
    )
    if candidate_version.run_id:
        log_evaluation(
            candidate_version.run_id,
            report,
            blessing,
            champion,
            min_slice_accuracy=config.gates.min_slice_accuracy,
            holdout=holdout,
            champion_holdout=champion_holdout,
        )
    registry.record_blessing(name, version, blessing, who=who, lock=lock)
    return EvaluationOutcome(blessing, report, champion, holdout, champion_holdout)


def has_split(dataset_dir: str | Path, split: str) -> bool:
    """Whether the dataset's manifest has any row in `split` (False without a manifest)."""
    from flywheel.data.manifest import ManifestError, load_manifest

    try:
        manifest = load_manifest(dataset_dir)
    except ManifestError:
        return False
    return "split" in manifest and bool((manifest["split"] == split).any())
