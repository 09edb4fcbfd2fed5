"""The page service's two stages: each a registered model kept current on its own.

A stage is the digits service's machinery for one model
(`serving.watcher.RegistryWatcher`: load the alias's version, poll it, swap
without downtime, fall back; `serving.hot_swap.ServedModel`: its own adaptive
batcher), with a loader for a detection or recognition model instead of a
classifier: `load_stage_version` checks the version's task and warms it up
through its task's `decode` (a classifier's warm-up asks for class
probabilities, which neither task has).

Both stages share one model thread (their forward passes never overlap, as
the digits service's versions do not) and one `ServiceMetrics`; each has its
own batch size histogram. The libraries' objects are frozen out of the cycle
collector's way once per worker (`serving.heap.freeze_heap`), before the
first of the two stages serves: whichever loads first primes and freezes, the
other waits for it, so a stage's version is never frozen.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime

import numpy as np

from flywheel.config import ServeConfig
from serving.heap import freeze_heap
from serving.hot_swap import LoadedModel, ModelLoadError
from serving.metrics import ServiceMetrics
from serving.reload import ReloadSignal
from serving.watcher import RegistryWatcher

_FIRST_LOAD = threading.Lock()
_frozen = False


def load_stage_version(name: str, version: str, task_name: str) -> LoadedModel:
    """Load one registered version of a stage and check it with a warm-up pass.

    Raises:
        ModelLoadError: no task metadata, a model of another task, it cannot
            be loaded, or its output does not have its task's layout.
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
        found = str(metadata.get("task"))
        if found != task_name:
            raise ModelLoadError(
                f"{uri}: a {found!r} model, but this stage serves {task_name!r} models"
            )
        task = get_task(found).from_metadata(metadata)
        module = mlflow.pytorch.load_model(uri, map_location="cpu")
    except (MlflowException, OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"{uri}: cannot load the model: {err}") from None
    loaded = LoadedModel(name, version, uri, module, task, datetime.now(UTC), 0.0)
    try:
        task.decode(loaded.forward(np.zeros((1, *task.input_shape), np.float32)))
    except (RuntimeError, ValueError) as err:  # torch raises RuntimeError on a bad graph
        raise ModelLoadError(f"{uri}: the warm-up forward pass failed: {err}") from None
    return dataclasses.replace(loaded, load_seconds=time.perf_counter() - started)


def make_loader(task_name: str) -> Callable[[str, str, bool], LoadedModel]:
    """The watcher's loader of a stage: `(name, version, first)` → the loaded version.

    A worker's first load primes the libraries with a throw-away load, then
    freezes the heap (`serving.heap`), once per process whichever stage comes first.
    """

    def load(name: str, version: str, first: bool) -> LoadedModel:
        global _frozen
        if first:
            with _FIRST_LOAD:
                if not _frozen:
                    load_stage_version(name, version, task_name)  # dropped: primes the libraries
                    freeze_heap()
                    _frozen = True
        return load_stage_version(name, version, task_name)

    return load


def forward_with_features(model: LoadedModel, batch: np.ndarray) -> np.ndarray:
    """One batch on the model thread: the exported output and the inputs' summary features.

    Returns:
        `(B, O + F)` float64: the task's exported output, then `FEATURE_COLUMNS`.
    """
    from flywheel.monitoring.features import summary_features

    output = model.forward(batch)  # (B, O)
    features = summary_features(model.task.pixels(batch)).to_numpy()  # (B, F)
    return np.concatenate([output.astype(np.float64), features], axis=1)


def stage_watcher(
    model_name: str,
    task_name: str,
    config: ServeConfig,
    *,
    metrics: ServiceMetrics,
    batch_size: object,
    executor: Executor,
    reload_signal: ReloadSignal | None,
) -> RegistryWatcher:
    """The watcher of one stage (`task_name`: `detection` or `recognition`).

    Args:
        batch_size: this stage's histogram of images per pass (`metrics` has one histogram
            for both otherwise).
    """
    return RegistryWatcher(
        model_name,
        config,
        metrics=dataclasses.replace(metrics, batch_size=batch_size),
        executor=executor,
        compute=forward_with_features,
        reload_signal=reload_signal,
        loader=make_loader(task_name),
    )


__all__ = ["forward_with_features", "load_stage_version", "make_loader", "stage_watcher"]
