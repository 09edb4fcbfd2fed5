"""The BentoML service: the registry's `production` model behind strict, batched HTTP APIs.

Run it with `flywheel serve` (or `bentoml serve serving.service:FlywheelService`).
Each worker resolves `models:/<evaluate.registered_model>@<serve.alias>` to a
concrete version and loads that version's exported pt2 model from MLflow
(tracking URI from `MLFLOW_TRACKING_URI`); the task's pre- and post-processing
is rebuilt from the model's metadata. No training code is imported.

Until a model is loaded `/readyz` answers 503 and the prediction APIs answer
503 with the reason. A missing alias is not a crash: the worker logs why and
retries every `serve.load_retry_s` seconds (so promoting a first model makes
a waiting server ready without a restart).

APIs (POST, JSON responses, one item per image, in input order):

* `/predict_image` — one PNG or JPEG file as the request body
  (`Content-Type: image/png` or `image/jpeg`): the fastest way to send one
  image (no multipart parsing, no temporary file). A FastAPI route mounted
  into the BentoML app (`bentoml.asgi_app`), so it shares BentoML's
  middlewares and its OpenAPI spec (`/docs.json`).
* `/predict_images` — multipart upload, field `images`, one or more PNG or
  JPEG files (any size and colour; converted to grayscale and resized to the
  model's input as in training, as for `/predict_image`).
* `/predict_arrays` — JSON `{"images": [...], "scale": "auto"}`: shape
  `(N, H, W)` or `(N, 1, H, W)` with `H = W =` the model's image size; `scale`
  says what the values mean: `byte` = 0–255, `unit` = 0–1, `auto` (default) =
  `byte` when any value exceeds 1, else `unit`.
* `/admin/reload` — check the alias now and swap in a new version, in every
  worker of the server; needs `Authorization: Bearer <token>` with the token
  the server was started with in `$FLYWHEEL_ADMIN_TOKEN` (without one the
  endpoint is disabled: 403).

Each item: `request_id` (the `X-Request-ID` header when it is a safe token,
else a fresh one; echoed as a response header), `index`, `label`,
`confidence`, `top_k` (the `serve.top_k` most probable classes), `model_name`,
`model_version` (also the `X-Model-Version` response header). Bad input is a
4xx with `{"error": ...}` saying what was wrong: 400 (not an image,
truncated, wrong shape/dtype/range, empty, too many images, unknown upload
fields, text values or odd file names in an upload), 411 (a chunked body:
no Content-Length), 413 (body or image too large), 415 (a body of the wrong
media type, or an upload that is neither PNG nor JPEG).

Adaptive batching: both APIs validate and pre-process, then hand the images to
the current model's batcher (`serving.batching`): a forward pass starts as soon
as the model thread is free, with every request queued by then, up to
`serve.max_batch_size` images; a request that waited `serve.max_latency_ms` for
the model is shed with a 503 (Retry-After). It runs in-process rather than as a
BentoML `batchable=True` API: the module doc of `serving.batching` says why.

Zero-downtime updates: the worker checks the alias every `serve.poll_interval_s`
seconds (and on `/admin/reload`); a new version is loaded and warmed up beside
the serving one, then swapped in by one reference assignment. Requests already
admitted finish on the old version; every response names the version that
computed it. A version that fails to load is logged and counted, and the old one
keeps serving. After loading, the heap is frozen out of the cycle collector's
way (`freeze_heap`: its full passes over the model's ~600,000 objects were the
p99's 330 ms stalls).

Several workers (`serve.workers`): each loads, polls and swaps on its own, and
an admin reload reaches all of them. The worker that receives `/admin/reload`
writes a reload request into a folder private to its server (`ReloadSignal`;
the folder is made by the server process before it starts the workers,
`open_reload_channel`), then checks the alias itself; every other worker's
poller looks at that file every `RELOAD_WATCH_S` seconds and checks the alias
at once when it changes (trigger `admin-broadcast` in the log). Only the admin
endpoint writes a request, so workers never set each other off in a loop.
The reload's answer is the receiving worker's own check, plus
`other_workers_signalled`; the others' swaps are in the server log.

Serving on the event loop: small requests are pre-processed inline (a thread
hop costs more than decoding a 32 × 32 PNG), larger ones in a thread; forward
passes run on one model thread with `serve.torch_threads` intra-op threads;
responses are serialised here (`Response`), not by BentoML, which rebuilds a
JSON schema for every list-typed answer.

Every prediction goes to the prediction log (`flywheel.monitoring.prediction_log`) from
a background thread; `/metrics` adds `flywheel_predictions_total{label}`,
`flywheel_prediction_confidence`, `flywheel_model_version{model_name}` (0
until loaded), `flywheel_model_loads_total{outcome}` (`loaded`, `failed`),
`flywheel_batch_size` (images per forward pass) and
`flywheel_rejected_requests_total{status}` (requests the service's own checks
refused; BentoML's schema errors and the body guard's refusals appear only in
its access log).

Configuration: BentoML reads the worker count from the service decorator when
the worker imports this module, so the module reads `params.yaml` (the path in
`FLYWHEEL_PARAMS`, else `./params.yaml`, else defaults) once at import: the
server process's composition root. Nothing else happens at import.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import hmac
import io
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import bentoml
import numpy as np
from fastapi import FastAPI
from PIL import Image
from pydantic import BaseModel, TypeAdapter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from flywheel.config import Params, ServeConfig, load_params
from serving.batching import OverloadedError
from serving.hot_swap import (
    LoadedModel,
    ModelHolder,
    NoModelError,
    ServedModel,
    load_model_version,
    missing_alias_message,
)

logger = logging.getLogger("flywheel.serving")

PARAMS_ENV = "FLYWHEEL_PARAMS"
"""Path of the params.yaml the service reads (set by `flywheel serve`)."""
ADMIN_TOKEN_ENV = "FLYWHEEL_ADMIN_TOKEN"
"""The bearer token `/admin/reload` requires; unset or empty disables the endpoint."""
REQUEST_ID_HEADER = "X-Request-ID"
MODEL_VERSION_HEADER = "X-Model-Version"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
"""Caller-supplied request ids are used in file names: only a safe alphabet is kept."""
IMAGE_FORMATS = frozenset({"PNG", "JPEG"})
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg")
"""What `/predict_image` takes as its body (either format under either type: decoding sniffs)."""
MAX_FILENAME_CHARS = 128
"""Longer upload file names are a 400 (BentoML names its temporary copy after them)."""
Scale = Literal["auto", "unit", "byte"]
RETRY_AFTER_S = 1
"""Sent with a 503: when a shed or not-yet-ready request is worth retrying."""
INLINE_BYTES = 256 * 1024
"""Images of a request smaller than this in all are pre-processed on the event loop: on a
loaded CPU, handing work to a thread (and the GIL back) costs more than decoding small images."""
RELOAD_DIR_ENV = "FLYWHEEL_RELOAD_DIR"
"""The folder the workers of one server share for reload requests. Not a setting: the server
process makes a fresh one and sets this before it starts the workers (`open_reload_channel`)."""
RELOAD_WATCH_S = 0.25
"""How often a worker looks for another worker's reload request (one `stat`)."""
BROADCAST_TRIGGER = "admin-broadcast"
"""The trigger of a check that another worker's `/admin/reload` asked for."""


