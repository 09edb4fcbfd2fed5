"""What a prediction request carries, checked and decoded: image files, JSON arrays, its id.

Every check raises `RequestError` with the status a client gets (400, 413,
415) and a message that says what was wrong, without the server's paths.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import MutableMapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flywheel.serving_api import REQUEST_ID_HEADER, Scale
from serving.errors import RequestError

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
"""Caller-supplied request ids are used in file names: only a safe alphabet is kept."""
IMAGE_FORMATS = frozenset({"PNG", "JPEG"})


def decode_image(source: Path | bytes, max_pixels: int, name: str | None = None) -> Image.Image:
    """An uploaded file (a path, or the bytes of a request body) as a fully decoded PIL image.

    Args:
        source: the file, or its content.
        max_pixels: the largest width x height accepted.
        name: what error messages call it (default: the file's name, or "the body").

    Raises:
        RequestError: 415 when it is not PNG/JPEG, 413 when larger than
            `max_pixels`, 400 when it cannot be decoded (truncated, corrupt, empty).
    """
    if name is None:
        name = source.name if isinstance(source, Path) else "the body"
    try:
        image = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
    except Image.DecompressionBombError as err:  # PIL's own limit, far above max_pixels
        raise RequestError(f"{name}: {err}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from None
    except (Image.UnidentifiedImageError, OSError):  # PIL's message names the server's temp path
        raise RequestError(
            f"{name}: not a PNG or JPEG image (the content is not recognised)"
        ) from None
    except Exception as err:  # a damaged header: PIL's parsers raise ValueError,
        # SyntaxError, struct.error, EOFError, ... on hostile bytes (found by fuzzing)
        raise RequestError(f"{name}: not a readable PNG or JPEG image ({err})") from None
    if image.format not in IMAGE_FORMATS:
        raise RequestError(
            f"{name}: unsupported image format {image.format}; send PNG or JPEG",
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        )
    width, height = image.size
    if width * height > max_pixels:
        raise RequestError(
            f"{name}: image of {width} x {height} pixels exceeds the limit of {max_pixels}",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    try:
        image.load()  # the header parsed; now the pixels (a truncated file fails here)
    except Exception as err:  # OSError, ValueError, SyntaxError, ... as above
        raise RequestError(f"{name}: cannot decode the image ({err})") from None
    return image


def arrays_to_unit(
    images: np.ndarray, image_size: int, scale: Scale, channels: int = 1, white: int = 255
) -> np.ndarray:
    """A JSON array of images → `(N, C, S, S)` float32 in [0, 1].

    Args:
        images: grey (`channels` 1): `(N, S, S)` or `(N, 1, S, S)`; RGB
            (`channels` 3): `(N, 3, S, S)` or `(N, S, S, 3)`; numeric.
        image_size: `S`, the model's input side.
        scale: `byte` (0–`white`), `unit` (0–1) or `auto` (`byte` if any value > 1).
        channels: the model's input channels.
        white: the level that is white for `byte`: 255, or the model's
            `white_level` (the values its image files hold, e.g. 16).

    Raises:
        RequestError: wrong shape, non-numeric or non-finite values, values outside the scale.
    """
    array = np.asarray(images)
    if array.size == 0:
        raise RequestError("no images: the batch is empty")
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise RequestError(f"images must be numbers, got dtype {array.dtype}")
    array = _channels_first(array, image_size, channels)  # (N, C, S, S)
    pixels = array.astype(np.float64)
    if not np.isfinite(pixels).all():
        raise RequestError("images contain NaN or infinite values")
    low, high = float(pixels.min()), float(pixels.max())
    if scale == "auto":
        scale = "byte" if high > 1.0 else "unit"
    top = float(white) if scale == "byte" else 1.0
    if low < 0.0 or high > top:
        raise RequestError(
            f"images with scale {scale!r} must lie in [0, {top:g}], "
            f"got values in [{low:g}, {high:g}]"
        )
    return (pixels / top).astype(np.float32)  # (N, C, S, S)


def _channels_first(array: np.ndarray, size: int, channels: int) -> np.ndarray:
    """`array` as `(N, C, S, S)`, or a `RequestError` naming the shapes the model takes."""
    if channels == 1:
        if array.ndim == 3 and array.shape[1:] == (size, size):
            return array[:, None]
        if array.ndim == 4 and array.shape[1:] == (1, size, size):
            return array
        expected = f"(N, {size}, {size}) or (N, 1, {size}, {size})"
    else:
        if array.ndim == 4 and array.shape[1:] == (channels, size, size):
            return array
        if array.ndim == 4 and array.shape[1:] == (size, size, channels):
            return array.transpose(0, 3, 1, 2)
        expected = f"(N, {channels}, {size}, {size}) or (N, {size}, {size}, {channels})"
    raise RequestError(f"images must have shape {expected}, got {tuple(array.shape)}")


def request_id_from(headers: MutableMapping[str, str] | Any) -> str:
    """The caller's `X-Request-ID` when it is a safe token, else a new random id."""
    given = headers.get(REQUEST_ID_HEADER) if headers is not None else None
    if given and _SAFE_REQUEST_ID.match(given):
        return str(given)
    return uuid.uuid4().hex


__all__ = [
    "IMAGE_FORMATS",
    "arrays_to_unit",
    "decode_image",
    "request_id_from",
]
