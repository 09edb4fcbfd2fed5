"""The pair's end-to-end score on hand-made pages: matching, exact transcripts, slices."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from flywheel.evaluation import EvaluationError
from flywheel.evaluation.pair import PairScore, match_page, score_pages

A = (0.0, 0.0, 10.0, 10.0)
B = (50.0, 50.0, 70.0, 60.0)
AT_40 = (0.0, 0.0, 10.0, 4.0)  # IoU 0.4 with A
AT_60 = (0.0, 0.0, 10.0, 6.0)  # IoU 0.6 with A
AT_50 = (0.0, 0.0, 10.0, 5.0)  # IoU 0.5 with A: the threshold is inclusive
FAR = (200.0, 200.0, 220.0, 210.0)  # overlaps nothing


@pytest.mark.parametrize(
    ("truth", "predicted", "matched", "correct"),
    [
        pytest.param([(A, "x")], [(A, 0.9, "x")], (0,), (True,), id="found-and-read"),
        pytest.param([(A, "x"), (B, "y")], [(A, 0.9, "x")], (0, None), (True, False), id="missed"),
        pytest.param([(A, "x")], [(AT_40, 0.9, "x")], (None,), (False,), id="iou-0.4-misses"),
        pytest.param([(A, "x")], [(AT_60, 0.9, "x")], (0,), (True,), id="iou-0.6-finds"),
        pytest.param([(A, "x")], [(AT_50, 0.9, "x")], (0,), (True,), id="iou-0.5-finds"),
        pytest.param([(A, "x+1")], [(A, 0.9, "x+2")], (0,), (False,), id="right-box-wrong-text"),
        pytest.param(
            [(A, r"\frac{1}{2}")],
            [(A, 0.9, r"\frac { 1 } {2}")],
            (0,),
            (True,),
            id="spacing-does-not-count",
        ),
        pytest.param(
            [(A, "x")],
            [(A, 0.4, "x"), (AT_60, 0.8, "y")],
            (1,),
            (False,),
            id="two-on-one-truth-the-higher-score-takes-it",
        ),
        pytest.param(
            [(A, "x"), (B, "y")],
            [(FAR, 0.99, "x"), (B, 0.5, "y")],
            (None, 1),
            (False, True),
            id="false-detection",
        ),
        pytest.param(
            [(A, "x"), (AT_60, "y")],
            [((0.0, 0.0, 10.0, 7.0), 0.9, "y")],  # IoU 0.7 with A, 0.86 with the other
            (None, 0),
            (False, True),
            id="the-better-overlap-wins",
        ),
        pytest.param([], [(A, 0.9, "x")], (), (), id="no-truth"),
        pytest.param([(A, "x")], [], (None,), (False,), id="no-prediction"),
    ],
)
def test_match_page(
    truth: list, predicted: list, matched: tuple[int | None, ...], correct: tuple[bool, ...]
) -> None:
    match = match_page(truth, predicted)
    assert match.matched == matched
    assert match.correct == correct
    assert match.n_detections == len(predicted)


def test_a_second_prediction_takes_the_truth_the_first_left() -> None:
    # The higher-scored box overlaps both truths, A more; the lower one then gets B.
    wide = (0.0, 0.0, 12.0, 10.0)
    near_a = (2.0, 0.0, 12.0, 10.0)
    match = match_page([(wide, "x"), (near_a, "y")], [(near_a, 0.9, "y"), (wide, 0.8, "x")])
    assert match.matched == (1, 0)
    assert match.n_correct == 2


def test_the_threshold_can_be_raised() -> None:
    assert match_page([(A, "x")], [(AT_60, 0.9, "x")], iou=0.7).matched == (None,)


PAGES = pd.DataFrame(
    {"level": ["high", "high", "elementary"], "noise": ["clean", "shadow", "clean"]}
)
TRUTH = [
    [(A, "x"), (B, "y")],  # one right, one read wrong
    [(A, "1+1")],  # found at 0.6 and right, plus a false detection
    [(A, "z"), (B, "w")],  # nothing found
]
PREDICTED = [
    [(A, 0.9, "x"), (B, 0.8, "v")],
    [(AT_60, 0.7, "1 + 1"), (FAR, 0.6, "2")],
    [(AT_40, 0.9, "z")],
]


def test_score_pages_counts_and_rates_overall() -> None:
    score = score_pages(TRUTH, PREDICTED)
    assert (score.n_pages, score.n_expressions, score.n_detections) == (3, 5, 5)
    assert (score.n_found, score.n_correct, score.false_detections) == (3, 2, 2)
    assert score.end_to_end == pytest.approx(2 / 5)
    assert score.found == pytest.approx(3 / 5)
    assert score.precision == pytest.approx(3 / 5)
    assert score.end_to_end <= score.found
    assert score.slices == {}


def test_score_pages_per_slice_with_support() -> None:
    score = score_pages(TRUTH, PREDICTED, pages=PAGES, slice_columns=("level", "noise"))
    assert set(score.slices) == {
        "level=elementary",
        "level=high",
        "noise=clean",
        "noise=shadow",
        "level=elementary,noise=clean",
        "level=high,noise=clean",
        "level=high,noise=shadow",
    }
    high = score.slices["level=high"]
    assert (high.n_pages, high.support, high.n_correct) == (2, 3, 2)
    assert high.end_to_end == pytest.approx(2 / 3)
    assert high.precision == pytest.approx(3 / 4)
    elementary = score.slices["level=elementary"]
    assert (elementary.support, elementary.end_to_end, elementary.found) == (2, 0.0, 0.0)
    assert elementary.precision == 0.0
    clean = score.slices["noise=clean"]
    assert (clean.n_pages, clean.support, clean.n_correct) == (2, 4, 1)
    assert score.slices["level=high,noise=shadow"].end_to_end == 1.0

    table = score.slice_table().set_index("slice")
    assert table.loc["all", "support"] == 5
    assert table.loc["level=high", "end_to_end"] == pytest.approx(2 / 3)
    as_dict = score.to_dict()
    assert as_dict["end_to_end"] == pytest.approx(0.4)
    assert as_dict["slices"]["level=high"]["n_expressions"] == 3
    assert score.mlflow_metrics("test_pair") == {
        "test_pair_end_to_end": pytest.approx(0.4),
        "test_pair_found": pytest.approx(0.6),
        "test_pair_precision": pytest.approx(0.6),
        "test_pair_pages": 3.0,
        "test_pair_expressions": 5.0,
    }


def test_empty_pages_count_as_pages_and_rates_without_a_whole_are_nan() -> None:
    score = score_pages([[], []], [[], [(A, 0.9, "x")]])
    assert (score.n_pages, score.n_expressions, score.n_detections, score.n_found) == (2, 0, 1, 0)
    assert math.isnan(score.end_to_end)
    assert math.isnan(score.found)
    assert score.precision == 0.0
    nothing = score_pages([], [])
    assert (nothing.n_pages, nothing.n_expressions) == (0, 0)
    assert math.isnan(nothing.precision)
    assert isinstance(nothing, PairScore)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: score_pages([[]], []), "1 pages of truth but 0"),
        (lambda: score_pages([[]], [[]], iou=0.0), "IoU threshold"),
        (lambda: score_pages([[]], [[]], slice_columns=("level",)), "need the pages' rows"),
        (
            lambda: score_pages([[]], [[]], pages=pd.DataFrame({"x": [1]}), slice_columns=["lv"]),
            "slice columns",
        ),
        (lambda: score_pages([[(A[:3], "x")]], [[]]), r"\(x0, y0, x1, y1\)"),
    ],
)
def test_bad_inputs_are_refused_by_name(call, message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        call()
