"""The BentoML service: the registry's `production` model behind strict, batched HTTP APIs.

Run it with `flywheel serve` (or `bentoml serve serving.service:FlywheelService`).
At start-up each worker resolves `models:/<evaluate.registered_model>@<serve.alias>`
to a concrete version and loads that version's exported pt2 model from MLflow
(tracking URI from `MLFLOW_TRACKING_URI`); the task's pre- and post-processing
is rebuilt from the model's metadata. No training code is imported.

Until a model is loaded `/readyz` answers 503 and the prediction APIs answer
503 with the reason. A missing alias is not a crash: the worker logs why and
retries every `serve.load_retry_s` seconds (so promoting a first model makes
a waiting server ready without a restart).

APIs (POST, JSON responses, one item per image, in input order):

* `/predict_images` — multipart upload, field `images`, one or more PNG or
  JPEG files (any size and colour; converted to grayscale and resized to the
  model's input as in training).
* `/predict_arrays` — JSON `{"images": [...], "scale": "auto"}`: shape
  `(N, H, W)` or `(N, 1, H, W)` with `H = W =` the model's image size; `scale`
  says what the values mean: `byte` = 0–255, `unit` = 0–1, `auto` (default) =
  `byte` when any value exceeds 1, else `unit`.

Each item: `request_id` (the `X-Request-ID` header when it is a safe token,
else a fresh one; echoed as a response header), `index`, `label`,
`confidence`, `top_k` (the `serve.top_k` most probable classes), `model_name`,
`model_version`. Bad input is a 4xx with `{"error": ...}` saying what was
wrong: 400 (not an image, truncated, wrong shape/dtype/range, empty, too many
images, unknown upload fields), 411 (no Content-Length), 413 (body or image
too large), 415 (a body of the wrong media type, or an upload that is
neither PNG nor JPEG).

Adaptive batching: both APIs validate and pre-process, then call the
batchable `infer_batch` through the service's own proxy, so concurrent
requests share model calls (`serve.max_batch_size`, `serve.max_latency_ms`).
`/infer_batch` is internal (already pre-processed float arrays); BentoML
exposes it as a route too, behind the same body-size limit.

Every prediction goes to the prediction log (`flywheel.prediction_log`) from
a background thread; `/metrics` adds `flywheel_predictions_total{label}`,
`flywheel_prediction_confidence`, `flywheel_model_version{model_name}` (0
until loaded) and `flywheel_rejected_requests_total{status}` (requests the
service's own checks refused; BentoML's schema errors and the body guard's
refusals appear only in its access log).

Hot swap (a later increment): the loaded model lives in one immutable
`LoadedModel` held by `ModelHolder`; every batch reads the holder once, so a
new version is swapped in by one reference assignment and each response names
the version that computed it.

Configuration: BentoML reads batching parameters from the API decorator when
the worker imports this module, so the module reads `params.yaml` (the path in
`FLYWHEEL_PARAMS`, else `./params.yaml`, else defaults) once at import: the
server process's composition root. Nothing else happens at import.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from PIL import Image
from pydantic import BaseModel
from starlette.responses import JSONResponse

from flywheel.config import Params, ServeConfig, load_params

if TYPE_CHECKING:
    from torch import nn

    from flywheel.prediction_log import PredictionLogger
    from flywheel.tasks.classification import ClassificationTask

logger = logging.getLogger("flywheel.serving")

PARAMS_ENV = "FLYWHEEL_PARAMS"
"""Path of the params.yaml the service reads (set by `flywheel serve`)."""
REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
"""Caller-supplied request ids are used in file names: only a safe alphabet is kept."""
IMAGE_FORMATS = frozenset({"PNG", "JPEG"})
Scale = Literal["auto", "unit", "byte"]
_INFER_ATTEMPTS = 3
"""Tries of the internal batched call when its in-process connection drops (see `_infer`)."""


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


def prediction_log_dir(configured: Path | None, state: Path) -> Path:
    """Where the prediction log goes: `serve.log.dir` or `<state dir>/predictions`.

    A relative `serve.log.dir` is relative to the folder of the params file in
    use (the project root), not to the server's working directory.

    >>> prediction_log_dir(None, Path("/s")).as_posix()
    '/s/predictions'
    >>> prediction_log_dir(Path("/abs/log"), Path("/s")).as_posix()
    '/abs/log'
    """
    if configured is None:
        return state / "predictions"
    if configured.is_absolute():
        return configured
    base = os.environ.get(PARAMS_ENV)
    return (Path(base).resolve().parent if base else Path.cwd()) / configured


# ------------------------------------------------------------------ errors


class RequestError(Exception):
    """A request the service refuses; `status` is the HTTP status (4xx), the message says why."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class NotReadyError(RequestError):
    """No model is loaded yet (the message gives the reason)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, HTTPStatus.SERVICE_UNAVAILABLE)


class ModelLoadError(RuntimeError):
    """The production model cannot be loaded or is not one this service can serve."""


# --------------------------------------------------------------- the model


@dataclass(frozen=True)
class LoadedModel:
    """One registered version, loaded: what a batch needs, swapped as a whole.

    Attributes:
        name: the registered model.
        version: the version the alias pointed at when it was loaded.
        uri: `models:/<name>/<version>`.
        module: the exported program, `(B, 1, S, S)` → `(B, K + D)`.
        task: pre- and post-processing rebuilt from the model's metadata.
        loaded_at: when it was loaded (UTC).
    """

    name: str
    version: str
    uri: str
    module: nn.Module
    task: ClassificationTask
    loaded_at: datetime


def load_registered_model(name: str, alias: str) -> LoadedModel:
    """Resolve `alias` to a version and load that version (never the moving alias itself).

    Raises:
        flywheel.registry.AliasNotFoundError: the model or the alias does not exist.
        ModelLoadError: the version has no task metadata, is not a classifier, or
            cannot be loaded.
    """
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    from flywheel.registry import AliasNotFoundError, model_uri, version_for_alias
    from flywheel.tasks import get_task
    from flywheel.tasks.classification import ClassificationTask

    version = version_for_alias(name, alias)
    if version is None:
        raise AliasNotFoundError(
            f"registered model {name!r} has no {alias!r} alias (or does not exist): "
            f"promote a blessed version (`flywheel promote`) to serve it"
        )
    uri = model_uri(name, version)
    try:
        metadata = get_model_info(uri).metadata or {}
        task = get_task(str(metadata.get("task"))).from_metadata(metadata)
        module = mlflow.pytorch.load_model(uri, map_location="cpu")
    except (MlflowException, OSError, ValueError) as err:
        raise ModelLoadError(f"{uri}: cannot load the model: {err}") from None
    if not isinstance(task, ClassificationTask):
        raise ModelLoadError(f"{uri}: serves classification models only, not {task.name!r}")
    return LoadedModel(name, version, uri, module, task, datetime.now(UTC))


class ModelHolder:
    """The currently served model, replaced atomically (one reference assignment)."""

    def __init__(self) -> None:
        self.current: LoadedModel | None = None
        self.status = "loading the model"
        """Why no model is loaded (shown to callers while not ready)."""

    def require(self) -> LoadedModel:
        """The loaded model.

        Raises:
            NotReadyError: none is loaded yet.
        """
        model = self.current
        if model is None:
            raise NotReadyError(f"service not ready: {self.status}")
        return model


# --------------------------------------------------------- input handling


def decode_image(path: Path, max_pixels: int) -> Image.Image:
    """An uploaded file as a fully decoded PIL image.

    Raises:
        RequestError: 415 when it is not PNG/JPEG, 413 when larger than
            `max_pixels`, 400 when it cannot be decoded (truncated, corrupt, empty).
    """
    name = path.name
    try:
        image = Image.open(path)
    except (Image.UnidentifiedImageError, OSError):  # PIL's message names the server's temp path
        raise RequestError(
            f"{name}: not a PNG or JPEG image (the content is not recognised)"
        ) from None
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
    except (OSError, ValueError, Image.DecompressionBombError) as err:
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

    * 411 without a `Content-Length`, 413 when it exceeds `max_bytes` — read
      from the header, so an oversized upload is never spooled to disk;
    * 415 when a route's body is not of its media type (`media_types`);
    * 400 when a multipart body has fields other than the route's
      (`multipart_fields`): BentoML would try to parse an unknown binary part as
      JSON and answer 500.

    Args:
        app: the ASGI app.
        max_bytes: largest request body accepted.
        media_types: route → required media type.
        multipart_fields: multipart route → the field names it accepts.
    """

    def __init__(
        self,
        app: Any,
        max_bytes: int,
        media_types: Mapping[str, str],
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
        media_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip()
        try:
            self._check_headers(path, headers.get(b"content-length"), media_type)
            if path in self.multipart_fields:
                body = await _read_body(receive)
                await self._check_fields(scope, body, self.multipart_fields[path])
                receive = _replay(body)
        except RequestError as err:
            response = JSONResponse({"error": str(err)}, status_code=int(err.status))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check_headers(self, path: str, length: bytes | None, media_type: str) -> None:
        if length is None:
            raise RequestError("a Content-Length header is required", HTTPStatus.LENGTH_REQUIRED)
        if not length.isdigit():
            raise RequestError("Content-Length is not a number")
        if int(length) > self.max_bytes:
            raise RequestError(
                f"request body of {int(length)} bytes exceeds the limit of {self.max_bytes} "
                "bytes (serve.max_request_bytes)",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        wanted = self.media_types.get(path)
        if wanted is not None and media_type != wanted:
            raise RequestError(
                f"{path} takes {wanted}, got {media_type or 'no Content-Type'}",
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            )

    @staticmethod
    async def _check_fields(
        scope: MutableMapping[str, Any], body: bytes, allowed: frozenset[str]
    ) -> None:
        from starlette.requests import Request

        try:
            form = await Request(scope, _replay(body)).form()
        except Exception as err:  # starlette raises several types for a malformed body
            raise RequestError(f"malformed multipart body: {err}") from None
        try:
            names = set(form.keys())
        finally:
            await form.close()
        unknown = names - allowed
        if unknown or not names:
            raise RequestError(
                f"multipart fields {sorted(unknown) or '(none)'} not accepted; "
                f"send the files as {sorted(allowed)}"
            )


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


_PARAMS = read_service_params()
_SERVE: ServeConfig = _PARAMS.serve


@bentoml.service(name="flywheel", traffic={"timeout": 60})
class FlywheelService:
    """Serves the registry's `serve.alias` version of `evaluate.registered_model`."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram  # after BentoML's multiproc set-up

        from flywheel.env import disable_telemetry, state_dir
        from flywheel.prediction_log import PredictionLogger

        disable_telemetry()
        if logger.level == logging.NOTSET:  # BentoML's root logger shows WARNING+ only
            logger.setLevel(logging.INFO)
        self.params = _PARAMS
        self.config = _SERVE
        self.model_name = self.params.evaluate.registered_model
        self.holder = ModelHolder()
        log = self.config.log
        self.prediction_log: PredictionLogger = PredictionLogger(
            prediction_log_dir(log.dir, state_dir()),
            sample_images=log.sample_images,
            flush_every=log.flush_every,
            flush_interval_s=log.flush_interval_s,
            queue_size=log.queue_size,
        )
        self.prediction_log.start()
        self.predictions_total = Counter(
            "flywheel_predictions", "Predictions served, by predicted label.", ["label"]
        )
        self.confidence = Histogram(
            "flywheel_prediction_confidence",
            "Confidence (top probability) of served predictions.",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
        )
        self.rejected_total = Counter(
            "flywheel_rejected_requests", "Requests refused, by HTTP status.", ["status"]
        )
        self.version_gauge = Gauge(
            "flywheel_model_version",
            "The registered model version being served (0: none loaded).",
            ["model_name"],
            multiprocess_mode="livemax",
        )
        self.version_gauge.labels(self.model_name).set(0)
        self._stop = threading.Event()
        self._loader = threading.Thread(target=self._load_until_ready, name="model-loader")
        self._loader.daemon = True
        self._loader.start()

    # ---------------------------------------------------------- lifecycle

    def _load_until_ready(self) -> None:
        """Load the aliased version; while that fails, stay not-ready and retry."""
        from mlflow.exceptions import MlflowException

        from flywheel.registry import RegistryError

        alias = self.config.alias
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                model = load_registered_model(self.model_name, alias)
            except (RegistryError, ModelLoadError, MlflowException, OSError) as err:
                self.holder.status = f"cannot load models:/{self.model_name}@{alias}: {err}"
                logger.error(
                    "NOT READY: %s; retrying in %.0f s",
                    self.holder.status,
                    self.config.load_retry_s,
                )
                self._stop.wait(self.config.load_retry_s)
                continue
            self.holder.current = model  # the atomic swap point
            self.version_gauge.labels(self.model_name).set(float(model.version))
            logger.info(
                "READY: serving %s (alias %r) loaded in %.1f s",
                model.uri,
                alias,
                time.perf_counter() - started,
            )
            return

    def __is_ready__(self) -> bool:
        """Ready once a model is loaded."""
        return self.holder.current is not None

    @bentoml.on_shutdown
    def close(self) -> None:
        """Stop the loader and flush the prediction log."""
        self._stop.set()
        self.prediction_log.close()

    # --------------------------------------------------------------- APIs

    @bentoml.api(
        batchable=True,
        max_batch_size=_SERVE.max_batch_size,
        max_latency_ms=_SERVE.max_latency_ms,
    )
    def infer_batch(self, images: np.ndarray) -> list[dict[str, Any]]:
        """Internal (batched): `(B, 1, S, S)` float32 in [0, 1] → one raw result per image.

        Called by the public APIs through the service proxy so that concurrent
        requests share one forward pass. Each result carries the version that
        computed it.
        """
        import torch

        model = self.holder.current  # read once: one version for the whole batch
        if model is None:
            raise BentoMLException(self.holder.status, error_code=HTTPStatus.SERVICE_UNAVAILABLE)
        size = model.task.image_size
        if images.ndim != 4 or images.shape[1:] != (1, size, size):
            raise BentoMLException(
                f"expected (B, 1, {size}, {size}), got {images.shape}",
                error_code=HTTPStatus.BAD_REQUEST,
            )
        with torch.inference_mode():
            output = model.module(torch.from_numpy(np.ascontiguousarray(images, np.float32)))
        probabilities, embeddings = model.task.split_output(output)  # (B, K), (B, D)
        return [
            {
                "probabilities": probabilities[i].astype(float).tolist(),
                "embedding": embeddings[i].astype(float).tolist(),
                "model_name": model.name,
                "model_version": model.version,
                "classes": list(model.task.classes),
            }
            for i in range(len(probabilities))
        ]

    @bentoml.api
    async def predict_images(self, images: list[Path], ctx: bentoml.Context) -> list[Prediction]:
        """Classify uploaded PNG/JPEG files (multipart field `images`, one or more)."""
        request_id = request_id_from(ctx.request.headers)

        def prepare() -> np.ndarray:
            model = self.holder.require()
            self._check_count(len(images))
            decoded = [decode_image(Path(p), self.config.max_image_pixels) for p in images]
            return model.task.preprocess(decoded).numpy()  # (N, 1, S, S)

        return await self._serve(ctx, request_id, prepare)

    @bentoml.api
    async def predict_arrays(
        self, images: np.ndarray, ctx: bentoml.Context, scale: Scale = "auto"
    ) -> list[Prediction]:
        """Classify images sent as a JSON array `(N, H, W)` or `(N, 1, H, W)` (module doc)."""
        request_id = request_id_from(ctx.request.headers)

        def prepare() -> np.ndarray:
            model = self.holder.require()
            batch = arrays_to_unit(images, model.task.image_size, scale)  # (N, 1, S, S)
            self._check_count(len(batch))
            return batch

        return await self._serve(ctx, request_id, prepare)

    # ------------------------------------------------------------ helpers

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
        self, ctx: bentoml.Context, request_id: str, prepare: Callable[[], np.ndarray]
    ) -> Any:
        """Validate and pre-process (thread), infer (batched), respond and log."""
        ctx.response.headers[REQUEST_ID_HEADER] = request_id
        try:
            batch = await asyncio.to_thread(prepare)  # (N, 1, S, S)
            raw = await self._infer(batch)
            return await asyncio.to_thread(self._respond, request_id, batch, raw)
        except RequestError as err:
            self.rejected_total.labels(str(int(err.status))).inc()
            ctx.response.status_code = int(err.status)
            return JSONResponse(
                {"error": str(err), "request_id": request_id}, status_code=int(err.status)
            )

    async def _infer(self, batch: np.ndarray) -> list[dict[str, Any]]:
        """`infer_batch` through the service's own proxy, where adaptive batching happens.

        The proxy's in-process connection (aiohttp over ASGI) sometimes drops
        under concurrency ("Server disconnected", bentoml/BentoML#3669, #4238);
        inference is idempotent, so such a call is retried a few times.
        """
        from aiohttp import ClientConnectionError

        for attempt in range(1, _INFER_ATTEMPTS + 1):
            try:
                result: list[dict[str, Any]] = await self.to_async.infer_batch(batch)  # type: ignore[attr-defined]
                return result
            except BentoMLException as err:
                raise RequestError(str(err), err.error_code) from None
            except ClientConnectionError as err:
                if attempt == _INFER_ATTEMPTS:
                    logger.error("infer_batch failed %d times: %s", attempt, err)
                    raise RequestError(
                        "the model call failed repeatedly; try again",
                        HTTPStatus.SERVICE_UNAVAILABLE,
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _respond(
        self, request_id: str, batch: np.ndarray, raw: list[dict[str, Any]]
    ) -> list[Prediction]:
        """Build the response items, count them, and queue them for the prediction log."""
        from flywheel.features import summary_features
        from flywheel.prediction_log import PredictionRecord

        now = datetime.now(UTC)
        pixels = batch[:, 0]  # (N, S, S) in [0, 1]
        features = summary_features(pixels).to_dict(orient="records")
        images = np.rint(pixels * 255.0).astype(np.uint8)  # (N, S, S)
        out = []
        for i, item in enumerate(raw):
            classes = item["classes"]
            probs = np.asarray(item["probabilities"], dtype=np.float64)  # (K,)
            order = np.argsort(-probs, kind="stable")
            best = int(order[0])
            label, confidence = classes[best], float(probs[best])
            out.append(
                Prediction(
                    request_id=request_id,
                    index=i,
                    label=label,
                    confidence=confidence,
                    top_k=[
                        ClassProbability(label=classes[j], probability=float(probs[j]))
                        for j in order[: self.config.top_k]
                    ],
                    model_name=item["model_name"],
                    model_version=item["model_version"],
                )
            )
            self.predictions_total.labels(label).inc()
            self.confidence.observe(confidence)
            self.prediction_log.log(
                PredictionRecord(
                    request_id=request_id,
                    index=i,
                    time=now,
                    model_name=item["model_name"],
                    model_version=item["model_version"],
                    label=label,
                    confidence=confidence,
                    probabilities=dict(zip(classes, probs.tolist(), strict=True)),
                    features=features[i],
                    embedding=item["embedding"],
                    image=images[i],
                )
            )
        return out


# `@bentoml.service` returns a Service; its stubs type it as the decorated class.
FlywheelService.add_asgi_middleware(  # type: ignore[attr-defined]
    RequestGuard,
    max_bytes=_SERVE.max_request_bytes,
    media_types={"/predict_arrays": "application/json", "/predict_images": "multipart/form-data"},
    multipart_fields={"/predict_images": frozenset({"images"})},
)


__all__ = [
    "FlywheelService",
    "LoadedModel",
    "ModelHolder",
    "ModelLoadError",
    "Prediction",
    "RequestError",
    "RequestGuard",
    "arrays_to_unit",
    "decode_image",
    "load_registered_model",
    "read_service_params",
]
