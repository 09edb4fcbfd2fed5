"""The page service composed of two BentoML services: the recogniser as a dependent service.

A benchmark variant of `serving.pages.service` (issue 15: "use BentoML's own
composition of services where it helps ... and measure whether it does"), served by
`benchmarks/page_serving.py` beside the product's single service:

    bentoml serve benchmarks.variants.composed_pages:ComposedPageService --working-dir .

* `CropReader` (`flywheel-page-recognizer`): the recogniser stage as its own
  `@bentoml.service`, in its own worker process(es) (`$FLYWHEEL_RECOGNIZER_WORKERS`,
  default 1). Each worker is the product's recogniser stage unchanged
  (`serving.pages.stages.stage_watcher`: load the alias's version, poll it, swap
  without downtime, its own adaptive batcher, so crops of pages that arrive
  together share a pass). It is sent the decoded page (uint8) and the detector's
  boxes, cuts the crops with the padding of the version that reads them (as
  `PagePipeline.crops` does) and answers `serving.pages.reading.Readings` as a
  dict.
* `ComposedPageService` (`flywheel-pages`): `serving.pages.service.PageReader`
  (the request guard, decoding, the detector stage, the answer, the page log,
  metrics), whose recognition step calls `CropReader` through
  `bentoml.depends`: in `bentoml serve` a `RemoteProxy` that posts the arguments
  pickled (`application/vnd.bentoml+pickle`) over HTTP on a Unix socket to the
  dependent service's workers.

Same JSON answer as the single service (both stages run the same code); not a
serving mode: on the 2-core machine it measured slower (README, Performance),
so it stays here. Left out of the variant: `/admin/reload` reaches only the
detector (the recogniser polls its alias), and `/readyz` reports the recogniser
as the page service last saw it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import Any

import bentoml
import numpy as np
from PIL import Image
from starlette.responses import Response

from flywheel.page_api import PageReadiness
from flywheel.serving_api import Readiness
from flywheel.tasks.detection import FORMULA_SCORE
from flywheel.tasks.page_pipeline import PagePipeline
from serving.pages.reading import (
    Readings,
    answer_of,
    detection_of,
    log_record,
    read_crops,
)
from serving.pages.service import (
    INLINE_PIXELS,
    PageReader,
    _decode,
    build_service,
    stage_params,
)

logger = logging.getLogger("flywheel.serving")
RECOGNIZER_WORKERS_ENV = "FLYWHEEL_RECOGNIZER_WORKERS"
"""Worker processes of the dependent recogniser service (default 1)."""
READY_POLL_S = 0.5
CALL_RETRIES = 2
"""Tries again of a recogniser call whose connection closed under it (`_read_remote`)."""
RETRY_LOG = "recogniser call retried"


@bentoml.service(
    name="flywheel-page-recognizer",
    workers=int(os.environ.get(RECOGNIZER_WORKERS_ENV, "1")),
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},  # the page service's access log has the request
)
class CropReader:
    """The recogniser stage as a service of its own: crops cut and read, batched across pages."""

    def __init__(self) -> None:
        from flywheel.env import configure_process
        from flywheel.processes import die_with_parent

        configure_process()  # before torch loads OpenMP
        die_with_parent()
        from concurrent.futures import ThreadPoolExecutor

        import torch
        from prometheus_client import Histogram

        from serving.metrics import ServiceMetrics
        from serving.pages.stages import stage_watcher

        recognition = stage_params()[1]
        self.config = recognition.serve
        torch.set_num_threads(self.config.torch_threads)
        name = recognition.evaluate.registered_model
        metrics = ServiceMetrics.create(name, self.config.max_batch_size)
        crop_batches = Histogram(
            "flywheel_crop_batch_size",
            "Crops per recogniser pass (adaptive batching).",
            buckets=tuple(2.0**i for i in range(self.config.max_batch_size.bit_length() + 1)),
        )
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.recognizer = stage_watcher(
            name,
            "recognition",
            self.config,
            metrics=metrics,
            batch_size=crop_batches,
            executor=self._model_thread,
            reload_signal=None,
        )

    @bentoml.on_startup
    async def start_watching(self) -> None:
        self.recognizer.start()

    @bentoml.on_shutdown
    async def close(self) -> None:
        self.recognizer.stop()
        self._model_thread.shutdown(wait=False, cancel_futures=True)

    def __is_ready__(self) -> bool:
        return self.recognizer.holder.current is not None

    @bentoml.api
    async def readiness(self) -> dict[str, Any]:
        """This worker's stage state (`Readiness` as a dict)."""
        return self.recognizer.readiness().model_dump()

    @bentoml.api
    async def read(self, page: np.ndarray, boxes: np.ndarray) -> dict[str, Any]:
        """Cut each box `(N, 4)` out of `page` (uint8) and read it: `Readings` as a dict."""
        from flywheel.data.pages import crop_box

        started = time.perf_counter()
        with self.recognizer.holder.admit() as reader:
            padding = reader.model.task.crop_padding  # type: ignore[attr-defined]
            image = Image.fromarray(page)
            crops = []
            for box in boxes.tolist():
                rectangle = crop_box(tuple(box), padding, image.width, image.height)
                assert rectangle is not None  # a detected box has area on its page
                crops.append(image.crop(rectangle))
            readings = await read_crops(
                reader.model, reader.infer, crops, self.config.max_batch_size
            )
        reader_ms = (time.perf_counter() - started) * 1000
        return {**dataclasses.asdict(readings), "reader_ms": reader_ms}


