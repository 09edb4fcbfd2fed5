"""The system gate: a stage of the page service judged with its partner, end to end."""

from __future__ import annotations

import pytest

from flywheel.config import EvaluateConfig, GatesConfig
from flywheel.evaluation.pair import PairScore
from flywheel.evaluation.system import GATE, Partner, SystemCheck, with_system_gate
from flywheel.registry import Blessing, GateResult

PARTNER = Partner("flywheel-pages-recognition")
BLESSING = Blessing(
    candidate_uri="models:/flywheel-pages-detection/2",
    champion_version="1",
    gates=(GateResult("min_accuracy", 0.8, 0.5, ">=", True),),
    split="test",
    evaluated_at="2026-12-07T00:00:00Z",
)


def _score(correct: int, of: int = 40) -> PairScore:
    return PairScore(n_pages=10, n_expressions=of, n_detections=of, n_found=of, n_correct=correct)


def _check(ours: int, theirs: int | None) -> SystemCheck:
    champion = None if theirs is None else _score(theirs)
    return SystemCheck(PARTNER.model_name, "3", _score(ours), champion)


@pytest.mark.parametrize(
    ("ours", "theirs", "limit", "passed"),
    [(30, 30, 0.0, True), (29, 30, 0.0, False), (29, 30, 0.05, True), (32, 30, 0.0, True)],
)
def test_the_pair_may_not_lose_more_than_the_limit(
    ours: int, theirs: int, limit: float, passed: bool
) -> None:
    config = EvaluateConfig(gates=GatesConfig(max_system_regression=limit))
    blessing = with_system_gate(BLESSING, _check(ours, theirs), PARTNER, config)

    gate = blessing.gate(GATE)
    assert gate.passed is passed
    assert blessing.blessed is passed
    assert gate.value == pytest.approx((ours - theirs) / 40)
    assert gate.threshold == -limit
    assert "with flywheel-pages-recognition version 3" in gate.detail
    assert blessing.metrics["pair_end_to_end"] == ours / 40
    assert blessing.metrics["champion_pair_end_to_end"] == theirs / 40


def test_without_a_partner_in_production_the_blessing_says_why_there_is_no_gate() -> None:
    blessing = with_system_gate(BLESSING, None, PARTNER, EvaluateConfig())

    assert [g.name for g in blessing.gates] == ["min_accuracy"]
    assert "flywheel-pages-recognition has no production version" in blessing.notes[-1]


def test_a_first_model_is_scored_with_its_partner_but_not_gated() -> None:
    blessing = with_system_gate(BLESSING, _check(20, None), PARTNER, EvaluateConfig())

    assert GATE not in [g.name for g in blessing.gates]
    assert blessing.metrics["pair_end_to_end"] == 0.5
    assert "no champion to compare with" in blessing.notes[-1]


def test_a_null_limit_turns_the_gate_off() -> None:
    config = EvaluateConfig(gates=GatesConfig(max_system_regression=None))
    blessing = with_system_gate(BLESSING, _check(10, 30), PARTNER, config)

    assert blessing.blessed
    assert "system gate off" in blessing.notes[-1]
