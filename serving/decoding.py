"""What a prediction request carries, checked and decoded: image files, JSON arrays, its id.

Every check raises `RequestError` with the status a client gets (400, 413,
415) and a message that says what was wrong, without the server's paths.
"""

from __future__ import annotations

import io
import random
import re
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
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
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?(?:[/\\][^\s'\":/\\]+){2,}")
"""An absolute path in a message: removed from what clients are told."""


@dataclass(frozen=True)
class PixelLimits:
    """How many decoded pixels (width x height, from the header) a request may cost.

    Counted in pixels, not bytes: a 65 kB PNG can declare 4096 x 4096 RGBA (64 MB
    decoded). Both limits are checked from the headers, before any image is decoded.

    Attributes:
        per_image: the largest width x height of one image (`serve.max_image_pixels`).
        per_request: the largest sum over a request's images (`serve.max_request_pixels`).
    """

    per_image: int
    per_request: int


def open_image(source: Path | bytes, max_pixels: int, name: str | None = None) -> Image.Image:
    """An uploaded file (a path, or the bytes of a body) opened lazily: its header read, checked.

    PIL reads only the header here (format, size, mode); no pixel is decoded, so
    a decompression bomb is refused before it costs memory.

    Args:
        source: the file, or its content.
        max_pixels: the largest width x height accepted.
        name: what error messages call it (default: "image 0" for an upload,
            "the body" for a body; never the server's temporary file name).

    Raises:
        RequestError: 415 when it is not PNG/JPEG, 413 when larger than
            `max_pixels`, 400 when the header cannot be read.
    """
    if name is None:
        name = _name(source, 0, 1)
    try:
        image = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
    except Image.DecompressionBombError:  # PIL's own limit, far above max_pixels
        raise RequestError(
            f"{name}: image exceeds the limit of {max_pixels} pixels (serve.max_image_pixels)",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        ) from None
    except (Image.UnidentifiedImageError, OSError):  # PIL's message names the server's temp path
        raise RequestError(
            f"{name}: not a PNG or JPEG image (the content is not recognised)"
        ) from None
    except Exception as err:  # a damaged header: PIL's parsers raise ValueError,
        # SyntaxError, struct.error, EOFError, ... on hostile bytes (found by fuzzing)
        raise RequestError(f"{name}: not a readable PNG or JPEG image ({_clean(err)})") from None
    if image.format not in IMAGE_FORMATS:
        image.close()
        raise RequestError(
            f"{name}: unsupported image format {image.format}; send PNG or JPEG",
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        )
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise RequestError(
            f"{name}: image of {width} x {height} pixels exceeds the limit of {max_pixels} "
            "pixels per image (serve.max_image_pixels)",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    return image


def open_images(sources: Sequence[Path | bytes], limits: PixelLimits) -> list[Image.Image]:
    """A request's images opened lazily (headers only), within the per-image and per-request limits.

    Raises:
        RequestError: as `open_image`, or 413 when the images together exceed
            `limits.per_request` pixels. Images already opened are closed.
    """
    opened: list[Image.Image] = []
    try:
        total = 0
        for i, source in enumerate(sources):
            image = open_image(source, limits.per_image, _name(source, i, len(sources)))
            opened.append(image)
            total += image.size[0] * image.size[1]
            if total > limits.per_request:
                raise RequestError(
                    f"the request's images hold more than {limits.per_request} pixels in all "
                    "(serve.max_request_pixels): send fewer or smaller images",
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                )
    except RequestError:
        for image in opened:
            image.close()
        raise
    return opened


def pixel_count(images: Sequence[Image.Image]) -> int:
    """Width x height summed over `images` (from their headers)."""
    return sum(image.size[0] * image.size[1] for image in images)


def load_image(image: Image.Image, name: str = "the image") -> Image.Image:
    """`image` (opened by `open_image`) with its pixels decoded.

    Raises:
        RequestError: 400 when it cannot be decoded (truncated, corrupt).
    """
    try:
        image.load()  # the header parsed; now the pixels (a truncated file fails here)
    except Exception as err:  # OSError, ValueError, SyntaxError, ... as in `open_image`
        raise RequestError(f"{name}: cannot decode the image ({_clean(err)})") from None
    return image


def decode_each(
    images: Sequence[Image.Image], preprocess: Callable[[Image.Image], np.ndarray]
) -> np.ndarray:
    """Decode the images one at a time, each pre-processed (resized) before the next is decoded.

    At most one full-size image is held in memory at a time: the decoded pixels
    of each are released as soon as it is brought to the model's input.

    Args:
        images: opened by `open_images` (closed here, whatever happens).
        preprocess: one decoded image → `(C, S, S)` float32.

    Returns:
        `(N, C, S, S)` float32.

    Raises:
        RequestError: an image cannot be decoded, or `preprocess` refuses it.
    """
    out: list[np.ndarray] = []
    try:
        for i, image in enumerate(images):
            name = getattr(image, "filename", None)  # PIL sets it on images opened from files
            source = Path(name) if isinstance(name, str) and name else b""
            out.append(preprocess(load_image(image, _name(source, i, len(images)))))
            image.close()
    finally:
        for image in images:
            image.close()
    return np.stack(out)


def decode_image(source: Path | bytes, max_pixels: int, name: str | None = None) -> Image.Image:
    """An uploaded file (a path, or the bytes of a request body) as a fully decoded PIL image.

    `open_image` then `load_image`: the size is checked from the header first.

    Raises:
        RequestError: 415 when it is not PNG/JPEG, 413 when larger than
            `max_pixels`, 400 when it cannot be decoded (truncated, corrupt, empty).
    """
    image = open_image(source, max_pixels, name)
    return load_image(image, name or _name(source, 0, 1))


def _name(source: Path | bytes, index: int, count: int) -> str:
    """What messages call an image: its place in the request (an upload's file is a temporary
    copy named by the server, so its name means nothing to the client)."""
    if isinstance(source, Path) or count > 1:
        return f"image {index}"
    return "the body"


def _clean(err: Exception) -> str:
    """An exception's message without file paths (PIL quotes the server's temporary file)."""
    return _PATH.sub("<file>", str(err))


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
    """The caller's `X-Request-ID` when it is a safe token, else a new random id.

    A new id is 128 random bits as 32 hex digits (what `uuid4().hex` looks like),
    drawn from `random` rather than the OS: an id names a request, it guards
    nothing, and a system call per request cost more than the rest of this.
    """
    given = headers.get(REQUEST_ID_HEADER) if headers is not None else None
    if given and _SAFE_REQUEST_ID.match(given):
        return str(given)
    return f"{random.getrandbits(128):032x}"


__all__ = [
    "IMAGE_FORMATS",
    "PixelLimits",
    "arrays_to_unit",
    "decode_each",
    "decode_image",
    "load_image",
    "open_image",
    "open_images",
    "pixel_count",
    "request_id_from",
]
