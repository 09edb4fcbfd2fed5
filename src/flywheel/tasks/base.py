"""The task interface: what the generic training loop and serving need from a vision task.

The training loop (`flywheel.modeling.training`) knows nothing about classification: it
asks the task for the dataset of a split, the model, the augmentation, the loss
and the metrics. Serving asks it for pre-processing (image → tensor), the
exported module and post-processing (model output → response). A second task
(e.g. YOLO-style detection) is one new subclass registered in
`flywheel.tasks`, not a change to the loop.

The one contract between training and serving is `export_metadata()`: it is
stored with the logged model, and `Task.from_metadata` rebuilds the same
pre- and post-processing from it without the training code or `params.yaml`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from flywheel.config import AugmentConfig, ModelConfig, Params

Direction = Literal["max", "min"]
ImageLike = Image.Image | np.ndarray
"""A single image for serving: a PIL image or an `(H, W)` / `(H, W, C)` uint8 array."""


class DatasetError(ValueError):
    """A dataset cannot be used: missing split, unknown label, unreadable image (names the row)."""


class MetricAccumulator(ABC):
    """Metric state summed over batches and, under DDP, over processes.

    All state is one float64 tensor of additive totals (counts, sums, a
    confusion matrix), so merging shards is a single `all_reduce(SUM)` and the
    result does not depend on how the data was split into batches or ranks.
    """

    def __init__(self, size: int, device: torch.device | str = "cpu") -> None:
        self.totals = torch.zeros(size, dtype=torch.float64, device=device)

    @abstractmethod
    def update(self, outputs: Any, targets: Any, loss: Tensor) -> None:
        """Add one batch: the model's outputs, the targets, and the batch's mean loss."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Metrics over everything added so far (including `loss`), by name."""

    def sync(self) -> None:
        """Sum the totals over all processes (a no-op outside `torch.distributed`)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.totals, op=dist.ReduceOp.SUM)


class Task(ABC):
    """One kind of vision problem: data, model, loss, metrics, and the serving transforms.

    Args:
        classes: class names, in logit order.
        image_size: side of the square input images.
    """

    name: ClassVar[str]
    """Registry name, as in `train.task` of params.yaml."""
    metric_directions: ClassVar[Mapping[str, Direction]]
    """Every metric `compute()` returns → whether larger (`max`) or smaller (`min`) is better."""

    def __init__(self, classes: Sequence[str], image_size: int) -> None:
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"needs at least 2 distinct classes, got {list(classes)}")
        self.classes: tuple[str, ...] = tuple(classes)
        self.image_size = image_size

    # ----------------------------------------------------------------- set-up

    @classmethod
    def from_params(cls, params: Params) -> Self:
        """The task as `params.yaml` configures it (training)."""
        return cls(params.data.classes, params.data.image_size)

    def export_metadata(self) -> dict[str, Any]:
        """JSON-able description stored with the logged model; serving rebuilds the task from it."""
        return {"task": self.name, "classes": list(self.classes), "image_size": self.image_size}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Self:
        """The task as a logged model describes it (serving, monitoring).

        Raises:
            ValueError: the metadata belongs to another task or misses a key.
        """
        if metadata.get("task") != cls.name:
            raise ValueError(
                f"model metadata is for task {metadata.get('task')!r}, not {cls.name!r}"
            )
        try:
            return cls(metadata["classes"], int(metadata["image_size"]))
        except KeyError as err:
            raise ValueError(f"model metadata misses {err.args[0]!r}: {dict(metadata)}") from None

    def direction(self, metric: str) -> Direction:
        """Whether `metric` (with or without a `train_`/`val_` prefix) is maximised or minimised.

        Raises:
            ValueError: the task computes no such metric.
        """
        base = metric.removeprefix("val_").removeprefix("train_")
        try:
            return self.metric_directions[base]
        except KeyError:
            raise ValueError(
                f"task {self.name!r} computes no metric {base!r}; "
                f"it computes {sorted(self.metric_directions)}"
            ) from None

    # ------------------------------------------------------------ training

    @abstractmethod
    def build_dataset(self, dataset_dir: Path, split: str) -> Dataset[Any]:
        """The rows of `split` in `<dataset_dir>/manifest.csv` as a torch Dataset.

        Raises:
            DatasetError: the manifest, a label or an image file cannot be used.
        """

    def collate_fn(self) -> Callable[[list[Any]], Any] | None:
        """Batch collation for the DataLoader; None uses torch's default (stacked tensors)."""
        return None

    @abstractmethod
    def build_model(self, cfg: ModelConfig) -> nn.Module:
        """A freshly initialised network for this task."""

    @abstractmethod
    def augment(
        self, inputs: Any, targets: Any, cfg: AugmentConfig, generator: torch.Generator
    ) -> tuple[Any, Any]:
        """Training-time augmentation of a batch already on its device."""

    @abstractmethod
    def loss(self, outputs: Any, targets: Any) -> Tensor:
        """Scalar training loss of a batch."""

    @abstractmethod
    def new_metrics(self, device: torch.device | str = "cpu") -> MetricAccumulator:
        """An empty metric accumulator."""

    def metrics(self, outputs: Any, targets: Any) -> dict[str, float]:
        """Metrics of one set of outputs against its targets, by name."""
        accumulator = self.new_metrics(_device_of(outputs))
        with torch.no_grad():
            accumulator.update(outputs, targets, self.loss(outputs, targets))
        return accumulator.compute()

    def to_device(self, inputs: Any, targets: Any, device: torch.device) -> tuple[Any, Any]:
        """Move a batch to `device` (tensors; override for structured targets)."""
        return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)

    # ------------------------------------------------------------- serving

    @abstractmethod
    def preprocess(self, images: Sequence[ImageLike]) -> Tensor:
        """Images as they arrive at the service → the model's input batch.

        The same transform the training datasets use, so served and trained
        inputs match.
        """

    @abstractmethod
    def export_module(self, model: nn.Module) -> nn.Module:
        """Wrap the trained model for export: one input tensor → one output tensor.

        One tensor keeps the exported model usable through MLflow's pyfunc
        flavour as well as the torch one; `export_metadata()` says how to cut it.
        """

    @abstractmethod
    def postprocess(self, output: Tensor | np.ndarray) -> list[dict[str, Any]]:
        """The exported module's output batch → one JSON-able response per image."""


def _device_of(outputs: Any) -> torch.device:
    if isinstance(outputs, Tensor):
        return outputs.device
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], Tensor):
        return outputs[0].device
    return torch.device("cpu")
