"""Summary features of images: a few numbers per image that describe how it looks.

Drift monitoring compares the distribution of these features between the
training data (the reference) and the prediction log (the current window).
Serving computes them on every request and monitoring computes them on the
training images with this very function, so both sides are measured the same
way. Pure numpy: no model, no torch.

Images are grayscale `(B, H, W)`, either uint8 in [0, 255] or float in [0, 1];
every feature is computed on the [0, 1] scale. The columns (`FEATURE_COLUMNS`):

* `brightness` — mean intensity, in [0, 1].
* `contrast` — standard deviation of intensity (RMS contrast), in [0, 0.5].
* `dynamic_range` — 99th minus 1st intensity percentile, in [0, 1]; low for
  washed-out or dark images.
* `edge_density` — fraction of pixels whose gradient magnitude exceeds
  `EDGE_THRESHOLD`, in [0, 1]; drops with blur, rises with clutter.
* `sharpness` — variance of the discrete Laplacian, ≥ 0; the classic
  focus measure (blur lowers it).
* `illumination_gradient` — brightest minus darkest quadrant mean, in [0, 1];
  uneven lighting (shadows) raises it.
* `entropy` — Shannon entropy (bits) of a `HISTOGRAM_BINS`-bin intensity
  histogram, in [0, log2(bins)].

`low_information` reads one of them as a rule: an image with (nearly) no
dynamic range has no content worth a label.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURE_COLUMNS: tuple[str, ...] = (
    "brightness",
    "contrast",
    "dynamic_range",
    "edge_density",
    "sharpness",
    "illumination_gradient",
    "entropy",
)
"""Columns of `summary_features`, in order."""

EDGE_THRESHOLD = 0.25
"""Gradient magnitude (intensity per pixel, [0, 1] scale) above which a pixel counts as an edge."""
HISTOGRAM_BINS = 32
"""Intensity bins of the `entropy` feature."""


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """Grayscale images `(B, H, W)` as float64 in [0, 1].

    uint8 is divided by 255; floats must already lie in [0, 1].

    >>> to_unit_range(np.array([[[0, 255]]], dtype=np.uint8)).tolist()
    [[[0.0, 1.0]]]

    Raises:
        ValueError: not 3-D, an unsupported dtype, non-finite values, or floats outside [0, 1].
    """
    array = np.asarray(images)
    if array.ndim != 3:
        raise ValueError(f"expected grayscale images (B, H, W), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected uint8 or float images, got dtype {array.dtype}")
    pixels = array.astype(np.float64)
    if pixels.size:
        if not np.isfinite(pixels).all():
            raise ValueError("images contain NaN or infinite values")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"float images must lie in [0, 1], got values in [{low}, {high}]")
    return pixels


def summary_features(images: np.ndarray) -> pd.DataFrame:
    """One row of summary features per image (columns `FEATURE_COLUMNS`, float64).

    Args:
        images: `(B, H, W)` grayscale, uint8 in [0, 255] or float in [0, 1];
            each side at least 2 pixels. `B` may be 0 (an empty frame).

    Returns:
        A `(B, len(FEATURE_COLUMNS))` frame, index 0..B-1.

    Raises:
        ValueError: see `to_unit_range`; or an image side below 2 pixels.

    >>> flat = np.full((1, 4, 4), 0.5)
    >>> summary_features(flat).loc[0, ["brightness", "contrast", "edge_density"]].tolist()
    [0.5, 0.0, 0.0]
    """
    return pd.DataFrame(feature_matrix(images), columns=list(FEATURE_COLUMNS), dtype=np.float64)


def feature_matrix(images: np.ndarray) -> np.ndarray:
    """`summary_features` as an array `(B, len(FEATURE_COLUMNS))` float64, columns in that order.

    What serving computes per forward pass: no frame is built (a pandas frame
    costs more than the features of a small batch).

    >>> feature_matrix(np.full((1, 4, 4), 0.5))[0, :2].tolist()
    [0.5, 0.0]
    """
    x = to_unit_range(images)  # (B, H, W)
    b, h, w = x.shape
    if h < 2 or w < 2:
        raise ValueError(f"images must be at least 2 x 2 pixels, got {h} x {w}")
    flat = x.reshape(b, h * w)  # (B, H*W)
    percentiles = np.percentile(flat, [1.0, 99.0], axis=1) if b else np.zeros((2, 0))  # (2, B)
    columns = {
        "brightness": flat.mean(axis=1),
        "contrast": flat.std(axis=1),
        "dynamic_range": percentiles[1] - percentiles[0],
        "edge_density": _edge_density(x),
        "sharpness": _laplacian(x).reshape(b, h * w).var(axis=1),
        "illumination_gradient": _illumination_gradient(x),
        "entropy": _entropy(flat),
    }
    return np.stack([columns[name] for name in FEATURE_COLUMNS], axis=1).reshape(
        b, len(FEATURE_COLUMNS)
    )  # (B, F)


def low_information(features: pd.DataFrame | np.ndarray, min_dynamic_range: float) -> np.ndarray:
    """Which images have no content worth a label: `dynamic_range` below `min_dynamic_range`.

    A blank page, a lens cap, or an image far smaller than the model's input
    (a 1 x 1 upload, which resizing spreads into one uniform square) is a
    single grey level give or take a few. A model still gives it a label, often
    a confident one; serving flags it instead (`low_information` in the answer
    and the prediction log), and monitoring leaves it out of the drift window,
    where a burst of empty requests would read as a shift of the data.

    Args:
        features: `summary_features` of the images, or its values
            `(B, len(FEATURE_COLUMNS))` in that column order.
        min_dynamic_range: the p99 - p1 intensity (on [0, 1]) an image needs;
            in [0, 1), and 0 flags nothing (`serve.min_dynamic_range`).

    Returns:
        `(B,)` bool, True for a low-information image.

    Raises:
        ValueError: `min_dynamic_range` outside [0, 1), or `features` without
            the `dynamic_range` column.

    >>> blank, bars = np.full((4, 4), 0.5), np.tile([0.0, 1.0], (4, 2))
    >>> low_information(summary_features(np.stack([blank, bars])), 0.02).tolist()
    [True, False]
    >>> low_information(summary_features(np.stack([blank])).to_numpy(), 0.0).tolist()
    [False]
    """
    if not 0.0 <= min_dynamic_range < 1.0:
        raise ValueError(f"min_dynamic_range must be in [0, 1), got {min_dynamic_range}")
    if isinstance(features, pd.DataFrame):
        if "dynamic_range" not in features.columns:
            raise ValueError(
                f"features have no dynamic_range column (columns: {list(features.columns)})"
            )
        dynamic_range = features["dynamic_range"].to_numpy(dtype=np.float64)  # (B,)
    else:
        values = np.asarray(features, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(FEATURE_COLUMNS):
            raise ValueError(
                f"expected features (B, {len(FEATURE_COLUMNS)}) in FEATURE_COLUMNS order, "
                f"got shape {values.shape}"
            )
        dynamic_range = values[:, FEATURE_COLUMNS.index("dynamic_range")]  # (B,)
    return dynamic_range < min_dynamic_range


def _edge_density(x: np.ndarray) -> np.ndarray:
    """Fraction of pixels with central-difference gradient magnitude above `EDGE_THRESHOLD`."""
    gy, gx = np.gradient(x, axis=(1, 2))  # (B, H, W) each
    magnitude = np.hypot(gx, gy)  # (B, H, W)
    return (magnitude > EDGE_THRESHOLD).mean(axis=(1, 2))


def _laplacian(x: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian with edge replication, `(B, H, W)`."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")  # (B, H+2, W+2)
    return (
        padded[:, :-2, 1:-1]
        + padded[:, 2:, 1:-1]
        + padded[:, 1:-1, :-2]
        + padded[:, 1:-1, 2:]
        - 4.0 * x
    )


def _illumination_gradient(x: np.ndarray) -> np.ndarray:
    """Brightest minus darkest of the four quadrant means, `(B,)`."""
    _, h, w = x.shape
    hh, hw = h // 2, w // 2
    quadrants = np.stack(
        [
            x[:, :hh, :hw].mean(axis=(1, 2)),
            x[:, :hh, hw:].mean(axis=(1, 2)),
            x[:, hh:, :hw].mean(axis=(1, 2)),
            x[:, hh:, hw:].mean(axis=(1, 2)),
        ],
        axis=1,
    )  # (B, 4)
    return quadrants.max(axis=1) - quadrants.min(axis=1)


def _entropy(flat: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits of each row's `HISTOGRAM_BINS`-bin histogram over [0, 1], `(B,)`."""
    bins = np.minimum((flat * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)  # (B, N)
    offsets = np.arange(flat.shape[0])[:, None] * HISTOGRAM_BINS  # (B, 1)
    counts = np.bincount((bins + offsets).ravel(), minlength=flat.shape[0] * HISTOGRAM_BINS)
    p = counts.reshape(flat.shape[0], HISTOGRAM_BINS) / max(flat.shape[1], 1)  # (B, bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(p), 0.0)
    return terms.sum(axis=1)
