"""The page demo's traffic: scenario strata and noise, and how a phase's answers are scored."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from flywheel.config import PagePlan, Scenario, load_params, parse_params
from flywheel.data.pages import Region
from flywheel.demo.loop import LoopError
from flywheel.demo.page_loop import page_phase_table, score_answers
from flywheel.demo.pages.traffic import ProductionPage, scaled_noise, scenario_strata
from flywheel.demo.render import CollectError

PLAN = Path(__file__).parents[2] / "plans" / "pages.yaml"


def _page(request_id: str, *regions: tuple[tuple[int, int, int, int], str]) -> ProductionPage:
    return ProductionPage(
        request_id=request_id,
        png=b"",
        level="high",
        writing="handwritten",
        noise="shadow",
        glyphs=(),
        regions=tuple(
            Region(request_id, k, x0, y0, x1 - x0, y1 - y0, latex)
            for k, ((x0, y0, x1, y1), latex) in enumerate(regions)
        ),
    )


def _answer(*regions: tuple[tuple[int, int, int, int], float, str]) -> dict[str, Any]:
    return {
        "width": 100,
        "height": 100,
        "regions": [
            {"index": k, "box": list(box), "score": score, "latex": latex, "confidence": 0.9}
            for k, (box, score, latex) in enumerate(regions)
        ],
        "detector": {"name": "d", "version": "1"},
        "recognizer": {"name": "r", "version": "1"},
    }


def test_exact_answers_score_one_and_a_miss_and_a_misreading_count_where_they_belong() -> None:
    a = _page("p1", ((10, 10, 40, 20), "x+1"), ((10, 50, 40, 60), "12"))
    b = _page("p2", ((20, 20, 60, 30), "\\frac{1}{2}"))
    exact = score_answers(
        [a, b],
        [
            _answer(((10, 10, 40, 20), 0.9, "x+1"), ((10, 50, 40, 60), 0.8, "12")),
            _answer(((20, 20, 60, 30), 0.9, "\\frac { 1 } { 2 }")),  # spacing does not count
        ],
    )
    assert (exact.pair.end_to_end, exact.map_50, exact.cer) == (1.0, 1.0, 0.0)

    wrong = score_answers(
        [a, b],
        [
            _answer(((11, 10, 40, 21), 0.9, "x+7")),  # found, misread; the second missed
            None,  # no answer: left out
        ],
    )
    assert wrong.pair.n_pages == 1
    assert wrong.pair.n_expressions == 2
    assert wrong.pair.found == 0.5
    assert wrong.pair.end_to_end == 0.0
    assert wrong.cer == pytest.approx(1 / 3)  # one edit in "x+1"
    assert wrong.map_50 == pytest.approx(0.5, abs=0.01)  # half the truth at full precision


def test_a_phase_with_no_answer_is_an_error() -> None:
    with pytest.raises(LoopError, match="no page was answered"):
        score_answers([_page("p", ((0, 0, 5, 5), "1"))], [None])


def test_a_scenario_mix_holds_in_any_prefix_and_names_only_the_plans_pairs() -> None:
    plan = PagePlan()
    mix = {"handwritten/shadow": 0.75, "printed/clean": 0.25}
    strata = scenario_strata(plan, Scenario(mix=mix), 40, seed=3)
    counts = Counter(f"{w}/{n}" for _, w, n in strata)
    assert counts == {"handwritten/shadow": 30, "printed/clean": 10}
    assert set(lv for lv, _, _ in strata) == set(plan.strata.level)
    assert strata != scenario_strata(plan, Scenario(mix=mix), 40, seed=4)  # shuffled by seed
    with pytest.raises(CollectError, match="unknown writing/noise pairs"):
        scenario_strata(plan, Scenario(mix={"typed/clean": 1.0}), 4)


def test_severity_darkens_turns_and_marks_more_within_bounds() -> None:
    plan = load_params(PLAN).data.pages
    assert plan is not None
    noise = scaled_noise(plan, Scenario(severity={"shadow": 10.0, "highlighter": 2.0}))
    assert noise.shadow_min_light == 0.05  # never black
    assert noise.highlighter_strokes == (2, 6)
    assert noise.rotate_degrees == plan.noise.rotate_degrees  # not named: the plan's
    with pytest.raises(CollectError, match="unknown noise"):
        scaled_noise(plan, Scenario(severity={"blur": 2.0}))


def test_the_page_plans_scenarios_are_checked_against_its_own_strata() -> None:
    assert {"in_distribution", "photographed"} <= set(load_params(PLAN).scenarios)
    bad = PLAN.read_text().replace("handwritten/crumpled: 0.1", "handwritten/blurred: 0.1")
    with pytest.raises(ValueError, match="unknown strata"):
        parse_params(yaml.safe_load(bad))


def test_the_phase_table_keeps_a_row_per_phase_without_traffic_too() -> None:
    from flywheel.demo.page_loop import PagePhase

    page = _page("p", ((10, 10, 40, 20), "1"))
    score = score_answers([page], [_answer(((10, 10, 40, 20), 0.9, "1"))])
    rows = [
        PagePhase(
            "drifted",
            "photographed",
            1,
            0,
            score,
            {"detection": True, "recognition": False},
            {"detection": (0.5, 0.2), "recognition": (0.0, 0.0)},
            "v1",
            "v1",
            "abcdef123",
            {},
            1.0,
        ),
        PagePhase("retrained", None, 0, 0, None, {}, {}, "v1→v2", "v1 kept", "0123456789", {}, 9.0),
    ]
    table = page_phase_table(rows)
    assert table.row_count == 2
    cells = [list(column.cells) for column in table.columns]
    assert cells[1] == ["100.0%", "-"]
    assert cells[4][0].endswith("50%/20%")
    assert cells[6] == ["v1", "v1→v2"]


def test_demo_plan_names_a_plan_of_plans_and_lists_them_when_it_is_not_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from flywheel.cli import app
    from flywheel.cli.demo import plan_file

    monkeypatch.chdir(PLAN.parents[1])
    assert plan_file("pages") == Path("plans") / "pages.yaml"
    result = CliRunner().invoke(app, ["demo", "--plan", "handwriting"])
    assert result.exit_code == 2
    assert "no plan 'handwriting'" in result.output
    assert "plans here: pages" in result.output
