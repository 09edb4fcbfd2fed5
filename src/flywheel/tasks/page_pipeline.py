"""The formula-page pair at inference: pages in, each expression's box and LaTeX out.

The page service runs two exported models in a row: the detector
(`DetectionTask`) finds the expressions of a page, each box is cut out of the
page the way the recognition dataset's crops were cut (`flywheel.data.pages.crop_box`,
the box grown by the dataset's `crop_padding`), and the recogniser
(`RecognitionTask`) reads each crop as LaTeX. `PagePipeline` holds the two
loaded models with their tasks and does exactly that, so the evaluation of
the pair (`flywheel.evaluation.pair`) measures what serving will return.

It lives beside the tasks, not in `flywheel.evaluation`, because serving may
import the tasks but not evaluation; it knows nothing of MLflow: whoever
loads the models (evaluation from a run or a registered version, serving from
its bento) hands them over as `LoadedModel`s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from flywheel.data.pages import crop_box
from flywheel.tasks.base import ImageLike, Task
from flywheel.tasks.detection import FORMULA_SCORE, DetectionTask
from flywheel.tasks.recognition import RecognitionTask

PixelBox = tuple[int, int, int, int]
"""`(x0, y0, x1, y1)` in page pixels, top-left origin, x1/y1 exclusive (`Region.xyxy`)."""


@dataclass(frozen=True)
class LoadedModel:
    """An exported model ready to run, with the task that reads its inputs and outputs.

    Attributes:
        model: the exported module (`mlflow.pytorch.load_model`): one input
            batch → the task's output layout.
        task: the task it was logged with (`Task.from_metadata`).
        uri: where it came from, for messages (`runs:/…`, `models:/…`).
        device: where `model` lives; inputs are moved there.
    """

    model: Callable[[Tensor], Any]
    task: Task
    uri: str = ""
    device: str = "cpu"

    def describe(self) -> str:
        """How messages name it: its URI, else its task."""
        return self.uri or f"the {self.task.name} model"

    def run(self, batch: Tensor) -> Tensor:
        """The model's output for one preprocessed batch, without gradients, on the CPU."""
        with torch.inference_mode():
            output = self.model(batch.to(self.device))
        return output.cpu() if isinstance(output, Tensor) else output


