"""The pure core of evaluation on classification: slices, the report, gates, the blessing record.

Classification's metrics themselves are tested in test_classification_metrics.py;
the same evaluation path with another task in test_evaluation_second_task.py.
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from flywheel.config import GatesConfig
from flywheel.evaluation import (
    EvaluationError,
    EvaluationReport,
    check_gates,
    plot_confusion_matrix,
    plot_slice_metric,
    slice_masks,
)
from flywheel.registry import Blessing, GateResult
from tests.support.evaluation import classification_report

CLASSES = ("a", "b", "c")


def _probs(predicted: list[int], confidence: float | list[float], k: int = 3) -> np.ndarray:
    """Rows with `confidence` on the predicted class and the rest spread evenly."""
    conf = np.broadcast_to(np.asarray(confidence, dtype=float), (len(predicted),))
    out = np.repeat(((1 - conf) / (k - 1))[:, None], k, axis=1)  # (N, K)
    out[np.arange(len(predicted)), predicted] = conf
    return out


# --------------------------------------------- regression: today's numbers

FIXED_PROBS = np.array(
    [
        [0.70, 0.20, 0.10],
        [0.10, 0.80, 0.10],
        [0.30, 0.30, 0.40],
        [0.50, 0.40, 0.10],
        [0.05, 0.90, 0.05],
        [0.20, 0.25, 0.55],
        [0.60, 0.30, 0.10],
        [0.34, 0.33, 0.33],
    ]
)
FIXED_LABELS = np.array([0, 1, 2, 1, 1, 2, 2, 0])
FIXED_FRAME = pd.DataFrame(
    {"style": ["printed", "handwritten"] * 4, "image_id": [f"i{i}" for i in range(8)]}
)


def _fixed(probs: np.ndarray, model: str) -> EvaluationReport:
    return classification_report(
        probs,
        FIXED_LABELS,
        FIXED_FRAME,
        CLASSES,
        slice_columns=("style",),
        n_bins=5,
        model_uri=model,
    )


def test_classification_keeps_its_metric_names_values_and_gates() -> None:
    """The numbers evaluation gave before it talked to the Task hook, on a fixed table."""
    report = _fixed(FIXED_PROBS, "cand")
    champion = _fixed(np.eye(3)[[0, 1, 2, 1, 0, 2, 2, 0]] * 0.7 + 0.1, "champ")

    assert report.mlflow_metrics() == pytest.approx(
        {
            "test_accuracy": 0.75,
            "test_macro_f1": 0.7555555555555555,
            "test_ece": 0.31375,
            "test_images": 8.0,
        }
    )
    classes = report.class_table()
    assert classes is not None
    assert dict(zip(classes["class"], classes["f1"], strict=True)) == pytest.approx(
        {"a": 2 / 3, "b": 0.8, "c": 0.8}
    )
    slices = report.slice_table().set_index("slice")
    assert slices.loc["style=handwritten"].to_dict() == pytest.approx(
        {"n": 4, "accuracy": 0.75, "macro_f1": 0.7777777777777777, "ece": 0.2275}
    )
    assert slices.loc["style=printed"].to_dict() == pytest.approx(
        {"n": 4, "accuracy": 0.75, "macro_f1": 0.7777777777777777, "ece": 0.4}
    )
    raw = report.to_dict()
    assert list(raw["overall"]) == ["n", "accuracy", "macro_f1", "ece", "per_class", "confusion"]
    assert raw["overall"]["per_class"]["b"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": 0.8,
        "support": 3,
    }
    assert raw["overall"]["confusion"] == [[2, 0, 0], [1, 2, 0], [1, 0, 2]]
    assert raw["slices"]["style=printed"]["confusion"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert report.slice_table().columns.tolist() == ["slice", "n", "accuracy", "macro_f1", "ece"]

    blessing = check_gates(
        report,
        champion,
        GatesConfig(
            min_accuracy=0.5,
            min_macro_f1=0.5,
            max_ece=0.2,
            min_slice_accuracy=0.6,
            min_slice_support=1,
        ),
        champion_version="1",
    )

    assert [(g.name, g.value, g.comparison, g.passed, g.detail) for g in blessing.gates] == [
        ("min_accuracy", 0.75, ">=", True, "6/8 correct"),
        ("min_macro_f1", pytest.approx(0.7555555555555555), ">=", True, ""),
        ("max_ece", pytest.approx(0.31375), "<=", False, "5 bins"),
        ("min_slice_accuracy[style=handwritten]", 0.75, ">=", True, "4 images"),
        ("min_slice_accuracy[style=printed]", 0.75, ">=", True, "4 images"),
        (
            "slice_regression[style=handwritten]",
            0.25,
            "<=",
            False,
            "candidate 0.7500 vs champion 1.0000 on 4 images",
        ),
        (
            "slice_regression[style=printed]",
            0.0,
            "<=",
            True,
            "candidate 0.7500 vs champion 0.7500 on 4 images",
        ),
        ("beats_champion", -0.125, ">=", False, "candidate 0.7500 vs champion 0.8750 (version 1)"),
    ]
    assert blessing.metrics == pytest.approx(
        {
            "accuracy": 0.75,
            "macro_f1": 0.7555555555555555,
            "ece": 0.31375,
            "images": 8.0,
            "champion_accuracy": 0.875,
        }
    )


def test_a_gate_on_a_metric_the_task_lacks_is_an_error_not_a_pass() -> None:
    report = _fixed(FIXED_PROBS, "cand")
    values = {"accuracy": report.overall["accuracy"]}  # a task computing accuracy alone
    bare = replace(
        report,
        task="bare",
        overall=replace(report.overall, values=values),
        slices={
            n: replace(m, values={"accuracy": m["accuracy"]}) for n, m in report.slices.items()
        },
    )

    assert check_gates(bare, None, GatesConfig(min_accuracy=0.5)).blessed
    with pytest.raises(
        EvaluationError,
        match=r"max_ece judges 'ece', which task 'bare' does not compute \(it computes \['accu",
    ):
        check_gates(bare, None, GatesConfig(min_accuracy=0.5, max_ece=0.2))


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
    return classification_report(
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

    assert report.overall["accuracy"] == pytest.approx(70 / 100)
    assert report.slices["style=handwritten"]["accuracy"] == 0.5
    assert report.slices["noise=clean"]["accuracy"] == pytest.approx(45 / 50)
    assert report.slices["style=handwritten,noise=shadow"]["accuracy"] == 0.0
    assert report.slices["style=printed,noise=clean"].n == 25
    table = report.slice_table().set_index("slice")
    assert table.loc["all", "n"] == 100
    assert table.loc["style=printed", "accuracy"] == pytest.approx(45 / 50)
    assert table.loc["style=handwritten,noise=shadow", "accuracy"] == 0.0
    classes = report.class_table()
    assert classes is not None
    assert classes.set_index("class").loc["a", "f1"] == report.overall.per_class["a"]["f1"]


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
        plot_slice_metric(candidate, champion, min_slice_accuracy=0.6),
        plot_slice_metric(candidate),
    ):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue().startswith(b"\x89PNG")
    bars = plot_slice_metric(candidate, champion).axes[0]
    labels = [t.get_text() for t in bars.get_yticklabels()]
    assert labels[0] == "all (n=100)"
    assert "style=handwritten,noise=clean (n=25)" in labels