class _DetectorHalf:
    """What `detection_of` asks of a `PagePipeline` (the detector's task, `page_boxes`):
    the page service holds no recogniser, whose crop padding the pipeline would need."""

    page_boxes = PagePipeline.page_boxes

    def __init__(self, task: Any) -> None:
        self.detection_task = task
        self.min_score = FORMULA_SCORE


class ComposedPageReader(PageReader):
    """`PageReader` whose recognition step is the dependent `CropReader` service."""

    reader = bentoml.depends(CropReader)

    def __init__(self) -> None:
        super().__init__()  # its in-process recogniser stage is never started
        self._reader_state = self.recognizer.readiness().model_copy(
            update={"reason": "the recogniser service has not answered yet"}
        )
        self._poller: asyncio.Task[None] | None = None

    @bentoml.on_startup
    async def start_watching(self) -> None:
        self.detector.start()
        self._poller = asyncio.get_running_loop().create_task(self._poll_reader())

    async def _poll_reader(self) -> None:
        while True:
            try:
                state = await self.reader.readiness()
                self._reader_state = Readiness.model_validate(state)
            except Exception as err:  # the dependency starting, or gone: not ready
                self._reader_state = self._reader_state.model_copy(
                    update={"ready": False, "reason": f"recogniser service: {err}"}
                )
            await asyncio.sleep(READY_POLL_S)

    @bentoml.on_shutdown
    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        self.detector.stop()
        await asyncio.to_thread(self.page_log.close)
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        self._decode_threads.shutdown(wait=False, cancel_futures=True)

    def __is_ready__(self) -> bool:
        return self.detector.holder.current is not None and self._reader_state.ready

    def readiness(self) -> PageReadiness:
        answer = super().readiness()
        update = {"ready": self.__is_ready__(), "recognizer": self._reader_state}
        return answer.model_copy(update=update)

    async def _read_remote(self, pixels: np.ndarray, boxes: np.ndarray) -> dict[str, Any]:
        """One call to the recogniser service, tried again when its connection closed under it.

        BentoML 1.4.39's client of a dependency (`_bentoml_impl.client.proxy2.SessionManager`)
        replaces its aiohttp session every 100 calls and closes the old one with calls still in
        flight on it: they fail with `ServerDisconnectedError` or "Cannot write to closing
        transport" (a 500 for the page; measured: 14 of ~200 pages at concurrency 8, 52 at 32;
        bentoml/BentoML#4971). Reading crops changes nothing, so it is sent again.
        """
        import aiohttp

        for attempt in range(CALL_RETRIES + 1):
            try:
                answer: dict[str, Any] = await self.reader.read(page=pixels, boxes=boxes)
                return answer
            except aiohttp.ClientConnectionError as err:
                if attempt == CALL_RETRIES:
                    raise
                logger.warning("%s (%s: %s)", RETRY_LOG, type(err).__name__, err)
        raise AssertionError("unreachable")

    async def _read(self, request_id: str, image: Image.Image) -> Response:
        """`PageReader._read` with the recognition step sent to the recogniser service."""
        from flywheel.page_api import (
            DETECTOR_MODEL_HEADER,
            DETECTOR_VERSION_HEADER,
            RECOGNIZER_MODEL_HEADER,
            RECOGNIZER_VERSION_HEADER,
        )
        from flywheel.serving_api import JSON_MEDIA_TYPE, REQUEST_ID_HEADER

        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = (now - clock) * 1000
            clock = now

        with self.detector.holder.admit() as detector:
            if image.size[0] * image.size[1] <= INLINE_PIXELS:
                page, batch = _decode(image, detector)
            else:
                page, batch = await asyncio.get_running_loop().run_in_executor(
                    self._decode_threads, _decode, image, detector
                )
            lap("decode")
            output = await self._infer(detector, batch)  # (1, O + F)
            # the detector's half of the pipeline: its boxes need no recogniser
            half = _DetectorHalf(detector.model.task)
            detection = detection_of(half, output[0], page.width, page.height)  # type: ignore[arg-type]
            lap("detect")
            pixels = np.asarray(page)
            boxes = np.array([box for box, _ in detection.boxes], np.int64).reshape(-1, 4)
            lap("crop")
            read = await self._read_remote(pixels, boxes)
            reader_ms = read.pop("reader_ms")
            readings = Readings(**read)
            lap("recognize")
            timings["reader"] = reader_ms  # of recognize: inside the recogniser's handler
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


def __getattr__(name: str) -> Any:
    """`ComposedPageService` on first access, as `serving.pages.service.PageService`."""
    if name != "ComposedPageService":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    service = globals()[name] = build_service(ComposedPageReader)
    return service
