"""Training: seeded, resumable, distributed when launched with torchrun, tracked in MLflow.

`train(params, dataset_dir, out_dir=...)` trains the task named in
`params.train` on a manifest dataset and returns a `TrainResult`. The loop is
task-agnostic (`flywheel.tasks.Task` supplies data, model, augmentation, loss
and metrics) and does the rest:

* **Reproducible**: seeded Python/NumPy/torch RNGs, an explicit generator for
  the shuffling and one for the augmentations, `torch.use_deterministic_algorithms`
  (strict on CPU, warn-only on CUDA where some kernels have no deterministic
  variant). Two runs with the same seed give identical weights on CPU.
* **Resumable, bit-identically**: after every epoch a checkpoint (model,
  optimizer, scheduler, AMP scaler, every RNG state of every rank, history,
  early-stopping state, MLflow run id) is written atomically (temp file +
  `os.replace`); `resume=True` restarts from it, continues the same MLflow run
  and ends with exactly the weights of an uninterrupted run.
* **Accelerated when possible**: CUDA with mixed precision (bf16, or fp16 with
  a GradScaler) when a GPU is present; DistributedDataParallel when `torchrun`
  sets `WORLD_SIZE` > 1 (NCCL on GPUs, gloo on CPU). Only rank 0 logs and writes.
* **Watched**: early stopping on the monitored validation metric, an
  overfitting flag, learning curves as per-epoch MLflow metrics and a PNG, and
  the best model logged in the pt2 (`torch.export`) format with a dynamic
  batch dimension, plus lineage tags.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm  # not tqdm.auto: its asyncio mixin opens a second DataLoader iterator

from flywheel.config import PRODUCTION_SOURCE, Params, TrainConfig
from flywheel.data.manifest import manifest_path, sha256_file
from flywheel.tasks import Task, get_task
from flywheel.tasks.base import Direction
from flywheel.tracking import (
    configure_tracking,
    ensure_experiment,
    flatten_params,
    hash_params,
    lineage_tags,
)

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
CURVES_PNG = "learning_curves.png"
HISTORY_JSON = "history.json"
MODEL_ARTIFACT = "model"
"""Name of the logged MLflow model: `runs:/<run_id>/model`, `models:/<model_id>`."""

PIP_REQUIREMENTS: tuple[str, ...] = (f"torch=={torch.__version__.split('+')[0]}", "numpy<3")
"""What loading the exported pt2 model needs; explicit, so MLflow does not infer (slow)."""

EpochCallback = Callable[[int, dict[str, float]], None]

DECODED_CACHE_BYTES = 1 << 30
"""Per split, decoded samples kept in memory after their first read (in-process loading only)."""


class TrainingError(RuntimeError):
    """Training cannot start or resume as asked (bad checkpoint, mismatched params, ...)."""


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        run_id: the MLflow run (None on DDP ranks other than 0).
        model_uri: the logged model (`runs:/<run_id>/model`), None when not logged.
        best_checkpoint: weights of the best epoch (`model` state dict inside).
        last_checkpoint: full training state after the last epoch.
        history: one row per epoch: `epoch`, `train_*`, `val_*`, `lr`, `epoch_seconds`.
        monitor: the validation metric that chose the best epoch.
        best_metric: its best value.
        best_epoch: the epoch (1-based) that reached it.
        epochs_run: epochs completed (fewer than asked when stopped early).
        stopped_early: patience ran out before `train.epochs`.
        overfitting: the validation metric stalled while the training one kept improving.
        device: what it ran on (the `flywheel.device` tag).
        train_seconds: wall time of the epochs run by this call (not those before a resume).
        model: the trained network with the final epoch's weights, on its training
            device (the best epoch's weights are in `best_checkpoint` and the logged model).
        log_model_seconds: wall time of `mlflow.pytorch.log_model`, None when not logged.
    """

    run_id: str | None
    model_uri: str | None
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, float]]
    monitor: str
    best_metric: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    overfitting: bool
    device: str
    train_seconds: float
    model: nn.Module = field(repr=False)
    log_model_seconds: float | None = None


# --------------------------------------------------------------------------- pure helpers


