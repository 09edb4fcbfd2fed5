"""Detection's evaluation metrics: COCO mAP of predicted boxes against the true boxes, per image.

`detection_metrics` scores a set of images (a split or one slice) with
faster-coco-eval, a maintained C++ re-implementation of pycocotools' COCOeval
that gives the same numbers: `map_50` (AP at IoU 0.5, the primary metric) and
`map_50_95` (AP averaged over IoU 0.50:0.05:0.95), both over up to 100
detections per image, plus the recall at IoU 0.5. Boxes go in normalised to
[0, 1]; they are scaled to a nominal 1000-pixel side before scoring, which
changes no IoU (COCO's area ranges are not used).
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import numpy as np

from flywheel.tasks.base import MetricsError, SplitMetrics

COCO_SCALE = 1000.0
"""Normalised boxes are scaled to this side for COCOeval (its pixel-based conventions)."""

CATEGORY_ID = 1
"""The single category's id in the COCO dictionaries built for scoring."""


def object_array(items: list[Any]) -> np.ndarray:
    """A 1-D object array holding `items` as they are (numpy would stack equal-shaped arrays).

    >>> object_array([np.zeros((2, 4)), np.zeros((2, 4))]).shape
    (2,)
    """
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def _checked(array: Any, columns: int, what: str, row: int) -> np.ndarray:
    boxes = np.asarray(array, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, columns)
    if boxes.ndim != 2 or boxes.shape[1] != columns or not np.isfinite(boxes).all():
        raise MetricsError(f"row {row}: {what} must be finite ({columns} columns), got {boxes!r}")
    return boxes


def _coco_box(xyxy: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) * COCO_SCALE for v in xyxy)
    return [x1, y1, x2 - x1, y2 - y1]


def detection_metrics(predictions: np.ndarray, targets: np.ndarray) -> SplitMetrics:
    """mAP@0.5, mAP@0.5:0.95 and recall@0.5 of per-image detections against per-image truths.

    Args:
        predictions: `(N,)` object array; entry i is image i's detections
            `(K_i, 5)`: normalised corners `x1, y1, x2, y2` and a score.
        targets: `(N,)` object array; entry i is image i's true boxes `(M_i, 4)`.

    Returns:
        `values` `map_50`, `map_50_95`, `recall_50`; NaN for a set with no true
        box (AP is undefined there). The reading of `map_50` counts the boxes.

    Raises:
        MetricsError: lengths differ, no images, or a row that is not boxes.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    if len(predictions) != len(targets):
        raise MetricsError(f"{len(predictions)} predictions for {len(targets)} targets")
    if len(targets) == 0:
        raise MetricsError("nothing to evaluate: no images")
    images: list[dict[str, Any]] = []
    truths: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []
    for i, (predicted, true) in enumerate(zip(predictions, targets, strict=True)):
        image_id = i + 1
        images.append({"id": image_id, "width": COCO_SCALE, "height": COCO_SCALE})
        for box in _checked(true, 4, "true boxes", i):
            coco = _coco_box(box)
            truths.append(
                {
                    "id": len(truths) + 1,
                    "image_id": image_id,
                    "bbox": coco,
                    "area": coco[2] * coco[3],
                    "category_id": CATEGORY_ID,
                    "iscrowd": 0,
                }
            )
        for *box, score in _checked(predicted, 5, "detections", i):
            detections.append(
                {
                    "image_id": image_id,
                    "bbox": _coco_box(np.asarray(box)),
                    "score": float(score),
                    "category_id": CATEGORY_ID,
                }
            )
    n = len(targets)
    reading = f"{len(truths)} true boxes, {len(detections)} detections in {n} images"
    if not truths:
        nan = math.nan
        return SplitMetrics(
            n=n,
            values={"map_50": nan, "map_50_95": nan, "recall_50": nan},
            readings={"map_50": reading},
        )
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # COCO's loaders print progress
        truth = COCO(
            {
                "images": images,
                "annotations": truths,
                "categories": [{"id": CATEGORY_ID, "name": "object"}],
            }
        )
        evaluator = COCOeval_faster(
            truth, truth.loadRes(detections), "bbox", print_function=lambda *_: None
        )
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats_as_dict
    return SplitMetrics(
        n=n,
        values={
            "map_50": _defined(stats["AP_50"]),
            "map_50_95": _defined(stats["AP_all"]),
            "recall_50": _defined(stats["AR_50"]),
        },
        readings={"map_50": reading},
    )


def _defined(value: float) -> float:
    """COCOeval's -1 (nothing to score) as NaN; anything else as a float."""
    return math.nan if value < 0 else float(value)