@dataclass(frozen=True)
class PageRegion:
    """One expression the pair found on a page.

    Attributes:
        box: where, in the page's pixels (`PixelBox`).
        score: the detector's score of the box, in [0, 1].
        latex: the recogniser's transcript of the crop (canonical spelling).
        confidence: the recogniser's probability of that transcript, in [0, 1].
    """

    box: PixelBox
    score: float
    latex: str
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: `box` as `[x0, y0, x1, y1]`, then score, latex, confidence."""
        return {
            "box": list(self.box),
            "score": self.score,
            "latex": self.latex,
            "confidence": self.confidence,
        }


class PagePipeline:
    """A detector and a recogniser, loaded: pages in, `PageRegion`s per page out.

    Args:
        detector: a model of task `detection`.
        recognizer: a model of task `recognition`.
        padding: pixels kept around a box when it is cut out; default the
            `crop_padding` the recogniser's training crops were cut with (its
            metadata). Another value costs accuracy silently: the crops then look
            unlike the training ones.
        min_score: detections scoring below this are not reported (default
            `FORMULA_SCORE`, the detector's own count of formulas).
        batch_size: pages per detector pass, and crops per recogniser pass.

    Raises:
        ValueError: a model of another task in either place (both named), or a
            negative padding or batch size below 1.
    """

    def __init__(
        self,
        detector: LoadedModel,
        recognizer: LoadedModel,
        *,
        padding: int | None = None,
        min_score: float = FORMULA_SCORE,
        batch_size: int = 32,
    ) -> None:
        detection, recognition = detector.task, recognizer.task
        if not isinstance(detection, DetectionTask) or not isinstance(recognition, RecognitionTask):
            wrong = [
                f"{loaded.describe()} is a {loaded.task.name!r} model, not a {expected.name!r} one"
                for loaded, expected in ((detector, DetectionTask), (recognizer, RecognitionTask))
                if not isinstance(loaded.task, expected)
            ]
            raise ValueError("the page pair is a detector then a recogniser: " + "; ".join(wrong))
        if padding is None:
            padding = recognition.crop_padding
        if padding < 0:
            raise ValueError(f"the crop padding must be at least 0, got {padding}")
        if batch_size < 1:
            raise ValueError(f"the batch size must be at least 1, got {batch_size}")
        self.detector = detector
        self.recognizer = recognizer
        self.detection_task: DetectionTask = detection
        self.recognition_task: RecognitionTask = recognition
        self.padding = padding
        self.min_score = min_score
        self.batch_size = batch_size

    def detect(self, images: Sequence[ImageLike]) -> list[list[tuple[PixelBox, float]]]:
        """Each page's boxes in its own pixels with their scores, best first.

        The detector's normalised corners are scaled by the page's width and
        height (it saw the page resized to a square), rounded to whole pixels
        and clipped to the page; a box left without area there, or scoring
        under `min_score`, is dropped.
        """
        task = self.detection_task
        found: list[list[tuple[PixelBox, float]]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            cells, _ = task.split_output(self.detector.run(task.preprocess(chunk)))  # (B, G*G, 5)
            found.extend(
                self.page_boxes(page_cells, *_size(image))
                for image, page_cells in zip(chunk, cells, strict=True)
            )
        return found

    def page_boxes(
        self, cells: np.ndarray, width: int, height: int
    ) -> list[tuple[PixelBox, float]]:
        """One page's detector cells `(G·G, 5)` → its boxes in its pixels with scores, best first.

        The detector's normalised corners are scaled by the page's width and
        height (it saw the page resized to a square), rounded to whole pixels
        and clipped to the page; a box left without area there, or scoring
        under `min_score`, is dropped. (`detect` per page; the page service
        calls it on the rows of a batch shared with other requests.)
        """
        boxes: list[tuple[PixelBox, float]] = []
        for x0, y0, x1, y1, score in self.detection_task.detections(cells):  # (K, 5) best first
            if score < self.min_score:
                continue
            box = (_pixel(x0, width), _pixel(y0, height), _pixel(x1, width), _pixel(y1, height))
            if box[2] > box[0] and box[3] > box[1]:
                boxes.append((box, float(score)))
        return boxes

    def crops(
        self, page: Image.Image, boxes: Sequence[tuple[PixelBox, float]]
    ) -> list[Image.Image]:
        """The crops the recogniser reads: each box grown by `padding` and cut out of `page`."""
        out = []
        for box, _ in boxes:
            rectangle = crop_box(box, self.padding, page.width, page.height)
            assert rectangle is not None  # a box with area on the page, padded, still is
            out.append(page.crop(rectangle))
        return out

    def recognize(self, crops: Sequence[ImageLike]) -> list[tuple[str, float]]:
        """Each crop's transcript and its probability, in order (none for no crops)."""
        task = self.recognition_task
        out: list[tuple[str, float]] = []
        for start in range(0, len(crops), self.batch_size):
            decoded = task.decode(
                self.recognizer.run(task.preprocess(crops[start : start + self.batch_size]))
            )
            out.extend(
                (str(text), float(p))
                for text, p in zip(decoded.labels, decoded.confidence, strict=True)
            )
        return out

    def predict(self, images: Sequence[ImageLike]) -> list[list[PageRegion]]:
        """Every page's expressions: boxes from the detector, each crop read by the recogniser.

        Args:
            images: pages as PIL images or uint8 arrays, any size; the detector
                gets them through its task's pre-processing, the crops are cut
                from them as given.

        Returns:
            Per page, in order, its regions, highest detection score first.
        """
        pages = [Image.fromarray(i) if isinstance(i, np.ndarray) else i for i in images]
        detected = self.detect(pages)
        crops: list[Image.Image] = []
        for page, boxes in zip(pages, detected, strict=True):
            crops.extend(self.crops(page, boxes))
        readings = self.recognize(crops)  # one per box, pages in order
        regions: list[list[PageRegion]] = []
        start = 0
        for boxes in detected:
            mine, start = readings[start : start + len(boxes)], start + len(boxes)
            regions.append(
                [
                    PageRegion(box=box, score=score, latex=latex, confidence=confidence)
                    for (box, score), (latex, confidence) in zip(boxes, mine, strict=True)
                ]
            )
        return regions


def _size(image: ImageLike) -> tuple[int, int]:
    """Width and height of a PIL image or an `(H, W[, C])` array."""
    if isinstance(image, np.ndarray):
        return int(image.shape[1]), int(image.shape[0])
    return image.width, image.height


def _pixel(normalised: float, side: int) -> int:
    """A normalised coordinate → the nearest pixel edge on a side of `side` pixels, clipped.

    >>> _pixel(0.25, 96), _pixel(-0.1, 96), _pixel(1.2, 96)
    (24, 0, 96)
    """
    return min(max(round(float(normalised) * side), 0), side)
