"""The worker of the registry race test, in its own light module.

`multiprocessing`'s spawn start method imports the module holding the target
function in each child; keeping it apart from the test module spares every
child the import of torch and the test fixtures.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from flywheel import registry


def promote_each_round(
    uri: str,
    name: str,
    index: int,
    strategy: registry.LockStrategy,
    plan: list[list[str]],
    barrier: Any,
    results: Any,
) -> None:
    """Promote `plan[round][index]` as soon as the barrier opens; report each outcome.

    Outcomes: `ok`, `stale` (the other worker won the round: its promote either
    finished before this one read the registry, so the blessing is stale, or
    while this one waited for the lock, so it was overtaken), or `error: ...`.
    """
    os.environ["MLFLOW_TRACKING_URI"] = uri
    for round_, pair in enumerate(plan):
        try:
            barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            return  # the parent gave up (a failed assertion)
        try:
            registry.promote(
                name,
                pair[index],
                reason=f"race round {round_}",
                who=f"worker-{index}",
                lock=strategy,
            )
            outcome = "ok"
        except (registry.StaleBlessingError, registry.TransitionOvertakenError):
            outcome = "stale"
        except Exception as err:  # reported to the parent, which fails the test
            outcome = f"error: {err!r}"
        results.put((round_, index, outcome))
