"""The rules of page curation and page monitoring: scores, the budget, the stage columns."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.curation.pages import (
    detection_uncertainty,
    page_score,
    recognition_uncertainty,
    select_pages,
)
from flywheel.monitoring.monitor import label_order
from flywheel.monitoring.pages import DETECTION_SCORE, REGIONS, token_count
from flywheel.tasks import DecodedBatch
from flywheel.tasks.detection import (
    DETECTION_SCORE_COLUMN,
    REGIONS_COLUMN,
    DetectionTask,
)


@pytest.mark.parametrize(
    ("confidence", "scores", "boxes", "expected"),
    [
        (1.0, [], [], 0.0),  # a sure grid and no box
        (0.5, [], [], 1.0),  # a cell at 0.5: a formula missed or invented
        (1.0, [0.5], [(0, 0, 4, 4)], 1.0),  # a box at the threshold
        (1.0, [0.9], [(0, 0, 4, 4)], 0.2),
        (0.95, [0.99], [(0, 0, 4, 4)], 0.1),  # the grid's least certain cell wins
        (1.0, [1.0, 1.0], [(0, 0, 10, 10), (0, 0, 10, 10)], 1.0),  # NMS would have merged them
        (1.0, [1.0, 1.0], [(0, 0, 10, 10), (20, 0, 30, 10)], 0.0),  # far apart
        (1.0, [1.0, 1.0], [(0, 0, 10, 10), (0, 0, 10, 5)], 1.0),  # IoU 0.5 / 0.5, capped at 1
    ],
)
def test_detection_uncertainty(
    confidence: float, scores: list[float], boxes: list, expected: float
) -> None:
    assert detection_uncertainty(confidence, scores, boxes) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("confidences", "expected"),
    [([], 0.0), ([1.0], 0.0), ([0.9, 0.2, 0.99], 0.8), ([0.0], 1.0)],
)
def test_recognition_uncertainty(confidences: list[float], expected: float) -> None:
    assert recognition_uncertainty(confidences) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("u_det", "u_rec", "expected"),
    [(0.0, 0.0, 0.0), (1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (0.5, 0.5, 0.75), (0.2, 0.1, 0.28)],
)
def test_page_score_is_a_noisy_or(u_det: float, u_rec: float, expected: float) -> None:
    assert float(page_score(u_det, u_rec)) == pytest.approx(expected)


def test_page_score_ranks_an_uncertain_stage_above_a_sure_page() -> None:
    sure = page_score(0.05, 0.05)
    assert page_score(0.6, 0.05) > sure
    assert page_score(0.05, 0.6) > sure


def test_the_budget_is_never_exceeded_and_cheaper_pages_fill_it() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    prices = np.array([2.7, 0.9, 1.8, 0.9, 0.0])
    picked = select_pages(scores, prices, None, max_pages=10, spend_limit=3.6)
    assert picked.tolist() == [0, 1, 4]  # 2.7 + 0.9 = 3.6 exactly; the free page too
    assert prices[picked].sum() == pytest.approx(3.6)
    assert select_pages(scores, prices, None, max_pages=2, spend_limit=None).tolist() == [0, 1]
    assert select_pages(scores, prices, None, max_pages=10, spend_limit=0.5).tolist() == [4]


def test_the_batch_spreads_over_clusters_of_the_embedding() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.01, size=(10, 4)) + np.array([1, 0, 0, 0])
    b = rng.normal(0, 0.01, size=(10, 4)) + np.array([0, 1, 0, 0])
    space = np.vstack([a, b])  # the top 2 x prefilter 10 pages: both kinds
    scores = np.concatenate([np.linspace(0.9, 0.8, 10), np.linspace(0.5, 0.4, 10)])
    prices = np.ones(20)
    by_score = select_pages(scores, prices, None, max_pages=2, spend_limit=None)
    diverse = select_pages(scores, prices, space, max_pages=2, spend_limit=None, seed=0)
    assert set(by_score.tolist()) <= set(range(10))  # both from the confusing kind
    assert {int(i) < 10 for i in diverse} == {True, False}  # one of each kind
    assert diverse[0] == 0  # the best page of all leads


def test_the_detector_profiles_its_regions_and_their_mean_score() -> None:
    assert (REGIONS_COLUMN, DETECTION_SCORE_COLUMN) == (REGIONS, DETECTION_SCORE)
    found = [
        np.array([[0, 0, 0.1, 0.1, 0.9], [0.5, 0.5, 0.6, 0.6, 0.7], [0, 0.5, 0.1, 0.6, 0.2]]),
        np.zeros((0, 5)),
    ]
    predictions = np.empty(2, dtype=object)
    predictions[:] = found
    decoded = DecodedBatch(
        classes=("formula",),
        labels=("2 formulas", "0 formulas"),
        confidence=np.array([0.6, 0.9]),
        embedding=np.zeros((2, 3)),
        predictions=predictions,
    )
    columns = DetectionTask().profile_columns(decoded)
    assert columns[REGIONS].tolist() == [2, 0]  # the box at 0.2 is not reported
    assert columns[DETECTION_SCORE][0] == pytest.approx(0.8)
    assert np.isnan(columns[DETECTION_SCORE][1])


@pytest.mark.parametrize(
    ("latex", "expected"), [("x", "1"), ("12+7=19", "7"), ("\\sqrt{x}", "4"), ("", "0")]
)
def test_the_crop_stage_compares_transcript_lengths(latex: str, expected: str) -> None:
    assert token_count(latex) == expected


def test_counts_sort_as_numbers() -> None:
    assert sorted(["10", "2", "1 formula", "x"], key=label_order) == ["1 formula", "2", "10", "x"]
