"""The pure core of evaluation: metrics, calibration, slices, gates, the blessing record."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from flywheel.config import GatesConfig
from flywheel.evaluation import (
    EvaluationError,
    EvaluationReport,
    check_gates,
    classification_metrics,
    evaluate_predictions,
    expected_calibration_error,
    plot_confusion_matrix,
    plot_slice_accuracy,
    slice_masks,
)
from flywheel.registry import Blessing, GateResult

CLASSES = ("a", "b", "c")


def _probs(predicted: list[int], confidence: float | list[float], k: int = 3) -> np.ndarray:
    """Rows with `confidence` on the predicted class and the rest spread evenly."""
    conf = np.broadcast_to(np.asarray(confidence, dtype=float), (len(predicted),))
    out = np.repeat(((1 - conf) / (k - 1))[:, None], k, axis=1)  # (N, K)
    out[np.arange(len(predicted)), predicted] = conf
    return out


# ------------------------------------------------------------------ metrics


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
    assert metrics.accuracy == pytest.approx(accuracy)
    assert metrics.macro_f1 == pytest.approx(macro_f1)
    assert metrics.ece == pytest.approx(ece)


def test_per_class_metrics_and_confusion_matrix() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = [0, 0, 1, 1, 2, 2]

    metrics = classification_metrics(_probs(predicted, 0.9), labels, CLASSES, n_bins=5)

    a, b, c = (metrics.per_class[name] for name in CLASSES)
    assert (a.precision, a.recall, a.support) == (1.0, pytest.approx(2 / 3), 3)
    assert (b.precision, b.recall, b.support) == (0.5, 0.5, 2)
    assert (c.precision, c.recall, c.f1) == (0.5, 1.0, pytest.approx(2 / 3))
    assert metrics.confusion == ((2, 1, 0), (0, 1, 1), (0, 0, 1))
    assert metrics.to_dict()["per_class"]["a"]["support"] == 3


def test_a_class_absent_from_a_slice_has_zero_support_not_an_error() -> None:
    metrics = classification_metrics(_probs([0, 0], 0.9), np.array([0, 0]), CLASSES, n_bins=5)

    assert metrics.per_class["c"].support == 0
    assert metrics.macro_f1 == 1.0  # over the classes present


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
    with pytest.raises(EvaluationError, match=message):
        classification_metrics(probs, labels, CLASSES, n_bins=10)


# ------------------------------------------------------------------- slices


def test_slice_masks_cover_values_and_combinations() -> None:
    frame = pd.DataFrame(
        {"style": ["printed", "handwritten", "printed"], "noise": ["clean", "clean", "blur"]}
    )

    masks = slice_masks(frame, ["style", "noise"])

    assert list(masks) == [
        "style=handwritten",
        "style=printed",
        "noise=blur",
        "noise=clean",
        "style=handwritten,noise=clean",
        "style=printed,noise=blur",
        "style=printed,noise=clean",
    ]  # combinations only where present
    assert masks["style=printed"].tolist() == [True, False, True]
    assert masks["style=printed,noise=clean"].tolist() == [True, False, False]
    assert list(slice_masks(frame, ["noise"])) == ["noise=blur", "noise=clean"]


def test_slice_masks_name_a_missing_column() -> None:
    with pytest.raises(EvaluationError, match=r"\['weather'\] are not in the data"):
        slice_masks(pd.DataFrame({"style": ["x"]}), ["style", "weather"])


STRATA = [(s, n) for s in ("handwritten", "printed") for n in ("clean", "shadow")]


def _report(wrong: dict[str, int], per_stratum: int = 25, model: str = "m") -> EvaluationReport:
    """A report over 4 strata of `per_stratum` images, `wrong["style/noise"]` of them wrong."""
    rows, predicted, labels = [], [], []
    for style, noise in STRATA:
        errors = wrong.get(f"{style}/{noise}", 0)
        for i in range(per_stratum):
            label = i % 3
            rows.append({"style": style, "noise": noise, "image_id": f"{style}-{noise}-{i}"})
            labels.append(label)
            predicted.append((label + 1) % 3 if i < errors else label)
    return evaluate_predictions(
        _probs(predicted, 0.9),
        np.array(labels),
        pd.DataFrame(rows),
        CLASSES,
        slice_columns=("style", "noise"),
        n_bins=10,
        model_uri=model,
    )


def test_evaluate_predictions_reports_every_slice() -> None:
    report = _report({"handwritten/shadow": 25, "printed/clean": 5})

    assert report.overall.accuracy == pytest.approx(70 / 100)
    assert report.slices["style=handwritten"].accuracy == 0.5
    assert report.slices["noise=clean"].accuracy == pytest.approx(45 / 50)
    assert report.slices["style=handwritten,noise=shadow"].accuracy == 0.0
    assert report.slices["style=printed,noise=clean"].n == 25
    table = report.slice_table().set_index("slice")
    assert table.loc["all", "n"] == 100
    assert table.loc["style=printed", "accuracy"] == pytest.approx(45 / 50)
    metrics = report.mlflow_metrics()
    assert metrics["test_accuracy/style:handwritten.noise:shadow"] == 0.0
    assert metrics["test_f1/class_a"] == report.overall.per_class["a"].f1


# -------------------------------------------------------------------- gates


@pytest.mark.parametrize(
    ("candidate", "champion", "gates", "failed"),
    [
        pytest.param({}, None, {}, [], id="perfect first model"),
        pytest.param(
            {"handwritten/clean": 25, "handwritten/shadow": 10},
            None,
            {},
            ["min_accuracy"],
            id="first model below the absolute minimum",
        ),
        pytest.param(
            {
                "printed/clean": 5,
                "printed/shadow": 5,
                "handwritten/clean": 5,
                "handwritten/shadow": 5,
            },
            None,
            {"min_accuracy": 0.8},
            [],
            id="exactly at the threshold passes",
        ),
        pytest.param(
            {"handwritten/shadow": 15},
            None,
            {"min_slice_accuracy": 0.5},
            ["min_slice_accuracy[style=handwritten,noise=shadow]"],
            id="one weak slice",
        ),
        pytest.param(
            {"handwritten/clean": 5},
            {"printed/clean": 10},
            {},
            [
                "slice_regression[style=handwritten]",
                "slice_regression[style=handwritten,noise=clean]",
            ],
            id="better overall but a slice regresses",
        ),
        pytest.param(
            {"handwritten/clean": 2},
            {"handwritten/clean": 3},
            {"min_improvement": 0.02},
            ["beats_champion"],
            id="better but not by the margin",
        ),
        pytest.param(
            {"handwritten/clean": 3},
            {"handwritten/clean": 3},
            {},
            [],
            id="a tie passes a zero margin",
        ),
        pytest.param(
            {"printed/shadow": 2},
            {},
            {"max_slice_regression": 0.1},
            ["beats_champion"],
            id="a slice drop within the tolerance still loses overall",
        ),
        pytest.param(
            {"printed/shadow": 2},
            {},
            {"max_slice_regression": 0.1, "min_improvement": -0.05},
            [],
            id="a negative margin allows a small overall drop",
        ),
    ],
)
def test_gates_table(
    candidate: dict[str, int],
    champion: dict[str, int] | None,
    gates: dict[str, float],
    failed: list[str],
) -> None:
    config = GatesConfig(**{"min_accuracy": 0.7, **gates})
    champ = None if champion is None else _report(champion, model="champion")

    blessing = check_gates(_report(candidate), champ, config, champion_version="3")

    assert blessing.failed_gates == failed
    assert blessing.blessed == (not failed)
    names = [g.name for g in blessing.gates]
    assert ("beats_champion" in names) == (champion is not None)
    assert blessing.champion_version == (None if champion is None else "3")


def test_first_model_faces_only_the_absolute_gates() -> None:
    config = GatesConfig(min_accuracy=0.5, min_macro_f1=0.5, max_ece=0.5, min_slice_accuracy=0.5)

    blessing = check_gates(_report({}), None, config)

    assert not any(g.name.startswith(("slice_regression", "beats")) for g in blessing.gates)
    assert {"min_accuracy", "min_macro_f1", "max_ece"} <= {g.name for g in blessing.gates}
    assert "no production model: absolute gates only" in blessing.notes


def test_values_and_thresholds_are_recorded_per_gate() -> None:
    blessing = check_gates(
        _report({"handwritten/clean": 5}),
        _report({"printed/clean": 10}),
        GatesConfig(min_accuracy=0.9, max_slice_regression=0.05),
        champion_version="7",
    )

    regression = blessing.gate("slice_regression[style=handwritten,noise=clean]")
    assert (regression.value, regression.threshold, regression.comparison) == (
        pytest.approx(0.2),
        0.05,
        "<=",
    )
    assert regression.verdict == "fail"
    assert regression.detail == "candidate 0.8000 vs champion 1.0000 on 25 images"
    beats = blessing.gate("beats_champion")
    assert beats.value == pytest.approx(0.05)
    assert beats.passed
    assert blessing.metrics["champion_accuracy"] == pytest.approx(0.9)
    with pytest.raises(KeyError, match="no gate 'nope'"):
        blessing.gate("nope")


def test_small_slices_are_reported_but_not_gated() -> None:
    config = GatesConfig(min_accuracy=0.1, min_slice_accuracy=0.9, min_slice_support=30)

    blessing = check_gates(_report({"handwritten/shadow": 20}), None, config)

    gated = {g.name for g in blessing.gates if g.name.startswith("min_slice")}
    assert gated == {
        f"min_slice_accuracy[{s}]"
        for s in ("style=handwritten", "style=printed", "noise=clean", "noise=shadow")
    }
    assert any(
        "style=handwritten,noise=shadow: 25 images < min_slice_support 30" in n
        for n in blessing.notes
    )


def test_a_champion_on_other_data_cannot_be_compared() -> None:
    other = _report({}, per_stratum=24, model="champion")

    with pytest.raises(EvaluationError, match="not evaluated on the same data"):
        check_gates(_report({}), other, GatesConfig())


# ----------------------------------------------------------------- blessing


def test_blessing_json_round_trip_and_summary() -> None:
    blessing = check_gates(
        _report({"handwritten/clean": 5}),
        _report({"printed/clean": 10}),
        GatesConfig(min_accuracy=0.7),
        champion_version="2",
        model_name="digits",
        candidate_version="3",
        evaluated_at="2026-11-23T10:00:00+00:00",
    )

    again = Blessing.from_json(blessing.to_json())

    assert again == blessing
    raw = blessing.to_dict()
    assert raw["blessed"] is False
    assert raw["failed_gates"] == blessing.failed_gates
    assert blessing.summary().startswith("not blessed: ")
    assert "slice_regression[style=handwritten]: fail (0.1000 <= 0.0500)" in blessing.summary()


def test_blessing_rejects_duplicate_or_no_gates() -> None:
    gate = GateResult("min_accuracy", 0.9, 0.8, ">=", True)
    with pytest.raises(ValueError, match=r"repeated: \['min_accuracy'\]"):
        Blessing("m", None, (gate, gate), "test", "now")
    with pytest.raises(ValueError, match="at least one gate"):
        Blessing("m", None, (), "test", "now")
    with pytest.raises(ValueError, match="not a blessing record"):
        Blessing.from_dict({"gates": []})


# ----------------------------------------------------------------- pictures


def test_pictures_render_to_png() -> None:
    candidate, champion = _report({"handwritten/clean": 5}), _report({"printed/clean": 10})

    for figure in (
        plot_confusion_matrix(candidate.overall, CLASSES),
        plot_slice_accuracy(candidate, champion, min_slice_accuracy=0.6),
        plot_slice_accuracy(candidate),
    ):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue().startswith(b"\x89PNG")
    bars = plot_slice_accuracy(candidate, champion).axes[0]
    labels = [t.get_text() for t in bars.get_yticklabels()]
    assert labels[0] == "all (n=100)"
    assert "style=handwritten,noise=clean (n=25)" in labels
