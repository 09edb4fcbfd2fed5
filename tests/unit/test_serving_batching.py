"""The adaptive batcher, hot swap and heap (`serving.batching`, `.hot_swap`, `.heap`), no server.

The batcher runs real passes on a real one-thread executor; a pass can be held
open with an event to queue requests behind it deterministically.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import pytest
import torch

from flywheel.config import ModelConfig
from flywheel.tasks.classification import ClassificationTask
from serving.batching import AdaptiveBatcher, OverloadedError
from serving.heap import DRAIN_POLL_S, collect_when_drained
from serving.hot_swap import LoadedModel, ModelHolder, NoModelError, ServedModel


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


class HeldPasses:
    """`compute` that records each pass's size and can hold the first pass open."""

    def __init__(self, hold_first: bool = False, fail_on: int | None = None) -> None:
        self.sizes: list[int] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold_first:
            self.release.set()
        self.fail_on = fail_on

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        self.started.set()
        self.release.wait(5)
        if self.fail_on is not None and len(self.sizes) == self.fail_on:
            raise RuntimeError("the pass failed")
        return batch * 2.0  # (B, ...) one row per image


def _requests(*sizes: int) -> list[np.ndarray]:
    """Requests whose images carry distinct values, `(n, 2)` each."""
    start, out = 0, []
    for n in sizes:
        out.append(np.arange(start, start + 2 * n, dtype=np.float64).reshape(n, 2))
        start += 2 * n
    return out


async def _run_behind_a_held_pass(
    batcher: AdaptiveBatcher, compute: HeldPasses, first: np.ndarray, rest: list[np.ndarray]
) -> list[np.ndarray | BaseException]:
    """Start `first`, queue `rest` while its pass is held, then release; results in order."""
    head = asyncio.ensure_future(batcher.submit(first))
    await asyncio.get_running_loop().run_in_executor(None, compute.started.wait, 5)
    tail = [asyncio.ensure_future(batcher.submit(r)) for r in rest]
    await asyncio.sleep(0)  # every submit has queued its request
    compute.release.set()
    return list(await asyncio.gather(head, *tail, return_exceptions=True))


@pytest.mark.parametrize(
    ("first", "rest", "max_batch", "passes"),
    [
        (1, [1, 1, 1], 64, [1, 3]),
        (2, [3, 4], 64, [2, 7]),
        (1, [3, 3, 3], 5, [1, 3, 3, 3]),  # a request is never split across passes
        (1, [2, 3, 1], 5, [1, 5, 1]),
        (4, [4], 4, [4, 4]),
    ],
    ids=["coalesce", "images-not-requests", "never-split", "fill-up-to-max", "full"],
)
def test_requests_queued_behind_a_pass_share_the_next_one(
    executor: ThreadPoolExecutor, first: int, rest: list[int], max_batch: int, passes: list[int]
) -> None:
    compute = HeldPasses(hold_first=True)
    batcher = AdaptiveBatcher(
        compute, max_batch_size=max_batch, max_latency_ms=5000, executor=executor
    )
    requests = _requests(first, *rest)
    results = asyncio.run(_run_behind_a_held_pass(batcher, compute, requests[0], requests[1:]))
    assert compute.sizes == passes
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result, request * 2.0)  # each gets its own rows back


def test_a_lone_request_does_not_wait_for_company(executor: ThreadPoolExecutor) -> None:
    seen: list[int] = []
    batcher = AdaptiveBatcher(
        lambda b: b,
        max_batch_size=64,
        max_latency_ms=60_000,
        executor=executor,
        on_batch=seen.append,
    )

    async def one_at_a_time() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for request in _requests(1, 1, 1):
            await batcher.submit(request)
        return loop.time() - started

    assert asyncio.run(one_at_a_time()) < 1.0  # no 60 s batch-filling wait
    assert seen == [1, 1, 1]


def test_a_failed_pass_fails_its_requests_only(executor: ThreadPoolExecutor) -> None:
    compute = HeldPasses(hold_first=True, fail_on=2)
    batcher = AdaptiveBatcher(compute, max_batch_size=8, max_latency_ms=5000, executor=executor)
    first, second, third = _requests(1, 1, 1)

    async def scenario() -> list[np.ndarray | BaseException]:
        results = await _run_behind_a_held_pass(batcher, compute, first, [second, third])
        results.append(await batcher.submit(first))  # the batcher still works afterwards
        return results

    results = asyncio.run(scenario())
    np.testing.assert_array_equal(results[0], first * 2.0)
    assert all(isinstance(r, RuntimeError) for r in results[1:3])
    np.testing.assert_array_equal(results[3], first * 2.0)


