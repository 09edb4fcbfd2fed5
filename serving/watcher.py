"""Keeping the served version current: load it, poll the alias, swap without downtime.

Each worker resolves `models:/<evaluate.registered_model>@<serve.alias>` to a
concrete version and loads it (`serving.hot_swap`). A missing alias is not a
crash: the worker logs why and retries every `serve.load_retry_s` seconds (so
promoting a first model makes a waiting server ready without a restart).

Zero-downtime updates: the worker checks the alias every `serve.poll_interval_s`
seconds (and on `/admin/reload`, or when another worker's admin reload asks it
to: `serving.reload`); a new version is loaded and warmed up beside the
serving one, then swapped in by one reference assignment. Requests already
admitted finish on the old version; every response names the version that
computed it. The libraries' objects are frozen out of the cycle
collector's way before the first version serves, and a swapped-out version is
collected once it answered its last request (`serving.heap`: no collection
pass stalls the event loop long enough to shed a request).

When the alias's version cannot be served — its model files are corrupt or
missing, or the alias is missing — at start-up or at any later check,
`serve.on_unloadable_production` decides: `previous` (the default) serves the
version of the `previous` alias (loading it when another one is serving), or
keeps the one serving when that one does not load either, and is not ready only
when there is nothing to serve; `not_ready` serves nothing until the alias's
version loads. Either way every load that failed is counted, the log says what
happened (`FALLBACK`, `NOT READY`), `/readyz` answers what is served and why
(`readiness`, a `flywheel.serving_api.Readiness`) and `flywheel_model_fallback`
is 1 while a fallback serves. The alias is checked again at every poll (every
`serve.load_retry_s` while nothing is served), so a repaired version or a new
promotion is served as soon as it loads. A registry that cannot be read changes
nothing: whatever is served stays served.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from flywheel.config import ServeConfig
from flywheel.serving_api import SERVE_URL_ENV, Readiness, ServingState, ready_message
from serving.heap import collect_when_drained, load_first_version
from serving.hot_swap import (
    LoadedModel,
    ModelHolder,
    ServedModel,
    load_model_version,
    missing_alias_message,
)
from serving.metrics import ServiceMetrics
from serving.reload import RELOAD_WATCH_S, ReloadSignal

logger = logging.getLogger("flywheel.serving")

BROADCAST_TRIGGER = "admin-broadcast"
"""The trigger of a check that another worker's `/admin/reload` asked for."""


@dataclass(frozen=True)
class RefreshOutcome:
    """What one check of the alias did.

    Attributes:
        trigger: `poll`, `admin` or `admin-broadcast` (another worker's admin reload).
        previous_version: the version served before the check (None: none yet).
        model_version: the version served after it.
        error: why a new version could not be loaded or the alias not read (None: no error).
    """

    trigger: str
    previous_version: str | None
    model_version: str | None
    error: str | None = None

    @property
    def changed(self) -> bool:
        """A new version was swapped in."""
        return self.model_version != self.previous_version


