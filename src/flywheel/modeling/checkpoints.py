"""Checkpoints: written atomically every epoch, and resumed to exactly the uninterrupted result.

`last.pt` holds the whole training state (model, optimizer, scheduler, AMP
scaler, every RNG state of every rank, history, early-stopping state, MLflow run
id) and a signature of the configuration it belongs to; `best.pt` holds the
weights of the best epoch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from flywheel.config import Params
from flywheel.modeling.distributed import gather_to_main
from flywheel.modeling.loop import TrainingLoop
from flywheel.modeling.reproducibility import capture_rng_state, restore_rng_state
from flywheel.tracking import hash_params

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


class TrainingError(RuntimeError):
    """Training cannot start or resume as asked (bad checkpoint, mismatched params, ...)."""


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


def training_signature(params: Params) -> str:
    """What must not change between a checkpoint and its resume: the train section and the input."""
    return hash_params(
        {
            "train": params.train.model_dump(mode="json"),
            "classes": list(params.data.classes),
            "image_size": params.data.image_size,
            "channels": params.data.channels,
            "white_level": params.data.white_level,
        }
    )


def gather_rng(loop: TrainingLoop) -> list[dict[str, Any]]:
    """Every rank's RNG state (collected on rank 0; other ranks get an empty list)."""
    return gather_to_main(capture_rng_state(loop.generators), loop.ctx)


def checkpoint_state(
    loop: TrainingLoop, epoch: int, signature: str, rng: list[dict[str, Any]]
) -> dict[str, Any]:
    """The whole training state after `epoch`: what `last.pt` holds."""
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


def restore_checkpoint(
    loop: TrainingLoop, state: dict[str, Any], signature: str, path: Path
) -> None:
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
