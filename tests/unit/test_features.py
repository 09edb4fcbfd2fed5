"""Summary features (`flywheel.monitoring.features`): values, invariances, input checks,
and the low-information rule on blank, tiny and real digit images."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flywheel.config import DataPlan, NoiseStrength, ServeConfig
from flywheel.demo.render import NOISES, GlyphLibrary, render_image
from flywheel.monitoring.features import (
    EDGE_THRESHOLD,
    FEATURE_COLUMNS,
    HISTOGRAM_BINS,
    low_information,
    summary_features,
    to_unit_range,
)
from flywheel.tasks.classification import ClassificationTask
from tests.support.serving import digit_images

S = 16


def _one(image: np.ndarray) -> pd.Series:
    return summary_features(image[None]).iloc[0]


def _half_and_half() -> np.ndarray:
    image = np.zeros((S, S))
    image[:, S // 2 :] = 1.0  # left black, right white
    return image


def _checkerboard() -> np.ndarray:
    return (np.indices((S, S)).sum(axis=0) % 2).astype(np.float64)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (
            np.zeros((S, S)),
            {
                "brightness": 0,
                "contrast": 0,
                "dynamic_range": 0,
                "edge_density": 0,
                "sharpness": 0,
                "illumination_gradient": 0,
                "entropy": 0,
            },
        ),
        (
            np.full((S, S), 0.5),
            {"brightness": 0.5, "contrast": 0, "edge_density": 0, "entropy": 0},
        ),
        (
            _half_and_half(),
            # one bit of entropy, RMS contrast 0.5; the two middle columns have gradient 0.5
            {
                "brightness": 0.5,
                "contrast": 0.5,
                "dynamic_range": 1.0,
                "entropy": 1.0,
                "edge_density": 2 / S,
                "illumination_gradient": 1.0,
            },
        ),
        (
            _checkerboard(),
            {"brightness": 0.5, "contrast": 0.5, "entropy": 1.0, "illumination_gradient": 0.0},
        ),
    ],
    ids=["black", "grey", "half-and-half", "checkerboard"],
)
def test_values_on_hand_made_images(image: np.ndarray, expected: dict[str, float]) -> None:
    row = _one(image)
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, abs=1e-12), name


def test_frame_has_the_documented_columns_one_row_per_image() -> None:
    images = np.random.default_rng(0).random((5, S, S))
    frame = summary_features(images)
    assert tuple(frame.columns) == FEATURE_COLUMNS
    assert frame.shape == (5, len(FEATURE_COLUMNS))
    assert (frame.dtypes == np.float64).all()
    assert frame.index.tolist() == [0, 1, 2, 3, 4]


def test_uint8_and_unit_float_give_the_same_features() -> None:
    images = np.random.default_rng(1).integers(0, 256, (3, S, S), dtype=np.uint8)
    pd.testing.assert_frame_equal(summary_features(images), summary_features(images / 255.0))


def test_each_image_is_measured_on_its_own() -> None:
    images = np.random.default_rng(2).random((4, S, S))
    together = summary_features(images)
    alone = pd.concat([summary_features(images[i : i + 1]) for i in range(4)], ignore_index=True)
    pd.testing.assert_frame_equal(together, alone)


def test_blur_lowers_sharpness_and_edges() -> None:
    sharp = _checkerboard()
    padded = np.pad(sharp, 1, mode="edge")
    blurred = np.mean([padded[i : i + S, j : j + S] for i in range(3) for j in range(3)], axis=0)
    before, after = _one(sharp), _one(blurred)
    assert after["sharpness"] < before["sharpness"] / 10
    assert after["edge_density"] < before["edge_density"]


def test_a_shadow_raises_the_illumination_gradient() -> None:
    image = np.random.default_rng(3).random((S, S)) * 0.2 + 0.6
    shadow = np.linspace(0.3, 1.0, S)[None, :] * np.linspace(0.3, 1.0, S)[:, None]
    assert (
        _one(image * shadow)["illumination_gradient"] > _one(image)["illumination_gradient"] + 0.2
    )


def test_edges_need_a_step_above_the_threshold() -> None:
    step = np.zeros((S, S))
    step[:, S // 2 :] = 2 * EDGE_THRESHOLD * 0.9  # central difference = 0.9 x threshold
    assert _one(step)["edge_density"] == 0.0


def test_entropy_is_at_most_log2_of_the_bins() -> None:
    ramp = np.linspace(0, 1, S * S).reshape(S, S)
    assert _one(ramp)["entropy"] == pytest.approx(np.log2(HISTOGRAM_BINS))


def test_an_empty_batch_gives_an_empty_frame() -> None:
    frame = summary_features(np.zeros((0, S, S), np.uint8))
    assert frame.empty
    assert tuple(frame.columns) == FEATURE_COLUMNS


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((S, S)), "(B, H, W)"),
        (np.zeros((1, 1, S, S)), "(B, H, W)"),
        (np.zeros((1, S, S), dtype=np.int64), "dtype"),
        (np.full((1, S, S), 1.5), "[0, 1]"),
        (np.full((1, S, S), -0.1), "[0, 1]"),
        (np.full((1, S, S), np.nan), "NaN"),
        (np.zeros((1, 1, S)), "at least 2 x 2"),
    ],
    ids=["2-d", "4-d", "int64", "above-1", "negative", "nan", "too-small"],
)
def test_bad_input_is_refused(images: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        summary_features(images)


def test_to_unit_range_keeps_floats_and_scales_bytes() -> None:
    assert to_unit_range(np.array([[[0.25]]])).tolist() == [[[0.25]]]
    assert to_unit_range(np.array([[[51]]], dtype=np.uint8)).tolist() == [[[0.2]]]


# ------------------------------------------------------------ low information

THRESHOLD = ServeConfig().min_dynamic_range  # the served default


def _served_pixels(images: list[Image.Image], size: int = 32) -> np.ndarray:
    """Images as the service measures them: the task's pre-processing, then grey levels."""
    task = ClassificationTask(tuple(str(d) for d in range(10)), size)
    return task.pixels(task.preprocess(images))  # (B, S, S) in [0, 1]


