"""The model service's HTTP contract: its paths, headers, media types and the JSON it answers.

One definition for both sides. The BentoML service (`serving/`) routes and
checks requests with these names and answers with these models; its clients
(`flywheel.demo.server`, the traffic simulator `flywheel.demo.simulate`), the
load drivers (`tests/load/`) and the serving benchmark build their requests
from them. A plain module (pydantic only): the library never imports BentoML.

APIs (POST; JSON answers, one `Prediction` per image, in input order):

* `PREDICT_IMAGE_PATH`: one PNG or JPEG file as the request body
  (`Content-Type` one of `IMAGE_MEDIA_TYPES`);
* `PREDICT_IMAGES_PATH`: a multipart upload, one or more PNG or JPEG files in
  the field `IMAGES_FIELD`;
* `PREDICT_ARRAYS_PATH`: JSON `{"images": [...], "scale": "auto"}` (`Scale`);
* `ADMIN_RELOAD_PATH`: check the alias now (`admin_headers`); answers a `ReloadResult`.

`READY_PATH` (GET) answers a `Readiness`: 200 while a version is served (the
alias's, or a fallback), 503 while none is, with the reason.

A refusal is a 4xx or 5xx with an `ErrorBody`. Every prediction answer carries
`REQUEST_ID_HEADER` (the caller's when it is a safe token, else a fresh one)
and `MODEL_VERSION_HEADER`; a 503 carries `Retry-After`.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Literal

from pydantic import BaseModel

PREDICT_IMAGE_PATH = "/predict_image"
"""One image file as the whole request body: the fastest way to send one image."""
PREDICT_IMAGES_PATH = "/predict_images"
"""Image files as a multipart upload (field `IMAGES_FIELD`)."""
PREDICT_ARRAYS_PATH = "/predict_arrays"
"""Images as a JSON array `(N, H, W)` or `(N, 1, H, W)`."""
ADMIN_RELOAD_PATH = "/admin/reload"
"""Check the alias now and swap in a new version, in every worker (needs the admin token)."""
READY_PATH = "/readyz"
"""200 while a model is served, 503 while none is; a `Readiness` says which version and why."""
LIVE_PATH = "/livez"
"""200 while the server runs."""
METRICS_PATH = "/metrics"
"""Prometheus metrics."""
OPENAPI_PATH = "/docs.json"
"""The OpenAPI spec of every API."""

IMAGES_FIELD = "images"
"""The multipart field of `PREDICT_IMAGES_PATH` and the JSON key of `PREDICT_ARRAYS_PATH`."""

CONTENT_TYPE_HEADER = "Content-Type"
REQUEST_ID_HEADER = "X-Request-ID"
"""Sent by the caller (optional) and echoed in the answer; items and the prediction log carry it."""
MODEL_VERSION_HEADER = "X-Model-Version"
"""The registered version that computed the answer."""
AUTHORIZATION_HEADER = "Authorization"
"""The admin token: `Bearer <token>` (`admin_headers`)."""
ADMIN_SCHEME = "Bearer"
WWW_AUTHENTICATE_HEADER = "WWW-Authenticate"
RETRY_AFTER_HEADER = "Retry-After"

PREDICTION_REFUSALS = (400, 408, 411, 413, 415, 503)
"""The HTTP statuses a prediction route refuses with (body `{"error": ...}`): a malformed
body (400), one not finished in time (408), no length (411), over a limit (413), a media
type it does not take (415), no model served or the batcher full (503)."""
"""Seconds after which a 503 (not ready, or shed under load) is worth retrying."""

PNG_MEDIA_TYPE = "image/png"
JPEG_MEDIA_TYPE = "image/jpeg"
IMAGE_MEDIA_TYPES = (PNG_MEDIA_TYPE, JPEG_MEDIA_TYPE)
"""What `PREDICT_IMAGE_PATH` takes as its body (either format under either type: decoding
sniffs the content)."""
JSON_MEDIA_TYPE = "application/json"
MULTIPART_MEDIA_TYPE = "multipart/form-data"
BODY_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    PREDICT_IMAGE_PATH: IMAGE_MEDIA_TYPES,
    PREDICT_ARRAYS_PATH: (JSON_MEDIA_TYPE,),
    PREDICT_IMAGES_PATH: (MULTIPART_MEDIA_TYPE,),
    ADMIN_RELOAD_PATH: (JSON_MEDIA_TYPE,),
}
"""The media types each POST route's body may have (an empty body needs none); others: 415."""

PARAMS_ENV = "FLYWHEEL_PARAMS"
"""Path of the params.yaml the server reads (set by `flywheel serve`)."""
SET_ENV = "FLYWHEEL_SET"
"""`--set` pairs of `flywheel serve`, one `dotted.key=value` per line, applied over the params file
by the server (`flywheel.config.overrides`, the one parser)."""
ADMIN_TOKEN_ENV = "FLYWHEEL_ADMIN_TOKEN"
"""The token `ADMIN_RELOAD_PATH` requires, from the server's environment; unset or empty
disables the endpoint (403)."""

ServingState = Literal["serving", "fallback", "not_ready"]
"""What a worker serves: the alias's version, another one (`fallback`: the alias's cannot be
loaded or the alias is missing), or nothing."""

Scale = Literal["auto", "unit", "byte"]
"""What the values of a JSON array mean: `byte` = 0–255 (0 to the model's white level when it
was trained with `data.white_level`, e.g. 0–16), `unit` = 0–1, `auto` (the default) =
`byte` when any value exceeds 1, else `unit`."""


class ClassProbability(BaseModel):
    """One class and its probability."""

    label: str
    probability: float


