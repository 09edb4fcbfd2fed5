"""The reliability diagram and the worst mistakes per slice, drawn from fixed answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flywheel.evaluation.pictures import plot_reliability, plot_worst_mistakes
from flywheel.tasks.classification_metrics import expected_calibration_error

CLASSES = ("cat", "dog", "fox")
PROBS = np.array(
    [
        [0.9, 0.05, 0.05],  # right, sure
        [0.2, 0.7, 0.1],  # right
        [0.1, 0.1, 0.8],  # wrong (true cat), sure
        [0.6, 0.3, 0.1],  # wrong (true dog)
        [0.34, 0.33, 0.33],  # right, unsure
        [0.05, 0.9, 0.05],  # wrong (true fox), surest mistake
    ]
)
TARGETS = np.array([0, 1, 0, 1, 0, 2])


def test_the_reliability_diagram_shows_the_ece_the_gates_read() -> None:
    fig = plot_reliability(PROBS, TARGETS, n_bins=5)

    top, bottom = fig.axes
    ece = expected_calibration_error(PROBS, TARGETS, n_bins=5)
    assert top.get_title() == f"reliability (ECE {ece:.3f}, n=6, 5 bins)"
    heights = [bar.get_height() for bar in bottom.patches]
    assert sum(heights) == pytest.approx(1.0)  # shares of images over the non-empty bins


def test_the_worst_mistakes_are_the_surest_wrong_answers_per_slice(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "path": [f"images/{i}.png" for i in range(6)],
            "style": ["printed", "printed", "printed", "handwritten", "handwritten", "printed"],
        }
    )
    (tmp_path / "images").mkdir()
    for i in range(6):
        Image.new("L", (8, 8), color=40 * i).save(tmp_path / "images" / f"{i}.png")
    slices = {"style=printed": (frame["style"] == "printed").to_numpy()}

    fig = plot_worst_mistakes(tmp_path, frame, CLASSES, PROBS, TARGETS, slices, per_slice=2)

    assert fig is not None
    axes = fig.axes
    assert len(axes) == 4  # rows "all" and "style=printed", 2 images each
    titles = [ax.get_title() for ax in axes]
    # all: the fox taken for a dog (0.90), then the cat taken for a fox (0.80)
    assert titles[:2] == ["fox → dog (0.90)", "cat → fox (0.80)"]
    assert titles[2:] == ["fox → dog (0.90)", "cat → fox (0.80)"]
    assert axes[0].get_ylabel() == "all\n3 wrong of 6"
    assert axes[2].get_ylabel() == "style=printed\n2 wrong of 4"
    assert int(axes[0].images[0].get_array()[0, 0]) == 200  # image 5 itself


def test_no_mistakes_no_picture(tmp_path: Path) -> None:
    right = np.eye(3)[[0, 1, 2]]
    frame = pd.DataFrame({"path": ["a.png", "b.png", "c.png"]})

    assert plot_worst_mistakes(tmp_path, frame, CLASSES, right, np.array([0, 1, 2]), {}) is None
