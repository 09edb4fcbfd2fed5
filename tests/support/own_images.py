"""A user's own image folders, built from data installed with scikit-learn and scikit-image.

Nothing is downloaded: `sklearn.datasets.load_digits` ships its 1,797 digits
(8 × 8, 17 grey levels 0–16) and `skimage.data` its photos. Both are written
as ImageFolder trees (`<split>/<label>/<file>.png`), as a user would hand them
to `flywheel data import`:

* `digits_tree`: the digits at their native size and levels (8-bit PNG whose
  brightest value is 16);
* `photos_tree`: a 3-class RGB task, 40 × 40 crops of three photos, whose
  classes differ more in colour than in grey-level texture.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

SPLIT_SHARES: Mapping[str, float] = {"train": 0.6, "val": 0.2, "test": 0.2}

PHOTOS: Mapping[str, str] = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}
"""Class name → the `skimage.data` photo its crops come from."""

PHOTO_SIDE = 40
"""Side of a photo crop as written (the plan's image size is smaller: import resizes)."""


def _split_of(i: int, n: int) -> str:
    """Split of item `i` of `n`, in `SPLIT_SHARES` order."""
    edge = 0.0
    for split, share in SPLIT_SHARES.items():
        edge += share
        if i < round(edge * n):
            return split
    return "test"


def digits_tree(root: Path, classes: tuple[str, ...], per_class: int) -> Path:
    """scikit-learn's digits of `classes`, `per_class` each, as 8 × 8 PNGs of levels 0–16."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)  # (N, 8, 8), values 0..16
    for label in classes:
        picked = np.flatnonzero(digits.target == int(label))[:per_class]
        for i, index in enumerate(picked):
            folder = root / _split_of(i, len(picked)) / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index], mode="L").save(folder / f"digit-{index:04d}.png")
    return root


def photo_crops(photo: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` random `PHOTO_SIDE`² RGB crops of `photo`, each of a random 60–120 px window."""
    rng = np.random.default_rng(seed)
    height, width = photo.shape[:2]
    crops = np.empty((count, PHOTO_SIDE, PHOTO_SIDE, 3), np.uint8)
    for i in range(count):
        side = int(rng.integers(60, 121))
        top, left = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
        window = Image.fromarray(photo[top : top + side, left : left + side, :3])
        crops[i] = np.asarray(window.resize((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.BOX))
    return crops


def photos_tree(root: Path, per_class: int, seed: int = 0) -> Path:
    """`per_class` RGB crops of each photo of `PHOTOS` as `PHOTO_SIDE`² PNGs, class = photo."""
    import skimage.data

    for k, (label, name) in enumerate(PHOTOS.items()):
        crops = photo_crops(getattr(skimage.data, name)(), per_class, seed + k)
        for i, crop in enumerate(crops):
            folder = root / _split_of(i, per_class) / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop, mode="RGB").save(folder / f"{name}-{i:04d}.png")
    return root
