"""Test support for the page service: a registry with a tiny trained page pair, its params.

`page_store` trains a tiny detector and a tiny recogniser on drawn pages
(`tests.support.page_fixtures`, as `test_page_pair_evaluation` does), logs
them with the training code's export, registers, blesses and promotes both,
and registers a second recogniser version (blessed, not promoted) for swap
tests. `write_page_params` writes the two-task plan the server reads. The
page-service tests and `benchmarks/page_serving.py` share them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import yaml
from PIL import Image

from flywheel import registry
from flywheel.config import AugmentConfig
from flywheel.modeling.training import train
from tests.support.page_fixtures import tiny_task_params, write_crops, write_pages
from tests.support.serving import register_blessed

DETECTOR = "pages-detector-test"
RECOGNIZER = "pages-recognizer-test"
PADDING = 2
PAGE_SIZE = 96


@dataclass(frozen=True)
class PageStore:
    """A registry holding the pair: production versions, the blessed second recogniser."""

    pages: Path
    detector_version: str
    recognizer_version: str
    second_recognizer: str


def page_store(root: Path, *, epochs: tuple[int, int] = (12, 25)) -> PageStore:
    """Train, register, bless and promote a tiny pair under `root` (tracking must be set).

    Args:
        root: a folder for the drawn pages and the training outputs.
        epochs: the detector's and the recogniser's.
    """
    pages = root / "pages"
    write_pages(pages, {"train": 12, "val": 4, "test": 6}, size=PAGE_SIZE, font_size=11)
    write_crops(pages, PADDING)
    still = AugmentConfig(enabled=False)
    jitter = AugmentConfig(hflip=0.0, rotate_degrees=0, translate=0.05, scale=0.05, noise_std=0.01)
    runs = {
        "detection": (PAGE_SIZE, epochs[0], 3e-3, "val_loss", still),
        "recognition": (16, epochs[1], 1e-2, "val_cer", jitter),
    }
    uris = {}
    for task, (size, n, lr, monitor, augment) in runs.items():
        params = tiny_task_params(
            task, size, epochs=n, lr=lr, monitor=monitor, augment=augment, experiment=f"ps-{task}"
        )
        result = train(params, pages, out_dir=root / "runs" / task, progress=False)
        assert result.model_uri is not None
        uris[task] = result.model_uri
    detector = register_blessed(DETECTOR, uris["detection"])
    registry.promote(DETECTOR, detector, reason="page service test")
    recognizer = register_blessed(RECOGNIZER, uris["recognition"])
    registry.promote(RECOGNIZER, recognizer, reason="page service test")
    second = register_blessed(RECOGNIZER, uris["recognition"])  # the same weights, v2
    return PageStore(pages, detector, recognizer, second)


def write_page_params(folder: Path, **serve: object) -> Path:
    """A two-task plan (detection, recognition) naming the test models, with `serve` settings."""
    settings: dict[str, object] = {
        "max_batch_size": 32,
        "max_images_per_request": 8,
        "max_latency_ms": 5000,
        "max_request_bytes": 256 * 1024,
        "max_image_pixels": 512 * 512,
        "log": {"dir": "page-log", "flush_every": 1, "flush_interval_s": 0.2},
        **serve,
    }
    plan = {
        "train": {"task": "detection"},
        "tasks": {
            "detection": {"evaluate": {"registered_model": DETECTOR}},
            "recognition": {"evaluate": {"registered_model": RECOGNIZER}},
        },
        "serve": settings,
    }
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump(plan))
    return params


def page_files(pages: Path, split: str = "test") -> list[Path]:
    """The drawn pages of a split, in manifest order."""
    import pandas as pd

    manifest = pd.read_csv(pages / "manifest.csv")
    return [pages / str(p) for p in manifest[manifest["split"] == split]["path"]]


def encoded(path: Path, format: str = "PNG") -> bytes:
    """A page file re-encoded (PNG or JPEG)."""
    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("L").save(buffer, format=format)
    return buffer.getvalue()
