"""Pictures of an evaluation for the candidate's run: confusion matrix, primary metric per slice.

Both read the generic report (`flywheel.tasks.SplitMetrics`): the bars show the
task's primary metric (classification: accuracy), and the confusion matrix is
drawn for a task that computes one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from flywheel.evaluation.errors import EvaluationError
from flywheel.evaluation.metrics import EvaluationReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from flywheel.tasks import SplitMetrics


def plot_confusion_matrix(
    metrics: SplitMetrics, classes: Sequence[str], title: str = "confusion matrix"
) -> Figure:
    """The confusion matrix as a heat map with counts (rows true, columns predicted).

    The title gives the matrix's accuracy (its diagonal over its total) and n.

    Raises:
        EvaluationError: the task computed no confusion matrix.
    """
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    if metrics.confusion is None:
        raise EvaluationError("no confusion matrix: the task does not compute one")
    confusion = np.array(metrics.confusion)  # (K, K)
    accuracy = float(np.trace(confusion)) / max(int(confusion.sum()), 1)
    size = max(4.0, 0.5 * len(classes) + 2)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(confusion, display_labels=list(classes)).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d"
    )
    ax.set_title(f"{title} (accuracy {accuracy:.3f}, n={metrics.n})")
    return fig


def plot_slice_metric(
    candidate: EvaluationReport,
    champion: EvaluationReport | None = None,
    min_slice_accuracy: float | None = None,
) -> Figure:
    """Horizontal bars of the primary metric per slice, labelled; the champion's beside it.

    For a metric in [0, 1] (accuracy) the x-axis starts a little below the
    lowest bar, not at 0: slices of a good model sit between 0.95 and 1, where
    a 0-1 axis would hide the differences the gates are about. Any other metric
    (an error count, say) is drawn from 0. Bars carry their values; the slice
    threshold (`min_slice_accuracy`, the gate on the primary metric) is a line
    when it falls on the axis, else named in the title.
    """
    from matplotlib.figure import Figure

    label = candidate.label(candidate.primary_metric)
    bound = "min" if candidate.primary_direction == "max" else "max"  # the gate: floor or ceiling
    names = ["all", *candidate.slices]
    ours = [candidate.primary(name) for name in names]
    theirs: list[float] = []
    if champion is not None:
        theirs = [
            champion.primary(n) if n == "all" or n in champion.slices else np.nan for n in names
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
    shown = [v for v in (*ours, *theirs) if not np.isnan(v)]
    if min(shown) >= 0.0 and max(shown) <= 1.0:
        left = max(0.0, np.floor((min(shown) - 0.02) * 20) / 20)  # a 0.05 step below the lowest
        right = 1.0
    else:
        left, right = min(0.0, min(shown)), max(shown)
    ax.set_xlim(left, right + (right - left) * 0.12)  # room for the value labels
    if min_slice_accuracy is not None:
        if min_slice_accuracy >= left:
            ax.axvline(
                min_slice_accuracy, color="red", linestyle="--", label=f"{bound} slice {label}"
            )
        else:  # far below every bar: say it rather than stretch the axis down to it
            ax.set_title(f"{bound} slice {label} {min_slice_accuracy:.2f}: every bar is above it")
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
    ax.set_xlabel(f"{candidate.split} {label} (axis starts at {left:.2f})")
    fig.legend(loc="outside lower center", ncol=3, frameon=False)
    return fig
