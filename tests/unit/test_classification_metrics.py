"""Classification's evaluation metrics (`flywheel.tasks.classification_metrics`) on small tables.

Accuracy, macro-F1, per-class metrics, the confusion matrix, the ECE and the
input checks; the task's evaluation hook (`ClassificationTask.evaluation_metrics`)
reads decoded model outputs through them.
"""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.tasks import MetricsError
from flywheel.tasks.classification import ClassificationTask
from flywheel.tasks.classification_metrics import (
    classification_metrics,
    expected_calibration_error,
)

CLASSES = ("a", "b", "c")


def _probs(predicted: list[int], confidence: float | list[float], k: int = 3) -> np.ndarray:
    """Rows with `confidence` on the predicted class and the rest spread evenly."""
    conf = np.broadcast_to(np.asarray(confidence, dtype=float), (len(predicted),))
    out = np.repeat(((1 - conf) / (k - 1))[:, None], k, axis=1)  # (N, K)
    out[np.arange(len(predicted)), predicted] = conf
    return out


@pytest.mark.parametrize(
    ("predicted", "labels", "confidence", "accuracy", "macro_f1", "ece"),
    [
        # perfect and fully confident: calibrated
        ([0, 1, 2, 0], [0, 1, 2, 0], 1.0, 1.0, 1.0, 0.0),
        # always wrong, fully confident: worst calibration
        ([1, 2, 0], [0, 1, 2], 1.0, 0.0, 0.0, 1.0),
        # right half the time at confidence 0.5: calibrated
        ([0, 0, 1, 1], [0, 1, 1, 0], 0.5, 0.5, 0.5, 0.0),
        # a constant predictor: F1 only for the predicted class (2/3 · ... averaged over 3)
        ([0, 0, 0], [0, 1, 2], 0.8, 1 / 3, (2 * (1 / 3) / (1 / 3 + 1)) / 3, 0.8 - 1 / 3),
    ],
)
def test_classification_metrics_table(
    predicted: list[int],
    labels: list[int],
    confidence: float,
    accuracy: float,
    macro_f1: float,
    ece: float,
) -> None:
    metrics = classification_metrics(
        _probs(predicted, confidence), np.array(labels), CLASSES, n_bins=10
    )

    assert metrics.n == len(labels)
    assert metrics["accuracy"] == pytest.approx(accuracy)
    assert metrics["macro_f1"] == pytest.approx(macro_f1)
    assert metrics["ece"] == pytest.approx(ece)


def test_per_class_metrics_and_confusion_matrix() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = [0, 0, 1, 1, 2, 2]

    metrics = classification_metrics(_probs(predicted, 0.9), labels, CLASSES, n_bins=5)

    a, b, c = (metrics.per_class[name] for name in CLASSES)
    assert (a["precision"], a["recall"], a["support"]) == (1.0, pytest.approx(2 / 3), 3)
    assert (b["precision"], b["recall"], b["support"]) == (0.5, 0.5, 2)
    assert (c["precision"], c["recall"], c["f1"]) == (0.5, 1.0, pytest.approx(2 / 3))
    assert metrics.confusion == ((2, 1, 0), (0, 1, 1), (0, 0, 1))
    assert metrics.to_dict()["per_class"]["a"]["support"] == 3


def test_a_class_absent_from_a_slice_has_zero_support_not_an_error() -> None:
    metrics = classification_metrics(_probs([0, 0], 0.9), np.array([0, 0]), CLASSES, n_bins=5)

    assert metrics.per_class["c"]["support"] == 0
    assert metrics["macro_f1"] == 1.0  # over the classes present


@pytest.mark.parametrize(
    ("confidence", "correct", "n_bins", "expected"),
    [
        ([0.9, 0.6], [True, False], 10, (0.1 + 0.6) / 2),  # separate bins
        ([0.9, 0.6], [True, False], 1, abs(0.5 - 0.75)),  # one bin: |mean acc - mean conf|
        ([0.5, 0.5], [True, True], 2, 0.5),  # 0.5 belongs to the lower bin (0, 0.5]
        ([0.55, 0.95], [True, False], 2, abs(0.5 - 0.75)),  # both in (0.5, 1]
        ([1.0, 1.0, 1.0, 1.0], [True, True, True, False], 15, 0.25),
    ],
)
def test_expected_calibration_error_table(
    confidence: list[float], correct: list[bool], n_bins: int, expected: float
) -> None:
    probs = np.stack([[c, 1 - c] for c in confidence])  # (N, 2), class 0 predicted
    labels = np.where(correct, 0, 1)

    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (np.array([[2.0, -1.0, 0.5]]), np.array([0]), r"row 0: .* are not probabilities .* logits"),
        (np.array([[0.5, 0.5]]), np.array([0]), r"expected probabilities \(N, 3\)"),
        (np.full((2, 3), 1 / 3), np.array([0]), r"expected labels \(2,\)"),
        (np.full((2, 3), 1 / 3), np.array([0, 3]), r"row 1: label 3 is not in \[0, 3\)"),
        (np.full((1, 3), 1 / 3), np.array([0.0]), "integer class indices"),
        (np.empty((0, 3)), np.array([], dtype=int), "no predictions"),
        (np.array([[np.nan, 0.5, 0.5]]), np.array([0]), "row 0"),
    ],
)
def test_bad_inputs_fail_with_the_offending_row(
    probs: np.ndarray, labels: np.ndarray, message: str
) -> None:
    with pytest.raises(MetricsError, match=message):
        classification_metrics(probs, labels, CLASSES, n_bins=10)


def test_the_task_hook_scores_its_decoded_output() -> None:
    task = ClassificationTask(CLASSES, 8)
    probs = _probs([0, 1, 1], 0.8)
    decoded = task.decode(np.concatenate([probs, np.ones((3, 2))], axis=1))  # (N, K + D)

    metrics = task.evaluation_metrics(decoded, np.array([0, 1, 2]), calibration_bins=10)

    assert metrics.n == 3
    assert list(metrics.values) == ["accuracy", "macro_f1", "ece"]
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert task.primary_metric in metrics.values
    assert metrics.class_metric == "f1"
    assert metrics.readings == {"accuracy": "2/3 correct", "ece": "10 bins"}
    assert metrics.to_dict()["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    with pytest.raises(KeyError, match=r"no metric 'map'; computed: \['accuracy', 'ece'"):
        metrics["map"]


def test_the_task_hook_refuses_outputs_without_class_probabilities() -> None:
    task = ClassificationTask(CLASSES, 8)
    decoded = task.decode(np.concatenate([_probs([0], 0.8), np.ones((1, 2))], axis=1))
    without = type(decoded)(
        decoded.classes, decoded.labels, decoded.confidence, decoded.embedding, None
    )

    with pytest.raises(ValueError, match="gives no class probabilities"):
        task.evaluation_metrics(without, np.array([0]), calibration_bins=10)
