"""The BentoML service: the registry's `production` model behind strict, batched HTTP APIs.

Run it with `flywheel serve` (or `bentoml serve serving.service:FlywheelService`).
Each worker resolves `models:/<evaluate.registered_model>@<serve.alias>` to a
concrete version and loads that version's exported pt2 model from MLflow
(tracking URI from `MLFLOW_TRACKING_URI`); the task's pre- and post-processing
is rebuilt from the model's metadata. No training code is imported. While no
model is served `/readyz` answers 503 and the prediction APIs answer 503 with
the reason (`serving.watcher`: loading, polling, swapping without downtime).
When the alias's version cannot be loaded (corrupt or missing model files, a
missing alias), `serve.on_unloadable_production` decides: serve the `previous`
version (the default) or nothing. `GET /readyz` answers a
`flywheel.serving_api.Readiness` either way: the state (`serving`,
`fallback`, `not_ready`), the version served, the alias's version and the
reason (`serving.raw_route`).

APIs (POST, JSON responses, one item per image, in input order):

* `/predict_image` — one PNG or JPEG file as the request body
  (`Content-Type: image/png` or `image/jpeg`): the fastest way to send one
  image (no multipart parsing, no temporary file). Answered, like
  `/predict_arrays`, ahead of BentoML's router inside its middlewares
  (`serving.raw_route`); a FastAPI route mounted into the BentoML app
  (`bentoml.asgi_app`) gives it its place in the OpenAPI spec (`/docs.json`).
* `/predict_images` — multipart upload, field `images`, one or more PNG or
  JPEG files (any size, colour and bit depth; brought to the model's input by
  the pre-processing stored in its metadata, `flywheel.data.preprocessing`:
  the channels, resize filter and white level training saw, as for
  `/predict_image`).
* `/predict_arrays` — JSON `{"images": [...], "scale": "auto"}`: shape
  `(N, H, W)` or `(N, 1, H, W)` for a grey model, `(N, 3, H, W)` or
  `(N, H, W, 3)` for an RGB one, with `H = W =` the model's image size; `scale`
  says what the values mean: `byte` = 0–255 (0 to the model's `white_level`
  when it has one, e.g. 0–16), `unit` = 0–1, `auto` (default) =
  `byte` when any value exceeds 1, else `unit`.
* `/admin/reload` — check the alias now and swap in a new version, in every
  worker of the server (`serving.reload`: the token, the other workers).

Each item: `request_id` (the `X-Request-ID` header when it is a safe token,
else a fresh one; echoed as a response header), `index`, `label`,
`confidence`, `top_k` (the `serve.top_k` most probable classes), `model_name`,
`model_version` (also the `X-Model-Version` response header), `low_information`
(true for an image with no content worth a label: blank, or so small that
resizing made it one grey level; its dynamic range is below
`serve.min_dynamic_range`; the log carries the flag too and monitoring leaves
such predictions out of its drift window). Bad input is a
4xx with `{"error": ...}` saying what was wrong: 400 (not an image,
truncated, wrong shape/dtype/range, empty, too many images, unknown upload
fields, text values or odd file names in an upload, a multipart body cut
short), 408 (a body not complete `serve.body_timeout_s` after its headers),
411 (a chunked body: no Content-Length), 413 (body or image too large), 415 (a body of the wrong
media type, or an upload that is neither PNG nor JPEG). The checks:
`serving.guard` (before BentoML parses a body), `serving.decoding` (images,
arrays, request ids).

Adaptive batching: the APIs validate and pre-process, then hand the images to
the current model's batcher (`serving.batching`): a forward pass starts as soon
as the model thread is free, with every request queued by then, up to
`serve.max_batch_size` images; a request that waited `serve.max_latency_ms` for
the model is shed with a 503 (Retry-After). It runs in-process rather than as a
BentoML `batchable=True` API: the module doc of `serving.batching` says why.

Serving on the event loop: small requests are pre-processed inline (a thread
hop costs more than decoding a 32 × 32 PNG), larger ones in a thread; forward
passes run on one model thread with `serve.torch_threads` intra-op threads;
responses are serialised by the service (`serving.predictions`), not by
BentoML, which rebuilds a JSON schema for every list-typed answer. Every
prediction is counted (`serving.metrics`, on `/metrics`) and logged
(`flywheel.monitoring.prediction_log`) from a background thread.

Configuration: BentoML reads the worker count from the service decorator in
every process that loads the service, so `FlywheelService` is built on first
access (`build_service`, from `serving.settings.service_params`): importing
this module reads nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from flywheel.serving_api import (
    ADMIN_RELOAD_PATH,
    ADMIN_SCHEME,
    ADMIN_TOKEN_ENV,
    AUTHORIZATION_HEADER,
    BODY_MEDIA_TYPES,
    IMAGES_FIELD,
    MODEL_VERSION_HEADER,
    PREDICT_ARRAYS_PATH,
    PREDICT_IMAGES_PATH,
    READY_PATH,
    REQUEST_ID_HEADER,
    RETRY_AFTER_HEADER,
    WWW_AUTHENTICATE_HEADER,
    Prediction,
    Readiness,
    ReloadResult,
    Scale,
)
from serving.access_log import LineWriter
from serving.access_log import offload as offload_access_log
from serving.batching import OverloadedError
from serving.decoding import (
    PixelLimits,
    arrays_to_unit,
    decode_each,
    open_images,
    pixel_count,
    request_id_from,
)
from serving.edge import install as install_edge
from serving.errors import RequestError
from serving.guard import RequestGuard
from serving.hot_swap import LoadedModel, NoModelError
from serving.metrics import ServiceMetrics
from serving.offline_docs import OfflineDocs
from serving.predictions import forward_with_features, respond
from serving.raw_route import FAST_POSTS, RAW_ROUTES, RoutesAhead
from serving.reload import (
    RELOAD_DIR_ENV,
    authorize_admin,
    open_reload_channel,
    worker_reload_signal,
)
from serving.settings import params_base, service_params
from serving.watcher import RegistryWatcher

logger = logging.getLogger("flywheel.serving")

RETRY_AFTER_S = 1
"""Sent with a 503: when a shed or not-yet-ready request is worth retrying."""
INLINE_BYTES = 256 * 1024
"""JSON arrays smaller than this are checked on the event loop: on a loaded CPU, handing
work to a thread (and the GIL back) costs more than checking small arrays."""
INLINE_PIXELS = 128 * 128
"""Images of a request with fewer decoded pixels than this in all (from their headers) are
decoded on the event loop; more are decoded in a thread, so a small file that decodes to
many pixels never stalls the loop."""


class Flywheel:
    """Serves the registry's `serve.alias` version of `evaluate.registered_model`.

    The service class, one instance per worker; `FlywheelService` is the
    BentoML service made of it (`build_service`).
    """

    def __init__(self) -> None:
        from flywheel.env import configure_process
        from flywheel.processes import die_with_parent

        configure_process()  # before torch loads OpenMP
        die_with_parent()  # `kill -9` of the server ends this worker too: the port is freed

        import torch

        from flywheel.monitoring.prediction_log import PredictionLogger, predictions_dir

        self.params = service_params()
        self.config = self.params.serve
        torch.set_num_threads(self.config.torch_threads)  # the process's intra-op pool
        if logger.level == logging.NOTSET:  # BentoML's root logger shows WARNING+ only
            logger.setLevel(logging.INFO)
        self.model_name = self.params.evaluate.registered_model
        self.admin_token = os.environ.get(ADMIN_TOKEN_ENV) or None
        reload_signal = worker_reload_signal()
        if reload_signal is None and self.config.workers > 1:
            logger.warning(
                "%s is not set (the server process sets it when BentoML runs the service's "
                "deployment hook): /admin/reload reaches only the worker that receives it",
                RELOAD_DIR_ENV,
            )
        self.metrics = ServiceMetrics.create(self.model_name, self.config.max_batch_size)
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        # Decoding gets its own bounded pool: asyncio's default one is sized from the
        # node's cores (not the pod's CPU limit), and each decode holds a request's pixels.
        self._decode_threads = ThreadPoolExecutor(
            max_workers=self.config.decode_threads, thread_name_prefix="decode"
        )
        self.watcher = RegistryWatcher(
            self.model_name,
            self.config,
            metrics=self.metrics,
            executor=self._model_thread,
            compute=forward_with_features,
            reload_signal=reload_signal,
        )
        self.holder = self.watcher.holder
        log = self.config.log
        self.prediction_log: PredictionLogger = PredictionLogger(
            predictions_dir(self.params, params_base()),
            sample_images=log.sample_images,
            flush_every=log.flush_every,
            flush_interval_s=log.flush_interval_s,
            queue_size=log.queue_size,
        )
        self.prediction_log.start()
        self._access_log: LineWriter | None = None

    # ---------------------------------------------------------- lifecycle

    @bentoml.on_deployment
    @staticmethod
    def open_reload_channel() -> None:
        """Make the folder this server's workers share for reload requests.

        BentoML runs deployment hooks once per `bentoml serve`, in the server
        process, before it starts the workers (`serving.reload.open_reload_channel`).
        """
        open_reload_channel()

    @bentoml.on_startup
    async def start_watching(self) -> None:
        """Start the task that loads the model and then polls the alias for new versions.

        BentoML's access log moves to a writer thread here, once BentoML has
        configured the worker's logging (`serving.access_log`).
        """
        self._access_log = offload_access_log()
        self.watcher.start()

    def __is_ready__(self) -> bool:
        """Ready while a model is served (BentoML's probe: `HEAD /readyz`)."""
        return self.holder.current is not None

    def readiness(self) -> Readiness:
        """What this worker serves and why (`GET /readyz`, `serving.raw_route.readyz`)."""
        return self.watcher.readiness()

    @bentoml.on_shutdown
    async def close(self) -> None:
        """Stop polling, flush the prediction log, release the model and decode threads."""
        self.watcher.stop()
        await asyncio.to_thread(self.prediction_log.close)
        if self._access_log is not None:
            self._access_log.stop()  # writes what is queued
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        self._decode_threads.shutdown(wait=False, cancel_futures=True)

    # --------------------------------------------------------------- APIs

    async def predict_image(self, request: Request) -> Response:
        """Classify one PNG or JPEG file sent as the request body (`/predict_image`)."""
        return await self._serve_images(request.headers, [await request.body()])

    @bentoml.api(route=PREDICT_IMAGES_PATH)
    async def predict_images(self, images: list[Path], ctx: bentoml.Context) -> list[Prediction]:
        """Classify uploaded PNG/JPEG files (multipart field `images`, one or more)."""
        answer = await self._serve_images(ctx.request.headers, [Path(p) for p in images])
        return _answer(ctx, answer)

    @bentoml.api(route=PREDICT_ARRAYS_PATH)
    async def predict_arrays(
        self, images: np.ndarray, ctx: bentoml.Context, scale: Scale = "auto"
    ) -> list[Prediction]:
        """Classify images sent as a JSON array `(N, H, W)` or `(N, 1, H, W)` (module doc).

        The server answers this route ahead of BentoML's router, with this API's
        own input model (`serving.raw_route.predict_arrays`); BentoML's endpoint
        stays for its schema in `/docs.json`, and answers the same.
        """
        answer = await self.serve_arrays(ctx.request.headers, images, scale)
        return _answer(ctx, answer)

    async def serve_arrays(
        self, headers: Mapping[str, str], images: np.ndarray, scale: Scale
    ) -> Response:
        """Classify the images of a `/predict_arrays` body, parsed (`images`, `scale`)."""

        def prepare(model: LoadedModel) -> np.ndarray:
            task = model.task
            white = task.preprocessing.white_level or 255  # `byte`: the levels of its files
            batch = arrays_to_unit(
                images, task.image_size, scale, task.channels, white
            )  # (N, C, S, S)
            self._check_count(len(batch))
            return batch

        inline = images.nbytes < INLINE_BYTES
        return await self._serve(headers, prepare, inline=inline)

    @bentoml.api(route=ADMIN_RELOAD_PATH)
    async def reload_model(self, ctx: bentoml.Context) -> ReloadResult:
        """Check the alias now and swap in a new version (`Authorization: Bearer <token>`).

        The server's other workers are asked to check too (`ReloadSignal`) before
        this one checks, so they load in parallel with it.

        200 with what this worker changed; 502 when the new version cannot be
        loaded (the old one keeps serving); 401/403 without the right token; 403
        when the server has no `FLYWHEEL_ADMIN_TOKEN`.
        """
        try:
            authorize_admin(self.admin_token, ctx.request.headers.get(AUTHORIZATION_HEADER))
        except RequestError as err:
            refusal = self._refuse(err)
            if err.status == HTTPStatus.UNAUTHORIZED:
                refusal.headers[WWW_AUTHENTICATE_HEADER] = f'{ADMIN_SCHEME} realm="flywheel-admin"'
            return _answer(ctx, refusal)
        signalled = self.watcher.signal_other_workers()
        outcome = await self.watcher.refresh("admin")
        result = ReloadResult(
            model_name=self.model_name,
            previous_version=outcome.previous_version,
            model_version=outcome.model_version,
            changed=outcome.changed,
            other_workers_signalled=signalled,
        )
        if outcome.error is not None:
            failed = {"error": outcome.error, **result.model_dump()}
            return _answer(ctx, JSONResponse(failed, status_code=int(HTTPStatus.BAD_GATEWAY)))
        return result

    # ------------------------------------------------------------ helpers

    async def _serve_images(
        self, headers: Mapping[str, str], sources: list[Path] | list[bytes]
    ) -> Response:
        """Check the images' declared sizes, then decode and pre-process each in turn.

        The headers are read on the event loop (no pixel is decoded) and checked
        against `serve.max_image_pixels` and `serve.max_request_pixels` (413);
        the pixels are decoded off the event loop unless there are few of them,
        each image brought to the model's input before the next is decoded.
        """
        limits = PixelLimits(self.config.max_image_pixels, self.config.max_request_pixels)
        try:
            if sources == [b""]:
                raise RequestError("no image: the request body is empty")
            self._check_count(len(sources))
            opened = open_images(sources, limits)
        except RequestError as err:
            request_id = request_id_from(headers)
            response = self._refuse(err, request_id)
            response.headers[REQUEST_ID_HEADER] = request_id
            return response

        def prepare(model: LoadedModel) -> np.ndarray:
            return decode_each(opened, lambda image: model.task.preprocess([image]).numpy()[0])

        try:
            return await self._serve(headers, prepare, inline=pixel_count(opened) <= INLINE_PIXELS)
        finally:
            for image in opened:  # when the request was refused before decoding
                image.close()

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
            prepare: the request's images → `(N, C, S, S)` float32; raises `RequestError`.
            inline: pre-process on the event loop (small inputs) rather than in a thread.

        Returns:
            The predictions or the refusal, with `X-Request-ID` (and `X-Model-Version`
            or `Retry-After`) set.
        """
        request_id = request_id_from(headers)
        try:
            with self.holder.admit() as served:
                model = served.model
                batch = (
                    prepare(model)
                    if inline
                    else await asyncio.get_running_loop().run_in_executor(
                        self._decode_threads, prepare, model
                    )
                )
                output = await served.infer(batch)  # (N, K + D + F)
                response = respond(
                    request_id,
                    model,
                    batch,
                    output,
                    top_k=self.config.top_k,
                    min_dynamic_range=self.config.min_dynamic_range,
                    metrics=self.metrics,
                    prediction_log=self.prediction_log,
                )
                response.headers[MODEL_VERSION_HEADER] = model.version
        except (NoModelError, OverloadedError) as err:
            response = self._refuse(
                RequestError(str(err), HTTPStatus.SERVICE_UNAVAILABLE), request_id
            )
            response.headers[RETRY_AFTER_HEADER] = str(RETRY_AFTER_S)
        except RequestError as err:
            response = self._refuse(err, request_id)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    def _refuse(self, err: RequestError, request_id: str | None = None) -> Response:
        """The error response `{"error": ...}`, counted by status."""
        self.metrics.count_refusal(int(err.status))
        body = (
            {"error": str(err)}
            if request_id is None
            else {"error": str(err), "request_id": request_id}
        )
        return JSONResponse(body, status_code=int(err.status))


def _answer(ctx: bentoml.Context, response: Response) -> Any:
    """`response` as a BentoML API's answer: BentoML gives a returned response `ctx`'s status."""
    ctx.response.status_code = response.status_code
    return response


FlywheelService: bentoml.Service[Flywheel]
"""The BentoML service (`build_service`); built on first access (module `__getattr__`)."""


@functools.cache
def build_service() -> Any:
    """The BentoML service of `Flywheel`, built once per process from `service_params()`.

    Its decorator carries the worker count, which BentoML reads in every process
    that loads the service; the request guard takes the body size limit; the
    header limits go to uvicorn's HTTP protocol (`serving.edge`), before any
    worker starts its server.

    Raises:
        ConfigError: the params file is missing or invalid.
    """
    config = service_params().serve
    install_edge(config.max_header_bytes, config.max_headers, config.header_timeout_s)
    service = bentoml.service(name="flywheel", workers=config.workers, traffic={"timeout": 60})(
        bentoml.asgi_app(RAW_ROUTES, path="/")(Flywheel)
    )
    service.add_asgi_middleware(
        RequestGuard,
        max_bytes=config.max_request_bytes,
        media_types=BODY_MEDIA_TYPES,
        multipart_fields={PREDICT_IMAGES_PATH: frozenset({IMAGES_FIELD})},
        max_parts=config.max_images_per_request,
        body_timeout_s=config.body_timeout_s,
    )
    # `GET /readyz` answers the service's `Readiness`, not BentoML's bare probe; the
    # prediction routes are answered without BentoML's router (`serving.raw_route`)
    service.add_asgi_middleware(
        RoutesAhead, routes=RAW_ROUTES, paths=frozenset({READY_PATH}), posts=FAST_POSTS
    )
    service.add_asgi_middleware(OfflineDocs)  # Swagger without analytics or web badges
    return service


def __getattr__(name: str) -> Any:
    """`FlywheelService` on first access (PEP 562): `bentoml serve serving.service:FlywheelService`.

    Kept as a module global once built, where BentoML looks for the service
    (its import string) after loading it.
    """
    if name != "FlywheelService":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    service = globals()[name] = build_service()
    return service


__all__ = ["RAW_ROUTES", "Flywheel", "FlywheelService", "build_service"]
