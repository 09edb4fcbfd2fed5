"""Pictures of an evaluation for the candidate's run: confusion matrix, accuracy per slice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from flywheel.evaluation.metrics import ClassificationMetrics, EvaluationReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
