"""Bodies the fuzz sends that schemathesis would not make: JSON arrays the model takes, and
multipart requests at the parser's edges.

* `array_body` / `array_bodies` / `valid_array_bodies`: `/predict_arrays` bodies
  that pass validation (the spec says only "an array of numbers", so almost
  every body schemathesis generates is refused before the model is reached):
  the model's input shape in every layout it accepts, 1 to
  `serve.max_images_per_request` images, every `scale`, values anywhere in the
  range and at its edges (0, the top, just below it, subnormals, -0.0, integers).
  The schemathesis hook (`tests.load.fuzz_hooks`) mixes them into its own
  generation; the fuzz also sends `valid_array_bodies`, each of which must be served.
* `multipart_edge_cases`: raw `/predict_images` requests that must all be refused
  with a 4xx: boundaries longer than 256 characters, more than 1,000 parts,
  truncated streams (cut inside the body, cut short of the Content-Length and
  left open or half-closed), header floods in the request and in a part.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from flywheel.serving_api import MULTIPART_MEDIA_TYPE, PREDICT_IMAGES_PATH
from tests.load.raw_http import multipart_body, post_request

ARRAY_INPUT_ENV = "FLYWHEEL_FUZZ_ARRAY_INPUT"
"""The served model's `ArrayInput` as JSON, for the schemathesis hooks' process."""
LAYOUTS = {1: ("NSS", "N1SS"), 3: ("NCSS", "NSSC")}
"""The array layouts `/predict_arrays` takes, by input channels (`serving.decoding`)."""
SCALES = ("auto", "unit", "byte", None)
"""`scale` values; None: the key left out (its default, `auto`)."""
FILLS = (
    "uniform",
    "integers",
    "zeros",
    "top",
    "extremes",
    "near-top",
    "subnormal",
    "negative-zero",
    "checker",
)
"""How the pixels are drawn: anywhere in the range, or at its edges."""


@dataclass(frozen=True)
class ArrayInput:
    """What `/predict_arrays` takes from the served model.

    Attributes:
        size: the input side `S`.
        channels: 1 (grey) or 3 (RGB).
        white: the top of the `byte` scale (255, or the model's `white_level`).
        max_images: `serve.max_images_per_request`.
    """

    size: int
    channels: int
    white: int
    max_images: int

    def to_env(self) -> str:
        """As `ARRAY_INPUT_ENV`'s value."""
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ArrayInput | None:
        """From `ARRAY_INPUT_ENV` (None when unset)."""
        raw = os.environ.get(ARRAY_INPUT_ENV)
        return cls(**json.loads(raw)) if raw else None


def served_input(model_name: str, version: str, max_images: int) -> ArrayInput:
    """The `ArrayInput` of a registered version, from its metadata (as the service reads it)."""
    from mlflow.models import get_model_info

    from flywheel.registry import model_uri
    from flywheel.tasks import get_task

    metadata = get_model_info(model_uri(model_name, version)).metadata or {}
    task = get_task(str(metadata.get("task"))).from_metadata(metadata)
    white = task.preprocessing.white_level or 255
    return ArrayInput(task.image_size, task.channels, white, max_images)


def array_body(
    spec: ArrayInput, count: int, layout: str, scale: str | None, fill: str, seed: int
) -> dict[str, Any]:
    """One `/predict_arrays` body that passes validation.

    Args:
        spec: the model's input.
        count: images (1 to `spec.max_images`).
        layout: one of `LAYOUTS[spec.channels]`.
        scale: one of `SCALES`.
        fill: one of `FILLS`.
        seed: of the random values.
    """
    rng = np.random.default_rng(seed)
    s, c = spec.size, spec.channels
    if scale is None or scale == "auto":
        top = float(spec.white) if rng.integers(2) else 1.0  # `auto` reads either
    else:
        top = float(spec.white) if scale == "byte" else 1.0
    pixels = _fill(rng, fill, top, (count, c, s, s))  # (N, C, S, S)
    if layout == "NSS":
        pixels = pixels[:, 0]  # (N, S, S)
    elif layout == "NSSC":
        pixels = pixels.transpose(0, 2, 3, 1)  # (N, S, S, C)
    body: dict[str, Any] = {"images": pixels.tolist()}
    if scale is not None:
        body["scale"] = scale
    return body


def _fill(rng: np.random.Generator, fill: str, top: float, shape: tuple[int, ...]) -> np.ndarray:
    """Pixels in [0, top] (`top` 1 or the white level; a byte top with values <= 1 is `unit`
    for `auto`, still valid)."""
    if fill == "uniform":
        return rng.uniform(0.0, top, shape)
    if fill == "integers":
        return rng.integers(0, int(top) + 1, shape)  # JSON integers
    if fill == "zeros":
        return np.zeros(shape)
    if fill == "top":
        return np.full(shape, top)
    if fill == "extremes":
        return rng.choice([0.0, top], shape)
    if fill == "near-top":
        return np.full(shape, np.nextafter(top, 0.0))
    if fill == "subnormal":
        return rng.choice([0.0, 5e-324, 2.2250738585072014e-308], shape)
    if fill == "negative-zero":
        return np.where(rng.integers(2, size=shape) == 1, -0.0, top)
    checker = np.indices(shape).sum(axis=0) % 2  # "checker": 0 and top alternating
    return checker * top


def array_bodies(spec: ArrayInput) -> Any:
    """A Hypothesis strategy of `array_body`s (the schemathesis hook's)."""
    from hypothesis import strategies as st

    counts = st.one_of(st.integers(1, min(4, spec.max_images)), st.just(spec.max_images))
    return st.builds(
        array_body,
        st.just(spec),
        counts,
        st.sampled_from(LAYOUTS[spec.channels]),
        st.sampled_from(SCALES),
        st.sampled_from(FILLS),
        st.integers(0, 2**32 - 1),
    )


def valid_array_bodies(spec: ArrayInput, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` bodies covering every layout, scale and fill, then random ones; the first
    ones also at `spec.max_images` images."""
    rng = np.random.default_rng(seed)
    combos = [
        (layout, scale, fill)
        for layout in LAYOUTS[spec.channels]
        for scale in SCALES
        for fill in FILLS
    ]
    bodies = []
    for i in range(count):
        layout, scale, fill = combos[i % len(combos)]
        images = spec.max_images if i < len(LAYOUTS[spec.channels]) else int(rng.integers(1, 5))
        bodies.append(array_body(spec, images, layout, scale, fill, int(rng.integers(2**32))))
    return bodies


def multipart_edge_cases(image: bytes, max_parts: int) -> list[tuple[str, bytes, bool]]:
    """Raw `/predict_images` requests that must be refused: (name, request, half-close after).

    A half-closed request (`True`) is a client that stopped mid-stream: the
    server may refuse it or just close the connection, as no one is left to
    read an answer.

    Args:
        image: a valid PNG for the parts.
        max_parts: `serve.max_images_per_request` (the guard's part limit).
    """
    boundary = "fuzz-boundary"
    media = f"{MULTIPART_MEDIA_TYPE}; boundary={boundary}"
    whole = multipart_body(boundary, 1, image)

    def post(body: bytes, content_type: str = media, length: int | None = None) -> bytes:
        return post_request(PREDICT_IMAGES_PATH, content_type, body, length)

    def long_boundary(chars: int) -> bytes:
        long = "b" * chars
        return post(multipart_body(long, 1, image), f"{MULTIPART_MEDIA_TYPE}; boundary={long}")

    closing = f"--{boundary}--\r\n".encode()
    headers_end = whole.index(b"\r\n\r\n") + 4
    flood = b"".join(f"X-Flood-{i}: v\r\n".encode() for i in range(2_000))
    big = b"a" * 262_144  # 256 kB
    return [
        ("boundary of 71 characters (RFC 2046: 70)", long_boundary(71), False),
        ("boundary of 257 characters", long_boundary(257), False),
        ("boundary of 4,096 characters", long_boundary(4096), False),
        (f"{max_parts + 1} parts", post(multipart_body(boundary, max_parts + 1, image)), False),
        ("1,001 parts", post(multipart_body(boundary, 1001)), False),
        ("20,000 empty parts", post(multipart_body(boundary, 20_000, b"")), False),
        ("no closing boundary", post(whole[: -len(closing)]), False),
        ("cut inside the part headers", post(whole[: headers_end - 10]), False),
        ("cut inside the image", post(whole[: headers_end + len(image) // 2]), False),
        ("cut after the part's headers", post(whole[:headers_end]), False),
        ("empty body", post(b""), False),
        ("only the closing boundary", post(closing), False),
        ("garbage", post(b"\xff\xfe" * 512), False),
        ("no boundary parameter", post(whole, MULTIPART_MEDIA_TYPE), False),
        ("a text field, not a file", post(whole.replace(b'; filename="a.png"', b"")), False),
        ("an unknown field", post(multipart_body(boundary, 1, image, field="file")), False),
        (
            "2,000 headers in a part",
            post(multipart_body(boundary, 1, image, part_headers=2000)),
            False,
        ),
        (
            "a 256 kB part header",
            post(whole.replace(b"Content-Type: image/png", b"X-Big: " + big)),
            False,
        ),
        (
            "2,000 request headers",
            post(whole).replace(b"Host: x\r\n", b"Host: x\r\n" + flood, 1),
            False,
        ),
        (
            "a 256 kB request header",
            post(whole).replace(b"Host: x\r\n", b"Host: x\r\nX-Big: " + big + b"\r\n", 1),
            False,
        ),
        (
            "a stream shorter than its Content-Length, left open (serve.body_timeout_s)",
            post(whole[:40], length=len(whole)),
            False,
        ),
        (
            "a stream shorter than its Content-Length, then closed",
            post(whole[:40], length=len(whole)),
            True,
        ),
        (
            "a stream cut inside the image, then closed",
            post(whole[: headers_end + 8], length=len(whole)),
            True,
        ),
    ]


__all__ = [
    "ARRAY_INPUT_ENV",
    "FILLS",
    "LAYOUTS",
    "SCALES",
    "ArrayInput",
    "array_bodies",
    "array_body",
    "multipart_edge_cases",
    "served_input",
    "valid_array_bodies",
]
