"""What the registered model's and its versions' pages in the MLflow UI say first."""

from __future__ import annotations

import pytest

from flywheel.config import Params
from flywheel.registry import Blessing, GateResult
from flywheel.registry.descriptions import registered_description, version_description
from flywheel.workflows import model_description

TAGS = {"flywheel.data_version": "3f2a9c1d.dir", "flywheel.git_commit": "0123456789abcdef"}


def _blessing(passed: bool, champion: str | None) -> Blessing:
    gates = (
        GateResult("min_accuracy", 0.93 if passed else 0.61, 0.8, ">=", passed),
        GateResult("beats_champion", 0.09, 0.0, ">=", True),
    )
    metrics = {"accuracy": 0.929, "macro_f1": 0.91, "holdout_accuracy": 0.929}
    if champion:
        metrics |= {"champion_accuracy": 0.839, "champion_holdout_accuracy": 0.839}
    return Blessing(
        "models:/m/3", champion, gates, "test", "2026-12-07T10:00:00+00:00", "m", "3", metrics
    )


def test_a_new_version_says_its_data_and_that_it_waits_for_the_gates() -> None:
    text = registered_description(TAGS, "ab12")
    assert text.startswith("Data version `3f2a9c1d.dir` · git `0123456` · training run `ab12`.")
    assert "Not evaluated yet" in text


@pytest.mark.parametrize(
    ("passed", "champion", "first_line", "row"),
    [
        (
            True,
            "2",
            "Blessed against version 2 (production when judged): 2 of 2 gates passed",
            "| accuracy | 0.9290 | 0.8390 |",
        ),
        (
            False,
            "2",
            "Not blessed against version 2 (production when judged): 1 of 2 gates passed",
            "| macro-F1 | 0.9100 | – |",
        ),
        (
            True,
            None,
            "Blessed against no champion (a first model): 2 of 2",
            "| accuracy | 0.9290 |",
        ),
    ],
)
def test_a_judged_version_says_its_verdict_against_the_champion_and_its_headline(
    passed: bool, champion: str | None, first_line: str, row: str
) -> None:
    text = version_description(
        "3", TAGS, _blessing(passed, champion), run_id="ab12", record="r.json"
    )
    assert text.startswith(first_line)
    assert row in text.splitlines()
    assert "| production hold-out accuracy | 0.9290 |" in text
    assert "Data version `3f2a9c1d.dir`" in text
    assert ("- `min_accuracy`: 0.6100, needs >= 0.8000" in text) is not passed


def test_the_registered_model_says_what_it_is_and_how_versions_move() -> None:
    text = model_description(Params())
    assert text.startswith("`small_cnn` network for the `classification` task")
    assert "10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)" in text
    for alias in ("`candidate`", "`staging`", "`production`", "`previous`"):
        assert alias in text
    assert "accuracy ≥ 0.80" in text