@dataclass
class EarlyStopping:
    """Stop when the monitored metric has not improved by `min_delta` for `patience` epochs.

    >>> stopper = EarlyStopping(patience=2, min_delta=0.0, mode="max")
    >>> [stopper.update(v, epoch) for epoch, v in enumerate([0.5, 0.6, 0.6, 0.55], start=1)]
    [True, True, False, False]
    >>> stopper.should_stop, stopper.best, stopper.best_epoch
    (True, 0.6, 2)
    """

    patience: int
    min_delta: float
    mode: Direction
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def is_improvement(self, value: float) -> bool:
        """Whether `value` beats the best so far by more than `min_delta` (NaN never does)."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is the new best."""
        if self.is_improvement(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Patience is exhausted."""
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""
        for key, value in state.items():
            setattr(self, key, value)


def detect_overfitting(
    history: Sequence[dict[str, float]],
    monitor: str,
    mode: Direction,
    patience: int,
    min_delta: float,
) -> bool:
    """True when, over the last `patience` epochs, validation stalled but training improved.

    "Stalled": the monitored validation metric's best in the window does not beat
    its best before the window by `min_delta`. "Improved": the same metric on the
    training split (`val_x` → `train_x`) got better by more than `min_delta`
    from the epoch before the window to the last one.

    >>> rows = [{"val_loss": v, "train_loss": t} for v, t in
    ...         [(1.0, 1.0), (0.5, 0.5), (0.6, 0.3), (0.7, 0.1)]]
    >>> detect_overfitting(rows, "val_loss", "min", patience=2, min_delta=0.01)
    True
    """
    if len(history) <= patience:
        return False
    train_metric = "train_" + monitor.removeprefix("val_")
    sign = 1.0 if mode == "max" else -1.0
    before, window = history[:-patience], history[-patience:]
    best_before = max(sign * row[monitor] for row in before)
    best_window = max(sign * row[monitor] for row in window)
    val_stalled = not best_window > best_before + min_delta
    train_start, train_end = sign * before[-1][train_metric], sign * window[-1][train_metric]
    return val_stalled and train_end > train_start + min_delta


def plot_learning_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Draw train/val curves of every metric in `history` (one panel each) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display; safe to call in servers and workers
    import matplotlib.pyplot as plt

    names = sorted(
        {k.removeprefix("val_") for row in history for k in row if k.startswith("val_")},
        key=lambda n: (n != "loss", n),
    )
    epochs = [int(row["epoch"]) for row in history]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            key = f"{split}_{name}"
            if any(key in row for row in history):
                ax.plot(epochs, [row.get(key, math.nan) for row in history], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write `state` atomically: a temp file, fsync, then `os.replace` over `path`.

    A process killed at any moment leaves either the previous checkpoint or the
    new one, never a torn file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True` (tensors and plain containers, no code).

    Raises:
        TrainingError: the file is missing or not a readable checkpoint.
    """
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no checkpoint") from None
    except Exception as err:  # torch raises many types for a corrupt/foreign file
        raise TrainingError(f"{path}: not a readable checkpoint: {err}") from None
    return state


def capture_rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every RNG state of this process, in a form `torch.load(weights_only=True)` accepts."""
    # The legacy global NumPy RNG is what third-party code draws from: capture it as is.
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)  # noqa: NPY002
    return {
        "python": random.getstate(),
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Inverse of `capture_rng_state`."""
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002 - restores the legacy global RNG captured above
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])


def _as_tuple(value: Any) -> Any:
    """`random.setstate` needs tuples; a round trip may turn them into lists."""
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global RNG is the one to seed
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: NumPy's and Python's seeds from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 - the global RNG is the one to seed
    random.seed(seed)


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly single-process) job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs to MLflow and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(use_cuda: bool) -> DistContext:
    """Join the process group `torchrun` describes (env `RANK`, `WORLD_SIZE`, `MASTER_ADDR`...).

    A single process (no `WORLD_SIZE`, or 1) needs no group. The backend is NCCL
    for GPUs and gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 1:
        return DistContext()
    if dist.is_initialized():
        return DistContext(dist.get_rank(), local_rank, dist.get_world_size(), False)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(dist.get_rank(), local_rank, dist.get_world_size(), True)


def _broadcast_flag(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """Rank 0's decision, on every rank (so no rank leaves the loop alone and hangs the rest)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


