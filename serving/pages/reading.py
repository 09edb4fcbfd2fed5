"""One page through the pair: detect, crop, recognise; the answer and its log record.

The steps are `PagePipeline`'s own (`flywheel.tasks.page_pipeline`): the
detector's cells become page boxes with `PagePipeline.page_boxes`, the crops
are cut with `PagePipeline.crops` (the recogniser's `crop_padding`), and each
crop is read with the recogniser's `decode`. Only the forward passes differ:
each goes through its stage's adaptive batcher (`serving.batching`), so
concurrent pages share detector passes and their crops share recogniser
passes. The pair evaluation therefore measures what the service answers.

`read_crops` runs the recogniser stage in this process; the page service
composed of two BentoML services (`benchmarks/variants/composed_pages.py`, a
benchmark variant: the recogniser a dependent service) reads the crops there
with the same function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from flywheel.monitoring.features import FEATURE_COLUMNS
from flywheel.page_api import PageAnswer, PageRegionAnswer, StageModel
from flywheel.tasks.page_pipeline import LoadedModel as PipelineModel
from flywheel.tasks.page_pipeline import PagePipeline, PixelBox
from serving.hot_swap import LoadedModel

if TYPE_CHECKING:
    from flywheel.monitoring.page_log import PageRecord

Infer = Callable[[np.ndarray], Awaitable[np.ndarray]]
"""A stage's batched forward pass with features: `(N, C, H, W)` → `(N, O + F)`."""


@dataclass(frozen=True)
class Detection:
    """What the detector stage found on one page.

    Attributes:
        boxes: the regions' boxes in page pixels with their scores, best first.
        confidence: the detector's certainty of its least certain cell (curation).
        embedding: the page's embedding `(D,)`.
        features: the summary features of the detector's input `(F,)`.
    """

    boxes: list[tuple[PixelBox, float]]
    confidence: float
    embedding: np.ndarray
    features: np.ndarray


@dataclass(frozen=True)
class Readings:
    """What the recogniser stage read, one row per box, and which version read it.

    Attributes:
        latex, confidence: per crop, its transcript and the probability of it.
        embedding: `(N, D)` the crops' embeddings.
        features: `(N, F)` the summary features of the recogniser's inputs.
        crops: `(N, H, W)` uint8, the recogniser's inputs as the log keeps them.
    """

    name: str
    version: str
    latex: list[str]
    confidence: list[float]
    embedding: np.ndarray
    features: np.ndarray
    crops: np.ndarray


def pipeline_of(detector: LoadedModel, recognizer: LoadedModel) -> PagePipeline:
    """The `PagePipeline` of two served versions (its defaults: padding, min score)."""
    return PagePipeline(
        PipelineModel(detector.module, detector.task, detector.uri),
        PipelineModel(recognizer.module, recognizer.task, recognizer.uri),
    )


def detector_input(detector: LoadedModel, page: Image.Image) -> np.ndarray:
    """The page as the detector's input `(1, 1, S, S)` float32 (its task's pre-processing)."""
    return detector.task.preprocess([page]).numpy()


def detection_of(pipeline: PagePipeline, output: np.ndarray, width: int, height: int) -> Detection:
    """The detector stage's row for one page `(O + F,)` → its boxes in page pixels and the rest."""
    task = pipeline.detection_task
    head, features = output[None, : -len(FEATURE_COLUMNS)], output[-len(FEATURE_COLUMNS) :]
    cells, embedding = task.split_output(head)  # (1, G*G, 5), (1, D)
    scores = cells[0, :, 0]
    return Detection(
        boxes=pipeline.page_boxes(cells[0], width, height),
        confidence=float(np.maximum(scores, 1.0 - scores).min()),
        embedding=embedding[0],
        features=features,
    )


async def read_crops(
    recognizer: LoadedModel, infer: Infer, crops: Sequence[Image.Image], max_batch_size: int
) -> Readings:
    """Read each crop of a page (`PagePipeline.crops`), batched with other pages' crops.

    A page with more crops than one pass takes goes through in several parts.
    """
    task = recognizer.task
    if not crops:
        empty = np.zeros((0, 0), np.float64)
        return Readings(
            recognizer.name, recognizer.version, [], [], empty, empty, np.zeros((0, 0, 0), np.uint8)
        )
    batch = task.preprocess(crops).numpy()  # (N, 1, H, W)
    parts = [batch[i : i + max_batch_size] for i in range(0, len(batch), max_batch_size)]
    outputs = await asyncio.gather(*(infer(part) for part in parts))
    output = np.concatenate(outputs)  # (N, O + F)
    decoded = task.decode(output[:, : -len(FEATURE_COLUMNS)])
    return Readings(
        name=recognizer.name,
        version=recognizer.version,
        latex=[str(text) for text in decoded.labels],
        confidence=[float(p) for p in decoded.confidence],
        embedding=decoded.embedding,
        features=output[:, -len(FEATURE_COLUMNS) :],
        crops=task.stored_images(batch),
    )


def answer_of(
    request_id: str,
    page: Image.Image,
    detector: LoadedModel,
    detection: Detection,
    readings: Readings,
) -> PageAnswer:
    """The JSON answer of one page."""
    return PageAnswer(
        request_id=request_id,
        width=page.width,
        height=page.height,
        regions=[
            PageRegionAnswer(
                index=i, box=list(box), score=score, latex=latex, confidence=confidence
            )
            for i, ((box, score), latex, confidence) in enumerate(
                zip(detection.boxes, readings.latex, readings.confidence, strict=True)
            )
        ],
        detector=StageModel(name=detector.name, version=detector.version),
        recognizer=StageModel(name=readings.name, version=readings.version),
    )


def log_record(
    answer: PageAnswer, page: Image.Image, detection: Detection, readings: Readings
) -> PageRecord:
    """The page's record for the page log (`flywheel.monitoring.page_log.PageRecord`)."""
    from flywheel.monitoring.page_log import PageRecord, RegionRecord

    return PageRecord(
        request_id=answer.request_id,
        time=datetime.now(UTC),
        detector_name=answer.detector.name,
        detector_version=answer.detector.version,
        recognizer_name=answer.recognizer.name,
        recognizer_version=answer.recognizer.version,
        width=answer.width,
        height=answer.height,
        detector_confidence=detection.confidence,
        page_features=dict(zip(FEATURE_COLUMNS, detection.features.tolist(), strict=True)),
        detector_embedding=detection.embedding.astype(float).tolist(),
        regions=[
            RegionRecord(
                index=region.index,
                box=(region.box[0], region.box[1], region.box[2], region.box[3]),
                score=region.score,
                latex=region.latex,
                confidence=region.confidence,
                crop_features=dict(
                    zip(FEATURE_COLUMNS, readings.features[i].tolist(), strict=True)
                ),
                embedding=readings.embedding[i].astype(float).tolist(),
                crop=readings.crops[i],
            )
            for i, region in enumerate(answer.regions)
        ],
        image=stored_page(page),
    )


def stored_page(page: Image.Image) -> np.ndarray:
    """The page as the log keeps it: grey or RGB uint8 (16-bit grey as it is)."""
    if page.mode in ("L", "RGB", "I;16"):
        return np.asarray(page)
    return np.asarray(page.convert("RGB" if "A" in page.mode or page.mode == "P" else "L"))


__all__ = [
    "Detection",
    "Infer",
    "Readings",
    "answer_of",
    "detection_of",
    "detector_input",
    "log_record",
    "pipeline_of",
    "read_crops",
    "stored_page",
]