def read_service_params(environ: MutableMapping[str, str] | None = None) -> Params:
    """The configuration the service runs with: `$FLYWHEEL_PARAMS`, `./params.yaml`, or defaults.

    Raises:
        ConfigError: `FLYWHEEL_PARAMS` names a missing file, or the file is invalid.
    """
    env = os.environ if environ is None else environ
    explicit = env.get(PARAMS_ENV)
    if explicit:
        return load_params(explicit)
    if Path("params.yaml").is_file():
        return load_params("params.yaml")
    return Params()


def params_base(environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder of the params file the server reads (`$FLYWHEEL_PARAMS`), if set.

    A relative `serve.log.dir` is relative to it (the project root), not to the
    server's working directory (`flywheel.monitoring.prediction_log.predictions_dir`).
    """
    path = (os.environ if environ is None else environ).get(PARAMS_ENV)
    return Path(path).resolve().parent if path else None


# ------------------------------------------------------------------ errors


class RequestError(Exception):
    """A request the service refuses; `status` is the HTTP status (4xx), the message says why."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


def authorize_admin(expected: str | None, authorization: str | None) -> None:
    """Check an admin call's `Authorization` header against the configured token.

    Args:
        expected: the server's token (`$FLYWHEEL_ADMIN_TOKEN`); None or empty: admin disabled.
        authorization: the request's `Authorization` header, if any.

    Raises:
        RequestError: 403 when admin is disabled or the token is wrong, 401 when
            no bearer token was sent.
    """
    if not expected:
        raise RequestError(
            f"admin endpoints are disabled: start the server with {ADMIN_TOKEN_ENV} set",
            HTTPStatus.FORBIDDEN,
        )
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RequestError(
            "admin endpoints need 'Authorization: Bearer <token>'", HTTPStatus.UNAUTHORIZED
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise RequestError("invalid admin token", HTTPStatus.FORBIDDEN)


# --------------------------------------------------------- input handling


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


def arrays_to_unit(images: np.ndarray, image_size: int, scale: Scale) -> np.ndarray:
    """A JSON array of images → `(N, 1, S, S)` float32 in [0, 1].

    Args:
        images: `(N, S, S)` or `(N, 1, S, S)`, numeric.
        image_size: `S`, the model's input side.
        scale: `byte` (0–255), `unit` (0–1) or `auto` (`byte` if any value > 1).

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
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]  # (N, S, S)
    expected = f"(N, {image_size}, {image_size}) or (N, 1, {image_size}, {image_size})"
    if array.ndim != 3 or array.shape[1:] != (image_size, image_size):
        raise RequestError(f"images must have shape {expected}, got {tuple(array.shape)}")
    pixels = array.astype(np.float64)
    if not np.isfinite(pixels).all():
        raise RequestError("images contain NaN or infinite values")
    low, high = float(pixels.min()), float(pixels.max())
    if scale == "auto":
        scale = "byte" if high > 1.0 else "unit"
    top = 255.0 if scale == "byte" else 1.0
    if low < 0.0 or high > top:
        raise RequestError(
            f"images with scale {scale!r} must lie in [0, {top:g}], "
            f"got values in [{low:g}, {high:g}]"
        )
    return (pixels / top).astype(np.float32)[:, None]  # (N, 1, S, S)


def request_id_from(headers: MutableMapping[str, str] | Any) -> str:
    """The caller's `X-Request-ID` when it is a safe token, else a new random id."""
    given = headers.get(REQUEST_ID_HEADER) if headers is not None else None
    if given and _SAFE_REQUEST_ID.match(given):
        return str(given)
    return uuid.uuid4().hex


class RequestGuard:
    """ASGI middleware: refuse malformed POSTs before BentoML parses them.

    * 411 for a chunked body (no `Content-Length`), 413 when the length exceeds
      `max_bytes` — read from the header, so an oversized upload is never
      spooled to disk (no framing header at all means an empty body);
    * 415 when a route's body is not of one of its media types (`media_types`;
      an empty body needs none);
    * 400 when a multipart body has fields other than the route's
      (`multipart_fields`): BentoML would try to parse an unknown binary part as
      JSON and answer 500.

    Args:
        app: the ASGI app.
        max_bytes: largest request body accepted.
        media_types: route → the media types its body may have.
        multipart_fields: multipart route → the field names it accepts.
    """

    def __init__(
        self,
        app: Any,
        max_bytes: int,
        media_types: Mapping[str, tuple[str, ...]],
        multipart_fields: Mapping[str, frozenset[str]],
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.media_types = dict(media_types)
        self.multipart_fields = dict(multipart_fields)

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        path = str(scope.get("path", ""))
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        media_type = content_type.split(";")[0].strip()
        try:
            length = headers.get(b"content-length")
            if length is None and b"transfer-encoding" not in headers:
                length = b"0"  # no framing header: the body is empty (RFC 9112, 6.3)
            self._check_headers(path, length, media_type)
            if path in self.multipart_fields:
                body = await _read_body(receive)
                self._check_fields(content_type, body, self.multipart_fields[path])
                receive = _replay(body)
        except RequestError as err:
            response = JSONResponse({"error": str(err)}, status_code=int(err.status))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check_headers(self, path: str, length: bytes | None, media_type: str) -> None:
        if length is None:
            raise RequestError(
                "a Content-Length header is required (no chunked bodies)",
                HTTPStatus.LENGTH_REQUIRED,
            )
        if not length.isdigit():
            raise RequestError("Content-Length is not a number")
        if int(length) > self.max_bytes:
            raise RequestError(
                f"request body of {int(length)} bytes exceeds the limit of {self.max_bytes} "
                "bytes (serve.max_request_bytes)",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        wanted = self.media_types.get(path)
        if wanted is not None and media_type not in wanted and int(length) > 0:
            raise RequestError(
                f"{path} takes {' or '.join(wanted)}, got {media_type or 'no Content-Type'}",
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            )

    @staticmethod
    def _check_fields(content_type: str, body: bytes, allowed: frozenset[str]) -> None:
        parts = multipart_parts(body, content_type)
        unknown = {part.name for part in parts} - allowed
        if unknown or not parts:
            raise RequestError(
                f"multipart fields {sorted(unknown) or '(none)'} not accepted; "
                f"send the files as {sorted(allowed)}"
            )
        for part in parts:
            if part.filename is None:  # BentoML would fetch a text value as a URL
                raise RequestError(
                    f"multipart field {part.name!r} must be a file upload (Content-Disposition "
                    "with a filename), not a text value"
                )
            if len(part.filename) > MAX_FILENAME_CHARS or not part.filename.isprintable():
                raise RequestError(
                    f"upload file names must be printable and at most {MAX_FILENAME_CHARS} "
                    f"characters, got {part.filename[:MAX_FILENAME_CHARS]!r}"
                )


@dataclass(frozen=True)
class MultipartPart:
    """One part of a multipart body: its field name and file name (None: a text field)."""

    name: str
    filename: str | None


def multipart_parts(body: bytes, content_type: str) -> list[MultipartPart]:
    """The parts of a `multipart/form-data` body, from their headers only (no data copied).

    Uses python-multipart's streaming parser (what Starlette and BentoML parse
    with) with header callbacks only, so checking a request before BentoML
    parses it costs a fraction of a full parse.

    Raises:
        RequestError: no boundary, or a malformed body or part header.
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise RequestError("malformed multipart body: no boundary in the Content-Type")
    parts: list[MultipartPart] = []
    header = {"field": b"", "value": b"", "disposition": b""}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        if header["field"].strip().lower() == b"content-disposition":
            header["disposition"] = header["value"]
        header["field"] = header["value"] = b""

    def on_headers_finished() -> None:
        _, params = parse_options_header(header["disposition"])
        header["disposition"] = b""
        if b"name" not in params:
            raise RequestError("malformed multipart body: a part has no field name")
        filename = params.get(b"filename")
        parts.append(
            MultipartPart(
                params[b"name"].decode("utf-8", "replace"),
                None if filename is None else filename.decode("utf-8", "replace"),
            )
        )

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as err:
        raise RequestError(f"malformed multipart body: {err}") from None
    return parts


async def _read_body(receive: Callable[[], Awaitable[Any]]) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI `receive` that hands over an already-read body once."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


# ------------------------------------------------------------ the service


class ClassProbability(BaseModel):
    """One class and its probability."""

    label: str
    probability: float


class Prediction(BaseModel):
    """The service's answer for one image."""

    request_id: str
    index: int
    label: str
    confidence: float
    top_k: list[ClassProbability]
    model_name: str
    model_version: str


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


@dataclass(frozen=True)
class RefreshOutcome:
    """What one check of the alias did.

    Attributes:
        trigger: `poll`, `admin` or `admin-broadcast` (another worker's admin reload).
        previous_version: the version served before the check (None: none yet).
        model_version: the version served after it.
        error: why a new version could not be loaded or the alias not read (None: no error).
    """

    trigger: str
    previous_version: str | None
    model_version: str | None
    error: str | None = None

    @property
    def changed(self) -> bool:
        """A new version was swapped in."""
        return self.model_version != self.previous_version


_PREDICTIONS = TypeAdapter(list[Prediction])


class ReloadSignal:
    """Reload requests between the workers of one server: a small file in a folder they share.

    `send` (the worker that received `/admin/reload`) writes a fresh token
    beside the file and moves it into place with `os.replace`, so a reader sees
    the old token or the new one, never half of one. `received` (every worker's
    poller) costs one `stat` while nothing changed and reads the token when
    something did. A worker never answers its own request or one written
    before it started; nothing that answers a request sends one, so workers
    cannot set each other off in a loop.

    Args:
        directory: the folder the workers of this server share (`RELOAD_DIR_ENV`).
    """

    FILE = "reload-request"

    def __init__(self, directory: Path) -> None:
        self.path = directory / self.FILE
        self._stat: tuple[int, int, int] | None = None
        self._seen: str | None = None
        self.received()  # a request from before this worker started is not one for it

    def send(self) -> str:
        """Ask the other workers to check the alias now; returns the request's token.

        Raises:
            OSError: the folder is gone or not writable.
        """
        token = f"{os.getpid()}-{uuid.uuid4().hex}"
        self._seen = token  # before the write: this worker's own poller must not answer it
        temporary = self.path.with_name(f".{self.FILE}-{token}")
        try:
            temporary.write_text(token)
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)
        return token

    def received(self) -> str | None:
        """The token of a request this worker has not seen yet, or None. Never raises.

        A token is `<pid of the sender>-<random hex>`.
        """
        try:
            stat = self.path.stat()
            # The inode changes with every os.replace, the time maybe not (coarse clocks).
            key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if key == self._stat:
                return None
            token = self.path.read_text()
        except OSError:  # none sent yet, or the folder is gone: nothing to do either way
            return None
        self._stat = key
        if token == self._seen:
            return None
        self._seen = token
        return token


def freeze_heap() -> None:
    """Collect garbage once, then move every object alive into the GC's permanent generation.

    With a model loaded the process holds ~600,000 objects, and a full
    (generation 2) pass of Python's cycle collector took ~330 ms: a stall that
    every request in flight waited out (the p99 at concurrency 32 was 6× the
    p50). After `gc.freeze()` the collector skips those objects and only looks
    at what requests allocate.
    """
    started = time.perf_counter()
    gc.unfreeze()  # objects frozen before (a previous model) are collectable again
    gc.collect()
    gc.freeze()
    logger.info(
        "heap frozen: %d objects out of the collector's way (%.0f ms)",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1000,
    )


async def freeze_heap_when_drained(previous: ServedModel, timeout_s: float) -> None:
    """Once `previous` has answered its last request (at most `timeout_s`), `freeze_heap`.

    Not at once: frozen with the heap, the swapped-out model would never be
    collected if its objects form reference cycles.
    """
    deadline = time.monotonic() + timeout_s
    while previous.admitted and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    del previous
    freeze_heap()


def forward_with_features(model: LoadedModel, batch: np.ndarray) -> np.ndarray:
    """One batch on the model thread: outputs and the prediction log's summary features.

    Computing the features once per batch rather than once per request shares
    their fixed cost (a pandas frame) between the requests of a batch.

    Args:
        model: the served version.
        batch: `(B, 1, S, S)` float32 in [0, 1].

    Returns:
        `(B, K + D + F)` float64: probabilities, embedding, `FEATURE_COLUMNS`.
    """
    from flywheel.monitoring.features import summary_features

    output = model.forward(batch)  # (B, K + D)
    features = summary_features(batch[:, 0]).to_numpy()  # (B, F)
    return np.concatenate([output.astype(np.float64), features], axis=1)


_PARAMS = read_service_params()
_SERVE: ServeConfig = _PARAMS.serve

RAW_ROUTES = FastAPI(
    title="flywheel raw image route", docs_url=None, redoc_url=None, openapi_url=None
)
"""`/predict_image`, mounted into the service's app; its spec joins BentoML's `/docs.json`."""
_REFUSALS: dict[int | str, dict[str, Any]] = {
    int(status): {"model": ErrorBody, "description": status.phrase}
    for status in (
        HTTPStatus.BAD_REQUEST,
        HTTPStatus.LENGTH_REQUIRED,
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        HTTPStatus.SERVICE_UNAVAILABLE,
    )
}
_RAW_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            media_type: {"schema": {"type": "string", "format": "binary"}}
            for media_type in IMAGE_MEDIA_TYPES
        },
    }
}


