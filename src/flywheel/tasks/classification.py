"""Image classification: one label per image, the manifest's `label` column.

Inputs are grey or RGB images scaled to [0, 1], shape `(B, C, H, W)`, read
through the task's `Preprocessing` (`flywheel.data.preprocessing`); the model
(`flywheel.tasks.networks`) returns `(logits, embedding)`. The exported module returns
one tensor `(B, K + D)`: the K class probabilities followed by the D-dimensional
embedding, so serving gets the prediction and the monitoring features from one
call, through either MLflow flavour.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torch.utils.data import Dataset

from flywheel.config import AugmentConfig, ModelConfig, Params
from flywheel.data.manifest import manifest_path
from flywheel.data.preprocessing import Preprocessing, PreprocessingError
from flywheel.tasks.augment import augment_batch, check_augment_range
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
from flywheel.tasks.classification_metrics import classification_metrics
from flywheel.tasks.networks import build_model

_REQUIRED_COLUMNS = ("image_id", "path", "label", "split")
_ROWS_SHOWN = 5
AUGMENT_SAMPLE = 64
"""Training images whose range of values the augmentation is checked against."""


def image_to_tensor(image: ImageLike, preprocessing: Preprocessing) -> Tensor:
    """One image → `(C, S, S)` float32 in [0, 1], as `preprocessing` defines it.

    The same definition reads the training images and the served ones (it
    travels in the model's metadata), so served inputs go through exactly what
    training saw.

    Raises:
        ValueError: an array of another dtype or shape, or an image the
            definition cannot read (`PreprocessingError`).
    """
    return torch.from_numpy(preprocessing.to_unit(image))  # (C, S, S)


class ClassificationDataset(ManifestDataset[tuple[Tensor, Tensor]]):
    """The rows of one split of a manifest dataset: `(image (C, H, W), class index)`.

    Images are decoded lazily (DataLoader workers can share the work); the
    manifest is checked up front, so a bad label or a missing file fails
    before training starts, naming the rows.

    Args:
        dataset_dir: folder holding `manifest.csv`; image paths are relative to it.
        split: `train`, `val` or `test`.
        classes: class names in logit order; every label must be one of them.
        preprocessing: how an image file becomes the model's input (size, channels, scale).

    Raises:
        DatasetError: no manifest, missing columns, no rows in the split, an
            unknown label, or a missing image file.
    """

    def __init__(
        self,
        dataset_dir: Path,
        split: str,
        classes: Sequence[str],
        preprocessing: Preprocessing | int,
    ) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.split = split
        if isinstance(preprocessing, int):  # a side alone: grey, the file's bit depth
            preprocessing = Preprocessing(preprocessing)
        self.preprocessing = preprocessing
        self.image_size = preprocessing.size
        where = manifest_path(self.dataset_dir)
        rows = split_rows(self.dataset_dir, split, _REQUIRED_COLUMNS)
        index = {name: i for i, name in enumerate(classes)}
        unknown = rows[~rows["label"].isin(list(index))]
        if not unknown.empty:
            raise DatasetError(
                f"{where}: {len(unknown)} rows of split {split!r} have labels outside the "
                f"classes {list(classes)}, e.g. {_rows(unknown, 'label')}"
            )
        self.paths = [self.dataset_dir / p for p in rows["path"]]
        absent = rows[[not p.is_file() for p in self.paths]]
        if not absent.empty:
            raise DatasetError(
                f"{where}: {len(absent)} image files of split {split!r} are missing, "
                f"e.g. {_rows(absent, 'path')}"
            )
        self.frame: pd.DataFrame = rows
        """The split's manifest rows, in dataset order (for slicing results by stratum)."""
        self.targets = torch.tensor([index[label] for label in rows["label"]], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        path = self.paths[i]
        try:
            with Image.open(path) as image:
                pixels = image_to_tensor(image, self.preprocessing)  # (C, H, W)
        except (UnidentifiedImageError, OSError, PreprocessingError) as err:
            image_id = self.frame.at[i, "image_id"]
            raise DatasetError(f"{path} (image_id={image_id}): cannot read image: {err}") from None
        return pixels, self.targets[i]


def _rows(rows: pd.DataFrame, column: str) -> str:
    shown = ", ".join(
        f"{r.image_id}: {getattr(r, column)!r}" for r in rows.head(_ROWS_SHOWN).itertuples()
    )
    return f"[{shown}{', ...' if len(rows) > _ROWS_SHOWN else ''}]"


class ClassificationMetrics(MetricAccumulator):
    """Loss, accuracy and macro-F1 from a summed loss, a count and a confusion matrix.

    Totals layout: `[loss_sum, count, confusion (K × K, row = true, column = predicted)]`.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        super().__init__(2 + num_classes * num_classes, device)
        self.num_classes = num_classes

    def update(self, outputs: Any, targets: Tensor, loss: Tensor) -> None:
        """Add a batch: `outputs` is `(logits (B, K), embedding)` or logits alone."""
        logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        predicted = logits.detach().argmax(dim=1)  # (B,)
        k = self.num_classes
        cells = torch.bincount(targets * k + predicted, minlength=k * k)  # (K*K,)
        n = targets.shape[0]
        self.totals[0] += loss.detach().to(torch.float64) * n
        self.totals[1] += n
        self.totals[2:] += cells.to(self.totals)

    @property
    def confusion(self) -> Tensor:
        """Confusion matrix `(K, K)`: rows are true classes, columns predictions."""
        return self.totals[2:].view(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, float]:
        count = float(self.totals[1])
        if count == 0:
            return {"loss": float("nan"), "accuracy": float("nan"), "macro_f1": float("nan")}
        confusion = self.confusion
        true_pos = confusion.diagonal()  # (K,)
        support = confusion.sum(dim=1)  # (K,) true counts
        predicted = confusion.sum(dim=0)  # (K,) predicted counts
        f1 = 2 * true_pos / (support + predicted).clamp(min=1)  # (K,)
        present = support > 0
        return {
            "loss": float(self.totals[0]) / count,
            "accuracy": float(true_pos.sum()) / count,
            "macro_f1": float(f1[present].mean()) if bool(present.any()) else float("nan"),
        }


class ProbabilitiesAndEmbedding(nn.Module):
    """Export wrapper: `(B, C, H, W)` → `(B, K + D)` = softmax probabilities ‖ embedding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        logits, embedding = self.model(x)  # (B, K), (B, D)
        return torch.cat([torch.softmax(logits.float(), dim=1), embedding.float()], dim=1)


class ClassificationTask(Task):
    """Single-label image classification over the plan's classes."""

    name: ClassVar[str] = "classification"
    metric_directions: ClassVar[dict[str, Direction]] = {
        "loss": "min",
        "accuracy": "max",
        "macro_f1": "max",
    }
    primary_metric: ClassVar[str] = "accuracy"
    metric_labels: ClassVar[dict[str, str]] = {"macro_f1": "macro-F1", "ece": "ECE"}

    def __init__(
        self,
        classes: Sequence[str],
        image_size: int,
        channels: Literal[1, 3] = 1,
        *,
        preprocessing: Preprocessing | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        if len(classes) < 2:
            raise ValueError(f"needs at least 2 distinct classes, got {list(classes)}")
        super().__init__(classes, image_size, channels, preprocessing=preprocessing)
        self.label_smoothing = label_smoothing

    @classmethod
    def from_params(cls, params: Params) -> Self:
        """Classes, size, channels and scale from the data plan, label smoothing from `train`."""
        plan = params.data
        return cls(
            plan.classes,
            plan.image_size,
            plan.channels,
            preprocessing=Preprocessing.from_plan(plan),
            label_smoothing=params.train.label_smoothing,
        )

    def build_dataset(self, dataset_dir: Path, split: str) -> ClassificationDataset:
        return ClassificationDataset(dataset_dir, split, self.classes, self.preprocessing)

    def class_targets(self, dataset: ManifestDataset[Any]) -> np.ndarray:
        """The class index of every item, `(N,)` int64.

        Raises:
            TypeError: `dataset` is not one of this task's datasets.
        """
        if not isinstance(dataset, ClassificationDataset):
            raise TypeError(f"expected a ClassificationDataset, got {type(dataset).__name__}")
        return dataset.targets.numpy()

    def evaluation_targets(self, dataset: ManifestDataset[Any]) -> np.ndarray:
        """The class indices (`class_targets`): what the probabilities are scored against."""
        return self.class_targets(dataset)

    def evaluation_metrics(
        self, decoded: DecodedBatch, targets: np.ndarray, *, calibration_bins: int
    ) -> SplitMetrics:
        """Accuracy, macro-F1, ECE, per-class metrics and the confusion matrix
        (`flywheel.tasks.classification_metrics`)."""
        return classification_metrics(
            decoded.class_probabilities(), targets, self.classes, n_bins=calibration_bins
        )

    def build_model(self, cfg: ModelConfig) -> nn.Module:
        return build_model(cfg, num_classes=len(self.classes), in_channels=self.channels)

    def augment(
        self, inputs: Tensor, targets: Tensor, cfg: AugmentConfig, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Photometric and affine augmentation; labels are unchanged by them."""
        return augment_batch(inputs, cfg, generator), targets

    def check_augment(self, cfg: AugmentConfig, dataset: Dataset[Any]) -> None:
        """Brightness and noise against the span of up to `AUGMENT_SAMPLE` training images.

        Raises:
            flywheel.config.ConfigError: see `flywheel.tasks.augment.check_augment_range`.
        """
        if not cfg.enabled:
            return
        count = len(dataset)  # type: ignore[arg-type]
        picks = np.linspace(0, count - 1, num=min(count, AUGMENT_SAMPLE)).round().astype(int)
        images = torch.stack([dataset[int(i)][0] for i in np.unique(picks)])  # (B, C, H, W)
        check_augment_range(cfg, images)

    def loss(self, outputs: Any, targets: Tensor) -> Tensor:
        """Cross-entropy of the logits (`outputs[0]`), with the configured label smoothing."""
        logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def new_metrics(self, device: torch.device | str = "cpu") -> ClassificationMetrics:
        return ClassificationMetrics(len(self.classes), device)

    # ------------------------------------------------------------- serving

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """`(C, S, S)`: one grey channel or three RGB ones."""
        return (self.channels, self.image_size, self.image_size)

    def preprocess(self, images: Sequence[ImageLike]) -> Tensor:
        """Images → `(B, C, H, W)` float32 in [0, 1] (as `ClassificationDataset` reads them)."""
        if not images:
            raise ValueError("no images to preprocess")
        return torch.stack([image_to_tensor(image, self.preprocessing) for image in images])

    def export_module(self, model: nn.Module) -> nn.Module:
        return ProbabilitiesAndEmbedding(model).eval()

    def export_metadata(self) -> dict[str, Any]:
        """Adds the input contract and the output layout (column ranges, end exclusive)."""
        k = len(self.classes)
        return {
            **super().export_metadata(),
            "input": {
                "dtype": "float32",
                "shape": [-1, *self.input_shape],
                "range": [0.0, 1.0],
                "color": self.preprocessing.color,
            },
            "output": {"probabilities": [0, k], "embedding": [k, None]},
        }

    def split_output(self, output: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exported output `(B, K + D)` → probabilities `(B, K)`, embedding `(B, D)`.

        Raises:
            ValueError: the output is not 2-D with more than K columns.
        """
        array = output.detach().cpu().numpy() if isinstance(output, Tensor) else np.asarray(output)
        k = len(self.classes)
        if array.ndim != 2 or array.shape[1] <= k:
            raise ValueError(f"expected output (B, {k} + D), got shape {array.shape}")
        return array[:, :k], array[:, k:]

    def decode(self, output: Tensor | np.ndarray) -> DecodedBatch:
        """The most probable class, its probability, every class's probability, the embedding.

        Raises:
            ValueError: the output is not 2-D with more than K columns.
        """
        probabilities, embedding = self.split_output(output)  # (B, K), (B, D)
        probabilities = np.asarray(probabilities, dtype=np.float64)
        best = probabilities.argmax(axis=1)  # (B,)
        return DecodedBatch(
            classes=self.classes,
            labels=tuple(self.classes[int(i)] for i in best),
            confidence=probabilities[np.arange(len(best)), best],
            embedding=embedding,
            probabilities=probabilities,
        )
