"""When to stop training: patience on the monitored validation metric, and the overfitting flag."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from flywheel.tasks.base import Direction


@dataclass
class EarlyStopping:
    """Stop when the monitored metric has not improved by `min_delta` for `patience` epochs.

    >>> stopper = EarlyStopping(patience=2, min_delta=0.0, mode="max")
    >>> [stopper.update(v, epoch) for epoch, v in enumerate([0.5, 0.6, 0.6, 0.55], start=1)]
    [True, True, False, False]
    >>> stopper.should_stop, stopper.best, stopper.best_epoch
    (True, 0.6, 2)
    """

    patience: int
    min_delta: float
    mode: Direction
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def is_improvement(self, value: float) -> bool:
        """Whether `value` beats the best so far by more than `min_delta` (NaN never does)."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is the new best."""
        if self.is_improvement(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Patience is exhausted."""
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""
        for key, value in state.items():
            setattr(self, key, value)


def detect_overfitting(
    history: Sequence[dict[str, float]],
    monitor: str,
    mode: Direction,
    patience: int,
    min_delta: float,
) -> bool:
    """True when, over the last `patience` epochs, validation stalled but training improved.

    "Stalled": the monitored validation metric's best in the window does not beat
    its best before the window by `min_delta`. "Improved": the same metric on the
    training split (`val_x` → `train_x`) got better by more than `min_delta`
    from the epoch before the window to the last one.

    >>> rows = [{"val_loss": v, "train_loss": t} for v, t in
    ...         [(1.0, 1.0), (0.5, 0.5), (0.6, 0.3), (0.7, 0.1)]]
    >>> detect_overfitting(rows, "val_loss", "min", patience=2, min_delta=0.01)
    True
    """
    if len(history) <= patience:
        return False
    train_metric = "train_" + monitor.removeprefix("val_")
    sign = 1.0 if mode == "max" else -1.0
    before, window = history[:-patience], history[-patience:]
    best_before = max(sign * row[monitor] for row in before)
    best_window = max(sign * row[monitor] for row in window)
    val_stalled = not best_window > best_before + min_delta
    train_start, train_end = sign * before[-1][train_metric], sign * window[-1][train_metric]
    return val_stalled and train_end > train_start + min_delta
