"""Pictures of a candidate's answers, where people would rather look than read.

For a task that gives class probabilities (classification):

- the reliability diagram: per confidence bin, how often the model was right
  against how sure it was (the ECE the gates read is the weighted gap);
- the worst mistakes per slice: the wrong answers it was most sure of, as the
  images themselves, captioned "true → predicted (confidence)".

Both are logged into the candidate's run beside the other evaluation artifacts.
A task without class probabilities gets neither (its own pictures would come
from its own hooks).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RELIABILITY_PNG = "reliability.png"
MISTAKES_PNG = "worst_mistakes.png"


def plot_reliability(probabilities: np.ndarray, targets: np.ndarray, n_bins: int) -> Figure:
    """The reliability diagram of top-label confidence, with the share of images per bin.

    Args:
        probabilities: `(N, K)` class probabilities.
        targets: `(N,)` the true class indices.
        n_bins: equal-width confidence bins (the ECE's, `evaluate.calibration_bins`).
    """
    from matplotlib.figure import Figure

    confidence = probabilities.max(axis=1)  # (N,)
    correct = (probabilities.argmax(axis=1) == targets).astype(np.float64)  # (N,)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)  # (N,)
    counts = np.bincount(bins, minlength=n_bins)  # (n_bins,)
    filled = counts > 0
    n = counts[filled]  # images per non-empty bin
    accuracy = np.bincount(bins, weights=correct, minlength=n_bins)[filled] / n
    mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins)[filled] / n
    ece = float(np.sum(n * np.abs(accuracy - mean_confidence)) / max(len(targets), 1))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    centres = ((edges[:-1] + edges[1:]) / 2)[filled]

    fig = Figure(figsize=(6, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    top.bar(centres, accuracy, width=1 / n_bins, edgecolor="black", alpha=0.8, label="accuracy")
    top.plot(mean_confidence, accuracy, "o", color="black", label="mean confidence of the bin")
    top.set_ylabel("accuracy in the bin")
    top.set_ylim(0, 1)
    top.set_title(f"reliability (ECE {ece:.3f}, n={len(targets)}, {n_bins} bins)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, n / max(len(targets), 1), width=1 / n_bins, color="grey")
    bottom.set_ylabel("share of images")
    bottom.set_xlabel("confidence (top class probability)")
    bottom.set_xlim(0, 1)
    return fig


def plot_worst_mistakes(
    dataset_dir: str | Path,
    frame: pd.DataFrame,
    classes: tuple[str, ...],
    probabilities: np.ndarray,
    targets: np.ndarray,
    slices: Mapping[str, np.ndarray],
    *,
    per_slice: int = 6,
) -> Figure | None:
    """The wrong answers the model was most sure of, one row of images per slice.

    Args:
        dataset_dir: the dataset folder (the manifest's `path` is relative to it).
        frame: the N manifest rows, in the order of `probabilities`.
        classes: class names, the columns of `probabilities`.
        probabilities: `(N, K)` class probabilities.
        targets: `(N,)` the true class indices.
        slices: slice name → boolean mask `(N,)` (one row of the picture each).
        per_slice: images per row.

    Returns:
        The figure, or None when the model made no mistake at all.
    """
    from matplotlib.figure import Figure

    predicted = probabilities.argmax(axis=1)  # (N,)
    confidence = probabilities.max(axis=1)  # (N,)
    wrong = predicted != targets
    rows: list[tuple[str, np.ndarray]] = []
    for name, mask in {"all": np.ones(len(frame), dtype=bool), **slices}.items():
        picked = np.flatnonzero(mask & wrong)
        if len(picked):
            worst = picked[np.argsort(-confidence[picked], kind="stable")][:per_slice]
            rows.append((f"{name}\n{int((mask & wrong).sum())} wrong of {int(mask.sum())}", worst))
    if not rows:
        return None
    fig = Figure(figsize=(1.6 * per_slice + 1.8, 1.9 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), per_slice, squeeze=False)
    for (title, picked), line in zip(rows, axes, strict=True):
        line[0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
        for ax, i in zip(line, [*picked, *[None] * (per_slice - len(picked))], strict=True):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if i is None:
                continue
            ax.imshow(
                _image(Path(dataset_dir) / frame["path"].iloc[i]), cmap="gray", vmin=0, vmax=255
            )
            ax.set_title(
                f"{classes[targets[i]]} → {classes[predicted[i]]} ({confidence[i]:.2f})",
                fontsize=8,
                color="firebrick",
            )
    fig.suptitle("most confident mistakes (true → predicted (confidence))", fontsize=10)
    return fig


def _image(path: Path) -> np.ndarray:
    """The image as stored (grey or RGB); a grey square with a cross when it cannot be read."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB" if image.mode not in {"L", "I;16"} else "L"))
    except (OSError, UnidentifiedImageError):
        blank = np.full((16, 16), 128, dtype=np.uint8)
        np.fill_diagonal(blank, 0)
        return blank
