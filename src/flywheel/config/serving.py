"""The serving sections: the BentoML service and its prediction log."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from flywheel.config.base import FrozenConfig


class PredictionLogConfig(FrozenConfig):
    """The serving prediction log (`flywheel.monitoring.prediction_log`)."""

    dir: Path | None = None  # root of the log (None: <state URL>/predictions/model=<model>)
    sample_images: float = Field(1.0, ge=0, le=1)  # fraction of input images stored for curation
    flush_every: int = Field(100, ge=1)  # flush after this many records...
    flush_interval_s: float = Field(1.0, gt=0)  # ...or this many seconds
    queue_size: int = Field(10_000, ge=1)  # records waiting at most; beyond, records are dropped


class ServeConfig(FrozenConfig):
    """The BentoML service (`serving/service.py`, `flywheel serve`)."""

    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    alias: str = Field("production", min_length=1)  # the registry alias served
    max_batch_size: int = Field(64, ge=2)  # adaptive batching: images per model call at most
    max_latency_ms: int = Field(1000, ge=1)  # a request that waited this long for the model: 503
    max_images_per_request: int = Field(64, ge=1)  # more in one request is a 400
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # larger bodies are a 413
    # decoded pixels (width x height, read from the header before decoding): more is a 413
    max_image_pixels: int = Field(2048 * 2048, ge=1)  # of one image
    max_request_pixels: int = Field(4096 * 4096, ge=1)  # of all the images of one request
    # the server's edge (`serving.edge`): more header bytes or headers is a 431, headers
    # not complete this long after a connection or request starts is a 408
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    max_headers: int = Field(100, ge=8)
    header_timeout_s: float = Field(10.0, gt=0)
    # a request body not complete this long after its headers (a stream cut short while the
    # connection stays open) is a 408 (`serving.guard`), before BentoML's 60 s timeout (a 504)
    body_timeout_s: float = Field(30.0, gt=0)
    top_k: int = Field(3, ge=1)  # probabilities returned per image
    # an image whose p99 - p1 intensity (on [0, 1]) is below this has no content worth a
    # label (blank, or far too small: resizing spreads it into one grey level); it is
    # flagged `low_information` in the answer and the prediction log, and monitoring leaves
    # it out of the drift window (`flywheel.monitoring.features.low_information`; 0: never)
    min_dynamic_range: float = Field(0.02, ge=0, lt=1)
    # when the alias's version cannot be served (its model files are corrupt or missing, or
    # the alias is missing), at start-up or at a later check: `previous` serves the version
    # the `previous` alias names (or keeps the one already serving) and says so in /readyz,
    # the metric `flywheel_model_fallback` and the log; `not_ready` serves nothing (/readyz:
    # 503 with the reason) until the alias's version loads (`serving.watcher`)
    on_unloadable_production: Literal["previous", "not_ready"] = "previous"
    load_retry_s: float = Field(10.0, gt=0)  # retry loading this often while not ready
    poll_interval_s: float = Field(30.0, gt=0)  # check the alias for a new version this often
    workers: int = Field(1, ge=1)  # server processes, each with its own copy of the model
    torch_threads: int = Field(1, ge=1)  # intra-op threads of each worker's forward passes
    # threads of each worker that decode and pre-process request images: each holds one
    # request's decoded images, so this bounds memory under concurrent large requests
    # whatever the node's core count (asyncio's default pool is sized from it)
    decode_threads: int = Field(4, ge=1)
    log: PredictionLogConfig = PredictionLogConfig()

    @model_validator(mode="after")
    def _request_fits_a_batch(self) -> ServeConfig:
        if self.max_images_per_request > self.max_batch_size:
            raise ValueError(
                f"max_images_per_request ({self.max_images_per_request}) must not exceed "
                f"max_batch_size ({self.max_batch_size}): a request is batched whole"
            )
        return self
