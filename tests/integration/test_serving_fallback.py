"""When the alias's version cannot be served: `serve.on_unloadable_production`.

A worker's watcher (`serving.watcher.RegistryWatcher`) in this process, against
a real SQLite registry of real exported models whose model files are damaged on
disk (overwritten: corrupt; deleted: missing) or whose `production` alias is
deleted, then repaired: which version it serves, what `/readyz` would answer
(`readiness()`) and the Prometheus metrics, in a registry of the test's own.
The same through a real server (`flywheel serve`) with the body of `/readyz`,
`/metrics`, the answers' versions and the admin reload is in
`test_serving_fallback_server.py`.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from mlflow import MlflowClient
from prometheus_client import CollectorRegistry

from flywheel import registry
from flywheel.config import ServeConfig
from flywheel.serving_api import Readiness
from serving.hot_swap import LoadedModel
from serving.metrics import ServiceMetrics
from serving.watcher import RegistryWatcher
from tests.support.serving import SIZE, Damage, log_model, register_blessed
from tests.support.tracking import tracking_env

pytestmark = pytest.mark.slow  # each check loads real models (~1 s each)


# ----------------------------------------------------------------- helpers


class Worker:
    """One worker's watcher and its metrics, driven by the test in an event loop."""

    def __init__(self, name: str, policy: str) -> None:
        self.name = name
        self.config = ServeConfig(on_unloadable_production=policy)
        self.registry = CollectorRegistry()
        self.executor = ThreadPoolExecutor(1)
        self.loop = asyncio.new_event_loop()  # one loop for the worker's life, as a server's
        self.watcher = RegistryWatcher(
            name,
            self.config,
            metrics=ServiceMetrics.create(name, self.config.max_batch_size, self.registry),
            executor=self.executor,
            compute=LoadedModel.forward,
            reload_signal=None,
        )

    def check(self) -> Readiness:
        """One check of the alias (what a poll or `/admin/reload` does); the readiness after."""

        async def refresh() -> Readiness:
            await self.watcher.refresh("admin")
            return self.watcher.readiness()

        return self.loop.run_until_complete(refresh())

    def answer(self) -> str:
        """The version that answers a request now (admitted, batched, computed)."""

        async def infer() -> str:
            with self.watcher.holder.admit() as served:
                output = await served.infer(np.zeros((1, 1, SIZE, SIZE), np.float32))
                assert output.shape[0] == 1
                return served.model.version

        return self.loop.run_until_complete(infer())

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels or {"model_name": self.name})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A registry of this module's own."""
    with tracking_env(
        tmp_path_factory.mktemp("mlflow"),
        home=tmp_path_factory.mktemp("state"),
        experiment="serving-fallback",
    ):
        yield
    gc.unfreeze()  # the watcher froze this process's heap (`freeze_heap`)


@pytest.fixture
def two_versions(store: None, request: pytest.FixtureRequest) -> str:
    """A model of the test's own: version 2 in production, version 1 `previous`.

    Each version is a model logged for it alone: versions registered from one
    logged model share its files, and the tests damage them.
    """
    name = f"fallback-{request.node.name.removeprefix('test_')}"
    for seed in (1, 2):
        registry.promote(name, register_blessed(name, log_model(seed)), reason="fallback test")
    assert registry.version_for_alias(name, "previous") == "1"
    return name


@pytest.fixture
def worker() -> Iterator[Callable[[str, str], Worker]]:
    made: list[Worker] = []

    def make(name: str, policy: str) -> Worker:
        made.append(Worker(name, policy))
        return made[-1]

    yield make
    for each in made:
        each.loop.close()
        each.executor.shutdown(wait=True)


# ------------------------------------------------------------------ start-up


