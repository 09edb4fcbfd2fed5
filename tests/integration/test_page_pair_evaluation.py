"""The formula-page pair evaluated end to end: two logged models, pages in, LaTeX out, per slice.

A tiny detector and a tiny recogniser are trained on drawn pages (the
recogniser on the crops `crop_regions` cuts from the same pages' true
boxes), logged to MLflow as pt2, and `evaluate_pair` runs them over a split.
Trained on 12 pages of 6 distinct expressions, the pair reads much of its
own training split exactly; paired with a recogniser that has learnt
nothing, the same detector finds the same expressions and reads none of
them, so the end-to-end score falls while `found` stays.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.config import AugmentConfig, Params
from flywheel.evaluation import EvaluationError
from flywheel.evaluation.pair import evaluate_pair, load_pair_model
from flywheel.modeling.training import train
from tests.support.page_fixtures import tiny_task_params, write_crops, write_pages
from tests.support.tracking import tracking_env

pytestmark = pytest.mark.slow

PADDING = 2
SLICES = ("level", "noise")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with tracking_env(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pages")
    write_pages(root, {"train": 12, "val": 4, "test": 6}, size=96, font_size=11)
    return root


@pytest.fixture(scope="module")
def crops(pages: Path) -> Path:
    """The recognition dataset of `pages`: their true boxes cut with `PADDING` (`crops.csv`)."""
    return write_crops(pages, PADDING)


def _params(
    task: str, image_size: int, epochs: int, lr: float, monitor: str, augment: AugmentConfig
) -> Params:
    return tiny_task_params(
        task,
        image_size,
        epochs=epochs,
        lr=lr,
        monitor=monitor,
        augment=augment,
        experiment=f"pair-{task}",
    )


@pytest.fixture(scope="module")
def models(
    store: str, pages: Path, crops: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Logged model URIs: `detector`, `recognizer` (trained) and `blank` (a recogniser, untrained).

    The detector learns its pages as they are; the recogniser learns crops
    shifted and zoomed a little, since the detector's boxes are a few pixels
    off the true ones (without it, it read none of the detected crops).
    """
    del store
    out = tmp_path_factory.mktemp("runs")
    still = AugmentConfig(enabled=False)
    jitter = AugmentConfig(hflip=0.0, rotate_degrees=0, translate=0.05, scale=0.05, noise_std=0.01)
    runs = {
        "detector": (_params("detection", 96, 15, 3e-3, "val_loss", still), pages),
        "recognizer": (_params("recognition", 16, 50, 1e-2, "val_cer", jitter), crops),
        "blank": (_params("recognition", 16, 1, 1e-6, "val_cer", still), crops),
    }
    uris = {}
    for name, (params, data) in runs.items():
        result = train(params, data, out_dir=out / name, progress=False)
        assert result.model_uri is not None
        uris[name] = result.model_uri
    return uris


def test_the_pair_is_scored_end_to_end_per_slice(models: dict[str, str], pages: Path) -> None:
    score = evaluate_pair(
        models["detector"],
        models["recognizer"],
        pages,
        split="test",
        slice_columns=SLICES,
        batch_size=4,
        padding=PADDING,
    )
    assert (score.n_pages, score.n_expressions) == (6, 12)
    for s in (score, *score.slices.values()):
        assert 0.0 <= s.end_to_end <= s.found <= 1.0
        assert math.isnan(s.precision) or 0.0 <= s.precision <= 1.0
    assert {"level=high", "noise=clean", "noise=shadow", "level=high,noise=clean"} <= set(
        score.slices
    )
    assert score.slices["noise=clean"].support + score.slices["noise=shadow"].support == 12
    assert score.end_to_end > 0.0  # pages it never saw, expressions it did


def test_a_pair_that_learnt_its_pages_reads_them_and_an_untrained_partner_does_not(
    models: dict[str, str], pages: Path
) -> None:
    detector = load_pair_model(models["detector"], "detection")  # loaded once, used twice
    options = {"split": "train", "slice_columns": SLICES, "batch_size": 8, "padding": PADDING}
    trained = evaluate_pair(detector, models["recognizer"], pages, **options)
    untrained = evaluate_pair(detector, models["blank"], pages, **options)

    assert trained.n_expressions == 24
    assert trained.found > 0.6
    assert trained.end_to_end > 0.4  # the detector's crops are read exactly
    assert untrained.found == trained.found  # the same detector, the same boxes
    assert untrained.n_detections == trained.n_detections
    assert untrained.end_to_end < trained.end_to_end - 0.3


def test_a_recogniser_in_the_detectors_place_is_refused(
    models: dict[str, str], pages: Path
) -> None:
    with pytest.raises(EvaluationError, match="'recognition' model was given as the pair's detec"):
        evaluate_pair(models["recognizer"], models["detector"], pages)
