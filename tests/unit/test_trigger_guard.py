"""The trigger's guard over a simulated week of hourly monitor runs, driven by explicit
timestamps: minimum window, cooldown, daily cap and labelling budget, each decision recorded
in the state store and read back as the next run's history."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flywheel.config import TriggerConfig
from flywheel.curation.cost import Spend, read_spend, record_spend, spent_since
from flywheel.workflows.trigger import (
    Decision,
    StageWindow,
    guard,
    read_decisions,
    record_decision,
)

MONDAY = datetime(2026, 3, 2, tzinfo=UTC)
IMAGE_COST = 0.04
CONFIG = TriggerConfig(
    cooldown_hours=6, max_runs_per_day=3, min_window_size=500, budget=100.0, budget_days=30
)


def _at(day: int, hour: int) -> datetime:
    return MONDAY + timedelta(days=day, hours=hour)


def _window(now: datetime) -> int:
    """Traffic: 800 predictions an hour by day, 300 at night (below the minimum)."""
    return 800 if 6 <= now.hour < 22 else 300


def _drift(now: datetime) -> bool:
    """In distribution on Monday; drifted from Tuesday 08:00 to the end of the week."""
    return now >= _at(1, 8)


def _run_week(state: Path, spend_per_run: float = 30.0) -> list[Decision]:
    """168 hourly monitor runs; a fired run's curation spends an hour later (what is left)."""
    decisions = []
    for h in range(7 * 24):
        now = MONDAY + timedelta(hours=h)
        for previous in decisions:  # the curation of a run fired an hour ago records its spend
            if previous.action == "fired" and previous.when == now - timedelta(hours=1):
                spend = min(spend_per_run, previous.spend_limit or spend_per_run)
                record_spend(
                    state,
                    Spend(f"b{h}", now.isoformat(), 1, spend, spend, None, "USD", {"choice": 1}),
                )
        history = read_decisions(state, since=now - timedelta(hours=24))
        spent = spent_since(read_spend(state), now - timedelta(days=CONFIG.budget_days))
        verdict = guard(
            CONFIG,
            now=now,
            drift=_drift(now),
            window_size=_window(now),
            history=history,
            spent=spent,
            image_cost=IMAGE_COST,
            signals=("features", "embedding"),
        )
        decision = Decision(
            time=now.isoformat(),
            action=verdict.action,
            reasons=list(verdict.reasons),
            drift=_drift(now),
            window_size=_window(now),
            budget_left=verdict.budget_left,
            spend_limit=verdict.spend_limit,
        )
        record_decision(state, decision)
        decisions.append(decision)
    return decisions


def test_a_week_of_monitor_runs_fires_only_where_every_rule_allows(tmp_path: Path) -> None:
    decisions = _run_week(tmp_path)
    by_time = {d.when: d for d in decisions}

    # Fired: the first drift, twice more after each 6 h cooldown, then (after Tuesday 08:00
    # leaves the 24 h window) once more with the 10 left of the budget; nothing after.
    assert [d.when for d in decisions if d.action == "fired"] == [
        _at(1, 8),
        _at(1, 14),
        _at(1, 20),
        _at(2, 8),
    ]
    assert by_time[_at(2, 8)].spend_limit == pytest.approx(10.0)
    assert {d.action for d in decisions if d.when < _at(1, 8)} == {"none"}
    assert all(d.reasons == ["no drift"] for d in decisions if d.action == "none")
    assert len(decisions) == 168
    assert sum(d.action == "held" for d in decisions) == 168 - 32 - 4

    def reasons(day: int, hour: int) -> str:
        return " | ".join(by_time[_at(day, hour)].reasons)

    assert reasons(1, 8) == "drift (features, embedding)"
    assert reasons(1, 9).startswith("cooldown: last fired 1.0 h ago")
    assert "daily cap" not in reasons(1, 9)
    # Wednesday 02:00: a night window and three runs in the last 24 h: both named.
    assert "window of 300 predictions < min_window_size 500" in reasons(2, 2)
    assert "daily cap: 3 fired in the last 24 h >= max_runs_per_day 3" in reasons(2, 2)
    assert "cooldown" not in reasons(2, 2)  # 6 h after Tuesday 20:00
    # Wednesday 07:00: day traffic, past the cooldown, the cap alone holds it back.
    assert reasons(2, 7).startswith("daily cap: 3 fired")
    assert "budget" not in reasons(2, 7)
    # Thursday on: the whole budget is spent (30 + 30 + 30 + 10).
    assert reasons(3, 12) == "budget: 0.00 left of 100 per 30 days buys no image at 0.04"
    assert by_time[_at(6, 23)].action == "held"

    # The state store holds the same history, in order, read back by a fresh reader.
    assert read_decisions(tmp_path) == decisions
    assert sum(s.spend for s in read_spend(tmp_path)) == pytest.approx(100.0)


