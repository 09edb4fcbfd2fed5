"""The one pre-processing definition, the importer that applies it, and the range checks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flywheel.config import AugmentConfig, ConfigError, DataPlan
from flywheel.data.importer import DatasetImportError, import_imagefolder
from flywheel.data.preprocessing import Preprocessing, PreprocessingError
from flywheel.tasks.augment import check_augment_range
from flywheel.tasks.classification import ClassificationTask
from serving.decoding import arrays_to_unit
from serving.errors import RequestError

RNG = np.random.default_rng(0)
DIGIT = np.clip(RNG.integers(0, 17, (8, 8)), 0, 16).astype(np.uint8)  # levels 0..16
PHOTO = RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)


def _plan(**data: object) -> DataPlan:
    return DataPlan.model_validate({"classes": ["a", "b"], **data})


def _tree(root: Path, images: dict[str, Image.Image]) -> Path:
    for rel, image in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / rel)
    return root


# ------------------------------------------------------------------ the definition


def test_metadata_round_trip_and_the_legacy_default() -> None:
    pre = Preprocessing(8, 3, "lanczos", 16)
    assert Preprocessing.from_metadata(pre.to_metadata(), 8) == pre
    # A model logged before the definition existed keeps what it was served with.
    assert Preprocessing.from_metadata(None, 32) == Preprocessing(32, 1, "bilinear")
    with pytest.raises(PreprocessingError, match="bad preprocessing"):
        Preprocessing.from_metadata({"size": 8}, 8)


def test_small_images_are_not_enlarged_and_keep_their_levels() -> None:
    pre = Preprocessing(8, white_level=16)
    image = Image.fromarray(DIGIT)
    assert pre.canonical(image).size == (8, 8)
    np.testing.assert_array_equal(np.asarray(pre.canonical(image)), DIGIT)
    unit = pre.to_unit(image)  # (1, 8, 8)
    np.testing.assert_allclose(unit[0], DIGIT / 16.0)  # level 16 is white


def test_rgb_stays_rgb_and_grey_is_luminance() -> None:
    rgb = Preprocessing(16, 3).to_unit(PHOTO)
    grey = Preprocessing(16, 1).to_unit(PHOTO)
    assert rgb.shape == (3, 16, 16)
    assert grey.shape == (1, 16, 16)
    assert not np.allclose(rgb[0], rgb[1])  # the channels differ: colour is kept
    lanczos = Image.fromarray(PHOTO).resize((16, 16), Image.Resampling.LANCZOS)
    np.testing.assert_allclose(rgb, np.asarray(lanczos).transpose(2, 0, 1) / 255.0, atol=1e-6)
    # A grey file read as RGB repeats its one channel.
    tripled = Preprocessing(8, 3).to_unit(DIGIT * 15)
    np.testing.assert_allclose(tripled[0], tripled[2])


def test_sixteen_bit_images_use_their_full_range() -> None:
    levels = (np.arange(64).reshape(8, 8) * 1040).astype(np.uint16)  # 0..65520
    unit = Preprocessing(8).to_unit(levels)
    np.testing.assert_allclose(unit[0], levels / 65535.0, rtol=1e-6)
    png = Image.fromarray(levels)
    assert png.mode == "I;16"
    rgb = Preprocessing(8, 3).to_unit(png)  # an RGB model: 8 bits of the whole range, x3
    assert rgb.shape == (3, 8, 8)
    eight_bit = np.rint(levels.astype(np.float64) * 255 / 65535) / 255
    np.testing.assert_allclose(rgb[0], eight_bit, rtol=1e-6)
    np.testing.assert_array_equal(rgb[0], rgb[2])
    assert 0.3 < rgb.mean() < 0.7  # not saturated to white


def test_serving_and_training_read_a_file_the_same_way(tmp_path: Path) -> None:
    task = ClassificationTask(("a", "b"), 16, 3, preprocessing=Preprocessing(16, 3))
    path = tmp_path / "photo.png"
    Image.fromarray(PHOTO).save(path)
    with Image.open(path) as opened:
        served = task.preprocess([opened])  # (1, 3, 16, 16)
    assert served.shape == (1, *task.input_shape) == (1, 3, 16, 16)
    rebuilt = ClassificationTask.from_metadata(task.export_metadata())
    assert rebuilt.preprocessing == task.preprocessing
    assert task.export_metadata()["input"]["color"] == "rgb"
    torch.testing.assert_close(rebuilt.preprocess([PHOTO]), served)


# ---------------------------------------------------------------------- the import


def test_a_low_range_tree_needs_its_white_level(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {f"train/a/{i}.png": Image.fromarray(DIGIT) for i in range(2)})
    with pytest.raises(DatasetImportError, match=r"levels 0-16 of 0-255.*data\.white_level: 16"):
        import_imagefolder(src, _plan(image_size=8), name="d", root=tmp_path, progress=False)
    assert not (tmp_path / "d").exists()  # nothing written

    manifest = import_imagefolder(
        src, _plan(image_size=8, white_level=16), name="d", root=tmp_path, progress=False
    )
    stored = np.asarray(Image.open(tmp_path / "d" / manifest["path"].iloc[0]))
    np.testing.assert_array_equal(stored, DIGIT)  # as it is: 8 x 8, levels 0..16


def test_a_pixel_above_the_white_level_names_its_file(tmp_path: Path) -> None:
    bright = DIGIT.copy()
    bright[0, 0] = 200
    src = _tree(
        tmp_path / "src",
        {"train/a/ok.png": Image.fromarray(DIGIT), "val/b/bright.png": Image.fromarray(bright)},
    )
    plan = _plan(image_size=8, white_level=16)
    with pytest.raises(DatasetImportError, match=r"bright\.png: a pixel of level 200 is above"):
        import_imagefolder(src, plan, name="d", root=tmp_path, progress=False)


def test_import_says_when_it_resizes_and_keeps_colour(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = _tree(tmp_path / "src", {"train/a/p.png": Image.fromarray(PHOTO)})
    with caplog.at_level(logging.WARNING, logger="flywheel.data.importer"):
        manifest = import_imagefolder(
            src, _plan(image_size=16, channels=3), name="p", root=tmp_path, progress=False
        )
    assert "resized 1 of 1 images to 16 x 16" in caplog.text
    assert "p.png (40 x 40)" in caplog.text
    with Image.open(tmp_path / "p" / manifest["path"].iloc[0]) as stored:
        assert (stored.mode, stored.size) == ("RGB", (16, 16))
        expected = Preprocessing(16, 3).to_unit(PHOTO)
        np.testing.assert_allclose(Preprocessing(16, 3).to_unit(stored), expected)

    caplog.clear()
    same = _tree(tmp_path / "same", {"train/a/s.png": Image.fromarray(PHOTO[:16, :16])})
    with caplog.at_level(logging.WARNING, logger="flywheel.data.importer"):
        import_imagefolder(
            same, _plan(image_size=16, channels=3), name="s", root=tmp_path, progress=False
        )
    assert "resized" not in caplog.text


def test_sixteen_bit_files_are_imported_at_sixteen_bits(tmp_path: Path) -> None:
    levels = (np.arange(64).reshape(8, 8) * 1040).astype(np.uint16)
    src = _tree(tmp_path / "src", {"train/a/deep.png": Image.fromarray(levels)})
    manifest = import_imagefolder(src, _plan(image_size=8), name="x", root=tmp_path, progress=False)
    with Image.open(tmp_path / "x" / manifest["path"].iloc[0]) as stored:
        assert stored.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(stored), levels)


# ------------------------------------------------------------ augmentation and arrays


@pytest.mark.parametrize(
    ("top", "cfg", "refused"),
    [
        (16 / 255, AugmentConfig(), "brightness=0.15 exceeds"),
        (16 / 255, AugmentConfig(brightness=0.0, noise_std=0.05), "noise_std=0.05 exceeds"),
        (1.0, AugmentConfig(), None),
        (16 / 255, AugmentConfig(enabled=False), None),
    ],
)
def test_augmentation_is_checked_against_the_range_of_the_data(
    top: float, cfg: AugmentConfig, refused: str | None
) -> None:
    images = torch.from_numpy(np.stack([DIGIT / 16.0 * top] * 4)[:, None]).float()  # (4, 1, 8, 8)
    if refused is None:
        check_augment_range(cfg, images)
        return
    with pytest.raises(ConfigError, match=rf"train\.augment\.{refused}.*data\.white_level"):
        check_augment_range(cfg, images)


def test_arrays_of_an_rgb_model_are_channels_first_or_last() -> None:
    batch = RNG.integers(0, 256, (2, 8, 8, 3))
    last = arrays_to_unit(batch, 8, "byte", channels=3)
    first = arrays_to_unit(batch.transpose(0, 3, 1, 2), 8, "byte", channels=3)
    assert last.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(last, first)
    with pytest.raises(RequestError, match=r"\(N, 3, 8, 8\) or \(N, 8, 8, 3\)"):
        arrays_to_unit(batch[..., 0], 8, "byte", channels=3)


def test_byte_arrays_of_a_model_with_a_white_level_are_its_files_levels() -> None:
    unit = arrays_to_unit(DIGIT[None], 8, "auto", white=16)  # (1, 1, 8, 8)
    np.testing.assert_allclose(unit[0, 0], DIGIT / 16.0, rtol=1e-6)
    with pytest.raises(RequestError, match=r"\[0, 16\]"):
        arrays_to_unit(np.full((1, 8, 8), 200), 8, "byte", white=16)


def test_exif_orientation_is_applied_everywhere(tmp_path: Path) -> None:
    """A phone photo stored sideways reads upright, at import and when served."""
    wide = np.zeros((8, 16), np.uint8)  # stored 16 wide, 8 high
    wide[:, :4] = 255  # a bright band on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    path = tmp_path / "sideways.jpg"
    Image.fromarray(wide).save(path, exif=exif, quality=100)
    with Image.open(path) as opened:
        upright = Preprocessing(16).convert(opened)
    assert upright.size == (8, 16)  # viewed: 8 wide, 16 high
    assert np.asarray(upright)[:4].mean() > 200  # the band is now on top
