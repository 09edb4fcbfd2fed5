"""What one training run holds, and how it is built from the configuration and the task."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from flywheel.config import Params, TrainConfig
from flywheel.modeling.distributed import DistContext, autocast_dtype, wrap_model
from flywheel.modeling.early_stopping import EarlyStopping
from flywheel.modeling.loaders import build_loaders, training_datasets
from flywheel.modeling.reproducibility import seed_everything
from flywheel.tasks import Task


@dataclass
class TrainingLoop:
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
    init_from: str | None = None  # the model URI fine-tuning started from (`warm_start`)


def build_loop(
    params: Params, task: Task, ctx: DistContext, device: torch.device, dataset_dir: Path
) -> TrainingLoop:
    """Data, seeded model, RNG streams, optimiser, schedule and AMP of a fresh run.

    The order of the random draws is part of the result: the model is built
    right after seeding (the same initial weights on every rank), dropout is
    then seeded per rank, and shuffling and augmentation draw from their own
    generators.

    Raises:
        flywheel.tasks.DatasetError: the dataset cannot be read.
        flywheel.config.ConfigError: the augmentation would wipe out the images.
        flywheel.modeling.warm_start.WarmStartError: `train.init_from` names no
            model, or one of another shape.
    """
    from flywheel.modeling.warm_start import init_source, load_initial_weights

    cfg = params.train
    train_set, val_set = training_datasets(task, cfg, dataset_dir)
    task.check_augment(cfg.augment, train_set)  # before any epoch: not after one of blanks

    seed_everything(cfg.seed)  # same initial weights on every rank
    model = task.build_model(cfg.model)
    init_from = init_source(params)
    if init_from is not None:  # fine-tuning: every rank loads the same weights
        load_initial_weights(model, init_from)
    model = model.to(device)
    torch.manual_seed(cfg.seed + ctx.rank)  # dropout differs per rank
    generators = {
        "shuffle": torch.Generator().manual_seed(cfg.seed),
        "augment": torch.Generator().manual_seed(cfg.seed + 1_000_003 * (ctx.rank + 1)),
    }
    train_loader, val_loader, sampler = build_loaders(
        train_set, val_set, task, cfg, ctx, device, generators["shuffle"]
    )

    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return TrainingLoop(
        params=params,
        cfg=cfg,
        task=task,
        ctx=ctx,
        device=device,
        model=model,
        wrapped=wrap_model(model, ctx, device, find_unused_parameters=task.loss_skips_parameters),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        amp_dtype=amp_dtype,
        generators=generators,
        train_loader=train_loader,
        val_loader=val_loader,
        sampler=sampler,
        stopper=EarlyStopping(cfg.patience, cfg.min_delta, task.direction(cfg.monitor)),
        init_from=init_from,
    )


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """`train.optimizer` over the model's parameters (SGD with Nesterov momentum when > 0)."""
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


def build_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """`train.scheduler`, stepped once per epoch; None for `none`."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return None
