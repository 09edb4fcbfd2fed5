"""Formula-region detection on pages: a YOLO-style grid detector, boxes in, boxes out.

The data is a page dataset folder: `manifest.csv` (one row per page: `image_id`,
`path`, `split`, the strata columns) and `annotations.json` (COCO: `images`
with `id` and `file_name`, `annotations` with `bbox` `[x, y, w, h]` in pixels).
The YOLO label files beside them hold the same boxes; COCO is read because it
carries each page's size. A page is read as grey levels in [0, 1], resized to
a square of side `image_size`; boxes become normalised corners, so they do not
depend on the page's size or aspect.

The network (`flywheel.tasks.detection_network`) predicts one box per grid
cell. The exported module returns one tensor `(B, G·G·5 + D)`: per cell, in
row-major order, the objectness probability and the box's normalised corners
`x1, y1, x2, y2`, then the D-dimensional image embedding. `decode` keeps the
cells above a low score, suppresses overlaps (NMS) and scores them with COCO
mAP (`flywheel.tasks.detection_metrics`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from flywheel.config import AugmentConfig, ModelConfig, Params
from flywheel.data.manifest import manifest_path
from flywheel.data.preprocessing import Preprocessing
from flywheel.tasks.augment import augment_batch, random_affine_matrices
from flywheel.tasks.base import (
    DatasetError,
    DecodedBatch,
    Direction,
    ImageLike,
    ManifestDataset,
    MetricAccumulator,
    SplitMetrics,
    Task,
    split_rows,
)
from flywheel.tasks.boxes import box_iou, non_max_suppression, warp_boxes
from flywheel.tasks.classification import image_to_tensor
from flywheel.tasks.detection_metrics import detection_metrics, object_array
from flywheel.tasks.detection_network import (
    CELL_FIELDS,
    build_detector,
    detection_loss,
    grid_boxes,
)

ANNOTATIONS_NAME = "annotations.json"
"""The COCO file of a page dataset folder, beside `manifest.csv`."""

CATEGORY = "formula"
"""The detector's one category."""

FORMULA_SCORE = 0.5
"""A detection scoring at least this is a formula the page is said to hold: what `decode`
counts in its label and what the page pipeline (`flywheel.tasks.page_pipeline`) reads.
Lower-scored detections still count for mAP, which ranks every detection."""

REGIONS_COLUMN = "regions"
"""Profile column (`DetectionTask.profile_columns`): the detections scoring at least
`FORMULA_SCORE` on a page, the regions the page service answers with."""
DETECTION_SCORE_COLUMN = "detection_score"
"""Profile column: the mean score of those detections (NaN on a page without one)."""

_REQUIRED_COLUMNS = ("image_id", "path", "split")

PageSample = tuple[Tensor, Tensor]
"""A page `(1, S, S)` and its true boxes `(M, 4)` (normalised corners)."""


def _page_boxes(annotations: Mapping[str, Any], where: Path) -> dict[str, np.ndarray]:
    """COCO annotations → normalised corner boxes `(M, 4)` per image `file_name` (and per id).

    Raises:
        DatasetError: an image without its size, or a box of no area.
    """
    images = {image["id"]: image for image in annotations.get("images", [])}
    per_image: dict[Any, list[list[float]]] = {image_id: [] for image_id in images}
    for annotation in annotations.get("annotations", []):
        image = images.get(annotation["image_id"])
        if image is None:
            raise DatasetError(f"{where}: annotation {annotation.get('id')} of an unknown image")
        x, y, w, h = (float(v) for v in annotation["bbox"])
        if w <= 0 or h <= 0:
            raise DatasetError(
                f"{where}: annotation {annotation.get('id')} has no area: {[x, y, w, h]}"
            )
        try:
            width, height = float(image["width"]), float(image["height"])
        except KeyError:
            raise DatasetError(f"{where}: image {image['id']} has no width/height") from None
        per_image[image["id"]].append([x / width, y / height, (x + w) / width, (y + h) / height])
    out: dict[str, np.ndarray] = {}
    for image_id, boxes in per_image.items():
        array = np.clip(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), 0.0, 1.0)
        out[str(images[image_id].get("file_name"))] = array
        out[f"id:{image_id}"] = array
    return out


