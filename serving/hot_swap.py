"""The served model and its replacement without downtime.

A `ServedModel` is one registry version, loaded and warmed up, behind its own
adaptive batcher (`serving.batching`: `serve.max_batch_size`,
`serve.max_latency_ms`): concurrent requests admitted to the same model share
one forward pass. The passes of every model run one at a time on one model
thread.

`ModelHolder` points at the model that takes new requests. A request is
*admitted* to the current model when it arrives (`ModelHolder.admit`, in the
event loop): it is pre-processed for that model, batched with that model's
other requests and answered by it. A swap is one reference assignment, so a
request in flight during a swap finishes on the old model and names that
version, and no request waits on a half-loaded one (the new version is loaded
and warmed up first, off the event loop). Once the old model's last admitted
request is answered, nothing refers to it: it is garbage.

Everything here except loading runs in the server's event loop, so admission
and swap need no locks.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from serving.batching import AdaptiveBatcher
from serving.optimize import optimize

if TYPE_CHECKING:
    from torch import nn

    from flywheel.tasks import Task


class ModelLoadError(RuntimeError):
    """The production model cannot be loaded or is not one this service can serve."""


class NoModelError(RuntimeError):
    """No model is loaded yet (the message gives the reason)."""


@dataclass(frozen=True)
class LoadedModel:
    """One registered version, loaded: what a batch needs, swapped as a whole.

    Attributes:
        name: the registered model.
        version: the registered version.
        uri: `models:/<name>/<version>`.
        module: the exported program (optimized, `serving.optimize`), `(B, 1, S, S)` → `(B, K + D)`.
        task: pre- and post-processing rebuilt from the model's metadata.
        loaded_at: when it was loaded (UTC).
        load_seconds: how long loading and the warm-up pass took.
    """

    name: str
    version: str
    uri: str
    module: nn.Module
    task: Task
    loaded_at: datetime
    load_seconds: float

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """`(B, 1, S, S)` float32 in [0, 1] → the exported output `(B, K + D)` float32."""
        import torch

        with torch.inference_mode():
            output = self.module(torch.from_numpy(np.ascontiguousarray(batch, np.float32)))
        return output.numpy()  # (B, K + D)


def load_model_version(name: str, version: str) -> LoadedModel:
    """Load one registered version and check it with a warm-up forward pass.

    The exported program is served optimized for inference when that answers the
    same (`serving.optimize`). The warm-up runs it once on a blank image, so the first
    request after a swap does not pay for lazy initialisation, and a version
    whose output does not match its metadata is refused before it serves.

    Raises:
        ModelLoadError: the version has no task metadata, gives no class
            probabilities, cannot be loaded, or its output does not match its task.
    """
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    from flywheel.registry import model_uri
    from flywheel.tasks import get_task

    started = time.perf_counter()
    uri = model_uri(name, version)
    try:
        metadata = get_model_info(uri).metadata or {}
        task = get_task(str(metadata.get("task"))).from_metadata(metadata)
        module = mlflow.pytorch.load_model(uri, map_location="cpu")
    except (MlflowException, OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"{uri}: cannot load the model: {err}") from None
    module = optimize(module, task.input_shape, uri)  # the exported program if that fails
    loaded = LoadedModel(name, version, uri, module, task, datetime.now(UTC), 0.0)
    blank = np.zeros((1, *task.input_shape), np.float32)  # (1, C, S, S)
    try:
        task.decode(loaded.forward(blank)).class_probabilities()  # the response ranks classes
    except (RuntimeError, ValueError) as err:  # torch raises RuntimeError on a bad graph
        raise ModelLoadError(f"{uri}: the warm-up forward pass failed: {err}") from None
    return LoadedModel(
        name, version, uri, module, task, loaded.loaded_at, time.perf_counter() - started
    )


def load_registered_model(name: str, alias: str) -> LoadedModel:
    """Resolve `alias` to a version and load that version (never the moving alias itself).

    Raises:
        flywheel.registry.AliasNotFoundError: the model or the alias does not exist.
        ModelLoadError: see `load_model_version`.
    """
    from flywheel.registry import AliasNotFoundError, version_for_alias

    version = version_for_alias(name, alias)
    if version is None:
        raise AliasNotFoundError(missing_alias_message(name, alias))
    return load_model_version(name, version)


def missing_alias_message(name: str, alias: str) -> str:
    """Why nothing can be served when the alias is missing, and what to do about it."""
    return (
        f"registered model {name!r} has no {alias!r} alias (or does not exist): "
        f"promote a blessed version (`flywheel promote`) to serve it"
    )


class ServedModel:
    """A loaded model behind its own adaptive batcher (`serving.batching`).

    Args:
        model: the loaded version.
        compute: what one batch runs on the model thread, `(model, (B, 1, S, S))` →
            `(B, ...)`, one row per image (default: the forward pass).
        max_batch_size: images per forward pass at most.
        max_latency_ms: a request that waited this long for its pass is shed
            (`OverloadedError`).
        executor: where passes run (one thread: passes never overlap, across models too).
        on_batch: called with the number of images of every pass (metrics).
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        compute: Callable[[LoadedModel, np.ndarray], np.ndarray] = LoadedModel.forward,
        max_batch_size: int,
        max_latency_ms: int,
        executor: Executor,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        self.admitted = 0
        """Requests admitted and not yet answered."""
        self._batcher = AdaptiveBatcher(
            functools.partial(compute, model),
            max_batch_size=max_batch_size,
            max_latency_ms=max_latency_ms,
            executor=executor,
            on_batch=on_batch,
        )

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        """One request's images `(N, 1, S, S)` → `compute`'s `(N, ...)`, batched with others.

        Raises:
            OverloadedError: the batcher shed the request.
        """
        return await self._batcher.submit(batch)


class ModelHolder:
    """The model that takes new requests, replaced atomically (one reference assignment)."""

    def __init__(self) -> None:
        self.current: ServedModel | None = None
        self.status = "loading the model"
        """Why no model is loaded (shown to callers while not ready)."""
        self.fallback: str | None = None
        """Why the model served is not the alias's version (None: it is, or none is served)."""
        self.alias_version: str | None = None
        """The version the alias pointed at when last read (None: missing or not read yet)."""

    @contextmanager
    def admit(self) -> Iterator[ServedModel]:
        """Admit a request to the current model for its whole life (call in the event loop).

        Raises:
            NoModelError: none is loaded yet.
        """
        served = self.current
        if served is None:
            raise NoModelError(f"service not ready: {self.status}")
        served.admitted += 1
        try:
            yield served
        finally:
            served.admitted -= 1

    def swap(self, new: ServedModel) -> ServedModel | None:
        """Serve `new` from now on; the previous model finishes what it admitted. Returns it.

        The previous model is dropped here: the requests it admitted hold it
        until they are answered, then it is garbage.
        """
        previous, self.current = self.current, new
        return previous

    def drop(self, reason: str) -> ServedModel | None:
        """Serve nothing from now on (`reason`: why); the dropped model finishes what it admitted.

        Returns:
            The model that was served, if any.
        """
        previous, self.current = self.current, None
        self.status, self.fallback = reason, None
        return previous


__all__ = [
    "LoadedModel",
    "ModelHolder",
    "ModelLoadError",
    "NoModelError",
    "ServedModel",
    "load_model_version",
    "load_registered_model",
    "missing_alias_message",
]
