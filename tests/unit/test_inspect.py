"""Inspecting an ImageFolder tree: layouts, splits, sizes, colour, value range, odd files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flywheel.config import nfc
from flywheel.data.inspect import assign_splits, inspect_imagefolder, scan_tree


def _save(root: Path, rel: str, image: Image.Image | bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, bytes):
        path.write_bytes(image)
    else:
        image.save(path)


def test_a_split_tree_with_validation_and_odd_files(tmp_path: Path) -> None:
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) // 4)  # values 0..15
    for split in ("train", "validation", "test"):
        for i in range(3):
            _save(tmp_path, f"{split}/a b\u00e9/{i}.png", grey)
        _save(tmp_path, f"{split}/x/{i}.png", grey.resize((12, 10)))
    _save(tmp_path, "train/x/notes.txt", b"hello")
    _save(tmp_path, "train/x/nested/1.png", grey)
    _save(tmp_path, "test/x/broken.png", b"not a png")
    (tmp_path / "testing" / "empty").mkdir(parents=True)  # a second `test`
    (tmp_path / "README.md").write_text("about")

    seen = inspect_imagefolder(tmp_path)

    assert seen.layout.has_splits
    assert seen.classes == ["a b\u00e9", "x"]
    assert seen.counts()["val"] == {"a b\u00e9": 3, "x": 1}
    assert seen.stats.common_size == (8, 8)
    assert seen.stats.channels == 1
    assert (seen.stats.low, seen.stats.high) == (0, 15)
    problems = "\n".join(seen.problems)
    assert "notes.txt: not an image file (.txt)" in problems
    assert "nested: a folder inside a class folder" in problems
    assert "broken.png: cannot decode (not an image)" in problems
    assert "/testing: a second folder for split 'test'" in problems
    assert "README" not in problems


def test_colour_is_found_and_a_grey_rgb_file_is_grey(tmp_path: Path) -> None:
    _save(tmp_path, "cat/grey.jpg", Image.new("RGB", (16, 16), (90, 90, 90)))
    assert inspect_imagefolder(tmp_path).stats.channels == 1

    _save(tmp_path, "dog/red.png", Image.new("RGB", (16, 16), (200, 10, 10)))
    seen = inspect_imagefolder(tmp_path)
    assert (seen.stats.channels, seen.stats.colour, seen.stats.grey) == (3, 1, 1)
    assert not seen.layout.has_splits


def test_a_flat_tree_is_split_per_class_stably(tmp_path: Path) -> None:
    for i in range(40):
        _save(tmp_path, f"k/{i}.png", Image.new("L", (8, 8)))
    (tmp_path / "empty").mkdir()

    seen = inspect_imagefolder(tmp_path)

    assert seen.counts() == {"train": {"k": 28}, "val": {"k": 6}, "test": {"k": 6}}
    assert seen.layout.empty_classes == ["empty"]
    assert any("class folder 'empty' holds no image" in p for p in seen.problems)
    again = assign_splits(scan_tree(tmp_path).images)
    assert [i.split for i in again] == [i.split for i in seen.images]


def test_names_are_compared_in_nfc() -> None:
    assert nfc("e\u0301") == "\u00e9"


def test_a_missing_tree_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere: not a folder"):
        scan_tree(tmp_path / "nowhere")


def test_stratum_folders_give_the_style(tmp_path: Path) -> None:
    for style in ("scanned", "phone photo"):
        for label in ("a", "b"):
            for i in range(10):
                _save(tmp_path, f"{style}/{label}/{i}.png", Image.new("L", (8, 8)))

    seen = inspect_imagefolder(tmp_path)

    assert seen.layout.styles == ["phone photo", "scanned"]
    assert seen.classes == ["a", "b"]
    assert seen.style_counts()["test"] == {"phone photo": 4, "scanned": 4}  # 2 per class each
    assert {i.style for i in seen.images if i.label == "a"} == {"phone photo", "scanned"}


def test_a_tree_without_a_val_folder_gets_val_from_train(tmp_path: Path) -> None:
    for i in range(20):
        _save(tmp_path, f"train/k/{i}.png", Image.new("L", (8, 8)))
    for i in range(5):
        _save(tmp_path, f"test/k/{i}.png", Image.new("L", (8, 8)))

    seen = inspect_imagefolder(tmp_path)

    assert seen.counts() == {"train": {"k": 17}, "val": {"k": 3}, "test": {"k": 5}}
    moved = {i.relpath for i in seen.images if i.split == "val"}
    assert all(path.startswith("train/") for path in moved)
