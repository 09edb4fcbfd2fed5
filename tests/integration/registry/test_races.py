"""Racing promotions: two real processes promote different versions at the same instant,
round after round, under both lock strategies.

The workers' code is tests/integration/_race_worker.py, a light module: the
spawned children import it, not this one.
"""

from __future__ import annotations

import multiprocessing
import re

import pytest
from mlflow import MlflowClient

from flywheel import registry
from tests.integration._race_worker import promote_each_round
from tests.support.registry_store import Store
from tests.support.registry_store import aliases as _aliases
from tests.support.registry_store import bless as _bless
from tests.support.registry_store import register_versions as _register

pytestmark = pytest.mark.slow  # a real MLflow store and pt2 models: seconds, not milliseconds


@pytest.mark.parametrize("strategy", ["file", "registry"])
def test_racing_promotions_leave_consistent_aliases(uses_store: Store, strategy: str) -> None:
    """Two processes promote two blessed versions at once: one wins, the other's blessing is stale.

    Without the lock both read the same production, both pass the check, and
    one promotion is lost (its version claims production in its history but is
    not); with it, production is the winner and previous the old production.
    """
    name = f"race-{strategy}"
    versions = _register(uses_store, name, 5)
    _bless(name, versions[0], champion=None)
    registry.promote(name, versions[0], reason="start")
    plan = [
        [versions[1], versions[2]],
        [versions[3], versions[4]],
        [versions[1], versions[2]],
        [versions[3], versions[4]],
    ]
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    workers = [
        ctx.Process(
            target=promote_each_round,
            args=(uses_store.uri, name, i, strategy, plan, barrier, results),
        )
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        for round_, pair in enumerate(plan):
            production = _aliases(name)["production"]
            for version in pair:
                _bless(name, version, champion=production)
            barrier.wait(timeout=120)
            outcomes = dict(results.get(timeout=120)[1:] for _ in range(2))

            assert sorted(outcomes.values()) == ["ok", "stale"], outcomes
            winner = pair[next(i for i, o in outcomes.items() if o == "ok")]
            aliases = _aliases(name)
            assert (aliases["production"], aliases["previous"]) == (winner, production), round_
            records = {  # this round's promotions and demotions, over every version
                (v, t.action)
                for v in versions
                for t in registry.read_history(name, v)
                if re.search(rf"race round {round_}\b", t.reason)  # a demotion names it too
            }
            assert records >= {(winner, "promote"), (production, "demote")}
            assert {r for r in records if r[1] in ("promote", "demote")} == {
                (winner, "promote"),
                (production, "demote"),
            }
    finally:
        barrier.abort()  # a failed round must not leave the workers waiting for the next
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert all(w.exitcode == 0 for w in workers)
    leftovers = [
        m.name
        for m in MlflowClient().search_registered_models()
        if m.name.startswith(name + registry.LOCK_SUFFIX)
    ]
    assert leftovers == []
