"""The detector and the recogniser through the platform: the generic loop, MLflow pt2, evaluation.

Each task trains with `flywheel.modeling.training.train` (`train.task:
detection|recognition`) on drawn pages or their crops, logs its best epoch as
an MLflow pt2 model, and that logged model is evaluated per slice by
`flywheel.evaluation.evaluate_model` and judged by the gates, in the
direction of the task's primary metric (mAP@0.5 maximised, CER minimised).
A shrunk model and a few epochs: the check is that it runs and learns, not
that it is good.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.models import get_model_info

from flywheel.config import (
    AugmentConfig,
    EvaluateConfig,
    GatesConfig,
    Params,
)
from flywheel.evaluation import check_gates, evaluate_model
from flywheel.modeling.training import train
from tests.support.page_fixtures import tiny_task_params, write_crops, write_pages
from tests.support.tracking import tracking_env

pytestmark = pytest.mark.slow

SLICES = ("level", "noise")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with tracking_env(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pages_root = tmp_path_factory.mktemp("pages")
    write_pages(pages_root, {"train": 12, "val": 4, "test": 6}, size=96, font_size=11)
    return pages_root, write_crops(pages_root)


def _params(task: str, image_size: int, *, epochs: int, lr: float, monitor: str) -> Params:
    augment = AugmentConfig(hflip=0.5, rotate_degrees=0, translate=0.05, scale=0.05, noise_std=0.01)
    return tiny_task_params(
        task,
        image_size,
        epochs=epochs,
        lr=lr,
        monitor=monitor,
        augment=augment,
        experiment=f"test-{task}",
    )


@pytest.mark.usefixtures("store")
def test_the_detector_trains_exports_and_is_evaluated_per_slice(
    folders: tuple[Path, Path], tmp_path: Path
) -> None:
    pages, _ = folders
    params = _params("detection", 96, epochs=12, lr=3e-3, monitor="val_loss")
    result = train(params, pages, out_dir=tmp_path, progress=False)

    history = result.history
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 3
    assert result.model_uri is not None
    metadata = get_model_info(result.model_uri).metadata
    assert metadata["task"] == "detection"
    assert metadata["output"]["grid"] == [12, 12]
    loaded = mlflow.pytorch.load_model(result.model_uri)
    assert loaded(torch.rand(3, 1, 96, 96)).shape == (3, 12 * 12 * 5 + 16)

    config = EvaluateConfig(slice_columns=SLICES, batch_size=4)
    report = evaluate_model(result.model_uri, pages, config, progress=False)
    assert (report.task, report.primary_metric, report.primary_direction) == (
        "detection",
        "map_50",
        "max",
    )
    assert report.overall.n == 6
    assert report.overall["map_50"] > 0.3  # learnt from 12 pages in a few epochs
    assert set(report.slices) >= {"noise=clean", "noise=shadow", "level=high"}
    assert all(0.0 <= m["map_50_95"] <= m["map_50"] + 1e-9 for m in report.slices.values())
    blessing = check_gates(report, None, GatesConfig(min_accuracy=0.99, min_slice_support=1))
    assert blessing.gate("min_accuracy").comparison == ">="
    assert not blessing.blessed  # a floor on mAP that this tiny model cannot reach


@pytest.mark.usefixtures("store")
def test_the_recogniser_trains_exports_and_is_evaluated_per_slice(
    folders: tuple[Path, Path], tmp_path: Path
) -> None:
    _, crops = folders
    params = _params("recognition", 16, epochs=15, lr=1e-2, monitor="val_cer")
    result = train(params, crops, out_dir=tmp_path, progress=False)

    history = result.history
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 3
    assert result.best_metric < 1.0  # the validation CER moved
    assert result.model_uri is not None
    assert get_model_info(result.model_uri).metadata["task"] == "recognition"

    config = EvaluateConfig(slice_columns=SLICES, batch_size=8)
    report = evaluate_model(result.model_uri, crops, config, progress=False)
    assert (report.primary_metric, report.primary_direction) == ("cer", "min")
    assert report.overall.n == 12
    assert report.overall["cer"] < 0.9
    assert np.isfinite(report.slices["noise=clean"]["cer"])
    gates = GatesConfig(min_accuracy=0.95, min_slice_support=1, max_slice_regression=None)
    blessing = check_gates(report, None, gates)
    first = blessing.gate("min_accuracy")
    assert first.comparison == "<="  # a ceiling on the error rate
    assert first.passed == (report.overall["cer"] <= 0.95)