def _count_label(count: int, category: str) -> str:
    """`"1 formula"`, `"3 formulas"`: a page's label, true or decoded."""
    return f"{count} {category}{'' if count == 1 else 's'}"


class PageDataset(ManifestDataset[PageSample]):
    """One split of a page dataset: `(page (1, S, S), boxes (M, 4))` in manifest row order.

    Args:
        dataset_dir: folder with `manifest.csv`, `annotations.json` and the pages.
        split: `train`, `val` or `test`.
        preprocessing: how a page file becomes the input (side S, grey, filter).

    Raises:
        DatasetError: no manifest or annotations, missing columns, no rows in the
            split, a page without annotations entry, or a missing page file.
    """

    def __init__(self, dataset_dir: Path, split: str, preprocessing: Preprocessing) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.preprocessing = preprocessing
        self.image_size = preprocessing.size
        where = manifest_path(self.dataset_dir)
        rows = split_rows(self.dataset_dir, split, _REQUIRED_COLUMNS)
        coco_path = self.dataset_dir / ANNOTATIONS_NAME
        try:
            boxes = _page_boxes(json.loads(coco_path.read_text()), coco_path)
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(f"{coco_path}: not a readable COCO file: {err}") from None
        self.boxes: list[np.ndarray] = []
        for row in rows.itertuples():
            found_boxes = boxes.get(str(row.path), boxes.get(f"id:{row.image_id}"))
            if found_boxes is None:
                raise DatasetError(
                    f"{coco_path}: no image with file_name {row.path!r} or id {row.image_id!r}"
                )
            self.boxes.append(found_boxes)
        self.paths = [self.dataset_dir / p for p in rows["path"]]
        absent = [str(p) for p in self.paths if not p.is_file()]
        if absent:
            raise DatasetError(
                f"{where}: {len(absent)} pages of split {split!r} are missing, e.g. {absent[:3]}"
            )
        self.frame: pd.DataFrame = rows

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> PageSample:
        try:
            with Image.open(self.paths[i]) as image:
                pixels = image_to_tensor(image, self.preprocessing)  # (1, S, S)
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetError(f"{self.paths[i]}: cannot read page: {err}") from None
        return pixels, torch.from_numpy(self.boxes[i])


def collate_pages(batch: list[PageSample]) -> tuple[Tensor, list[Tensor]]:
    """Pages stacked `(B, 1, S, S)`; boxes kept per page (their counts differ)."""
    return torch.stack([page for page, _ in batch]), [boxes for _, boxes in batch]


class DetectionMetrics(MetricAccumulator):
    """Training-time metrics of the grid, additive over batches and ranks.

    Totals: `[loss_sum, images, assigned_cells, iou_sum, hits, predicted_cells]`.
    `cell_recall`: assigned cells whose box has IoU ≥ 0.5 with its truth and
    whose objectness is ≥ 0.5; `cell_precision`: those hits over every cell
    scoring ≥ 0.5; `mean_iou`: IoU at the assigned cells. Cheap per-batch
    proxies of the evaluation's mAP, which needs every image's detections.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        super().__init__(6, device)

    def update(self, outputs: Any, targets: list[Tensor], loss: Tensor) -> None:
        parts = detection_loss(outputs[0].detach(), targets)
        iou = box_iou(parts.predicted, parts.true).diagonal()  # (P,)
        hits = ((iou >= 0.5) & (parts.positive_scores >= 0.5)).sum()
        predicted = (parts.positive_scores >= 0.5).sum() + (parts.negative_scores >= 0.5).sum()
        batch = torch.stack(
            [
                loss.detach().double() * len(targets),
                torch.tensor(float(len(targets))),
                torch.tensor(float(len(iou))),
                iou.double().sum().cpu(),
                hits.double().cpu(),
                predicted.double().cpu(),
            ]
        )
        self.totals += batch.to(self.totals)

    def compute(self) -> dict[str, float]:
        loss_sum, images, cells, iou_sum, hits, predicted = (float(v) for v in self.totals)
        nan = float("nan")
        return {
            "loss": loss_sum / images if images else nan,
            "mean_iou": iou_sum / cells if cells else nan,
            "cell_recall": hits / cells if cells else nan,
            "cell_precision": hits / predicted if predicted else nan,
        }


class ScoresBoxesEmbedding(nn.Module):
    """Export wrapper: `(B, 1, S, S)` → `(B, G·G·5 + D)` = per cell score ‖ corners, embedding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        grid, embedding = self.model(x)  # (B, 5, G, G), (B, D)
        logits, boxes = grid_boxes(grid)  # (B, G, G), (B, G, G, 4)
        cells = torch.cat([torch.sigmoid(logits.float()).unsqueeze(-1), boxes.float()], dim=-1)
        return torch.cat([cells.flatten(1), embedding.float()], dim=1)  # (B, G*G*5 + D)


