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

This module holds `train` and the epoch loop; the parts live beside it in
`flywheel.modeling`: `reproducibility` (seeds, RNG states, deterministic
kernels), `checkpoints` (atomic writes, exact resume), `distributed` (device,
AMP, the DDP process group), `loaders` (datasets and data loaders), `loop` (the
state of one run and how it is built), `early_stopping`, `run_logging` (the
MLflow run) and `export` (the pt2 model).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm  # not tqdm.auto: its asyncio mixin opens a second DataLoader iterator

from flywheel.config import Params
from flywheel.modeling.checkpoints import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    TrainingError,
    checkpoint_state,
    gather_rng,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    training_signature,
)
from flywheel.modeling.distributed import (
    DistContext,
    broadcast_buffers,
    broadcast_flag,
    describe_device,
    setup_distributed,
    wants_cuda,
)
from flywheel.modeling.early_stopping import detect_overfitting
from flywheel.modeling.export import log_exported_model
from flywheel.modeling.loop import TrainingLoop, build_loop
from flywheel.modeling.reproducibility import deterministic_algorithms
from flywheel.modeling.run_logging import ending_run, log_outcome, or_nan, start_run
from flywheel.tasks import Task, get_task

__all__ = [
    "EpochCallback",
    "TrainResult",
    "TrainingError",
    "log_exported_model",
    "train",
]

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


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
    use_cuda = wants_cuda(cfg.device)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but no CUDA device is available")
    ctx = setup_distributed(use_cuda)
    try:
        with deterministic_algorithms(cfg.deterministic, use_cuda):
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
    device_name = describe_device(device, ctx)
    checkpoints = out_dir / CHECKPOINT_DIR
    last_path, best_path = checkpoints / LAST_CHECKPOINT, checkpoints / BEST_CHECKPOINT
    signature = training_signature(params)

    if cfg.batch_size % ctx.world_size:
        raise TrainingError(
            f"train.batch_size {cfg.batch_size} does not split evenly over "
            f"{ctx.world_size} processes"
        )
    loop = build_loop(params, task, ctx, device, dataset_dir)
    if resume and last_path.is_file():
        restore_checkpoint(loop, load_checkpoint(last_path), signature, last_path)
        log.info("resuming from %s after epoch %d", last_path, loop.start_epoch - 1)
    elif resume:
        log.info("no checkpoint at %s: starting from scratch", last_path)

    mlflow_run = None
    if ctx.is_main:
        mlflow_run = start_run(loop, params, dataset_dir, data_version, device_name)
        loop.run_id = mlflow_run.info.run_id
    show = progress and ctx.is_main

    started = time.perf_counter()
    # A checkpoint written by an early stop resumes to the same end, not to more epochs.
    stopped_early = loop.stopper.should_stop and len(loop.history) < cfg.epochs
    last_epoch = len(loop.history) if stopped_early else cfg.epochs
    with ending_run(active=mlflow_run is not None):
        for epoch in range(loop.start_epoch, last_epoch + 1):
            row = _run_epoch(loop, epoch, show)
            loop.history.append(row)
            improved = loop.stopper.update(row[cfg.monitor], epoch)
            stop = broadcast_flag(loop.stopper.should_stop, ctx, device)
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
            rng = gather_rng(loop)
            if ctx.is_main:
                save_checkpoint(checkpoint_state(loop, epoch, signature, rng), last_path)
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
    return result


def _run_epoch(loop: TrainingLoop, epoch: int, show: bool) -> dict[str, float]:
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
        outputs, loss = _forward(loop, loop.wrapped, inputs, targets)
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
    broadcast_buffers(loop.model, loop.ctx)  # every rank validates the same model
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


def _forward(
    loop: TrainingLoop, module: nn.Module, inputs: Any, targets: Any
) -> tuple[Any, torch.Tensor]:
    """The module's outputs and the task's loss, in mixed precision where the loop uses it."""
    with torch.autocast(loop.device.type, dtype=loop.amp_dtype, enabled=loop.amp_dtype is not None):
        outputs = module(inputs)
        return outputs, loop.task.loss(outputs, targets)


@torch.no_grad()
def _evaluate(loop: TrainingLoop) -> dict[str, float]:
    """Metrics of the current model on this rank's validation shard, summed over ranks."""
    loop.model.eval()
    meter = loop.task.new_metrics(loop.device)
    for inputs, targets in loop.val_loader:
        inputs, targets = loop.task.to_device(inputs, targets, loop.device)
        outputs, loss = _forward(loop, loop.model, inputs, targets)
        meter.update(outputs, targets, loss)
    meter.sync()
    return meter.compute()


def _finish(
    loop: TrainingLoop,
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

        log_outcome(loop, out_dir, stopped_early, overfitting, train_seconds)
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
        best_metric=or_nan(loop.stopper.best),
        best_epoch=loop.stopper.best_epoch,
        epochs_run=len(loop.history),
        stopped_early=stopped_early,
        overfitting=overfitting,
        device=device_name,
        train_seconds=train_seconds,
        model=loop.model,
        log_model_seconds=log_seconds,
    )
