"""The training loop's data: the task's splits, cached once decoded, oversampled, batched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from flywheel.config import PRODUCTION_SOURCE, TrainConfig
from flywheel.data.pages import is_production_page
from flywheel.modeling.distributed import DistContext
from flywheel.modeling.reproducibility import seed_worker
from flywheel.tasks import Task

DECODED_CACHE_BYTES = 1 << 30
"""Per split, decoded samples kept in memory after their first read (in-process loading only)."""


class DecodedOnce(Dataset[Any]):
    """A dataset whose samples are kept after their first read, up to `budget_bytes`.

    Task datasets decode lazily, so DataLoader workers can share the work; read
    in-process (`num_workers: 0`), that re-decoded every image every epoch —
    about a tenth of an epoch for the demo data, and the platform's largest cost
    over a hand-written loop on tensors (`benchmarks/training_overhead.py`).
    Reads are deterministic and the loop never writes into a sample (batches are
    new tensors, augmentation returns new ones), so sharing them across epochs
    changes nothing but the time. Past the budget, samples are read as before.

    >>> class Reads(Dataset):
    ...     log: list[int] = []
    ...     def __len__(self) -> int: return 2
    ...     def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
    ...         self.log.append(i); return torch.zeros(4), i  # 16 bytes
    >>> data = DecodedOnce(Reads(), budget_bytes=16)  # room for one sample
    >>> [data[i][1] for i in (0, 1, 0, 1)], Reads.log
    ([0, 1, 0, 1], [0, 1, 1])
    """

    def __init__(self, dataset: Dataset[Any], budget_bytes: int = DECODED_CACHE_BYTES) -> None:
        self.dataset = dataset
        self.budget_bytes = budget_bytes
        self.cached_bytes = 0
        self._samples: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        sample = self._samples.get(index)
        if sample is None:
            sample = self.dataset[index]
            if self.cached_bytes < self.budget_bytes:
                self._samples[index] = sample
                self.cached_bytes += sum(
                    t.nbytes for t in _tensors(sample) if isinstance(t, torch.Tensor)
                )
        return sample


def production_indices(dataset: Dataset[Any]) -> list[int]:
    """Positions of the labelled production images in a split.

    Task datasets that keep their manifest rows as `frame` (in dataset order)
    expose them: a row of `source=production` (digits), or a page (`image_id`)
    or crop of a page (`page_id`) the page merge named `production-…`
    (`flywheel.labeling.merge.production_image_id`). Others have none.

    >>> class Rows(Dataset):
    ...     frame = pd.DataFrame({"source": ["font:a", "production", "production"]})
    >>> production_indices(Rows())
    [1, 2]
    >>> class Crops(Dataset):
    ...     frame = pd.DataFrame({"page_id": ["train-high-00001", "production-page-3-0"]})
    >>> production_indices(Crops())
    [1]
    """
    frame = getattr(dataset, "frame", None)
    if not isinstance(frame, pd.DataFrame):
        return []
    if "source" in frame.columns:
        mask = frame["source"].to_numpy() == PRODUCTION_SOURCE
    else:
        column = next((c for c in ("page_id", "image_id") if c in frame.columns), None)
        if column is None:
            return []
        mask = is_production_page(frame[column])
    return [int(i) for i in np.flatnonzero(mask)]


def _tensors(sample: Any) -> list[Any]:
    """The leaves of a sample (a tensor, or tuples/lists of them)."""
    if isinstance(sample, tuple | list):
        return [leaf for item in sample for leaf in _tensors(item)]
    return [sample]


def training_datasets(
    task: Task, cfg: TrainConfig, dataset_dir: Path
) -> tuple[Dataset[Any], Dataset[Any]]:
    """The `train` and `val` splits, cached in-process, with the production images repeated.

    Raises:
        flywheel.tasks.DatasetError: the dataset cannot be read.
    """
    train_set: Dataset[Any] = task.build_dataset(dataset_dir, "train")
    val_set: Dataset[Any] = task.build_dataset(dataset_dir, "val")
    repeated = production_indices(train_set) * (cfg.production_repeat - 1)
    if cfg.num_workers == 0:  # workers' memory does not outlive an epoch: only cache in-process
        train_set, val_set = DecodedOnce(train_set), DecodedOnce(val_set)
    if repeated:  # oversample the labelled drift (a repeat reads the cached sample)
        train_set = Subset(train_set, [*range(len(train_set)), *repeated])  # type: ignore[arg-type]
    return train_set, val_set


def build_loaders(
    train_set: Dataset[Any],
    val_set: Dataset[Any],
    task: Task,
    cfg: TrainConfig,
    ctx: DistContext,
    device: torch.device,
    shuffle: torch.Generator,
) -> tuple[DataLoader[Any], DataLoader[Any], DistributedSampler[Any] | None]:
    """This rank's train and val loaders, and the sampler that shards the training split.

    Each rank takes `batch_size / world_size` samples a step; `shuffle` orders a
    single process's epochs (a DDP job's sampler is seeded with `cfg.seed`).
    """
    per_rank_batch = cfg.batch_size // ctx.world_size
    sampler: DistributedSampler[Any] | None = None
    if ctx.distributed:
        sampler = DistributedSampler(
            train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed
        )
        # Validation is sharded without padding (DistributedSampler would repeat
        # samples); the metric totals are summed over ranks afterwards.
        val_set = Subset(val_set, range(ctx.rank, len(val_set), ctx.world_size))  # type: ignore[arg-type]
    loader_args: dict[str, Any] = {
        "num_workers": cfg.num_workers,
        "worker_init_fn": seed_worker,
        "pin_memory": device.type == "cuda",
        "collate_fn": task.collate_fn(),
    }
    train_loader = DataLoader(
        train_set,
        batch_size=per_rank_batch,
        shuffle=sampler is None,
        sampler=sampler,
        generator=shuffle,
        **loader_args,
    )
    val_loader = DataLoader(val_set, batch_size=per_rank_batch, shuffle=False, **loader_args)
    return train_loader, val_loader, sampler
