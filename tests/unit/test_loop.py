"""The demo loop's pure parts: the phase table and the refusal of windows too small to judge."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from flywheel.config import MonitorConfig, Params
from flywheel.demo.loop import LoopError, PhaseResult, event_row, phase_table, run_closed_loop


def _phase(name: str, accuracy: float, drift: bool, errors: int = 0) -> PhaseResult:
    return PhaseResult(
        phase=name,
        scenario="in_distribution" if not drift else "handwritten_shadow_rotated",
        requests=400,
        errors=errors,
        traffic_accuracy=accuracy,
        versions="v1",
        drift=drift,
        feature_drift_share=1.0 if drift else 0.1,
        embedding_drift_share=0.8 if drift else 0.0,
        mean_confidence=0.9,
        monitored_accuracy=accuracy,
        data_version="1b8e3c4e4650d921c59d28b119038207",
        report=Path("report.html"),
        seconds=9.0,
    )


def test_phase_table_fits_a_terminal_and_shows_every_phase() -> None:
    phases = [
        _phase("in-distribution", 0.985, False),
        _phase("drifted", 0.885, True, errors=2),
        event_row("retrained", "v1→v3", "3548a108a0c128447d9749597eaba0c4", 157.0),
    ]
    console = Console(width=80, record=True, color_system=None)

    console.print(phase_table(phases))

    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for expected in ("in-distribution", "98.5%", "88.5%", "DRIFT", "v1→v3", "3548a108", "2 failed"):
        assert expected in text, expected


def test_too_few_requests_for_the_monitor_are_refused_before_serving() -> None:
    params = Params(monitor=MonitorConfig(min_window_size=200))

    with pytest.raises(
        LoopError, match=r"100 requests .* fewer than monitor.min_window_size \(200\)"
    ):
        run_closed_loop(
            Path("params.yaml"),
            params,
            retrain=lambda extra: None,
            drift_scenario="handwritten_shadow_rotated",
            requests=100,
        )