@pytest.mark.parametrize("damage", ["corrupt", "remove"])
def test_unloadable_production_at_start_serves_previous_until_repaired(
    two_versions: str, worker: Callable[[str, str], Worker], damage: str
) -> None:
    name = two_versions
    broken = Damage(name, "2")
    getattr(broken, damage)()
    fallback = worker(name, "previous")

    readiness = fallback.check()
    assert readiness.ready
    assert readiness.state == "fallback"
    assert (readiness.model_version, readiness.alias_version) == ("1", "2")
    assert readiness.reason is not None
    assert f"cannot load models:/{name}@production: version 2" in readiness.reason
    assert "serving version 1 instead (alias 'previous')" in readiness.reason
    assert fallback.answer() == "1"
    assert fallback.metric("flywheel_model_fallback") == 1
    assert fallback.metric("flywheel_model_version") == 1
    assert fallback.metric("flywheel_model_loads_total", outcome="failed") == 1

    again = fallback.check()  # the alias is checked again: still broken, nothing reloaded
    assert (again.state, again.model_version) == ("fallback", "1")
    assert fallback.metric("flywheel_model_loads_total", outcome="loaded") == 1

    broken.repair()
    repaired = fallback.check()
    assert repaired == Readiness(
        ready=True,
        state="serving",
        model_name=name,
        alias="production",
        alias_version="2",
        model_version="2",
    )
    assert fallback.answer() == "2"
    assert fallback.metric("flywheel_model_fallback") == 0
    assert fallback.metric("flywheel_model_version") == 2


def test_not_ready_policy_stays_not_ready_with_the_reason_until_repaired(
    two_versions: str, worker: Callable[[str, str], Worker]
) -> None:
    name = two_versions
    broken = Damage(name, "2")
    broken.remove()
    strict = worker(name, "not_ready")

    readiness = strict.check()
    assert not readiness.ready
    assert readiness.state == "not_ready"
    assert (readiness.model_version, readiness.alias_version) == (None, "2")
    assert readiness.reason is not None
    assert readiness.reason.startswith(f"cannot load models:/{name}@production: version 2")
    assert strict.metric("flywheel_model_version") == 0
    assert strict.metric("flywheel_model_fallback") == 0
    with pytest.raises(RuntimeError, match="service not ready: cannot load"):
        strict.answer()

    broken.repair()
    assert strict.check().state == "serving"
    assert strict.answer() == "2"


def test_a_missing_production_alias_serves_previous(
    two_versions: str, worker: Callable[[str, str], Worker]
) -> None:
    name = two_versions
    MlflowClient().delete_registered_model_alias(name, "production")
    readiness = worker(name, "previous").check()
    assert (readiness.state, readiness.model_version, readiness.alias_version) == (
        "fallback",
        "1",
        None,
    )
    assert readiness.reason is not None
    assert "no 'production' alias" in readiness.reason


def test_without_a_loadable_previous_it_is_not_ready_and_says_both_reasons(
    two_versions: str, worker: Callable[[str, str], Worker]
) -> None:
    name = two_versions
    Damage(name, "2").corrupt()
    Damage(name, "1").remove()
    fallback = worker(name, "previous")
    readiness = fallback.check()
    assert readiness.state == "not_ready"
    assert readiness.reason is not None
    assert f"cannot load models:/{name}@production: version 2" in readiness.reason
    assert "no fallback: previous version 1" in readiness.reason
    assert fallback.metric("flywheel_model_loads_total", outcome="failed") == 2


# ------------------------------------------------------------- a later check


def test_a_version_that_fails_later_keeps_previous_or_stops_serving(
    two_versions: str, worker: Callable[[str, str], Worker]
) -> None:
    """Serving version 2; version 3 is promoted and cannot load: the policy decides."""
    name = two_versions
    fallback, strict = worker(name, "previous"), worker(name, "not_ready")
    assert fallback.check().state == strict.check().state == "serving"
    third = register_blessed(name, log_model(seed=3))
    Damage(name, third).corrupt()
    registry.promote(name, third, reason="a version whose model file is damaged")

    kept = fallback.check()
    assert (kept.state, kept.model_version, kept.alias_version) == ("fallback", "2", third)
    assert kept.reason is not None
    assert f"version {third}" in kept.reason
    assert "serving version 2 instead (alias 'previous')" in kept.reason
    assert fallback.answer() == "2"
    assert fallback.metric("flywheel_model_fallback") == 1

    stopped = strict.check()
    assert (stopped.state, stopped.model_version) == ("not_ready", None)
    assert strict.metric("flywheel_model_version") == 0

    registry.rollback(name, reason="undo the damaged version")  # production: 2 again
    assert fallback.check().state == "serving"  # the version it serves: no reload
    assert fallback.metric("flywheel_model_fallback") == 0
    assert strict.check().model_version == "2"