@bentoml.service(name="flywheel", workers=_SERVE.workers, traffic={"timeout": 60})
@bentoml.asgi_app(RAW_ROUTES, path="/")
class FlywheelService:
    """Serves the registry's `serve.alias` version of `evaluate.registered_model`."""

    def __init__(self) -> None:
        import torch
        from prometheus_client import Counter, Gauge, Histogram  # after BentoML's multiproc set-up

        from flywheel.env import disable_telemetry
        from flywheel.monitoring.prediction_log import PredictionLogger, predictions_dir

        disable_telemetry()
        torch.set_num_threads(_SERVE.torch_threads)  # the process's intra-op pool (see params)
        if logger.level == logging.NOTSET:  # BentoML's root logger shows WARNING+ only
            logger.setLevel(logging.INFO)
        self.params = _PARAMS
        self.config = _SERVE
        self.model_name = self.params.evaluate.registered_model
        self.admin_token = os.environ.get(ADMIN_TOKEN_ENV) or None
        channel = os.environ.get(RELOAD_DIR_ENV)
        self.reload_signal = ReloadSignal(Path(channel)) if channel else None
        if self.reload_signal is None and self.config.workers > 1:
            logger.warning(
                "%s is not set (the server process sets it when BentoML runs the service's "
                "deployment hook): /admin/reload reaches only the worker that receives it",
                RELOAD_DIR_ENV,
            )
        self.holder = ModelHolder()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._refresh_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()  # referenced until done
        log = self.config.log
        self.prediction_log: PredictionLogger = PredictionLogger(
            predictions_dir(self.params, params_base()),
            sample_images=log.sample_images,
            flush_every=log.flush_every,
            flush_interval_s=log.flush_interval_s,
            queue_size=log.queue_size,
        )
        self.prediction_log.start()
        self.predictions_total = Counter(
            "flywheel_predictions", "Predictions served, by predicted label.", ["label"]
        )
        self._label_counters: dict[str, Any] = {}  # label → its child of predictions_total
        self.confidence = Histogram(
            "flywheel_prediction_confidence",
            "Confidence (top probability) of served predictions.",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
        )
        self.batch_size = Histogram(
            "flywheel_batch_size",
            "Images per forward pass (adaptive batching).",
            buckets=tuple(2.0**i for i in range(self.config.max_batch_size.bit_length() + 1)),
        )
        self.rejected_total = Counter(
            "flywheel_rejected_requests", "Requests refused, by HTTP status.", ["status"]
        )
        self.loads_total = Counter(
            "flywheel_model_loads",
            "Attempts to load a new version of the model, by outcome (loaded, failed).",
            ["outcome"],
        )
        self.version_gauge = Gauge(
            "flywheel_model_version",
            "The registered model version being served (0: none loaded).",
            ["model_name"],
            multiprocess_mode="livemax",
        )
        self.version_gauge.labels(self.model_name).set(0)

    # ---------------------------------------------------------- lifecycle

    @bentoml.on_deployment
    @staticmethod
    def open_reload_channel() -> None:
        """Make the folder this server's workers share for reload requests (`ReloadSignal`).

        BentoML runs deployment hooks once per `bentoml serve`, in the server
        process, before it starts the workers with a copy of its environment:
        `RELOAD_DIR_ENV` set here reaches every worker, restarted ones too. A
        fresh private folder (mode 0700) in the temporary directory, so no two
        servers share one (not on a shared state volume either); removed when
        the server process exits.
        """
        directory = tempfile.mkdtemp(prefix="flywheel-reload-")
        os.environ[RELOAD_DIR_ENV] = directory
        atexit.register(shutil.rmtree, directory, ignore_errors=True)

    @bentoml.on_startup
    async def start_watching(self) -> None:
        """Start the task that loads the model and then polls the alias for new versions."""
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch_registry(), name="registry-watcher"
        )

    async def _watch_registry(self) -> None:
        """Check the alias now, then on a timer or when another worker asks.

        The timer: `poll_interval_s` (`load_retry_s` while not ready), restarted
        after every check. Another worker asks when it received `/admin/reload`.
        """
        trigger = "poll"
        while True:
            await self.refresh_model(trigger)
            ready = self.holder.current is not None
            trigger = await self._wait_for_next_check(
                self.config.poll_interval_s if ready else self.config.load_retry_s
            )

    async def _wait_for_next_check(self, seconds: float) -> str:
        """Wait `seconds`, or less if another worker sends a reload request; returns the trigger.

        Looking for a request is one `stat` every `RELOAD_WATCH_S` seconds, on the
        event loop (cheaper than a hop to a thread).
        """
        signal = self.reload_signal
        if signal is None:
            await asyncio.sleep(seconds)
            return "poll"
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, RELOAD_WATCH_S))
            token = signal.received()
            if token is not None:
                logger.info(
                    "RELOAD REQUESTED by worker pid %s: worker pid %d checks models:/%s@%s now",
                    token.partition("-")[0],
                    os.getpid(),
                    self.model_name,
                    self.config.alias,
                )
                return BROADCAST_TRIGGER
        return "poll"

    async def refresh_model(self, trigger: str) -> RefreshOutcome:
        """Swap in the version the alias points at if it is not the one served. Never raises.

        Checks run one at a time in a worker (the poller and admin calls share a lock).
        """
        async with self._refresh_lock:
            return await self._refresh(trigger)

    async def _refresh(self, trigger: str) -> RefreshOutcome:
        from flywheel.registry import version_for_alias

        name, alias = self.model_name, self.config.alias
        served = self.holder.current
        current = served.model.version if served is not None else None
        try:
            version = await asyncio.to_thread(version_for_alias, name, alias)
        except Exception as err:  # whatever the registry raises, the served model keeps serving
            return self._refresh_failed(trigger, current, f"cannot read the alias: {err}")
        if version is None:
            return self._refresh_failed(trigger, current, missing_alias_message(name, alias))
        if version == current:
            return RefreshOutcome(trigger, current, current)
        try:
            loaded = await asyncio.to_thread(load_model_version, name, version)
        except Exception as err:  # a broken version must never take the served one down
            return self._refresh_failed(trigger, current, f"version {version}: {err}")
        served = self._serve_model(loaded)
        if current is None:
            freeze_heap()  # before /readyz says ready: no request waits on the collection
        previous = self.holder.swap(served)
        self.version_gauge.labels(name).set(float(version))
        self.loads_total.labels("loaded").inc()
        if previous is None:
            logger.info(
                "READY: serving %s (alias %r) loaded in %.1f s",
                loaded.uri,
                alias,
                loaded.load_seconds,
            )
        else:
            logger.info(
                "SWAPPED (%s): %s now serves version %s (loaded in %.1f s); version %s "
                "finishes its %d admitted requests",
                trigger,
                name,
                version,
                loaded.load_seconds,
                current,
                previous.admitted,
            )
            task = asyncio.get_running_loop().create_task(
                freeze_heap_when_drained(previous, self.config.poll_interval_s)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return RefreshOutcome(trigger, current, version)

    def _serve_model(self, loaded: LoadedModel) -> ServedModel:
        return ServedModel(
            loaded,
            compute=forward_with_features,
            max_batch_size=self.config.max_batch_size,
            max_latency_ms=self.config.max_latency_ms,
            executor=self._model_thread,
            on_batch=self.batch_size.observe,
        )

    def _refresh_failed(self, trigger: str, current: str | None, reason: str) -> RefreshOutcome:
        """Count and log a failed check; whatever was served stays served."""
        self.loads_total.labels("failed").inc()
        where = f"models:/{self.model_name}@{self.config.alias}"
        if current is None:
            self.holder.status = f"cannot load {where}: {reason}"
            logger.error(
                "NOT READY: %s; retrying in %.0f s", self.holder.status, self.config.load_retry_s
            )
        else:
            logger.error(
                "LOAD FAILED (%s): %s: %s; still serving version %s",
                trigger,
                where,
                reason,
                current,
            )
        return RefreshOutcome(trigger, current, current, error=reason)

    def __is_ready__(self) -> bool:
        """Ready once a model is loaded."""
        return self.holder.current is not None

    @bentoml.on_shutdown
    async def close(self) -> None:
        """Stop polling, flush the prediction log, release the model thread."""
        if self._watcher is not None:
            self._watcher.cancel()
        await asyncio.to_thread(self.prediction_log.close)
        self._model_thread.shutdown(wait=False, cancel_futures=True)

    # --------------------------------------------------------------- APIs

    async def predict_image(self, request: Request) -> Response:
        """Classify one PNG or JPEG file sent as the request body (`/predict_image`)."""
        body = await request.body()

        def prepare(model: LoadedModel) -> np.ndarray:
            if not body:
                raise RequestError("no image: the request body is empty")
            image = decode_image(body, self.config.max_image_pixels)
            return model.task.preprocess([image]).numpy()  # (1, 1, S, S)

        return await self._serve(request.headers, prepare, inline=len(body) < INLINE_BYTES)

    @bentoml.api
    async def predict_images(self, images: list[Path], ctx: bentoml.Context) -> list[Prediction]:
        """Classify uploaded PNG/JPEG files (multipart field `images`, one or more)."""

        def prepare(model: LoadedModel) -> np.ndarray:
            self._check_count(len(images))
            decoded = [decode_image(Path(p), self.config.max_image_pixels) for p in images]
            return model.task.preprocess(decoded).numpy()  # (N, 1, S, S)

        size = sum(Path(p).stat().st_size for p in images[: self.config.max_images_per_request])
        answer = await self._serve(ctx.request.headers, prepare, inline=size < INLINE_BYTES)
        return _answer(ctx, answer)

    @bentoml.api
    async def predict_arrays(
        self, images: np.ndarray, ctx: bentoml.Context, scale: Scale = "auto"
    ) -> list[Prediction]:
        """Classify images sent as a JSON array `(N, H, W)` or `(N, 1, H, W)` (module doc)."""

        def prepare(model: LoadedModel) -> np.ndarray:
            batch = arrays_to_unit(images, model.task.image_size, scale)  # (N, 1, S, S)
            self._check_count(len(batch))
            return batch

        inline = images.nbytes < INLINE_BYTES
        answer = await self._serve(ctx.request.headers, prepare, inline=inline)
        return _answer(ctx, answer)

    @bentoml.api(route="/admin/reload")
    async def reload_model(self, ctx: bentoml.Context) -> ReloadResult:
        """Check the alias now and swap in a new version (`Authorization: Bearer <token>`).

        The server's other workers are asked to check too (`ReloadSignal`) before
        this one checks, so they load in parallel with it.

        200 with what this worker changed; 502 when the new version cannot be
        loaded (the old one keeps serving); 401/403 without the right token; 403
        when the server has no `FLYWHEEL_ADMIN_TOKEN`.
        """
        try:
            authorize_admin(self.admin_token, ctx.request.headers.get("authorization"))
        except RequestError as err:
            refusal = self._refuse(err)
            if err.status == HTTPStatus.UNAUTHORIZED:
                refusal.headers["WWW-Authenticate"] = 'Bearer realm="flywheel-admin"'
            return _answer(ctx, refusal)
        signalled = self._signal_other_workers()
        outcome = await self.refresh_model("admin")
        result = ReloadResult(
            model_name=self.model_name,
            previous_version=outcome.previous_version,
            model_version=outcome.model_version,
            changed=outcome.changed,
            other_workers_signalled=signalled,
        )
        if outcome.error is not None:
            status = HTTPStatus.BAD_GATEWAY
            ctx.response.status_code = int(status)
            return JSONResponse(  # type: ignore[return-value]
                {"error": outcome.error, **result.model_dump()}, status_code=int(status)
            )
        return result

    # ------------------------------------------------------------ helpers

    def _signal_other_workers(self) -> bool:
        """Ask the server's other workers to check the alias now; False when none could be."""
        if self.reload_signal is None:
            return False  # warned about at start-up
        try:
            self.reload_signal.send()
        except OSError as err:
            logger.error(
                "cannot signal the other workers through %s (%s): they check at their next poll",
                self.reload_signal.path,
                err,
            )
            return False
        return True

    def _check_count(self, count: int) -> None:
        if count == 0:
            raise RequestError("no images: the batch is empty")
        limit = self.config.max_images_per_request
        if count > limit:
            raise RequestError(
                f"{count} images in one request exceeds the limit of {limit} "
                "(serve.max_images_per_request): split the request"
            )

    async def _serve(
        self,
        headers: Mapping[str, str],
        prepare: Callable[[LoadedModel], np.ndarray],
        *,
        inline: bool,
    ) -> Response:
        """Admit to the current model, pre-process (`inline` or in a thread), infer, respond.

        Args:
            headers: the request's headers (`X-Request-ID`).
            prepare: the request's images → `(N, 1, S, S)` float32; raises `RequestError`.
            inline: pre-process on the event loop (small inputs) rather than in a thread.

        Returns:
            The predictions or the refusal, with `X-Request-ID` (and `X-Model-Version`
            or `Retry-After`) set.
        """
        request_id = request_id_from(headers)
        try:
            with self.holder.admit() as served:
                model = served.model
                batch = prepare(model) if inline else await asyncio.to_thread(prepare, model)
                output = await served.infer(batch)  # (N, K + D + F)
                response = self._respond(request_id, model, batch, output)
                response.headers[MODEL_VERSION_HEADER] = model.version
        except (NoModelError, OverloadedError) as err:
            response = self._refuse(
                RequestError(str(err), HTTPStatus.SERVICE_UNAVAILABLE), request_id
            )
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
        except RequestError as err:
            response = self._refuse(err, request_id)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    def _refuse(self, err: RequestError, request_id: str | None = None) -> Response:
        """The error response `{"error": ...}`, counted by status."""
        self.rejected_total.labels(str(int(err.status))).inc()
        body = (
            {"error": str(err)}
            if request_id is None
            else {"error": str(err), "request_id": request_id}
        )
        return JSONResponse(body, status_code=int(err.status))

    def _respond(
        self, request_id: str, model: LoadedModel, batch: np.ndarray, output: np.ndarray
    ) -> Response:
        """The JSON response; counts the predictions and queues them for the prediction log.

        Serialised here rather than by BentoML, which derives the media type of a
        list-typed answer from its JSON schema, rebuilt on every response (~3 ms).
        """
        from flywheel.monitoring.features import FEATURE_COLUMNS
        from flywheel.monitoring.prediction_log import PredictionRecord

        now = datetime.now(UTC)
        features = output[:, -len(FEATURE_COLUMNS) :]  # (N, F)
        probabilities, embeddings = model.task.split_output(output[:, : -len(FEATURE_COLUMNS)])
        images = np.rint(batch[:, 0] * 255.0).astype(np.uint8)  # (N, S, S)
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, : self.config.top_k]
        classes = model.task.classes
        out = []
        for i, order in enumerate(ranked):
            probs = probabilities[i].astype(float)  # (K,)
            label, confidence = classes[int(order[0])], float(probs[order[0]])
            out.append(
                Prediction(
                    request_id=request_id,
                    index=i,
                    label=label,
                    confidence=confidence,
                    top_k=[
                        ClassProbability(label=classes[int(j)], probability=float(probs[j]))
                        for j in order
                    ],
                    model_name=model.name,
                    model_version=model.version,
                )
            )
            counter = self._label_counters.get(label)
            if counter is None:  # `labels()` takes a lock and builds a key: once per label
                counter = self._label_counters[label] = self.predictions_total.labels(label)
            counter.inc()
            self.confidence.observe(confidence)
            self.prediction_log.log(
                PredictionRecord(
                    request_id=request_id,
                    index=i,
                    time=now,
                    model_name=model.name,
                    model_version=model.version,
                    label=label,
                    confidence=confidence,
                    probabilities=dict(zip(classes, probs.tolist(), strict=True)),
                    features=dict(zip(FEATURE_COLUMNS, features[i].tolist(), strict=True)),
                    embedding=embeddings[i].astype(float).tolist(),
                    image=images[i],
                )
            )
        return Response(_PREDICTIONS.dump_json(out), media_type="application/json")


