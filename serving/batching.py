"""Adaptive batching in the server's event loop: concurrent requests share forward passes.

`AdaptiveBatcher` is continuous batching: a forward pass starts as soon as the
model thread is free, with every request queued by then, up to
`max_batch_size` images; while it runs, new requests queue for the next one.
The batch size follows the load (one request when requests come one at a
time, larger batches as more arrive while a pass runs) and no request waits
for a batch to fill: under load the queue fills during the previous pass, so
waiting would add latency without making batches larger.

Why not BentoML's batcher (`@bentoml.api(batchable=True)`, its
`CorkDispatcher`): (1) the service reaches a batchable API only through
BentoML's in-process HTTP proxy, whose client session is recycled every 100
requests by closing it under the calls still in flight ("Server
disconnected", 3.3 % of requests at concurrency 8; bentoml/BentoML#5540,
#5544), and which JSON-encodes every pre-processed batch; (2) used in-process
instead, the dispatcher waits for a batch to fill by the average wait it has
seen lately, a figure that feeds on itself: in this server, after a burst at
concurrency 64, requests sent one at a time took a median of 40-55 ms instead
of 6 ms, for the next 1,500 requests (this batcher: 5-7 ms before and after),
and at concurrency 64 it answered 26-43 % fewer requests per second; (3) it
sheds requests by a latency forecast from a linear fit of recent batches,
noisy on a shared CPU (STACK.md), polls its queue every millisecond, and may
split one request across two passes.

A request is never split: `max_images_per_request <= max_batch_size`
(`ServeConfig` checks it), so a request's images go through one pass with one
model. A request that has waited `max_latency_ms` before its pass could start
is shed (`OverloadedError`, a 503 with Retry-After) instead of being answered
later still: the server is overloaded.

Single-threaded by design: every method runs in the event loop; only the
forward pass runs on the executor.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np


class OverloadedError(RuntimeError):
    """A request waited `max_latency_ms` before its forward pass could start, and was shed."""


@dataclass
class _Job:
    images: np.ndarray  # (N, ...)
    future: asyncio.Future[np.ndarray]
    queued_at: float = field(default_factory=time.monotonic)


class AdaptiveBatcher:
    """Runs `compute` over the concatenated images of all queued requests, one pass at a time.

    Args:
        compute: `(B, ...)` → `(B, ...)`, one output row per input image; runs on `executor`.
        max_batch_size: images per pass at most (each request must fit: it is never split).
        max_latency_ms: a request still queued after this long is shed.
        executor: where `compute` runs (a single thread keeps passes from overlapping).
        on_batch: called with each pass's image count (metrics).
    """

    def __init__(
        self,
        compute: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_latency_ms: float,
        executor: Executor,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_latency_ms <= 0:
            raise ValueError("max_batch_size must be >= 1 and max_latency_ms > 0")
        self._compute = compute
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_ms / 1000.0
        self._executor = executor
        self._on_batch = on_batch
        self._queue: deque[_Job] = deque()
        self._running = False
        self._task: asyncio.Task[None] | None = None  # referenced: the loop keeps only weak ones

    @property
    def queued(self) -> int:
        """Requests waiting for a pass."""
        return len(self._queue)

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Queue one request's images `(N, ...)` and wait for their output `(N, ...)`.

        Raises:
            ValueError: the request has no images or more than `max_batch_size`.
            OverloadedError: it was shed (see the module doc).
            Exception: whatever `compute` raised for the pass it was in.
        """
        if not 0 < len(images) <= self.max_batch_size:
            raise ValueError(
                f"a request must have 1 to {self.max_batch_size} images, got {len(images)}"
            )
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(images, future))
        if not self._running:
            self._start_pass()
        return await future

    def _start_pass(self) -> None:
        """Take the queued requests that fit one pass (shedding stale ones) and start it."""
        jobs = self._take_jobs()
        if not jobs:
            return
        self._running = True
        self._task = asyncio.get_running_loop().create_task(self._run(jobs))

    def _take_jobs(self) -> list[_Job]:
        now = time.monotonic()
        jobs: list[_Job] = []
        size = 0
        while self._queue:
            job = self._queue[0]
            if job.future.done():  # its caller went away (cancelled)
                self._queue.popleft()
                continue
            if now - job.queued_at > self.max_latency_s:
                self._queue.popleft()
                job.future.set_exception(
                    OverloadedError(
                        f"the server is overloaded: the request waited more than "
                        f"{self.max_latency_s * 1000:.0f} ms (serve.max_latency_ms) for the "
                        "model; retry later"
                    )
                )
                continue
            if size + len(job.images) > self.max_batch_size:
                break
            jobs.append(self._queue.popleft())
            size += len(job.images)
        return jobs

    async def _run(self, jobs: Sequence[_Job]) -> None:
        sizes = [len(job.images) for job in jobs]
        batch = np.concatenate([job.images for job in jobs])  # (B, ...)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            output = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._compute, batch
            )  # (B, ...)
            if len(output) != len(batch):
                raise ValueError(f"compute returned {len(output)} rows for {len(batch)} images")
        except Exception as err:  # every request of the pass gets the pass's error
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err)
        else:
            for job, part in zip(jobs, np.split(output, np.cumsum(sizes)[:-1]), strict=True):
                if not job.future.done():
                    job.future.set_result(part)
        finally:
            self._running = False
            if self._queue:
                self._start_pass()


__all__ = ["AdaptiveBatcher", "OverloadedError"]