class Prediction(BaseModel):
    """The service's answer for one image.

    `low_information`: the image has no content worth a label (blank, or far
    smaller than the model's input, so resized to one grey level: its dynamic
    range is below `serve.min_dynamic_range`). `label` and `confidence` are
    still the model's, but they answer nothing: treat the item as "no
    content"; monitoring leaves such predictions out of its drift window.
    """

    request_id: str
    index: int
    label: str
    confidence: float
    top_k: list[ClassProbability]
    model_name: str
    model_version: str
    low_information: bool = False


class ErrorBody(BaseModel):
    """A refused request: what was wrong (and the request id, once one was given)."""

    error: str
    request_id: str | None = None


class ReloadResult(BaseModel):
    """The answer of `/admin/reload`: what the worker that received it did.

    `other_workers_signalled`: the server's other workers (if any) were asked
    to check the alias too; each does within `RELOAD_WATCH_S` seconds (after a
    check it is already running) and swaps on its own: their outcome is in the
    server log, not here. False when the request could not be written: they
    swap at their next poll.
    """

    model_name: str
    previous_version: str | None
    model_version: str | None
    changed: bool
    other_workers_signalled: bool


class Readiness(BaseModel):
    """The answer of `READY_PATH` (200 when `ready`, else 503): what the worker serves, and why.

    `state`: `serving` the version `alias` points at; `fallback` another
    version, because the alias's cannot be loaded (corrupt or missing model
    files) or the alias is missing: the `previous` version, or the one already
    serving when a new one failed to load (`serve.on_unloadable_production:
    previous`); `not_ready` nothing (no version loaded yet, or none loadable).
    `reason`: why not `serving` (None while serving the alias's version).
    `alias_version`: the version the alias pointed at when last read (None:
    missing, or not read yet). `model_version`: the version answering requests,
    the one predictions and `X-Model-Version` name.
    """

    ready: bool
    state: ServingState
    model_name: str
    alias: str
    alias_version: str | None
    model_version: str | None
    reason: str | None = None


def bearer(token: str) -> str:
    """The `Authorization` value that carries an admin token.

    >>> bearer("s3cret")
    'Bearer s3cret'
    """
    return f"{ADMIN_SCHEME} {token}"


def admin_headers(token: str) -> dict[str, str]:
    """The headers of an admin call with `token`.

    >>> admin_headers("s3cret")
    {'Authorization': 'Bearer s3cret'}
    """
    return {AUTHORIZATION_HEADER: bearer(token)}


SERVE_URL_ENV = "FLYWHEEL_SERVE_URL"
"""The address people reach the server at (`flywheel serve` sets it from --host and --port);
the server prints its URLs with it once a model is served (`ready_message`)."""


def base_url(host: str, port: int) -> str:
    """The URL to open for a server bound to `host` (a wildcard address: this machine's loopback).

    >>> base_url("0.0.0.0", 3000), base_url("::", 3000), base_url("10.0.0.7", 80)
    ('http://127.0.0.1:3000', 'http://[::1]:3000', 'http://10.0.0.7:80')
    """
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def ready_message(base: str) -> str:
    """What the server prints once it serves a model: where its API, docs and probes are.

    >>> print(ready_message("http://127.0.0.1:3000"))
    ready at http://127.0.0.1:3000
      API        POST http://127.0.0.1:3000/predict_image (and /predict_images, /predict_arrays)
      Swagger    http://127.0.0.1:3000/
      metrics    http://127.0.0.1:3000/metrics
      readiness  http://127.0.0.1:3000/readyz
    """
    return (
        f"ready at {base}\n"
        f"  API        POST {base}{PREDICT_IMAGE_PATH} "
        f"(and {PREDICT_IMAGES_PATH}, {PREDICT_ARRAYS_PATH})\n"
        f"  Swagger    {base}/\n"
        f"  metrics    {base}{METRICS_PATH}\n"
        f"  readiness  {base}{READY_PATH}"
    )


def image_media_type(path: PurePath | str) -> str:
    """The media type to upload an image file under, from its suffix (PNG unless JPEG).

    >>> image_media_type("digit.JPG"), image_media_type("digit.png")
    ('image/jpeg', 'image/png')
    """
    return JPEG_MEDIA_TYPE if PurePath(path).suffix.lower() in (".jpg", ".jpeg") else PNG_MEDIA_TYPE


__all__ = [
    "ADMIN_RELOAD_PATH",
    "ADMIN_SCHEME",
    "ADMIN_TOKEN_ENV",
    "AUTHORIZATION_HEADER",
    "BODY_MEDIA_TYPES",
    "CONTENT_TYPE_HEADER",
    "IMAGES_FIELD",
    "IMAGE_MEDIA_TYPES",
    "JPEG_MEDIA_TYPE",
    "JSON_MEDIA_TYPE",
    "LIVE_PATH",
    "METRICS_PATH",
    "MODEL_VERSION_HEADER",
    "MULTIPART_MEDIA_TYPE",
    "OPENAPI_PATH",
    "PARAMS_ENV",
    "PNG_MEDIA_TYPE",
    "PREDICT_ARRAYS_PATH",
    "PREDICT_IMAGES_PATH",
    "PREDICT_IMAGE_PATH",
    "READY_PATH",
    "REQUEST_ID_HEADER",
    "RETRY_AFTER_HEADER",
    "SERVE_URL_ENV",
    "SET_ENV",
    "WWW_AUTHENTICATE_HEADER",
    "ClassProbability",
    "ErrorBody",
    "Prediction",
    "Readiness",
    "ReloadResult",
    "Scale",
    "ServingState",
    "admin_headers",
    "base_url",
    "bearer",
    "image_media_type",
    "ready_message",
]
