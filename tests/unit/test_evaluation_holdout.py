"""The production holdout in the gates: candidate and champion on merged, held-out traffic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.config import HOLDOUT_SPLIT, GatesConfig
from flywheel.data.manifest import COLUMNS, save_manifest
from flywheel.evaluation import (
    EvaluationError,
    EvaluationReport,
    check_gates,
    has_split,
)
from tests.support.evaluation import classification_report

CLASSES = ("a", "b")


def _report(n: int, wrong: int, split: str, model: str = "m", prefix: str = "") -> EvaluationReport:
    """`n` images of one stratum, the first `wrong` of them misclassified."""
    labels = np.arange(n) % 2  # (n,)
    predicted = np.where(np.arange(n) < wrong, 1 - labels, labels)  # (n,)
    probs = np.eye(2)[predicted] * 0.8 + 0.1  # (n, 2), rows sum to 1
    frame = pd.DataFrame(
        {"style": "printed", "noise": "clean", "image_id": [f"{prefix}{i}" for i in range(n)]}
    )
    return classification_report(
        probs,
        labels,
        frame,
        CLASSES,
        slice_columns=("style", "noise"),
        n_bins=10,
        model_uri=model,
        split=split,
    )


GATES = GatesConfig(min_accuracy=0.5, max_slice_regression=0.05, min_improvement=0.01)


@pytest.mark.parametrize(
    ("test_wrong", "holdout_wrong", "failed", "beats"),
    [
        # champion: 5/100 wrong on test, 20/40 wrong on the holdout
        pytest.param(5, 4, [], 0.4, id="same on test, far better on the holdout: promoted"),
        pytest.param(4, 20, [], 0.01, id="better on test, same on the holdout"),
        pytest.param(5, 20, ["beats_champion"], 0.0, id="no gain anywhere"),
        pytest.param(
            5, 24, ["holdout_regression", "beats_champion"], 0.0, id="worse on the holdout"
        ),
        pytest.param(
            11,
            4,
            [
                "slice_regression[style=printed]",
                "slice_regression[noise=clean]",
                "slice_regression[style=printed,noise=clean]",
            ],
            0.4,
            id="a holdout win does not excuse a test-slice regression",
        ),
    ],
)
def test_the_holdout_counts_in_the_gates(
    test_wrong: int, holdout_wrong: int, failed: list[str], beats: float
) -> None:
    blessing = check_gates(
        _report(100, test_wrong, "test"),
        _report(100, 5, "test", model="champion"),
        GATES,
        champion_version="1",
        holdout=_report(40, holdout_wrong, HOLDOUT_SPLIT, prefix="h"),
        champion_holdout=_report(40, 20, HOLDOUT_SPLIT, model="champion", prefix="h"),
    )
    assert blessing.failed_gates == failed
    assert blessing.gate("beats_champion").value == pytest.approx(beats)
    assert "holdout" in blessing.gate("beats_champion").detail
    assert blessing.metrics["holdout_accuracy"] == pytest.approx(1 - holdout_wrong / 40)
    assert blessing.metrics["champion_holdout_accuracy"] == pytest.approx(0.5)


def test_a_small_holdout_is_reported_not_gated() -> None:
    blessing = check_gates(
        _report(100, 5, "test"),
        _report(100, 5, "test", model="champion"),
        GATES,
        holdout=_report(10, 0, HOLDOUT_SPLIT, prefix="h"),
        champion_holdout=_report(10, 9, HOLDOUT_SPLIT, model="champion", prefix="h"),
    )
    assert "holdout_regression" not in [g.name for g in blessing.gates]
    assert blessing.failed_gates == ["beats_champion"]  # the small holdout's win does not count
    assert any("holdout: 10 images < min_slice_support" in note for note in blessing.notes)


def test_a_first_model_with_a_holdout_faces_the_absolute_gates_only() -> None:
    blessing = check_gates(
        _report(100, 5, "test"), None, GATES, holdout=_report(40, 30, HOLDOUT_SPLIT, prefix="h")
    )
    assert blessing.blessed
    assert blessing.metrics["holdout_accuracy"] == pytest.approx(0.25)


def test_holdouts_of_different_images_are_not_compared() -> None:
    with pytest.raises(EvaluationError, match="not evaluated on the same data"):
        check_gates(
            _report(100, 5, "test"),
            _report(100, 5, "test", model="champion"),
            GATES,
            holdout=_report(40, 0, HOLDOUT_SPLIT, prefix="h"),
            champion_holdout=_report(40, 0, HOLDOUT_SPLIT, model="champion", prefix="other"),
        )


def test_has_split(tmp_path: Path) -> None:
    assert not has_split(tmp_path, HOLDOUT_SPLIT)  # no manifest at all
    row = {c: "x" for c in COLUMNS} | {"width": 1, "height": 1, "split": "train"}
    save_manifest(pd.DataFrame([row]), tmp_path)
    assert not has_split(tmp_path, HOLDOUT_SPLIT)
    save_manifest(pd.DataFrame([row, {**row, "image_id": "y", "split": HOLDOUT_SPLIT}]), tmp_path)
    assert has_split(tmp_path, HOLDOUT_SPLIT)