class RegistryWatcher:
    """One worker's served version of `model_name`, kept at what `config.alias` points to.

    Args:
        model_name: the registered model.
        config: the service's settings (alias, polling, batching).
        metrics: where loads, the served version and batch sizes are counted.
        executor: the model thread (every model's forward passes run there).
        compute: what one batch runs on the model thread (`ServedModel`'s `compute`).
        reload_signal: this worker's end of its server's reload channel (None: no other
            worker can ask it to check, nor it them).
        loader: `(name, version, first)` → the loaded version (`first`: the worker's first
            load); None: `load_first_version` / `load_model_version` (a classifier).
    """

    def __init__(
        self,
        model_name: str,
        config: ServeConfig,
        *,
        metrics: ServiceMetrics,
        executor: Executor,
        compute: Callable[[LoadedModel, np.ndarray], np.ndarray],
        reload_signal: ReloadSignal | None,
        loader: Callable[[str, str, bool], LoadedModel] | None = None,
    ) -> None:
        self.model_name = model_name
        self._loader = loader
        self.config = config
        self.metrics = metrics
        self.reload_signal = reload_signal
        self.holder = ModelHolder()
        self._executor = executor
        self._compute = compute
        self._refresh_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()  # referenced until done

    def start(self) -> None:
        """Start the task that loads the model and then polls the alias (in the event loop)."""
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch_registry(), name="registry-watcher"
        )

    def stop(self) -> None:
        """Stop polling."""
        if self._watcher is not None:
            self._watcher.cancel()

    async def _watch_registry(self) -> None:
        """Check the alias now, then on a timer or when another worker asks.

        The timer: `poll_interval_s` (`load_retry_s` while not ready), restarted
        after every check. Another worker asks when it received `/admin/reload`.
        """
        trigger = "poll"
        while True:
            await self.refresh(trigger)
            ready = self.holder.current is not None
            trigger = await self._wait_for_next_check(
                self.config.poll_interval_s if ready else self.config.load_retry_s
            )

    async def _wait_for_next_check(self, seconds: float) -> str:
        """Wait `seconds`, or less if another worker sends a reload request; returns the trigger.

        Looking for a request is one `stat` every `RELOAD_WATCH_S` seconds, on the
        event loop (cheaper than a hop to a thread).
        """
        signal = self.reload_signal
        if signal is None:
            await asyncio.sleep(seconds)
            return "poll"
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, RELOAD_WATCH_S))
            token = signal.received()
            if token is not None:
                logger.info(
                    "RELOAD REQUESTED by worker pid %s: worker pid %d checks models:/%s@%s now",
                    token.partition("-")[0],
                    os.getpid(),
                    self.model_name,
                    self.config.alias,
                )
                return BROADCAST_TRIGGER
        return "poll"

    def signal_other_workers(self) -> bool:
        """Ask the server's other workers to check the alias now; False when none could be."""
        if self.reload_signal is None:
            return False  # warned about at start-up
        try:
            self.reload_signal.send()
        except OSError as err:
            logger.error(
                "cannot signal the other workers through %s (%s): they check at their next poll",
                self.reload_signal.path,
                err,
            )
            return False
        return True

    async def refresh(self, trigger: str) -> RefreshOutcome:
        """Swap in the version the alias points at if it is not the one served. Never raises.

        Checks run one at a time in a worker (the poller and admin calls share a lock).
        """
        async with self._refresh_lock:
            return await self._refresh(trigger)

    async def _refresh(self, trigger: str) -> RefreshOutcome:
        from flywheel.registry import version_for_alias

        name, alias = self.model_name, self.config.alias
        served = self.holder.current
        current = served.model.version if served is not None else None
        try:
            version = await asyncio.to_thread(version_for_alias, name, alias)
        except Exception as err:  # whatever the registry raises, the served model keeps serving
            return self._unreadable(trigger, current, f"cannot read the alias: {err}")
        self.holder.alias_version = version
        if version is None:
            return await self._fall_back(trigger, current, missing_alias_message(name, alias))
        if version == current:
            self._set_fallback(None)  # e.g. the alias was rolled back to the fallback version
            return RefreshOutcome(trigger, current, current)
        try:
            loaded = await asyncio.to_thread(self._load, name, version, current is None)
        except Exception as err:  # a broken version must never take the served one down
            return await self._fall_back(trigger, current, f"version {version}: {err}", version)
        self._swap_in(loaded, trigger, current, alias)
        self._set_fallback(None)
        return RefreshOutcome(trigger, current, version)

    def _load(self, name: str, version: str, first: bool) -> LoadedModel:
        if self._loader is not None:
            return self._loader(name, version, first)
        return (load_first_version if first else load_model_version)(name, version)

    def _show_urls(self) -> None:
        """Log where the API, Swagger, /metrics and /readyz are: once per server, when first ready.

        The first worker to serve a model claims it (a file made exclusively in the
        folder the server's workers share); a worker without that folder logs it itself.
        """
        base = os.environ.get(SERVE_URL_ENV)
        if not base:
            return  # not started by `flywheel serve`: the address is not known here
        if self.reload_signal is not None:
            try:
                (self.reload_signal.path.parent / "urls-shown").open("x").close()
            except OSError:
                return  # another worker showed them (or the folder is gone: shutting down)
        logger.info("%s", ready_message(base))

    def _swap_in(self, loaded: LoadedModel, trigger: str, current: str | None, alias: str) -> None:
        """Serve `loaded` from now on (`alias`: the alias it was resolved from, for the log)."""
        served = self._serve_model(loaded)
        previous = self.holder.swap(served)
        self.metrics.set_version(self.model_name, loaded.version)
        self.metrics.count_load("loaded")
        if previous is None:
            logger.info(
                "READY: serving %s (alias %r) loaded in %.1f s",
                loaded.uri,
                alias,
                loaded.load_seconds,
            )
            self._show_urls()
            return
        logger.info(
            "SWAPPED (%s): %s now serves version %s (alias %r, loaded in %.1f s); version %s "
            "finishes its %d admitted requests",
            trigger,
            self.model_name,
            loaded.version,
            alias,
            loaded.load_seconds,
            current,
            previous.admitted,
        )
        self._free_when_drained(previous)

    def _free_when_drained(self, previous: ServedModel) -> None:
        task = asyncio.get_running_loop().create_task(
            collect_when_drained(previous, self.config.poll_interval_s)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _serve_model(self, loaded: LoadedModel) -> ServedModel:
        return ServedModel(
            loaded,
            compute=self._compute,
            max_batch_size=self.config.max_batch_size,
            max_latency_ms=self.config.max_latency_ms,
            executor=self._executor,
            on_batch=self.metrics.batch_size.observe,
        )

    def _set_fallback(self, reason: str | None) -> None:
        """Record why the version served is not the alias's (None: it is)."""
        self.holder.fallback = reason if self.holder.current is not None else None
        self.metrics.set_fallback(self.model_name, self.holder.fallback is not None)

    def _unreadable(self, trigger: str, current: str | None, reason: str) -> RefreshOutcome:
        """The registry could not be read: count and log it; whatever was served stays served.

        Not a verdict on the alias's version (the registry may be back at the next
        check), so `serve.on_unloadable_production` does not apply.
        """
        self.metrics.count_load("failed")
        where = f"models:/{self.model_name}@{self.config.alias}"
        if current is None:
            self.holder.status = f"cannot load {where}: {reason}"
            logger.error(
                "NOT READY: %s; retrying in %.0f s", self.holder.status, self.config.load_retry_s
            )
        else:
            logger.error(
                "LOAD FAILED (%s): %s: %s; still serving version %s",
                trigger,
                where,
                reason,
                current,
            )
        return RefreshOutcome(trigger, current, current, error=reason)

    async def _fall_back(
        self, trigger: str, current: str | None, reason: str, failed: str | None = None
    ) -> RefreshOutcome:
        """The alias's version cannot be served: apply `serve.on_unloadable_production`.

        `not_ready`: serve nothing (requests admitted before finish on their model).
        `previous`: serve the version of the `previous` alias, or keep the one
        serving when that one cannot be loaded either (or is the one serving);
        not ready when there is none.

        Args:
            trigger: what started the check.
            current: the version served before it (None: none).
            reason: why the alias's version cannot be served.
            failed: the alias's version that failed to load (None: the alias is missing).
        """
        self.metrics.count_load("failed")
        name = self.model_name
        problem = f"cannot load models:/{name}@{self.config.alias}: {reason}"
        if self.config.on_unloadable_production == "not_ready":
            return self._not_ready(trigger, current, problem)
        why_not = await self._load_previous(trigger, current, failed, problem)
        served = self.holder.current
        if served is None:
            return self._not_ready(trigger, current, f"{problem}; no fallback: {why_not}")
        version = served.model.version
        how = "alias 'previous'" if why_not is None else f"kept: {why_not}"
        self._set_fallback(f"{problem}; serving version {version} instead ({how})")
        logger.error(
            "FALLBACK (%s): %s (serve.on_unloadable_production: previous)",
            trigger,
            self.holder.fallback,
        )
        return RefreshOutcome(trigger, current, version, error=reason)

    async def _load_previous(
        self, trigger: str, current: str | None, failed: str | None, problem: str
    ) -> str | None:
        """Serve the `previous` alias's version unless it is served already; None when it is.

        Returns:
            Why it is not served (the alias is missing, or names the failed
            version, or cannot be read, or its version does not load), else None.
        """
        from flywheel.registry import ALIAS_PREVIOUS, version_for_alias

        name = self.model_name
        try:
            version = await asyncio.to_thread(version_for_alias, name, ALIAS_PREVIOUS)
        except Exception as err:  # whatever the registry raises
            return f"cannot read the '{ALIAS_PREVIOUS}' alias: {err}"
        if version is None:
            return f"{name!r} has no '{ALIAS_PREVIOUS}' alias to fall back to"
        if version == failed:
            return f"'{ALIAS_PREVIOUS}' is the same version {version}"
        if version == current:
            return None
        try:
            loaded = await asyncio.to_thread(self._load, name, version, current is None)
        except Exception as err:  # a broken fallback must not take the served one down either
            self.metrics.count_load("failed")
            return f"previous version {version}: {err}"
        logger.error("FALLBACK (%s): %s; loading version %s instead", trigger, problem, version)
        self._swap_in(loaded, trigger, current, ALIAS_PREVIOUS)
        return None

    def _not_ready(self, trigger: str, current: str | None, reason: str) -> RefreshOutcome:
        """Serve nothing (`reason`), dropping the version served if any; retry later."""
        dropped = self.holder.drop(reason)
        self.metrics.set_version(self.model_name, None)
        self._set_fallback(None)
        if dropped is not None:
            self._free_when_drained(dropped)
        logger.error(
            "NOT READY (%s): %s%s (serve.on_unloadable_production: %s); retrying in %.0f s",
            trigger,
            reason,
            "" if current is None else f"; version {current} is no longer served",
            self.config.on_unloadable_production,
            self.config.load_retry_s,
        )
        return RefreshOutcome(trigger, current, None, error=reason)

    def readiness(self) -> Readiness:
        """What this worker serves and why (`/readyz`)."""
        holder = self.holder
        served = holder.current
        state: ServingState = (
            "not_ready" if served is None else "fallback" if holder.fallback else "serving"
        )
        return Readiness(
            ready=served is not None,
            state=state,
            model_name=self.model_name,
            alias=self.config.alias,
            alias_version=holder.alias_version,
            model_version=None if served is None else served.model.version,
            reason=holder.status if served is None else holder.fallback,
        )


__all__ = [
    "BROADCAST_TRIGGER",
    "RefreshOutcome",
    "RegistryWatcher",
]