def test_a_request_that_waited_too_long_is_shed(executor: ThreadPoolExecutor) -> None:
    compute = HeldPasses(hold_first=True)
    batcher = AdaptiveBatcher(compute, max_batch_size=8, max_latency_ms=20, executor=executor)
    first, late = _requests(1, 1)

    async def scenario() -> list[np.ndarray | BaseException]:
        head = asyncio.ensure_future(batcher.submit(first))
        await asyncio.get_running_loop().run_in_executor(None, compute.started.wait, 5)
        queued = asyncio.ensure_future(batcher.submit(late))
        await asyncio.sleep(0.1)  # longer than max_latency_ms behind the held pass
        compute.release.set()
        return list(await asyncio.gather(head, queued, return_exceptions=True))

    answered, shed = asyncio.run(scenario())
    np.testing.assert_array_equal(answered, first * 2.0)
    assert isinstance(shed, OverloadedError)
    assert "serve.max_latency_ms" in str(shed)
    assert compute.sizes == [1]  # the shed request never reached the model


@pytest.mark.parametrize("size", [0, 9])
def test_requests_must_fit_one_pass(executor: ThreadPoolExecutor, size: int) -> None:
    batcher = AdaptiveBatcher(lambda b: b, max_batch_size=8, max_latency_ms=100, executor=executor)
    with pytest.raises(ValueError, match="1 to 8 images"):
        asyncio.run(batcher.submit(np.zeros((size, 2))))


def test_compute_must_answer_every_image(executor: ThreadPoolExecutor) -> None:
    batcher = AdaptiveBatcher(
        lambda b: b[:-1], max_batch_size=8, max_latency_ms=100, executor=executor
    )
    with pytest.raises(ValueError, match="1 rows for 2 images"):
        asyncio.run(batcher.submit(np.zeros((2, 2))))


# ------------------------------------------------------------------ hot swap


def _loaded(version: str, seed: int) -> LoadedModel:
    """A real small classifier, as the service holds one (no registry needed)."""
    torch.manual_seed(seed)
    task = ClassificationTask(("a", "b", "c"), 8)
    model = task.build_model(ModelConfig(width=4, stages=2, embedding_dim=4, dropout=0.0))
    module = task.export_module(model).eval()
    return LoadedModel("m", version, f"models:/m/{version}", module, task, datetime.now(UTC), 0.0)


def test_admission_pins_a_request_to_the_model_current_when_it_arrived(
    executor: ThreadPoolExecutor,
) -> None:
    holder = ModelHolder()
    with pytest.raises(NoModelError, match="not ready: loading"), holder.admit():
        pass
    old = ServedModel(_loaded("1", 1), max_batch_size=8, max_latency_ms=5000, executor=executor)
    new = ServedModel(_loaded("2", 2), max_batch_size=8, max_latency_ms=5000, executor=executor)
    images = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)  # (3, 1, S, S)

    async def scenario() -> tuple[np.ndarray, np.ndarray, int]:
        assert holder.swap(old) is None
        with holder.admit() as admitted:
            assert old.admitted == 1
            assert holder.swap(new) is old  # swapped while the request is in flight
            in_flight = await admitted.infer(images)  # (3, K + D)
            admitted_during = old.admitted
        with holder.admit() as later:
            after = await later.infer(images)
        return in_flight, after, admitted_during

    in_flight, after, admitted_during = asyncio.run(scenario())
    assert admitted_during == 1
    assert (old.admitted, new.admitted) == (0, 0)
    np.testing.assert_allclose(in_flight, old.model.forward(images), rtol=1e-6)
    np.testing.assert_allclose(after, new.model.forward(images), rtol=1e-6)
    assert not np.allclose(in_flight, after)  # two different models answered
    assert in_flight.shape == (3, 3 + 4)


def test_a_swapped_out_version_is_collected_once_drained_and_the_heap_stays_frozen(
    executor: ThreadPoolExecutor,
) -> None:
    """`serving.heap`: the old version (reference cycles, like a loaded program) is freed by
    one collection after its last request, while the frozen objects stay frozen."""

    def served(version: str) -> ServedModel:
        model = _loaded(version, int(version))
        model.module.cycle = [model.module]  # what fx graphs are full of: only gc frees it
        return ServedModel(model, max_batch_size=8, max_latency_ms=5000, executor=executor)

    async def scenario() -> None:
        holder = ModelHolder()
        holder.swap(served("1"))
        assert holder.current is not None
        old_module = weakref.ref(holder.current.model.module)
        frozen = gc.get_freeze_count()
        with holder.admit():  # a request still in flight on version 1
            task = asyncio.create_task(collect_when_drained(holder.swap(served("2")), 10.0))
            await asyncio.sleep(3 * DRAIN_POLL_S)
            assert old_module() is not None, "collected while a request still used it"
        await task
        assert old_module() is None, "version 1 was not freed"
        assert gc.get_freeze_count() == frozen, "the heap was unfrozen"

    gc.collect()
    gc.freeze()  # what `load_first_version` does before the first version serves
    try:
        asyncio.run(scenario())
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
