"""Production images keep their colour and levels from the service to the dataset.

A batch of model inputs goes through the task's `stored_images` and the real
prediction logger (as `serving/predictions.py` does), and the logged PNGs are
merged with `plan_rows`: an RGB model's traffic becomes RGB rows, a low-range
(white level 16) model's traffic keeps its 0..16 levels, and an image that is
not what the plan's preprocessing makes is skipped as `bad_image`.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flywheel.config import DataPlan, MergeConfig, Strata
from flywheel.data.manifest import COLUMNS
from flywheel.data.preprocessing import Preprocessing
from flywheel.labeling.merge import plan_rows
from flywheel.monitoring.prediction_log import PredictionLogger, PredictionRecord, read_predictions

EMPTY_MANIFEST = pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})
NO_TRUTH = pd.DataFrame(columns=["request_id", "index", "style", "noise", "group"])


def _serve_and_log(pre: Preprocessing, originals: list[Image.Image], root: Path) -> pd.DataFrame:
    """Pre-process as served, store through the prediction logger, read the log back."""
    batch = np.stack([pre.to_unit(image) for image in originals])  # (B, C, S, S)
    stored = pre.stored(batch)
    with PredictionLogger(root, flush_interval_s=0.1) as logger:
        for i, image in enumerate(stored):
            logger.log(
                PredictionRecord(
                    request_id=f"req-{i}",
                    index=0,
                    time=datetime.now(UTC),
                    model_name="m",
                    model_version="1",
                    label="a",
                    confidence=0.9,
                    probabilities={"a": 0.9, "b": 0.1},
                    features={},
                    embedding=[0.0],
                    image=image,
                )
            )
    return read_predictions(root)


def _logged(log: pd.DataFrame) -> dict[tuple[str, int], dict[str, Any]]:
    return {(str(r["request_id"]), int(r["index"])): r for r in log.to_dict(orient="records")}


def _labels(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"request_id": [f"req-{i}" for i in range(n)], "index": 0, "label": ["a", "b"] * (n // 2)}
    )


def _plan(channels: int, white_level: int | None = None) -> DataPlan:
    return DataPlan(
        classes=("a", "b"),
        image_size=8,
        channels=channels,
        white_level=white_level,
        strata=Strata(style=("s",), noise=("n",)),
    )


def test_an_rgb_models_traffic_is_merged_in_colour(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    originals = [Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)) for _ in "ab"]
    plan = _plan(3)
    log = _serve_and_log(Preprocessing.from_plan(plan), originals, tmp_path / "log")

    with Image.open(log["image_path"].iloc[0]) as image:
        assert (image.mode, image.size) == ("RGB", (8, 8))
        assert np.asarray(image).std(axis=2).max() > 0  # channels differ: not grey
    planned = plan_rows(_labels(2), NO_TRUTH, EMPTY_MANIFEST, plan, MergeConfig(), _logged(log))

    assert planned.skipped == {}
    assert len(planned.added) == 2
    for data in planned.payloads.values():
        with Image.open(io.BytesIO(data)) as image:
            assert image.mode == "RGB"

    grey_plan = _plan(1)  # the same RGB files are not what a grey plan's preprocessing makes
    refused = plan_rows(
        _labels(2), NO_TRUTH, EMPTY_MANIFEST, grey_plan, MergeConfig(), _logged(log)
    )
    assert sum(len(v) for v in refused.skipped.values()) == 2
    assert set(refused.skipped) == {"bad_image"}


def test_a_low_range_models_traffic_keeps_its_levels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    originals = [Image.fromarray(rng.integers(0, 17, (8, 8), dtype=np.uint8)) for _ in "ab"]
    plan = _plan(1, white_level=16)
    log = _serve_and_log(Preprocessing.from_plan(plan), originals, tmp_path / "log")

    for path, original in zip(log["image_path"], originals, strict=True):
        with Image.open(path) as image:
            assert np.array_equal(np.asarray(image), np.asarray(original))  # as imported
    planned = plan_rows(_labels(2), NO_TRUTH, EMPTY_MANIFEST, plan, MergeConfig(), _logged(log))
    assert len(planned.added) == 2


@pytest.mark.parametrize(("white", "dtype"), [(None, np.uint8), (16, np.uint8), (4095, np.uint16)])
def test_stored_images_are_at_the_plans_levels(white: int | None, dtype: type) -> None:
    pre = Preprocessing(4, 1, white_level=white)
    batch = np.full((2, 1, 4, 4), 0.5, np.float32)

    stored = pre.stored(batch)

    assert stored.dtype == dtype
    assert stored.shape == (2, 4, 4)
    assert stored.max() == round(0.5 * (white or 255))
