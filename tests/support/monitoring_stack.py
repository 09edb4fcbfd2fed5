"""What the monitoring stack tests (tests/integration/monitoring/) share: the set-up's plan.

The tiny model's params (a shrunk CNN, 4 classes, the real traffic scenarios of
params.yaml), the traffic: two in-distribution and two drifted windows of
`WINDOW` predictions, one hour apart from `T0`, and the handles of the
package's fixtures (`Traffic`, `Dashboard`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from flywheel.config import EvaluateConfig, MonitorConfig, Params, TrainConfig, load_params
from tests.support import REPO
from tests.support.plans import TINY_MODEL, tiny_plan

MODEL = "monitoring-tiny"
PLAN = tiny_plan(40, 10, 4)
SCENARIOS = load_params(REPO / "params.yaml").scenarios  # the real traffic scenarios
DRIFT = "handwritten_shadow_rotated"
PARAMS = Params(
    data=PLAN,
    scenarios=SCENARIOS,
    train=TrainConfig(
        experiment="test-monitoring",
        seed=3,
        epochs=4,
        batch_size=32,
        lr=5e-3,
        patience=10,
        model=TINY_MODEL,
    ),
    evaluate=EvaluateConfig(registered_model=MODEL),
    monitor=MonitorConfig(min_window_size=100, embedding_components=4),
)
WINDOW = 300
"""Predictions per traffic window."""
T0 = datetime(2021, 3, 1, 8, 0, tzinfo=UTC)
"""Long past: `flywheel monitor` without arguments (the last 24 h) sees none of it."""
HOURS = {"in_distribution": (0, 1), DRIFT: (2, 3)}
"""Scenario → the hours (after T0) of its windows."""


@dataclass(frozen=True)
class Traffic:
    """What was served: the prediction log, the ground truth written, the windows' hours."""

    log_dir: Path
    truth: pd.DataFrame


def hour(h: int) -> tuple[datetime, datetime]:
    """The window `[T0 + h, T0 + h + 1)`."""
    return T0 + timedelta(hours=h), T0 + timedelta(hours=h + 1)


@dataclass(frozen=True)
class Dashboard:
    """A workspace with one snapshot per traffic hour, and the UIs serving it."""

    workspace: Path
    project_id: str
    versions: list[str]
    evidently_url: str
    mlflow_url: str
