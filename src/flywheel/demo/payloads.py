"""Each prediction API's request for one image, encoded once and sent many times.

The serving benchmark and the load drivers (`tests/load/`) send the same few
requests thousands of times: `api_requests` encodes them once (the bytes and
headers of a PNG body, a multipart upload and a JSON array, as the service's
contract says: `flywheel.serving_api`), `post_status` sends one with aiohttp
and keeps only the status.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from flywheel.serving_api import (
    CONTENT_TYPE_HEADER,
    IMAGES_FIELD,
    JSON_MEDIA_TYPE,
    PNG_MEDIA_TYPE,
    PREDICT_ARRAYS_PATH,
    PREDICT_IMAGE_PATH,
    PREDICT_IMAGES_PATH,
)

IMAGE, MULTIPART, JSON = "image", "multipart", "json"
"""The payloads: a PNG as the body, a PNG upload, a JSON array."""
PAYLOADS = (IMAGE, MULTIPART, JSON)


@dataclass(frozen=True)
class ApiRequest:
    """One POST, ready to send: its target (a path, or a URL once `at` gave it a server),
    body and headers."""

    target: str
    body: bytes
    headers: dict[str, str]

    def at(self, url: str) -> ApiRequest:
        """The same request to the server at `url` (its target appended to `url`)."""
        return ApiRequest(url + self.target, self.body, self.headers)


def unit_array(image: np.ndarray) -> list[Any]:
    """`(S, S)` uint8 → `(1, 1, S, S)` nested lists of floats in [0, 1], 4 decimals (JSON)."""
    return np.round(image.astype(np.float64) / 255.0, 4)[None, None].tolist()


def api_requests(image: np.ndarray) -> dict[str, ApiRequest]:
    """The request of each payload (`IMAGE`, `MULTIPART`, `JSON`) for one `(S, S)` uint8 image."""
    from PIL import Image
    from urllib3 import encode_multipart_formdata

    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    multipart, content_type = encode_multipart_formdata(
        [(IMAGES_FIELD, ("digit.png", png.getvalue(), PNG_MEDIA_TYPE))]
    )
    arrays = json.dumps({IMAGES_FIELD: unit_array(image)}).encode()
    return {
        JSON: ApiRequest(PREDICT_ARRAYS_PATH, arrays, {CONTENT_TYPE_HEADER: JSON_MEDIA_TYPE}),
        IMAGE: ApiRequest(
            PREDICT_IMAGE_PATH, png.getvalue(), {CONTENT_TYPE_HEADER: PNG_MEDIA_TYPE}
        ),
        MULTIPART: ApiRequest(PREDICT_IMAGES_PATH, multipart, {CONTENT_TYPE_HEADER: content_type}),
    }


async def post_status(session: Any, request: ApiRequest) -> str:
    """Send one request (its target a URL: `ApiRequest.at`) in an `aiohttp.ClientSession`.

    Returns:
        The answer's status, or the name of the error that prevented one.
    """
    import aiohttp

    try:
        async with session.post(
            request.target, data=request.body, headers=request.headers
        ) as answer:
            await answer.read()
            return str(answer.status)
    except (aiohttp.ClientError, TimeoutError) as err:
        return type(err).__name__


__all__ = [
    "IMAGE",
    "JSON",
    "MULTIPART",
    "PAYLOADS",
    "ApiRequest",
    "api_requests",
    "post_status",
    "unit_array",
]