def test_the_cooldown_ends_exactly_after_its_hours() -> None:
    last = Decision(time=_at(0, 0).isoformat(), action="fired", reasons=[], drift=True)
    config = TriggerConfig(cooldown_hours=6, max_runs_per_day=10, min_window_size=1)

    def action(now: datetime) -> str:
        return guard(config, now=now, drift=True, window_size=1, history=[last]).action

    assert action(_at(0, 5) + timedelta(minutes=59)) == "held"
    assert action(_at(0, 6)) == "fired"


def test_the_daily_cap_counts_the_last_24_hours_not_the_calendar_day() -> None:
    config = TriggerConfig(cooldown_hours=0, max_runs_per_day=2, min_window_size=1)
    history: list[Decision] = []
    fired = []
    for h in range(30):  # drift every hour from Monday 20:00
        now = _at(0, 20) + timedelta(hours=h)
        verdict = guard(config, now=now, drift=True, window_size=1, history=history)
        history.append(Decision(now.isoformat(), verdict.action, list(verdict.reasons), True))
        if verdict.action == "fired":
            fired.append(now)
    # Midnight resets nothing: the third run waits until the first is 24 h old.
    assert fired == [_at(0, 20), _at(0, 21), _at(1, 20), _at(1, 21)]


def test_held_decisions_and_later_ones_do_not_count_as_fired() -> None:
    config = TriggerConfig(cooldown_hours=12, max_runs_per_day=1, min_window_size=1)
    history = [
        Decision(_at(0, 1).isoformat(), "held", ["cooldown"], True),
        Decision(_at(0, 2).isoformat(), "failed", ["submission: refused"], True),
        Decision(_at(0, 9).isoformat(), "fired", [], True),  # after `now`: another clock
    ]
    verdict = guard(config, now=_at(0, 3), drift=True, window_size=1, history=history)
    assert verdict.action == "fired"


@pytest.mark.parametrize(
    ("budget", "spent", "action", "left"),
    [(None, 1e6, "fired", None), (10.0, 9.97, "held", 0.03), (10.0, 9.96, "fired", 0.04)],
)
def test_the_budget_must_buy_at_least_one_image(
    budget: float | None, spent: float, action: str, left: float | None
) -> None:
    config = TriggerConfig(budget=budget, min_window_size=1)
    verdict = guard(
        config, now=_at(0, 0), drift=True, window_size=1, history=[], spent=spent, image_cost=0.04
    )
    assert verdict.action == action
    assert verdict.budget_left == (None if left is None else pytest.approx(left))


def test_no_drift_is_recorded_as_none_whatever_the_rules() -> None:
    config = TriggerConfig(max_runs_per_day=0, min_window_size=10_000, budget=0.0)
    verdict = guard(config, now=_at(0, 0), drift=False, window_size=1, history=[])
    assert (verdict.action, verdict.reasons) == ("none", ("no drift",))
    held = guard(config, now=_at(0, 0), drift=True, window_size=1, history=[], image_cost=0.04)
    assert held.action == "held"
    assert len(held.reasons) == 3  # window, cap of 0, no budget


@pytest.mark.parametrize(
    ("window_size", "too_small", "action", "first_reason"),
    [
        (10, None, "held", "window of 10 predictions < min_window_size 500"),
        (10, [], "fired", "drift"),  # a page plan: a stage drifted on enough rows
        (900, ["recognition: window of 40 crops < min_window_size 50"], "held", "recognition:"),
    ],
)
def test_a_page_plan_checks_the_minimum_window_per_stage(
    window_size: int, too_small: list[str] | None, action: str, first_reason: str
) -> None:
    verdict = guard(
        CONFIG,
        now=MONDAY,
        drift=True,
        window_size=window_size,
        history=[],
        too_small=too_small,
    )
    assert verdict.action == action
    assert verdict.reasons[0].startswith(first_reason)


@pytest.mark.parametrize(
    ("status", "drift", "rows", "counts"),
    [
        ("checked", True, 60, True),
        ("checked", True, 40, False),  # below the stage's minimum
        ("checked", False, 60, False),
        ("already", True, 60, False),  # decided on when it was checked
        ("skipped", False, 0, False),
    ],
)
def test_a_stage_counts_when_it_drifted_now_on_enough_rows(
    status: str, drift: bool, rows: int, counts: bool
) -> None:
    window = StageWindow(
        "recognition",
        "rec",
        "2",
        drift=drift,
        window_size=rows,
        min_window_size=50,
        status=status,  # type: ignore[arg-type]
    )
    assert window.counts is counts
    recorded = Decision(
        time=MONDAY.isoformat(),
        action="none",
        reasons=["no drift"],
        drift=False,
        stages=[asdict(window)],
    )
    assert "recognition rec" in recorded.summary()