@RAW_ROUTES.post(
    "/predict_image",
    response_model=list[Prediction],
    responses=_REFUSALS,
    openapi_extra=_RAW_IMAGE_BODY,
    summary="Classify one PNG or JPEG file sent as the body",
    tags=["Service APIs"],
)
async def predict_image(request: Request) -> Response:
    """Classify one PNG or JPEG file sent as the request body
    (`Content-Type: image/png` or `image/jpeg`); one item, as `/predict_images` answers.

    A plain coroutine taking the request: FastAPI then resolves no dependencies
    (a class view's `self` is a sync dependency: a thread hop per request).
    """
    service: FlywheelService = bentoml.get_current_service()
    return await service.predict_image(request)


def _answer(ctx: bentoml.Context, response: Response) -> Any:
    """`response` as a BentoML API's answer: BentoML gives a returned response `ctx`'s status."""
    ctx.response.status_code = response.status_code
    return response


# `@bentoml.service` returns a Service; its stubs type it as the decorated class.
FlywheelService.add_asgi_middleware(  # type: ignore[attr-defined]
    RequestGuard,
    max_bytes=_SERVE.max_request_bytes,
    media_types={
        "/predict_image": IMAGE_MEDIA_TYPES,
        "/predict_arrays": ("application/json",),
        "/predict_images": ("multipart/form-data",),
        "/admin/reload": ("application/json",),
    },
    multipart_fields={"/predict_images": frozenset({"images"})},
)


__all__ = [
    "ADMIN_TOKEN_ENV",
    "RAW_ROUTES",
    "RELOAD_DIR_ENV",
    "FlywheelService",
    "Prediction",
    "ReloadResult",
    "ReloadSignal",
    "RequestError",
    "RequestGuard",
    "arrays_to_unit",
    "authorize_admin",
    "decode_image",
    "read_service_params",
    "request_id_from",
]
