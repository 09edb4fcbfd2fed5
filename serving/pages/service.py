"""The page service: a photo of a page in, each formula's box and LaTeX out (BentoML).

Run it with `flywheel serve --params plans/pages.yaml` (a plan with a
`detection` and a `recognition` task is a two-stage service), or
`bentoml serve serving.pages.service:PageService` with `FLYWHEEL_PARAMS` set.
The registered models are the plan's: `evaluate.registered_model` under
`train.task=detection` and under `train.task=recognition` (`flywheel.config`'s
task sections), each served at `serve.alias`.

A page goes detector → crops → recogniser (`serving.pages.reading`, the steps
of `PagePipeline`, so the pair evaluation measures what this answers). Each
stage is the digits service's machinery for one model
(`serving.pages.stages`): its own watcher polls its alias and swaps a new
version in without downtime while the other stage keeps serving; each has its
own adaptive batcher, so concurrent pages share detector passes and their
crops share recogniser passes (`serve.max_batch_size` images per pass; a
request is admitted to both stages' current versions when it arrives and
answered by them). `GET /readyz` answers a `flywheel.page_api.PageReadiness`:
both stages' versions and states.

APIs (`flywheel.page_api`): `POST /read_page` (the page as the body, PNG or
JPEG), `POST /read_page_upload` (multipart, one file in the field `page`),
`POST /admin/reload` (both stages check their alias now; the admin token as
in the digits service). Bad input is refused exactly as the digits service
refuses it, by the same code (`serving.guard` before BentoML parses a body,
`serving.decoding` for the image: size limits, media types, truncated or
corrupt images, empty bodies, unknown fields): a 4xx with `{"error": ...}`.
A page where nothing is detected answers `regions: []`.

Every answer carries `X-Request-ID`, both models' names and versions
(`X-Detector-Model`, `X-Detector-Version`, `X-Recognizer-Model`,
`X-Recognizer-Version`) and a `Server-Timing` header: where the request's time
went (`decode`, `detect` and `recognize` including their batchers' queues,
`crop`, `log`). Every page goes to the page log
(`flywheel.monitoring.page_log`) from a background thread.

`FLYWHEEL_PAGE_BATCHING=off` (a benchmark's baseline) runs each request's
passes on their own, unbatched.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from PIL import Image
from starlette.responses import JSONResponse, Response

from flywheel.page_api import (
    DETECTOR_MODEL_HEADER,
    DETECTOR_VERSION_HEADER,
    PAGE_FIELD,
    READ_PAGE_PATH,
    READ_PAGE_UPLOAD_PATH,
    RECOGNIZER_MODEL_HEADER,
    RECOGNIZER_VERSION_HEADER,
    PageAnswer,
    PageReadiness,
)
from flywheel.serving_api import (
    ADMIN_RELOAD_PATH,
    ADMIN_TOKEN_ENV,
    AUTHORIZATION_HEADER,
    IMAGE_MEDIA_TYPES,
    JSON_MEDIA_TYPE,
    MULTIPART_MEDIA_TYPE,
    READY_PATH,
    REQUEST_ID_HEADER,
    RETRY_AFTER_HEADER,
    SET_ENV,
)
from serving.batching import OverloadedError
from serving.decoding import load_image, open_image, request_id_from
from serving.edge import install as install_edge
from serving.errors import RequestError
from serving.guard import RequestGuard
from serving.hot_swap import NoModelError, ServedModel
from serving.offline_docs import OfflineDocs
from serving.pages.reading import (
    answer_of,
    detection_of,
    detector_input,
    log_record,
    pipeline_of,
    read_crops,
)
from serving.pages.routes import PAGE_ROUTES
from serving.pages.stages import forward_with_features, stage_watcher
from serving.raw_route import RoutesAhead
from serving.reload import authorize_admin, open_reload_channel, worker_reload_signal
from serving.settings import params_base, read_service_params

logger = logging.getLogger("flywheel.serving")

BATCHING_ENV = "FLYWHEEL_PAGE_BATCHING"
"""`off`: every request's forward passes run on their own (the unbatched baseline)."""
RETRY_AFTER_S = 1
INLINE_PIXELS = 128 * 128
"""Pages with fewer pixels than this are decoded on the event loop, larger ones in a thread."""
BODY_MEDIA_TYPES = {
    READ_PAGE_PATH: IMAGE_MEDIA_TYPES,
    READ_PAGE_UPLOAD_PATH: (MULTIPART_MEDIA_TYPE,),
}


@functools.cache
def stage_params() -> tuple[Any, Any]:
    """The page plan read twice, once per task: `(detection params, recognition params)`.

    `$FLYWHEEL_PARAMS` and `$FLYWHEEL_SET` as for the digits service, with the
    task picked on top (`serving.settings.read_service_params`).
    """
    chosen = []
    for task in ("detection", "recognition"):
        pairs = os.environ.get(SET_ENV, "")
        chosen.append(
            read_service_params({**os.environ, SET_ENV: f"{pairs}\ntrain.task={task}".strip()})
        )
    return chosen[0], chosen[1]


