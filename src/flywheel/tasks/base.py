"""The task interface: what the generic training loop, evaluation and serving need from a task.

The training loop (`flywheel.modeling.training`) knows nothing about classification: it
asks the task for the dataset of a split, the model, the augmentation, the loss
and the metrics. Serving asks it for pre-processing (image → tensor), the
exported module and post-processing (model output → response). A second task
(e.g. YOLO-style detection) is one new subclass registered in
`flywheel.tasks`, not a change to the loop.

Everything downstream of the exported model (evaluation, curation, monitoring,
serving) reads its output through `Task.decode` only: a `DecodedBatch` holds per
sample the predicted label, its confidence and an embedding, which every task
has, and the class probabilities, which only a task whose prediction is one
class per sample has. A consumer that needs the latter (the committee and
uncertainty strategies, serving's top-k) says so through
`DecodedBatch.class_probabilities` rather than by asking for a particular task
class.

Evaluation asks the task what to score, through the evaluation hook:
`Task.evaluation_targets` (the true answer per sample of a split, a numpy array
that a boolean mask slices) and `Task.evaluation_metrics` (a decoded batch
against its targets → `SplitMetrics`: named values, and per-class values and a
confusion matrix where the task has them), with `Task.primary_metric` the value
the accuracy-type gates judge (classification: `accuracy`; a detector: mAP; a
recogniser: CER, minimised). `flywheel.evaluation` slices, compares, gates, logs
and renders whatever the task computes, so a second task is evaluated without a
change there.

The one contract between training and serving is `export_metadata()`: it is
stored with the logged model, and `Task.from_metadata` rebuilds the same
pre- and post-processing from it without the training code or `params.yaml`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from flywheel.config import AugmentConfig, ModelConfig, Params
from flywheel.data.manifest import ManifestError, load_manifest, manifest_path
from flywheel.data.preprocessing import Preprocessing, PreprocessingError

Direction = Literal["max", "min"]
ImageLike = Image.Image | np.ndarray
"""One image for serving: a PIL image, a uint8 `(H, W)` / `(H, W, C)` or uint16 `(H, W)` array."""


T_co = TypeVar("T_co", covariant=True)


class DatasetError(ValueError):
    """A dataset cannot be used: missing split, unknown label, unreadable image (names the row)."""


def split_rows(dataset_dir: Path, split: str, required: Sequence[str]) -> pd.DataFrame:
    """The manifest rows of one split, index reset, once the manifest has `required` columns.

    Raises:
        DatasetError: no manifest or an unreadable one, a required column
            missing, or no rows in the split (the splits present are named).
    """
    try:
        manifest = load_manifest(dataset_dir)
    except ManifestError as err:
        raise DatasetError(str(err)) from None
    return select_split(manifest, split, required, where=manifest_path(dataset_dir))


def select_split(
    table: pd.DataFrame, split: str, required: Sequence[str], *, where: Path
) -> pd.DataFrame:
    """The rows of `table` (one per image, a `split` column) in `split`, index reset.

    Raises:
        DatasetError: a required column missing, or no rows in the split (the
            splits present are named); `where` is the file the message names.
    """
    missing = [c for c in (*required, "split") if c not in table.columns]
    if missing:
        raise DatasetError(f"{where}: missing columns {missing}")
    rows = table[table["split"] == split].reset_index(drop=True)
    if rows.empty:
        found = sorted(table["split"].dropna().unique())
        raise DatasetError(f"{where}: no rows with split={split!r} (splits present: {found})")
    return rows


class ManifestDataset(Dataset[T_co]):
    """One split of a manifest dataset: `(input, target)` items in the manifest's row order.

    Attributes:
        frame: the split's manifest rows, item i is row i (evaluation slices
            results by its columns; the reference profile copies them).
    """

    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class DecodedBatch:
    """An exported model's output batch, per sample, in the terms every consumer reads.

    Attributes:
        classes: the task's class names (the columns of `probabilities`).
        labels: `(N,)` the prediction of each sample as one string: the class
            for classification (a detector or a recogniser would say what it
            found, e.g. the decoded text).
        confidence: `(N,)` float64 in [0, 1], how sure the model is of `labels`.
        embedding: `(N, D)` the sample's feature vector (drift monitoring,
            diverse curation).
        probabilities: `(N, K)` float64, a distribution over `classes` per
            sample; None for a task whose prediction is not one class per sample.
        predictions: `(N, ...)` the task's own prediction per sample, for its
            `Task.evaluation_metrics` (a count, an object array of boxes); None
            when `labels` and `probabilities` say it all (classification).
    """

    classes: tuple[str, ...]
    labels: tuple[str, ...]
    confidence: np.ndarray
    embedding: np.ndarray
    probabilities: np.ndarray | None = None
    predictions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def class_probabilities(self) -> np.ndarray:
        """`probabilities`, for a consumer that only makes sense on one class per sample.

        Raises:
            ValueError: the task gives no class probabilities.
        """
        if self.probabilities is None:
            raise ValueError(
                "the model's task gives no class probabilities per sample "
                f"(its predictions look like {list(self.labels[:3])})"
            )
        return self.probabilities

    def probability_map(self, i: int) -> dict[str, float]:
        """Sample `i`'s probabilities by class name (what the prediction log and responses hold).

        Empty for a task without class probabilities.
        """
        if self.probabilities is None:
            return {}
        return dict(zip(self.classes, self.probabilities[i].astype(float).tolist(), strict=True))

    def select(self, mask: np.ndarray) -> DecodedBatch:
        """The samples where the boolean `mask` `(N,)` is True, in order (e.g. one slice).

        Raises:
            ValueError: `mask` is not a boolean array of one entry per sample.
        """
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (len(self),):
            raise ValueError(
                f"expected a boolean mask ({len(self)},), got {mask.dtype} {mask.shape}"
            )
        return DecodedBatch(
            classes=self.classes,
            labels=tuple(label for label, keep in zip(self.labels, mask, strict=True) if keep),
            confidence=self.confidence[mask],
            embedding=self.embedding[mask],
            probabilities=None if self.probabilities is None else self.probabilities[mask],
            predictions=None if self.predictions is None else self.predictions[mask],
        )

    @classmethod
    def concat(cls, parts: Sequence[DecodedBatch]) -> DecodedBatch:
        """The batches one after the other (e.g. a split decoded batch by batch).

        Raises:
            ValueError: no parts, or parts of different classes.
        """
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        if any(p.classes != first.classes for p in parts):
            raise ValueError("cannot concatenate outputs over different classes")
        return cls(
            classes=first.classes,
            labels=tuple(label for p in parts for label in p.labels),
            confidence=np.concatenate([p.confidence for p in parts]),
            embedding=np.concatenate([p.embedding for p in parts]),
            probabilities=_concat_optional([p.probabilities for p in parts]),
            predictions=_concat_optional([p.predictions for p in parts]),
        )


def _concat_optional(arrays: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """The arrays one after the other, or None when any part has none."""
    if any(a is None for a in arrays):
        return None
    return np.concatenate([a for a in arrays if a is not None])


class MetricsError(ValueError):
    """Predictions and targets that cannot be scored (wrong shapes, logits instead of
    probabilities, labels out of range); the message names the first offending row."""


@dataclass(frozen=True)
class SplitMetrics:
    """What a task's evaluation computed on one set of samples (a split or one slice of it).

    Generic on purpose: `flywheel.evaluation` logs, tables, gates and renders
    these fields without knowing the task. The optional parts are rendered
    only when a task fills them.

    Attributes:
        n: number of samples.
        values: metric name → value, e.g. `accuracy`, `macro_f1`, `ece`; every
            one is reported overall and per slice (`<split>_<name>` in MLflow),
            and `Task.primary_metric` is one of them.
        per_class: class name → its metrics (classification: precision,
            recall, F1, support); empty for a task without per-class results.
        class_metric: the per-class metric also logged to MLflow, overall, as
            `<split>_<class_metric>/class_<name>` (classification: `f1`).
        confusion: `(K, K)` counts over the task's classes, rows true, columns
            predicted; None for a task without one.
        readings: metric name → its value in words, for the gates' details
            (classification: `accuracy` → `43/48 correct`).
    """

    n: int
    values: Mapping[str, float]
    per_class: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    class_metric: str | None = None
    confusion: tuple[tuple[int, ...], ...] | None = None
    readings: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, metric: str) -> float:
        """The value of `metric`.

        Raises:
            KeyError: not computed here; names the metrics that are.
        """
        try:
            return self.values[metric]
        except KeyError:
            raise KeyError(f"no metric {metric!r}; computed: {sorted(self.values)}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: `n`, the values by name, then `per_class` and `confusion` if present."""
        out: dict[str, Any] = {"n": self.n, **self.values}
        if self.per_class:
            out["per_class"] = {name: dict(m) for name, m in self.per_class.items()}
        if self.confusion is not None:
            out["confusion"] = [list(row) for row in self.confusion]
        return out


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
        classes: class names, in logit order (a detector's categories, a
            recogniser's token vocabulary); at least one, all distinct.
        image_size: side of the square input images (a recogniser's crop height).
        channels: 1 (grey) or 3 (RGB).
        preprocessing: how an image file becomes the model's input; default:
            `image_size` and `channels`, LANCZOS, white at the file's bit depth.
    """

    name: ClassVar[str]
    """Registry name, as in `train.task` of params.yaml."""
    metric_directions: ClassVar[Mapping[str, Direction]]
    """Every metric `compute()` returns → whether larger (`max`) or smaller (`min`) is better."""
    primary_metric: ClassVar[str]
    """The evaluation metric the accuracy-type gates judge (`min_accuracy`,
    `min_slice_accuracy`, `max_slice_regression`, `min_improvement`): one of the
    `SplitMetrics.values` of `evaluation_metrics`, with its direction in
    `metric_directions` (e.g. `accuracy`, max; an error rate would be min)."""
    metric_labels: ClassVar[Mapping[str, str]] = {}
    """Evaluation metric name → how reports and tables title it (default: the name)."""
    loss_skips_parameters: ClassVar[bool] = False
    """Some parameters take no part in the loss (a detector's or recogniser's embedding
    head, read only by monitoring): DistributedDataParallel must look for them after
    every step (`find_unused_parameters`), or it never reduces the gradients of the
    bucket that holds them and the ranks drift apart silently."""

    def __init__(
        self,
        classes: Sequence[str],
        image_size: int,
        channels: Literal[1, 3] = 1,
        *,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"needs distinct classes, got {list(classes)}")
        self.classes: tuple[str, ...] = tuple(classes)
        self.preprocessing = preprocessing or Preprocessing(image_size, channels)
        if (self.preprocessing.size, self.preprocessing.channels) != (image_size, channels):
            raise ValueError(
                f"preprocessing {self.preprocessing} does not match image_size={image_size}, "
                f"channels={channels}"
            )
        self.image_size = image_size
        self.channels: Literal[1, 3] = channels

    # ----------------------------------------------------------------- set-up

    @classmethod
    def from_params(cls, params: Params) -> Self:
        """The task as `params.yaml` configures it (training)."""
        plan = params.data
        return cls(
            plan.classes,
            plan.image_size,
            plan.channels,
            preprocessing=Preprocessing.from_plan(plan),
        )

    def export_metadata(self) -> dict[str, Any]:
        """JSON-able description stored with the logged model; serving rebuilds the task from it.

        `preprocessing` is the whole input transform (`flywheel.data.preprocessing`),
        so serving applies exactly what training saw.
        """
        return {
            "task": self.name,
            "classes": list(self.classes),
            "image_size": self.image_size,
            "channels": self.channels,
            "preprocessing": self.preprocessing.to_metadata(),
        }

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
            size = int(metadata["image_size"])
            preprocessing = Preprocessing.from_metadata(metadata.get("preprocessing"), size)
            return cls(
                metadata["classes"],
                size,
                preprocessing.channels,
                preprocessing=preprocessing,
            )
        except KeyError as err:
            raise ValueError(f"model metadata misses {err.args[0]!r}: {dict(metadata)}") from None
        except PreprocessingError as err:
            raise ValueError(str(err)) from None

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
    def build_dataset(self, dataset_dir: Path, split: str) -> ManifestDataset[Any]:
        """The rows of `split` in `<dataset_dir>/manifest.csv` as a torch Dataset.

        Raises:
            DatasetError: the manifest, a label or an image file cannot be used.
        """

    def class_targets(self, dataset: ManifestDataset[Any]) -> np.ndarray | None:
        """The true class index of every item of `dataset` (from `build_dataset`), `(N,)`.

        None (the default) for a task whose targets are not one class per sample.
        """
        return None

    @abstractmethod
    def evaluation_targets(self, dataset: ManifestDataset[Any]) -> np.ndarray:
        """The true answer of every item of `dataset` (from `build_dataset`): what is scored.

        One entry per item in dataset order, so a boolean mask over the
        manifest rows selects a slice's targets (`targets[mask]`): class indices
        `(N,)` for classification, an object array of per-image boxes or texts
        for a detector or a recogniser.

        Raises:
            ValueError: `dataset` is not one this task can score.
        """

    def true_labels(self, dataset: ManifestDataset[Any]) -> np.ndarray:
        """Each item's true answer as text, in the terms of `DecodedBatch.labels`.

        So `decoded.labels[i] == true_labels(dataset)[i]` says the model got item
        i right (the reference profile's `correct`, what monitoring compares with
        labelled traffic). The default reads the manifest's `label` column.
        """
        return dataset.frame["label"].astype(str).to_numpy()

    @abstractmethod
    def evaluation_metrics(
        self, decoded: DecodedBatch, targets: np.ndarray, *, calibration_bins: int
    ) -> SplitMetrics:
        """The metrics of decoded model outputs against their `evaluation_targets` (or a slice).

        Called once for the whole split and once per slice; `values` must hold
        `primary_metric`. `calibration_bins` is `evaluate.calibration_bins` of
        params.yaml, for a task that measures calibration.

        Raises:
            ValueError: outputs and targets that cannot be scored (`MetricsError`
                names the offending row).
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

    def check_augment(self, cfg: AugmentConfig, dataset: Dataset[Any]) -> None:
        """Refuse augmentation that would wipe out this data (before any epoch runs).

        `dataset` is the training split as the loader reads it. The default
        checks nothing; a task whose augmentation has absolute amounts checks
        them against the data's range of values.

        Raises:
            flywheel.config.ConfigError: the augmentation would destroy the images.
        """
        del cfg, dataset  # nothing to check by default

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

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input of the exported module, without the batch dimension (`(C, H, W)`)."""

    @abstractmethod
    def preprocess(self, images: Sequence[ImageLike]) -> Tensor:
        """Images as they arrive at the service → the model's input batch.

        The same transform the training datasets use, so served and trained
        inputs match.
        """

    def pixels(self, batch: Tensor | np.ndarray) -> np.ndarray:
        """A batch of model inputs `(B, C, H, W)` in [0, 1] → grey levels `(B, H, W)` in [0, 1].

        What monitoring's summary features are computed on (the stored image
        keeps its colour: `stored_images`); the channel itself for one
        channel, else the channel mean.
        """
        array = batch.detach().cpu().numpy() if isinstance(batch, Tensor) else np.asarray(batch)
        return array[:, 0] if array.shape[1] == 1 else array.mean(axis=1)

    def stored_images(self, batch: Tensor | np.ndarray) -> np.ndarray:
        """A batch of model inputs `(B, C, H, W)` → the images the prediction log keeps.

        As served, in colour where the model takes RGB and at the data's own
        levels (`Preprocessing.stored`), so that a labelled production image
        merged into the dataset is what an imported one is; `pixels` (grey)
        is only for the summary features.
        """
        array = batch.detach().cpu().numpy() if isinstance(batch, Tensor) else np.asarray(batch)
        return self.preprocessing.stored(array)

    def profile_columns(self, decoded: DecodedBatch) -> dict[str, np.ndarray]:
        """Columns of the reference profile only this task has, one value per sample.

        Drift monitoring profiles every task's summary features, label,
        confidence and embedding (`flywheel.monitoring.reference`); a task adds
        what else its traffic is compared on (a detector: the regions it
        reports per page and their scores). None by default.
        """
        return {}

    @abstractmethod
    def export_module(self, model: nn.Module) -> nn.Module:
        """Wrap the trained model for export: one input tensor → one output tensor.

        One tensor keeps the exported model usable through MLflow's pyfunc
        flavour as well as the torch one; `export_metadata()` says how to cut it.
        """

    @abstractmethod
    def decode(self, output: Tensor | np.ndarray) -> DecodedBatch:
        """The exported module's output batch → predictions, confidences and embeddings per sample.

        Raises:
            ValueError: the output does not have the layout `export_metadata()` describes.
        """

    def postprocess(self, output: Tensor | np.ndarray) -> list[dict[str, Any]]:
        """The exported module's output batch → one JSON-able response per image.

        Per image: `label`, `confidence`, `probabilities` by class (empty
        without them) and `embedding`.
        """
        decoded = self.decode(output)
        return [
            {
                "label": decoded.labels[i],
                "confidence": float(decoded.confidence[i]),
                "probabilities": decoded.probability_map(i),
                "embedding": decoded.embedding[i].astype(float).tolist(),
            }
            for i in range(len(decoded))
        ]


def _device_of(outputs: Any) -> torch.device:
    if isinstance(outputs, Tensor):
        return outputs.device
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], Tensor):
        return outputs[0].device
    return torch.device("cpu")