# --------------------------------------------------------------------------- data


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
    """Positions of the labelled production images (manifest `source=production`) in a split.

    Task datasets that keep their manifest rows as `frame` (in dataset order)
    expose them; others have none.

    >>> class Rows(Dataset):
    ...     frame = pd.DataFrame({"source": ["font:a", "production", "production"]})
    >>> production_indices(Rows())
    [1, 2]
    """
    frame = getattr(dataset, "frame", None)
    if not isinstance(frame, pd.DataFrame) or "source" not in frame.columns:
        return []
    return [int(i) for i in np.flatnonzero(frame["source"].to_numpy() == PRODUCTION_SOURCE)]


def _tensors(sample: Any) -> list[Any]:
    """The leaves of a sample (a tensor, or tuples/lists of them)."""
    if isinstance(sample, tuple | list):
        return [leaf for item in sample for leaf in _tensors(item)]
    return [sample]


# --------------------------------------------------------------------------- the loop


@dataclass
class _Loop:
    """Everything one training run holds, so the epoch functions stay small."""

    params: Params
    cfg: TrainConfig
    task: Task
    ctx: DistContext
    device: torch.device
    model: nn.Module  # the bare model (what checkpoints hold)
    wrapped: nn.Module  # the model called in training (DDP wrapper or the same object)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    generators: dict[str, torch.Generator]
    train_loader: DataLoader[Any]
    val_loader: DataLoader[Any]
    sampler: DistributedSampler[Any] | None
    stopper: EarlyStopping
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None
    start_epoch: int = 1


