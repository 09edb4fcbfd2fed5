"""The tiny data plan and model the training, tuning, pipeline and infra tests share.

Each test module keeps its own counts (they size what it asserts); what they
share is the shape: a plan named "tiny" of four digit classes and the default
strata, and a shrunk CNN that trains in seconds on CPU. `collect_plan` makes a
plan's dataset with the real collector, for the `dataset` fixtures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flywheel.config import DataPlan, ModelConfig

TINY_CLASSES = ("0", "1", "2", "3")

TINY_MODEL = ModelConfig(width=8, stages=3, embedding_dim=16, dropout=0.1)
"""A shrunk CNN: a few thousand weights, an epoch on a tiny dataset in about a second."""


def tiny_plan(
    train: int, val: int, test: int, *, seed: int = 11, classes: Sequence[str] = TINY_CLASSES
) -> DataPlan:
    """A plan named "tiny" with `train`/`val`/`test` images per stratum and class."""
    return DataPlan(
        name="tiny",
        seed=seed,
        classes=tuple(classes),
        per_stratum={"train": train, "val": val, "test": test},
    )


def collect_plan(plan: DataPlan, root: Path) -> Path:
    """Collect `plan` under `root` with the real collector; its dataset folder, `root/<name>`."""
    from flywheel.demo.collect import collect_dataset  # the collector's imports, when asked for

    collect_dataset(plan, root, progress=False)
    return root / plan.name