class PageReader:
    """Serves the plan's detector and recogniser as one page service (module doc)."""

    def __init__(self) -> None:
        from flywheel.env import configure_process
        from flywheel.processes import die_with_parent

        configure_process()  # before torch loads OpenMP
        die_with_parent()

        import torch

        from flywheel.monitoring.page_log import PageLogger, page_predictions_dir
        from serving.metrics import ServiceMetrics

        detection, recognition = stage_params()
        self.config = detection.serve
        torch.set_num_threads(self.config.torch_threads)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        self.admin_token = os.environ.get(ADMIN_TOKEN_ENV) or None
        self.batching = os.environ.get(BATCHING_ENV, "on") != "off"
        names = detection.evaluate.registered_model, recognition.evaluate.registered_model
        self.metrics = ServiceMetrics.create(names[0], self.config.max_batch_size)
        from prometheus_client import Histogram

        crop_batches = Histogram(
            "flywheel_crop_batch_size",
            "Crops per recogniser pass (adaptive batching).",
            buckets=tuple(2.0**i for i in range(self.config.max_batch_size.bit_length() + 1)),
        )
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._decode_threads = ThreadPoolExecutor(
            max_workers=self.config.decode_threads, thread_name_prefix="decode"
        )
        self.detector, self.recognizer = (
            stage_watcher(
                name,
                task,
                self.config,
                metrics=self.metrics,
                batch_size=histogram,
                executor=self._model_thread,
                reload_signal=worker_reload_signal(),
            )
            for name, task, histogram in (
                (names[0], "detection", self.metrics.batch_size),
                (names[1], "recognition", crop_batches),
            )
        )
        log = self.config.log
        self.page_log = PageLogger(
            page_predictions_dir(detection, *names, params_base()),
            sample_images=log.sample_images,
            flush_every=log.flush_every,
            flush_interval_s=log.flush_interval_s,
            queue_size=log.queue_size,
        )
        self.page_log.start()

    @bentoml.on_deployment
    @staticmethod
    def open_reload_channel() -> None:
        """The folder this server's workers share for reload requests (`serving.reload`)."""
        open_reload_channel()

    @bentoml.on_startup
    async def start_watching(self) -> None:
        """Start both stages' watchers: each loads its version, then polls its alias."""
        self.detector.start()
        self.recognizer.start()

    def __is_ready__(self) -> bool:
        return self.detector.holder.current is not None and (
            self.recognizer.holder.current is not None
        )

    def readiness(self) -> PageReadiness:
        """Both stages' state (`GET /readyz`)."""
        return PageReadiness(
            ready=self.__is_ready__(),
            detector=self.detector.readiness(),
            recognizer=self.recognizer.readiness(),
        )

    @bentoml.on_shutdown
    async def close(self) -> None:
        """Stop polling, flush the page log, release the threads."""
        self.detector.stop()
        self.recognizer.stop()
        await asyncio.to_thread(self.page_log.close)
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        self._decode_threads.shutdown(wait=False, cancel_futures=True)

    # --------------------------------------------------------------- APIs

    @bentoml.api(route=READ_PAGE_UPLOAD_PATH)
    async def read_page_upload(self, page: Path, ctx: bentoml.Context) -> PageAnswer:
        """Read one uploaded page (multipart field `page`, a PNG or JPEG file)."""
        response = await self.read(ctx.request.headers, Path(page))
        ctx.response.status_code = response.status_code
        answer: Any = response  # BentoML sends a returned response as it is
        return answer

    @bentoml.api(route=ADMIN_RELOAD_PATH)
    async def reload_models(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Both stages check their alias now (admin token); 502 when a load failed."""
        try:
            authorize_admin(self.admin_token, ctx.request.headers.get(AUTHORIZATION_HEADER))
        except RequestError as err:
            response = _refusal(err)
            ctx.response.status_code = response.status_code
            return response  # type: ignore[return-value]
        signalled = self.detector.signal_other_workers()
        outcomes = await asyncio.gather(
            self.detector.refresh("admin"), self.recognizer.refresh("admin")
        )
        body: dict[str, Any] = {"other_workers_signalled": signalled}
        for stage, watcher, outcome in zip(
            ("detector", "recognizer"), (self.detector, self.recognizer), outcomes, strict=True
        ):
            body[stage] = {
                "model_name": watcher.model_name,
                "previous_version": outcome.previous_version,
                "model_version": outcome.model_version,
                "changed": outcome.changed,
                "error": outcome.error,
            }
        failed = any(outcome.error is not None for outcome in outcomes)
        status = HTTPStatus.BAD_GATEWAY if failed else HTTPStatus.OK
        ctx.response.status_code = int(status)
        return JSONResponse(body, status_code=int(status))  # type: ignore[return-value]

    # ------------------------------------------------------------ reading

    async def read(self, headers: Mapping[str, str], source: Path | bytes) -> Response:
        """Read one page: check it, detect, crop, recognise, answer and log (module doc)."""
        request_id = request_id_from(headers)
        try:
            if source == b"":
                raise RequestError("no image: the request body is empty")
            image = open_image(source, self.config.max_image_pixels)
        except RequestError as err:
            return _refusal(err, request_id)
        try:
            response = await self._read(request_id, image)
        except (NoModelError, OverloadedError) as err:
            response = _refusal(RequestError(str(err), HTTPStatus.SERVICE_UNAVAILABLE), request_id)
            response.headers[RETRY_AFTER_HEADER] = str(RETRY_AFTER_S)
        except RequestError as err:
            response = _refusal(err, request_id)
        finally:
            image.close()
        if response.status_code >= 400:
            self.metrics.count_refusal(response.status_code)
        return response

    async def _read(self, request_id: str, image: Image.Image) -> Response:
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = (now - clock) * 1000
            clock = now

        with self.detector.holder.admit() as detector, self.recognizer.holder.admit() as reader:
            pipeline = pipeline_of(detector.model, reader.model)
            if image.size[0] * image.size[1] <= INLINE_PIXELS:
                page, batch = _decode(image, detector)
            else:
                page, batch = await asyncio.get_running_loop().run_in_executor(
                    self._decode_threads, _decode, image, detector
                )
            lap("decode")
            output = await self._infer(detector, batch)  # (1, O + F)
            detection = detection_of(pipeline, output[0], page.width, page.height)
            lap("detect")
            crops = pipeline.crops(page, detection.boxes)
            lap("crop")
            readings = await read_crops(
                reader.model,
                functools.partial(self._infer, reader),
                crops,
                self.config.max_batch_size,
            )
            lap("recognize")
            answer = answer_of(request_id, page, detector.model, detection, readings)
            self.metrics.count_predictions(("page",), (detection.confidence,))
            for region in answer.regions:
                self.metrics.confidence.observe(region.confidence)
            self.page_log.log(log_record(answer, page, detection, readings))
            lap("log")
        response = Response(answer.model_dump_json(), media_type=JSON_MEDIA_TYPE)
        response.headers.update(
            {
                REQUEST_ID_HEADER: request_id,
                DETECTOR_MODEL_HEADER: answer.detector.name,
                DETECTOR_VERSION_HEADER: answer.detector.version,
                RECOGNIZER_MODEL_HEADER: answer.recognizer.name,
                RECOGNIZER_VERSION_HEADER: answer.recognizer.version,
                "Server-Timing": ", ".join(f"{k};dur={v:.2f}" for k, v in timings.items()),
            }
        )
        return response

    async def _infer(self, served: ServedModel, batch: np.ndarray) -> np.ndarray:
        """One stage's pass over `batch`: through its batcher, or alone (`BATCHING_ENV=off`)."""
        if self.batching:
            return await served.infer(batch)
        return await asyncio.get_running_loop().run_in_executor(
            self._model_thread, forward_with_features, served.model, batch
        )


def _decode(image: Image.Image, detector: ServedModel) -> tuple[Image.Image, np.ndarray]:
    """The page decoded (400 when it cannot be) and as the detector's input."""
    page = load_image(image, "the page")
    try:
        return page, detector_input(detector.model, page)
    except (ValueError, OSError) as err:
        raise RequestError(f"the page: cannot read its pixels ({err})") from None


def _refusal(err: RequestError, request_id: str | None = None) -> Response:
    body = (
        {"error": str(err)} if request_id is None else {"error": str(err), "request_id": request_id}
    )
    response = JSONResponse(body, status_code=int(err.status))
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


PageService: bentoml.Service[PageReader]
"""The BentoML service (`build_service`); built on first access (module `__getattr__`)."""


@functools.cache
def build_service(reader: type[PageReader] = PageReader) -> Any:
    """The BentoML service of `reader`, built once per process from the page plan.

    Args:
        reader: `PageReader`, or a variant of it (`benchmarks/variants/composed_pages.py`:
            the recogniser as a dependent service).

    Raises:
        ConfigError: the params file is missing or invalid.
    """
    config = stage_params()[0].serve
    install_edge(config.max_header_bytes, config.max_headers, config.header_timeout_s)
    service = bentoml.service(
        name="flywheel-pages", workers=config.workers, traffic={"timeout": 60}
    )(bentoml.asgi_app(PAGE_ROUTES, path="/")(reader))
    service.add_asgi_middleware(
        RequestGuard,
        max_bytes=config.max_request_bytes,
        media_types=BODY_MEDIA_TYPES,
        multipart_fields={READ_PAGE_UPLOAD_PATH: frozenset({PAGE_FIELD})},
        max_parts=1,
        body_timeout_s=config.body_timeout_s,
    )
    service.add_asgi_middleware(RoutesAhead, routes=PAGE_ROUTES, paths=frozenset({READY_PATH}))
    service.add_asgi_middleware(OfflineDocs)
    return service


def __getattr__(name: str) -> Any:
    """`PageService` on first access (PEP 562), where `bentoml serve` looks for it."""
    if name != "PageService":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    service = globals()[name] = build_service()
    return service


__all__ = ["BATCHING_ENV", "PageReader", "PageService", "build_service", "stage_params"]