class DetectionTask(Task):
    """Formula regions on a page: one category, YOLO-style boxes, COCO mAP.

    Args:
        classes: the category (one: `formula`).
        image_size: side S of the square input.
        stride: `2**stages` of the network; the grid has `S / stride` cells a side.
        score_threshold: cells below this objectness are no detection at all.
        iou_threshold: NMS drops a box overlapping a better one beyond this IoU.
        max_detections: per page, after NMS (COCO's 100).
    """

    name: ClassVar[str] = "detection"
    metric_directions: ClassVar[dict[str, Direction]] = {
        "loss": "min",
        "mean_iou": "max",
        "cell_recall": "max",
        "cell_precision": "max",
        "map_50": "max",
        "map_50_95": "max",
        "recall_50": "max",
    }
    primary_metric: ClassVar[str] = "map_50"
    loss_skips_parameters: ClassVar[bool] = True  # the embedding head (monitoring)
    metric_labels: ClassVar[dict[str, str]] = {
        "map_50": "mAP@0.5",
        "map_50_95": "mAP@0.5:0.95",
        "recall_50": "recall@0.5",
    }

    def __init__(
        self,
        classes: Sequence[str] = (CATEGORY,),
        image_size: int = 256,
        *,
        stride: int = 16,
        score_threshold: float = 0.05,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
    ) -> None:
        super().__init__(classes, image_size)
        if len(self.classes) != 1:
            raise ValueError(f"the detector has one category, got {list(self.classes)}")
        if image_size % stride:
            raise ValueError(f"image_size {image_size} is not a multiple of the stride {stride}")
        self.stride = stride
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections

    @property
    def grid_side(self) -> int:
        """G: cells along each side of the grid."""
        return self.image_size // self.stride

    @classmethod
    def from_params(cls, params: Params) -> Self:
        """The input side `train.model.input_size` (else the plan's image size); the stride
        from `train.model.stages`."""
        side = params.train.model.input_size or params.data.image_size
        return cls((CATEGORY,), side, stride=2**params.train.model.stages)

    def export_metadata(self) -> dict[str, Any]:
        """Adds the stride, the decoding thresholds, the input contract and the output layout."""
        cells = self.grid_side**2 * len(CELL_FIELDS)
        return {
            **super().export_metadata(),
            "stride": self.stride,
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "max_detections": self.max_detections,
            "input": {
                "dtype": "float32",
                "shape": [-1, *self.input_shape],
                "range": [0.0, 1.0],
                "color": "grayscale",
            },
            "output": {
                "cells": [0, cells],
                "grid": [self.grid_side, self.grid_side],
                "cell_fields": ["score", "x1", "y1", "x2", "y2"],
                "embedding": [cells, None],
            },
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Self:
        """The task a logged detector describes.

        Raises:
            ValueError: the metadata belongs to another task or misses a key.
        """
        if metadata.get("task") != cls.name:
            raise ValueError(
                f"model metadata is for task {metadata.get('task')!r}, not {cls.name!r}"
            )
        try:
            return cls(
                metadata["classes"],
                int(metadata["image_size"]),
                stride=int(metadata["stride"]),
                score_threshold=float(metadata["score_threshold"]),
                iou_threshold=float(metadata["iou_threshold"]),
                max_detections=int(metadata["max_detections"]),
            )
        except KeyError as err:
            raise ValueError(f"model metadata misses {err.args[0]!r}: {dict(metadata)}") from None

    # ------------------------------------------------------------ training

    def build_dataset(self, dataset_dir: Path, split: str) -> PageDataset:
        return PageDataset(dataset_dir, split, self.preprocessing)

    def evaluation_targets(self, dataset: ManifestDataset[Any]) -> np.ndarray:
        """Each page's true boxes `(M_i, 4)`, as an object array `(N,)`.

        Raises:
            TypeError: `dataset` is not a `PageDataset`.
        """
        if not isinstance(dataset, PageDataset):
            raise TypeError(f"expected a PageDataset, got {type(dataset).__name__}")
        return object_array(list(dataset.boxes))

    def true_labels(self, dataset: ManifestDataset[Any]) -> np.ndarray:
        """How many formulas each page holds, as `decode` words it (`"3 formulas"`)."""
        return np.asarray(
            [_count_label(len(b), self.classes[0]) for b in self.evaluation_targets(dataset)],
            dtype=object,
        )

    def evaluation_metrics(
        self, decoded: DecodedBatch, targets: np.ndarray, *, calibration_bins: int
    ) -> SplitMetrics:
        """COCO mAP@0.5 (primary), mAP@0.5:0.95 and recall@0.5 of the decoded detections."""
        if decoded.predictions is None:
            raise ValueError("the decoded outputs hold no detections (not a detector's output)")
        return detection_metrics(decoded.predictions, targets)

    def collate_fn(self) -> Callable[[list[Any]], Any]:
        return collate_pages

    def to_device(
        self, inputs: Tensor, targets: list[Tensor], device: torch.device
    ) -> tuple[Tensor, list[Tensor]]:
        return inputs.to(device, non_blocking=True), [t.to(device) for t in targets]

    def build_model(self, cfg: ModelConfig) -> nn.Module:
        """The grid detector; its stride must be this task's.

        Raises:
            ValueError: `cfg.stages` gives another stride than the task's.
        """
        if 2**cfg.stages != self.stride:
            raise ValueError(
                f"model.stages {cfg.stages} gives stride {2**cfg.stages}, not {self.stride}"
            )
        return build_detector(cfg)

    def augment(
        self, inputs: Tensor, targets: list[Tensor], cfg: AugmentConfig, generator: torch.Generator
    ) -> tuple[Tensor, list[Tensor]]:
        """Mirror, zoom, shift (and rotate) pages with their boxes; then the photometric changes.

        The geometric part is one `grid_sample` per batch with the matrices of
        `random_affine_matrices`; each page's boxes go through the same matrix
        (`warp_boxes`), and a box pushed out of the page is dropped.
        """
        if not cfg.enabled:
            return inputs, targets
        theta = random_affine_matrices(inputs.shape[0], cfg, generator)  # (B, 2, 3) or None
        if theta is not None:
            grid = F.affine_grid(theta.to(inputs), list(inputs.shape), align_corners=False)
            inputs = F.grid_sample(
                inputs, grid, mode="bilinear", padding_mode="border", align_corners=False
            )  # (B, 1, S, S)
            targets = [warp_boxes(boxes, m)[0] for boxes, m in zip(targets, theta, strict=True)]
        photometric = cfg.model_copy(
            update={"rotate_degrees": 0, "translate": 0, "scale": 0, "hflip": 0}
        )
        return augment_batch(inputs, photometric, generator), targets

    def loss(self, outputs: Any, targets: list[Tensor]) -> Tensor:
        """`5 · (1 − GIoU)` at the cells holding a box plus objectness BCE (`detection_loss`)."""
        return detection_loss(outputs[0], targets).total

    def new_metrics(self, device: torch.device | str = "cpu") -> DetectionMetrics:
        return DetectionMetrics(device)

    # ------------------------------------------------------------- serving

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """`(1, S, S)`: one grayscale channel."""
        return (1, self.image_size, self.image_size)

    def preprocess(self, images: Sequence[ImageLike]) -> Tensor:
        """Pages → `(B, 1, S, S)` float32 in [0, 1] (as `PageDataset` reads them)."""
        if not images:
            raise ValueError("no images to preprocess")
        return torch.stack([image_to_tensor(image, self.preprocessing) for image in images])

    def export_module(self, model: nn.Module) -> nn.Module:
        return ScoresBoxesEmbedding(model).eval()

    def split_output(self, output: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exported output → cells `(B, G·G, 5)` and embedding `(B, D)`.

        Raises:
            ValueError: the output is not `(B, G·G·5 + D)` with D > 0.
        """
        array = output.detach().cpu().numpy() if isinstance(output, Tensor) else np.asarray(output)
        cells = self.grid_side**2 * len(CELL_FIELDS)
        if array.ndim != 2 or array.shape[1] <= cells:
            raise ValueError(f"expected output (B, {cells} + D), got shape {array.shape}")
        return array[:, :cells].reshape(len(array), -1, len(CELL_FIELDS)), array[:, cells:]

    def detections(self, cells: np.ndarray) -> np.ndarray:
        """One page's cells `(G·G, 5)` → its detections `(K, 5)`: corners and score, best first.

        Cells under `score_threshold` are dropped, then overlapping boxes (NMS).
        """
        scores = cells[:, 0]
        kept = np.flatnonzero(scores >= self.score_threshold)
        boxes = torch.from_numpy(np.ascontiguousarray(cells[kept, 1:], dtype=np.float32))
        order = non_max_suppression(
            boxes, torch.from_numpy(scores[kept].astype(np.float32)), self.iou_threshold
        )
        chosen = kept[order.numpy()][: self.max_detections]
        return np.concatenate([cells[chosen, 1:], cells[chosen, :1]], axis=1).astype(np.float64)

    def decode(self, output: Tensor | np.ndarray) -> DecodedBatch:
        """Per page: its detections (`predictions`), how many formulas, and the grid's certainty.

        `labels` says how many detections score at least `FORMULA_SCORE` (`"3 formulas"`);
        `confidence` is the certainty of the least certain cell, `max(p, 1 − p)`,
        so a page with one ambiguous region reads as uncertain (curation).

        Raises:
            ValueError: the output does not have the exported layout.
        """
        cells, embedding = self.split_output(output)  # (B, G*G, 5), (B, D)
        found = [self.detections(page) for page in cells]
        counts = [int((d[:, 4] >= FORMULA_SCORE).sum()) for d in found]
        scores = cells[:, :, 0].astype(np.float64)  # (B, G*G)
        return DecodedBatch(
            classes=self.classes,
            labels=tuple(_count_label(c, self.classes[0]) for c in counts),
            confidence=np.maximum(scores, 1.0 - scores).min(axis=1),
            embedding=embedding,
            predictions=object_array(found),
        )

    def profile_columns(self, decoded: DecodedBatch) -> dict[str, np.ndarray]:
        """`regions` per page (`REGIONS_COLUMN`) and their mean `detection_score`, as served.

        The page service reports the detections scoring at least `FORMULA_SCORE`
        (`flywheel.tasks.page_pipeline.PagePipeline.page_boxes`); monitoring
        compares how many a page holds and how sure the detector is of them.

        Raises:
            ValueError: the decoded outputs hold no detections.
        """
        if decoded.predictions is None:
            raise ValueError("the decoded outputs hold no detections (not a detector's output)")
        scores = [d[d[:, 4] >= FORMULA_SCORE, 4] for d in decoded.predictions]
        return {
            REGIONS_COLUMN: np.asarray([len(s) for s in scores], dtype=np.int64),
            DETECTION_SCORE_COLUMN: np.asarray(
                [float(s.mean()) if len(s) else np.nan for s in scores], dtype=np.float64
            ),
        }