def train(
    params: Params,
    dataset_dir: Path,
    *,
    out_dir: Path,
    resume: bool = False,
    data_version: str | None = None,
    log_model: bool = True,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `params.train` on the dataset in `dataset_dir`; log the run and the model to MLflow.

    Args:
        params: the whole configuration (`data` gives the classes and image
            size, `train` everything else).
        dataset_dir: folder with `manifest.csv` and the images (`train` and `val` splits used).
        out_dir: where checkpoints, `history.json` and the learning-curve PNG go.
        resume: continue from `<out_dir>/checkpoints/last.pt` if it exists (and
            the same MLflow run); without a checkpoint, start fresh.
        data_version: the DVC data version for the lineage tag; None records "unknown"
            (the manifest's SHA-256 is tagged either way).
        log_model: log the best weights as an MLflow pt2 model.
        on_epoch_end: called on every rank after each epoch's checkpoint with
            `(epoch, metrics)`; an exception from it (e.g. an Optuna prune)
            ends training and marks the MLflow run failed.
        progress: show tqdm bars (rank 0 only).

    Raises:
        flywheel.tasks.DatasetError: the dataset cannot be read.
        TrainingError: a checkpoint cannot be resumed, or the batch size does not
            split across processes.
    """
    cfg = params.train
    task = get_task(cfg.task).from_params(params)
    task.direction(cfg.monitor)  # fail now, not after the first epoch, on an unknown metric
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but no CUDA device is available")
    ctx = setup_distributed(use_cuda)
    try:
        with _determinism(cfg.deterministic, use_cuda):
            return _train(
                params,
                task,
                ctx,
                use_cuda,
                Path(dataset_dir),
                Path(out_dir),
                resume=resume,
                data_version=data_version,
                log_model=log_model,
                on_epoch_end=on_epoch_end,
                progress=progress,
            )
    finally:
        if ctx.initialized_here:
            dist.destroy_process_group()


@contextmanager
def _determinism(enabled: bool, use_cuda: bool) -> Iterator[None]:
    """Deterministic kernels for the duration of training; the caller's setting is restored."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled and use_cuda:
        # cuBLAS needs this before its first call to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.use_deterministic_algorithms(enabled, warn_only=use_cuda)
    # Deterministic mode also fills every new tensor with NaN, a debugging aid that
    # only matters for kernels reading memory they never wrote: pure cost here.
    # Identical weights across runs, killed-and-resumed runs and DDP are asserted
    # by the tests without it.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.utils.deterministic.fill_uninitialized_memory = previous_fill  # type: ignore[attr-defined]


def _train(
    params: Params,
    task: Task,
    ctx: DistContext,
    use_cuda: bool,
    dataset_dir: Path,
    out_dir: Path,
    *,
    resume: bool,
    data_version: str | None,
    log_model: bool,
    on_epoch_end: EpochCallback | None,
    progress: bool,
) -> TrainResult:
    cfg = params.train
    device = torch.device(f"cuda:{ctx.local_rank}") if use_cuda else torch.device("cpu")
    device_name = _describe_device(device, ctx)
    checkpoints = out_dir / CHECKPOINT_DIR
    last_path, best_path = checkpoints / LAST_CHECKPOINT, checkpoints / BEST_CHECKPOINT
    signature = _training_signature(params)

    loop = _build_loop(params, task, ctx, device, dataset_dir)
    if resume and last_path.is_file():
        _restore(loop, load_checkpoint(last_path), signature, last_path)
        log.info("resuming from %s after epoch %d", last_path, loop.start_epoch - 1)
    elif resume:
        log.info("no checkpoint at %s: starting from scratch", last_path)

    mlflow_run = None
    if ctx.is_main:
        mlflow_run = _start_run(loop, params, dataset_dir, data_version, device_name)
        loop.run_id = mlflow_run.info.run_id
    show = progress and ctx.is_main

    started = time.perf_counter()
    # A checkpoint written by an early stop resumes to the same end, not to more epochs.
    stopped_early = loop.stopper.should_stop and len(loop.history) < cfg.epochs
    last_epoch = len(loop.history) if stopped_early else cfg.epochs
    try:
        for epoch in range(loop.start_epoch, last_epoch + 1):
            row = _run_epoch(loop, epoch, show)
            loop.history.append(row)
            improved = loop.stopper.update(row[cfg.monitor], epoch)
            stop = _broadcast_flag(loop.stopper.should_stop, ctx, device)
            if ctx.is_main:
                import mlflow

                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
                if improved:
                    save_checkpoint(
                        {
                            "model": loop.model.state_dict(),
                            "epoch": epoch,
                            cfg.monitor: row[cfg.monitor],
                        },
                        best_path,
                    )
            rng = _gather_rng(loop)
            if ctx.is_main:
                save_checkpoint(_checkpoint_state(loop, epoch, signature, rng), last_path)
            if ctx.distributed:
                dist.barrier()  # no rank runs ahead of the checkpoint it may have to resume from
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
            if stop and epoch < cfg.epochs:
                stopped_early = True
                log.info(
                    "early stop after epoch %d: %s has not improved for %d epochs",
                    epoch,
                    cfg.monitor,
                    cfg.patience,
                )
                break
        train_seconds = time.perf_counter() - started
        result = _finish(
            loop,
            task,
            out_dir,
            best_path,
            last_path,
            stopped_early,
            train_seconds,
            device_name,
            log_model,
        )
    except BaseException as err:
        if mlflow_run is not None:
            import mlflow

            mlflow.end_run(status="KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    if mlflow_run is not None:
        import mlflow

        mlflow.end_run(status="FINISHED")
    return result


def _build_loop(
    params: Params, task: Task, ctx: DistContext, device: torch.device, dataset_dir: Path
) -> _Loop:
    cfg = params.train
    if cfg.batch_size % ctx.world_size:
        raise TrainingError(
            f"train.batch_size {cfg.batch_size} does not split evenly over "
            f"{ctx.world_size} processes"
        )
    train_set: Dataset[Any] = task.build_dataset(dataset_dir, "train")
    val_set: Dataset[Any] = task.build_dataset(dataset_dir, "val")
    repeated = production_indices(train_set) * (cfg.production_repeat - 1)
    if cfg.num_workers == 0:  # workers' memory does not outlive an epoch: only cache in-process
        train_set, val_set = DecodedOnce(train_set), DecodedOnce(val_set)
    if repeated:  # oversample the labelled drift (a repeat reads the cached sample)
        train_set = Subset(train_set, [*range(len(train_set)), *repeated])  # type: ignore[arg-type]

    seed_everything(cfg.seed)  # same initial weights on every rank
    model = task.build_model(cfg.model).to(device)
    torch.manual_seed(cfg.seed + ctx.rank)  # dropout differs per rank
    generators = {
        "shuffle": torch.Generator().manual_seed(cfg.seed),
        "augment": torch.Generator().manual_seed(cfg.seed + 1_000_003 * (ctx.rank + 1)),
    }
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
        generator=generators["shuffle"],
        **loader_args,
    )
    val_loader = DataLoader(val_set, batch_size=per_rank_batch, shuffle=False, **loader_args)

    optimizer = _build_optimizer(cfg, model)
    scheduler = _build_scheduler(cfg, optimizer)
    amp = cfg.amp and device.type == "cuda"
    amp_dtype = (
        (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if amp else None
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    wrapped: nn.Module = model
    if ctx.distributed:
        wrapped = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return _Loop(
        params=params,
        cfg=cfg,
        task=task,
        ctx=ctx,
        device=device,
        model=model,
        wrapped=wrapped,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        amp_dtype=amp_dtype,
        generators=generators,
        train_loader=train_loader,
        val_loader=val_loader,
        sampler=sampler,
        stopper=EarlyStopping(cfg.patience, cfg.min_delta, task.direction(cfg.monitor)),
    )


def _build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.momentum > 0,
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _build_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per epoch."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return None


def _run_epoch(loop: _Loop, epoch: int, show: bool) -> dict[str, float]:
    """Train one epoch, validate, step the schedule; the epoch's history row."""
    cfg, task, device = loop.cfg, loop.task, loop.device
    started = time.perf_counter()
    lr = float(loop.optimizer.param_groups[0]["lr"])
    if loop.sampler is not None:
        loop.sampler.set_epoch(epoch)
    loop.wrapped.train()
    meter = task.new_metrics(device)
    bar = tqdm(
        loop.train_loader,
        desc=f"epoch {epoch}/{cfg.epochs}",
        disable=not show,
        leave=True,
        unit="batch",
        dynamic_ncols=True,
    )
    for step, (inputs, targets) in enumerate(bar):
        inputs, targets = task.to_device(inputs, targets, device)
        inputs, targets = task.augment(inputs, targets, cfg.augment, loop.generators["augment"])
        with torch.autocast(device.type, dtype=loop.amp_dtype, enabled=loop.amp_dtype is not None):
            outputs = loop.wrapped(inputs)
            loss = task.loss(outputs, targets)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        meter.update(outputs, targets, loss)
        if show and step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    meter.sync()
    row: dict[str, float] = {"epoch": float(epoch)}
    row.update({f"train_{k}": v for k, v in meter.compute().items()})
    if loop.ctx.distributed:
        # BatchNorm statistics drift apart per rank (each sees its own batches):
        # take rank 0's so every rank validates and checkpoints the same model.
        for buffer in loop.model.buffers():
            dist.broadcast(buffer, src=0)
    row.update({f"val_{k}": v for k, v in _evaluate(loop).items()})
    if loop.scheduler is not None:
        loop.scheduler.step()
    row["lr"] = lr
    row["epoch_seconds"] = time.perf_counter() - started
    # The bar's last state is the epoch's summary line: train loss and validation metrics.
    bar.set_postfix(
        {"loss": f"{row['train_loss']:.3f}"}
        | {k: f"{v:.4f}" for k, v in row.items() if k.startswith("val_")},
        refresh=True,
    )
    bar.close()
    return row


@torch.no_grad()
def _evaluate(loop: _Loop) -> dict[str, float]:
    """Metrics of the current model on this rank's validation shard, summed over ranks."""
    loop.model.eval()
    meter = loop.task.new_metrics(loop.device)
    for inputs, targets in loop.val_loader:
        inputs, targets = loop.task.to_device(inputs, targets, loop.device)
        with torch.autocast(
            loop.device.type, dtype=loop.amp_dtype, enabled=loop.amp_dtype is not None
        ):
            outputs = loop.model(inputs)
            loss = loop.task.loss(outputs, targets)
        meter.update(outputs, targets, loss)
    meter.sync()
    return meter.compute()


# --------------------------------------------------------------------------- state


def _training_signature(params: Params) -> str:
    """What must not change between a checkpoint and its resume: the train section and classes."""
    return hash_params(
        {
            "train": params.train.model_dump(mode="json"),
            "classes": list(params.data.classes),
            "image_size": params.data.image_size,
        }
    )


def _gather_rng(loop: _Loop) -> list[dict[str, Any]]:
    """Every rank's RNG state (collected on rank 0; other ranks get an empty list)."""
    state = capture_rng_state(loop.generators)
    if not loop.ctx.distributed:
        return [state]
    gathered: list[Any] | None = [None] * loop.ctx.world_size if loop.ctx.is_main else None
    dist.gather_object(state, gathered, dst=0)
    return list(gathered or [])


def _checkpoint_state(
    loop: _Loop, epoch: int, signature: str, rng: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "signature": signature,
        "world_size": loop.ctx.world_size,
        "run_id": loop.run_id,
        "model": loop.model.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict() if loop.scheduler is not None else None,
        "scaler": loop.scaler.state_dict(),
        "rng": rng,
        "history": loop.history,
        "early_stopping": loop.stopper.state_dict(),
    }


def _restore(loop: _Loop, state: dict[str, Any], signature: str, path: Path) -> None:
    """Load a `last.pt` into the loop, after checking it belongs to this configuration."""
    if state.get("signature") != signature:
        raise TrainingError(
            f"{path} was written with other training params (signature "
            f"{state.get('signature')} vs {signature}); train without resume or use another out_dir"
        )
    loop.model.load_state_dict(state["model"])
    loop.optimizer.load_state_dict(state["optimizer"])
    if loop.scheduler is not None and state["scheduler"] is not None:
        loop.scheduler.load_state_dict(state["scheduler"])
    loop.scaler.load_state_dict(state["scaler"])
    loop.stopper.load_state_dict(state["early_stopping"])
    loop.history = list(state["history"])
    loop.run_id = state["run_id"]
    loop.start_epoch = int(state["epoch"]) + 1
    rng = state["rng"]
    if len(rng) == loop.ctx.world_size:
        restore_rng_state(rng[loop.ctx.rank], loop.generators)
    else:
        log.warning(
            "%s was written by %d processes, resuming with %d: RNG streams restart "
            "(the result will differ from an uninterrupted run)",
            path,
            len(rng),
            loop.ctx.world_size,
        )


# --------------------------------------------------------------------------- MLflow


def _describe_device(device: torch.device, ctx: DistContext) -> str:
    name = "cpu" if device.type == "cpu" else f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{name} x{ctx.world_size}" if ctx.distributed else name


def _start_run(
    loop: _Loop, params: Params, dataset_dir: Path, data_version: str | None, device_name: str
) -> Any:
    """Open the MLflow run (the checkpoint's run when resuming) and record params and lineage."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking = configure_tracking()
    if loop.run_id is not None:
        try:
            return mlflow.start_run(run_id=loop.run_id)
        except MlflowException:
            log.warning(
                "run %s of the checkpoint is not in %s: starting a new run",
                loop.run_id,
                tracking.uri,
            )
    experiment_id = ensure_experiment(loop.cfg.experiment, tracking)
    # Inside a caller's run (a tuning study's parent run), this run becomes its child.
    run = mlflow.start_run(experiment_id=experiment_id, nested=mlflow.active_run() is not None)
    recorded = {
        "data": params.data.model_dump(mode="json"),
        "train": params.train.model_dump(mode="json"),
    }
    mlflow.log_params(flatten_params(recorded))
    manifest = manifest_path(dataset_dir)
    tags = lineage_tags(
        data_version=data_version, params_hash=hash_params(recorded), device=device_name
    )
    tags.update(
        {
            "flywheel.task": loop.task.name,
            "flywheel.model": loop.cfg.model.name,
            "flywheel.dataset_dir": str(dataset_dir),
            "flywheel.manifest_sha256": sha256_file(manifest),
        }
    )
    mlflow.set_tags(tags)
    return run


def _finish(
    loop: _Loop,
    task: Task,
    out_dir: Path,
    best_path: Path,
    last_path: Path,
    stopped_early: bool,
    train_seconds: float,
    device_name: str,
    log_model: bool,
) -> TrainResult:
    """Curves, overfitting flag, summary metrics and the logged model (rank 0)."""
    cfg = loop.cfg
    overfitting = detect_overfitting(
        loop.history, cfg.monitor, loop.stopper.mode, cfg.patience, cfg.min_delta
    )
    model_uri: str | None = None
    log_seconds: float | None = None
    if loop.ctx.is_main:
        import mlflow

        (out_dir / HISTORY_JSON).write_text(json.dumps(loop.history, indent=1))
        curves = plot_learning_curves(loop.history, out_dir / CURVES_PNG)
        mlflow.log_artifact(str(curves))
        mlflow.log_artifact(str(out_dir / HISTORY_JSON))
        mlflow.log_metrics(
            {
                f"best_{cfg.monitor}": _or_nan(loop.stopper.best),
                "best_epoch": float(loop.stopper.best_epoch),
                "epochs_run": float(len(loop.history)),
                "stopped_early": float(stopped_early),
                "overfitting": float(overfitting),
                "train_seconds": train_seconds,
            }
        )
        mlflow.set_tags(
            {
                "flywheel.stopped_early": str(stopped_early).lower(),
                "flywheel.overfitting": str(overfitting).lower(),
            }
        )
        if log_model:
            best = load_checkpoint(best_path)["model"]
            example, _ = next(iter(loop.val_loader))  # real inputs, (B, C, H, W)
            model_uri, log_seconds = log_exported_model(
                task, loop.model, best, example, loop.cfg.model.embedding_dim
            )
            mlflow.log_metric("log_model_seconds", log_seconds)
    return TrainResult(
        run_id=loop.run_id if loop.ctx.is_main else None,
        model_uri=model_uri,
        best_checkpoint=best_path,
        last_checkpoint=last_path,
        history=list(loop.history),
        monitor=cfg.monitor,
        best_metric=_or_nan(loop.stopper.best),
        best_epoch=loop.stopper.best_epoch,
        epochs_run=len(loop.history),
        stopped_early=stopped_early,
        overfitting=overfitting,
        device=device_name,
        train_seconds=train_seconds,
        model=loop.model,
        log_model_seconds=log_seconds,
    )


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def log_exported_model(
    task: Task,
    model: nn.Module,
    state_dict: dict[str, Any],
    example: torch.Tensor,
    embedding_dim: int,
) -> tuple[str, float]:
    """Log `model` with `state_dict` loaded as an MLflow pt2 model in the active run.

    The task's export wrapper gives one output tensor (for classification:
    probabilities ‖ embedding). The signature marks the batch dimension -1 and
    the input example holds two images: MLflow then exports with
    `torch.export.Dim.AUTO` on that dimension, so the loaded program accepts any
    batch size (an example of batch 1 would pin it to 1). No pickle anywhere.

    Args:
        task: gives the export wrapper and the metadata serving needs.
        model: the trained network (any device; a CPU float32 copy is exported).
        state_dict: the weights to export (the best epoch's).
        example: a batch of real inputs `(B, C, H, W)`; the first two become the example.
        embedding_dim: recorded in the metadata.

    Returns:
        The model URI and the seconds `log_model` took.
    """
    import mlflow
    import mlflow.pytorch
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    cpu_model = copy.deepcopy(model).to("cpu").float()
    cpu_model.load_state_dict(state_dict)
    exported = task.export_module(cpu_model).eval()
    example = example[:2].detach().to("cpu", torch.float32)  # (2, C, H, W)
    if example.shape[0] < 2:
        example = example.repeat(2, 1, 1, 1)
    with torch.no_grad():
        output = exported(example)  # (2, O)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *output.shape[1:]))]),
    )
    metadata = {**task.export_metadata(), "embedding_dim": embedding_dim}
    started = time.perf_counter()
    info = mlflow.pytorch.log_model(
        exported,
        name=MODEL_ARTIFACT,
        input_example=example.numpy(),
        signature=signature,
        pip_requirements=list(PIP_REQUIREMENTS),
        metadata=metadata,
        serialization_format="pt2",
    )
    return info.model_uri, time.perf_counter() - started