@pytest.mark.parametrize(
    ("image", "flagged"),
    [
        (Image.fromarray(np.zeros((32, 32), np.uint8)), True),  # black
        (Image.fromarray(np.full((32, 32), 255, np.uint8)), True),  # blank white page
        (Image.fromarray(np.full((32, 32), 128, np.uint8)), True),  # one grey level
        (Image.fromarray(np.array([[200]], np.uint8)), True),  # 1 x 1: resized to one level
        (Image.new("RGB", (1, 1), (30, 160, 90)), True),  # 1 x 1 in colour
        (Image.fromarray(np.full((600, 400), 240, np.uint8)), True),  # large, but empty
        (Image.fromarray(digit_images(1)[0]), False),  # the serving tests' digit
        # a faint digit: ink only 10 grey levels below the paper is still content
        (Image.fromarray(np.where(np.eye(32, dtype=bool), 230, 240).astype(np.uint8)), False),
    ],
    ids=["black", "white", "grey", "1x1", "1x1-rgb", "large-empty", "digit", "faint-digit"],
)
def test_images_without_content_are_low_information(image: Image.Image, flagged: bool) -> None:
    features = summary_features(_served_pixels([image]))
    assert low_information(features, THRESHOLD).tolist() == [flagged]


def test_rendered_digits_are_never_low_information_whatever_the_noise() -> None:
    """The collector's digits under every noise, at twice the strongest shift the plans use:
    the rule flags empty images, never the degraded ones drift monitoring must see."""
    library = GlyphLibrary.load(DataPlan().classes)
    rng = np.random.default_rng(0)
    images = [
        render_image(library, glyphs[i % len(glyphs)], noise, NoiseStrength(), 4.0, 32, rng)
        for noise in NOISES
        for style in ("handwritten", "printed")
        for label in DataPlan().classes
        for glyphs in [library.glyphs(style, label)]
        for i in range(2)
    ]
    features = summary_features(_served_pixels(images))
    assert not low_information(features, THRESHOLD).any()
    assert features["dynamic_range"].min() > 5 * THRESHOLD  # far from the line


def test_low_information_reads_a_frame_or_its_values_and_zero_flags_nothing() -> None:
    features = summary_features(np.stack([np.zeros((S, S)), _half_and_half()]))
    assert low_information(features, 0.02).tolist() == [True, False]
    assert low_information(features.to_numpy(), 0.02).tolist() == [True, False]
    assert low_information(features, 0.0).tolist() == [False, False]
    assert low_information(features.iloc[:0], 0.02).tolist() == []


@pytest.mark.parametrize(
    ("features", "threshold", "message"),
    [
        (summary_features(np.zeros((1, S, S))), 1.0, "[0, 1)"),
        (summary_features(np.zeros((1, S, S))), -0.01, "[0, 1)"),
        (summary_features(np.zeros((1, S, S))).drop(columns="dynamic_range"), 0.02, "dynamic"),
        (np.zeros((1, 3)), 0.02, f"(B, {len(FEATURE_COLUMNS)})"),
    ],
    ids=["one", "negative", "no-column", "wrong-width"],
)
def test_low_information_refuses_what_it_cannot_read(
    features: pd.DataFrame | np.ndarray, threshold: float, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        low_information(features, threshold)
