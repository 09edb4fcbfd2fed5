"""The worker's heap and Python's cycle collector: no collection pass long enough to shed requests.

A worker serving a model holds ~570,000 objects that the cycle collector
tracks, nearly all made by the libraries loading imports and initialises
lazily (torch.export, sympy, MLflow, …); a loaded version itself is a few
thousand, and full of reference cycles (its graph's nodes point at each
other), so only a collection pass frees it. A full pass over everything
blocks the event loop for 0.3 s on an idle core and 1.3 s on the shared
2-core machine under load: the p99's stalls at concurrency 32 (330 ms), and,
when it ran after every hot swap, 3–16 requests shed with a 503 per run of
four swaps at concurrency 16 (they waited out the pass in the batcher's
queue, past `serve.max_latency_ms`).

So the libraries' objects are frozen once (`gc.freeze`: the permanent
generation, never visited again) and the versions' are not:

* `load_first_version`: a worker's first version is loaded once and dropped
  (what loading imports and initialises stays), the heap is collected and
  frozen, then the version is loaded again to serve: its objects stay
  collectable. One extra load at start-up, before the worker is ready.
* `collect_when_drained`: after a swap, once the old version has answered
  its last request, one collection frees it; it visits only what was not
  frozen (milliseconds).

The heap is never unfrozen: that would hand everything back to the collector.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from serving.hot_swap import LoadedModel, ServedModel, load_model_version

logger = logging.getLogger("flywheel.serving")

DRAIN_POLL_S = 0.05
"""How often `collect_when_drained` looks whether the old version answered its last request."""


def freeze_heap() -> None:
    """Collect garbage once, then move every object alive into the permanent generation.

    Run once per worker, by `load_first_version`, with no version loaded: what
    it freezes is the libraries' (see the module doc).
    """
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    logger.info(
        "heap frozen: %d objects out of the collector's way (%.0f ms)",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1000,
    )


def load_first_version(name: str, version: str) -> LoadedModel:
    """A worker's first version: load it once to prime the libraries, `freeze_heap`, load again.

    Runs in a thread, before the worker is ready (no request waits on the collection).

    Raises:
        ModelLoadError: see `serving.hot_swap.load_model_version`.
    """
    load_model_version(name, version)  # dropped: its objects are garbage when it returns
    freeze_heap()
    return load_model_version(name, version)


async def collect_when_drained(previous: ServedModel, timeout_s: float) -> None:
    """Once `previous` has answered its last request (at most `timeout_s`), collect it.

    One collection pass on the event loop; it visits only the objects made
    since the heap was frozen (the versions', the requests'), so it takes
    milliseconds. Logs what it freed and how long it took.
    """
    deadline = time.monotonic() + timeout_s
    while previous.admitted and time.monotonic() < deadline:
        await asyncio.sleep(DRAIN_POLL_S)
    version = previous.model.version
    del previous
    started = time.perf_counter()
    freed = gc.collect()
    seconds = time.perf_counter() - started
    logger.info(
        "version %s collected: %d objects freed in %.0f ms (%d visited, %d frozen)",
        version,
        freed,
        seconds * 1000,
        len(gc.get_objects()),
        gc.get_freeze_count(),
    )


__all__ = ["DRAIN_POLL_S", "collect_when_drained", "freeze_heap", "load_first_version"]
