"""The one pre-processing definition: an image file as the model sees it.

Import, training, evaluation and serving all go through `Preprocessing`, and
the exported model carries it in its metadata (`to_metadata`), so the service
applies exactly what training saw: the same orientation, alpha handling,
channel conversion, resize filter and value normalisation. A dataset written
by the importer already holds canonical images (`canonical`), so reading it
for training changes nothing but the scale, and a user's original file served
later goes through the same steps to the same pixels.

Values are divided by the white level: the plan's `data.white_level` when
set (16 for scikit-learn's digits), else the full range of the file's bit
depth (255 for 8-bit, 65535 for 16-bit). The model's input is float32 in
[0, 1], `(C, S, S)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import numpy as np
from PIL import Image, ImageOps

from flywheel.config import DataPlan

__all__ = [
    "HIGH_DEPTH_MODES",
    "RESAMPLE_FILTERS",
    "Preprocessing",
    "PreprocessingError",
    "bit_depth_white",
]

Resample = Literal["lanczos", "bicubic", "bilinear", "box", "hamming", "nearest"]
RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "nearest": Image.Resampling.NEAREST,
}
"""Resize filters by the name the metadata stores."""

HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
"""PIL modes of 16-bit grey images (PNG opens them as `I;16`)."""

_ORIENTATION_TAG = 0x0112
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})


class PreprocessingError(ValueError):
    """An image cannot be pre-processed as the definition says (e.g. 16-bit grey as RGB)."""


def bit_depth_white(mode: str) -> int:
    """The white level of a PIL mode's full range: 65535 for 16-bit grey, else 255.

    >>> bit_depth_white("I;16"), bit_depth_white("RGB")
    (65535, 255)
    """
    return 65535 if mode in HIGH_DEPTH_MODES else 255


@dataclass(frozen=True)
class Preprocessing:
    """Size, channels, resize filter and white level of a model's input.

    Attributes:
        size: side of the square input; other sizes are resized with `resample`.
        channels: 1 = grey (luminance, ITU-R 601 as PIL's `L`), 3 = RGB.
        resample: the resize filter's name (`RESAMPLE_FILTERS`).
        white_level: the pixel value that means white; None = the full range
            of the file's bit depth (`bit_depth_white`).
    """

    size: int
    channels: Literal[1, 3] = 1
    resample: Resample = "lanczos"
    white_level: int | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise PreprocessingError(f"size must be >= 1, got {self.size}")
        if self.channels not in (1, 3):
            raise PreprocessingError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if self.resample not in RESAMPLE_FILTERS:
            raise PreprocessingError(
                f"unknown resize filter {self.resample!r}; known: {sorted(RESAMPLE_FILTERS)}"
            )
        if self.white_level is not None and not 1 <= self.white_level <= 65535:
            raise PreprocessingError(f"white_level must be in [1, 65535], got {self.white_level}")

    # ------------------------------------------------------------- set-up

    @classmethod
    def from_plan(cls, plan: DataPlan) -> Preprocessing:
        """What the data plan asks for (`image_size`, `channels`, `white_level`)."""
        return cls(plan.image_size, plan.channels, white_level=plan.white_level)

    def to_metadata(self) -> dict[str, Any]:
        """JSON-able form, stored in the exported model's metadata."""
        return asdict(self)

    @classmethod
    def from_metadata(cls, raw: Mapping[str, Any] | None, size: int) -> Preprocessing:
        """The definition a model's metadata stores; None = a model logged before it existed.

        Such a model was served grey, resized bilinear, with 8-bit values, so that
        is what it keeps getting.

        Raises:
            PreprocessingError: the stored definition is not valid.
        """
        if raw is None:
            return cls(size, 1, "bilinear")
        try:
            return cls(
                size=int(raw["size"]),
                channels=cast(Literal[1, 3], int(raw["channels"])),
                resample=cast(Resample, str(raw["resample"])),
                white_level=None if raw.get("white_level") is None else int(raw["white_level"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PreprocessingError(
                f"model metadata has a bad preprocessing {raw!r}: {err}"
            ) from None

    @property
    def color(self) -> str:
        """`grayscale` or `rgb`, as the metadata's input contract says it."""
        return "grayscale" if self.channels == 1 else "rgb"

    # ------------------------------------------------------------- the steps

    def convert(self, image: Image.Image) -> Image.Image:
        """EXIF orientation applied, transparency on white, channels as defined; size kept.

        Grey is `L` (8-bit) or `I;16` (16-bit kept as it is); RGB is `RGB`. A
        16-bit grey image asked for as RGB is scaled to 8 bits over its whole
        range (65535 → 255; PIL's own conversion clips at 255, which turns
        nearly every 16-bit level white) and its grey copied to the three channels.
        """
        if image.getexif().get(_ORIENTATION_TAG, 1) != 1:
            image = ImageOps.exif_transpose(image)
        if image.mode in HIGH_DEPTH_MODES:
            if self.channels == 3:
                levels = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)
                eight = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
                return Image.fromarray(eight, mode="L").convert("RGB")
            return image if image.mode == "I;16" else image.convert("I;16")
        if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba)
        target = "L" if self.channels == 1 else "RGB"
        return image if image.mode == target else image.convert(target)

    def resize(self, image: Image.Image) -> Image.Image:
        """`image` at `size` × `size` with the defined filter (unchanged when already so)."""
        if image.size == (self.size, self.size):
            return image
        return image.resize((self.size, self.size), RESAMPLE_FILTERS[self.resample])

    def canonical(self, image: Image.Image) -> Image.Image:
        """`convert` then `resize`: what the importer writes, at the file's own levels."""
        return self.resize(self.convert(image))

    def white_of(self, image: Image.Image) -> int:
        """The white level `image` (converted) is divided by."""
        return self.white_level if self.white_level is not None else bit_depth_white(image.mode)

    def to_unit(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """One image → `(C, S, S)` float32 in [0, 1]: the model's input.

        Args:
            image: a PIL image of any mode and size, or a uint8 `(H, W)`,
                `(H, W, 3|4)` or uint16 `(H, W)` array.

        Raises:
            PreprocessingError: an array of another dtype or shape, or see `convert`.
        """
        canonical = self.canonical(_as_image(image))
        pixels = np.asarray(canonical, dtype=np.float32)  # (S, S) or (S, S, 3)
        chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, S, S)
        scaled = chw / np.float32(self.white_of(canonical))
        return np.clip(scaled, 0.0, 1.0, out=scaled)

    def stored(self, batch: np.ndarray) -> np.ndarray:
        """Model inputs `(B, C, S, S)` in [0, 1] → the images as served, at the data's levels.

        The inverse of `to_unit` after `canonical`: what the prediction log keeps
        and `flywheel data merge` writes into the dataset, so a labelled
        production image is a row like an imported one: grey `(B, S, S)` or RGB
        `(B, S, S, 3)`, uint8 up to a white level of 255 (255 when unset),
        uint16 above (16-bit grey).
        """
        array = np.asarray(batch, dtype=np.float32)
        white = self.white_level or 255
        levels = np.rint(np.clip(array, 0.0, 1.0) * np.float32(white))
        images = levels[:, 0] if array.shape[1] == 1 else levels.transpose(0, 2, 3, 1)
        return images.astype(np.uint16 if white > 255 else np.uint8)


def _as_image(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    ok = (image.dtype == np.uint8 and image.ndim in (2, 3)) or (
        image.dtype == np.uint16 and image.ndim == 2
    )
    if not ok or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise PreprocessingError(
            "expected a uint8 array (H, W) or (H, W, 3|4), or uint16 (H, W); "
            f"got {image.dtype} {image.shape}"
        )
    return Image.fromarray(image)
