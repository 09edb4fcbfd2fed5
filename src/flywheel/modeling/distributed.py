"""Where training runs: CUDA or CPU, mixed precision, and the process group `torchrun` describes.

A single process needs no group. Under `torchrun` with `WORLD_SIZE` > 1 every
process joins one (NCCL on GPUs, gloo on CPU); only rank 0 logs and writes, and
the helpers here carry its decisions and gather the others' state to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


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


def wants_cuda(device: str) -> bool:
    """Whether `train.device` trains on CUDA: `cuda`, or `auto` when a GPU is present."""
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


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


def describe_device(device: torch.device, ctx: DistContext) -> str:
    """What training runs on, as the `flywheel.device` tag records it (`cpu`, `cuda:<name> x2`)."""
    name = "cpu" if device.type == "cpu" else f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{name} x{ctx.world_size}" if ctx.distributed else name


def autocast_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """Mixed precision's dtype: bf16 where the GPU has it, else fp16; None on CPU or without AMP."""
    if not (amp and device.type == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def wrap_model(
    model: nn.Module,
    ctx: DistContext,
    device: torch.device,
    *,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """The module training calls: a DistributedDataParallel wrapper in a DDP job, else `model`.

    `find_unused_parameters` for a model some of whose parameters the loss does
    not reach (`Task.loss_skips_parameters`).
    """
    if not ctx.distributed:
        return model
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Rank 0's buffers on every rank.

    BatchNorm statistics drift apart per rank (each sees its own batches): taking
    rank 0's lets every rank validate and checkpoint the same model.
    """
    if not ctx.distributed:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def broadcast_flag(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """Rank 0's decision, on every rank (so no rank leaves the loop alone and hangs the rest)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def gather_to_main(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's `obj`, in rank order, on rank 0; other ranks get an empty list."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return list(gathered or [])
