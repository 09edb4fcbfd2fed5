"""Reproducible training: seeding, every RNG state captured and restored, deterministic kernels.

Two runs with the same seed give identical weights on CPU; a run killed and
resumed from a checkpoint that holds `capture_rng_state()` ends with the
weights of an uninterrupted one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


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


@contextmanager
def deterministic_algorithms(enabled: bool, use_cuda: bool) -> Iterator[None]:
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
