"""The helpers of benchmarks/page_models.py: the pieces a crop is cut into, the datasets it writes.

The benchmark itself trains four models (minutes); these check the parts
whose mistakes would not show in its table: a piece lost or doubled, a page
linked to another page's labels in Ultralytics' layout, a recognition folder
the recognition task cannot read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from benchmarks.external.ultralytics_yolo import yolo_dataset
from benchmarks.page_models import pieces
from tests.support.page_fixtures import write_pages


def test_a_crop_is_cut_into_k_pieces_that_tile_it() -> None:
    pixels = np.arange(7 * 23, dtype=np.uint8).reshape(7, 23)
    for k in (1, 2, 5, 23, 30):
        cut = pieces(Image.fromarray(pixels), k)
        assert len(cut) == k
        assert all(piece.height == 7 and piece.width >= 1 for piece in cut)
        if k <= 23:  # no piece narrower than a pixel: they tile the crop exactly
            tiled = np.concatenate([np.asarray(piece) for piece in cut], axis=1)
            assert np.array_equal(tiled, pixels)


def test_ultralytics_layout_pairs_each_page_with_its_own_labels(tmp_path: Path) -> None:
    root = tmp_path / "pages"
    write_pages(root, {"train": 3, "val": 1, "test": 2}, size=64, font_size=8)
    data, per_split = yolo_dataset(root, tmp_path / "yolo")

    manifest = pd.read_csv(root / "manifest.csv")
    assert {s: len(v) for s, v in per_split.items()} == {"train": 3, "val": 1, "test": 2}
    for row in manifest.itertuples():
        image = tmp_path / "yolo" / "images" / row.split / f"{row.image_id}.png"
        label = tmp_path / "yolo" / "labels" / row.split / f"{row.image_id}.txt"
        assert image.read_bytes() == (root / row.path).read_bytes()
        assert label.read_text() == (root / "labels" / f"{row.image_id}.txt").read_text()
    assert "train: images/train" in data.read_text()
    yolo_dataset(root, tmp_path / "yolo")  # again over its own links: replaced, not an error
