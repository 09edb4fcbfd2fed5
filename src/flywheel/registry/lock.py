"""The registry lock: one alias read-modify-write of a registered model at a time.

A local store (SQLite file, file store) is locked with an OS file lock next to
its database; a tracking server with a registered model `<name>.promotion-lock`
used as a mutex (see `flywheel.registry` for why both are race-safe).

A lock tells the truth about its holder (`LockHolder`: who, which process on
which host, since when, until when): a waiter says whom it waits for, and a
timeout says how to break the lock (`flywheel registry unlock`). A file lock
dies with its process (the OS releases it). A registry lock is a *lease* of
`LEASE_S` seconds that a background thread renews while the holder runs; a
waiter breaks it at once when the holder ran on this host and its process is
gone, and otherwise when the lease has expired, so a killed holder on another
host blocks the others for seconds, not minutes.

Whoever takes the lock first finishes the transition a dead holder left
half-done (`flywheel.registry.journal`), so no command ever works on a
half-done registry.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import filelock

from flywheel.registry.access import RegistryAccess, StoreError
from flywheel.registry.errors import ModelNotFoundError, RegistryError, RegistryLockTimeout
from flywheel.registry.faults import fault_point
from flywheel.registry.history import resolve_user, utc_now
from flywheel.registry.holder import LockHolder
from flywheel.registry.journal import (
    Intent,
    LogEntry,
    append_log,
    check_reason,
    finish_pending,
    new_txid,
    pending_intent,
)
from flywheel.registry.store import (
    _EXISTS,
    _NOT_FOUND,
    _client,
    _error_code,
    _get_model,
    _registry_uri,
)
from flywheel.tracking import local_store_dir

LockStrategy = Literal["auto", "file", "registry"]


LOCK_SUFFIX = ".promotion-lock"
"""A `registry` lock of model NAME is a registered model named NAME + this."""


LOCK_FILE_NAME = ".flywheel-registry.lock"
"""A `file` lock lives in the local store's folder under this name."""


HOLDER_SUFFIX = ".holder"
"""Beside a `file` lock, its holder (`LockHolder`, JSON), for the waiters' messages."""


LEASE_S = 15.0
"""Seconds a `registry` lock's lease lasts; the holder renews it every third of that."""


_log = logging.getLogger("flywheel.registry")


def _unlock_hint(name: str) -> str:
    return (
        f"if that process is gone for good, break the lock: "
        f"flywheel registry unlock --model {name} --reason '<why>'"
    )


@contextmanager
def registry_lock(
    name: str,
    *,
    strategy: LockStrategy = "auto",
    timeout: float = 60.0,
    ttl: float = LEASE_S,
) -> Iterator[Intent | None]:
    """Serialize alias read-modify-writes of a registered model across processes and machines.

    Once held, finishes the transition a dead holder left half-done, if any.

    Args:
        name: the registered model.
        strategy: `file` (an OS lock next to a local store), `registry` (a lock
            model in the registry itself; works against a tracking server), or
            `auto`: `file` for a local store, `registry` otherwise.
        timeout: seconds to wait for the lock.
        ttl: seconds of a `registry` lock's lease (renewed every `ttl / 3` while held).

    Yields:
        The intent of the half-done transition it finished, None if there was none.

    Raises:
        RegistryLockTimeout: not acquired within `timeout` (the message names the holder).
        RegistryError: `file` asked for a store that is not local.
    """
    client = _client()
    with _held(client, name, strategy, timeout, ttl):
        fault_point("locked")
        try:
            finished = finish_pending(client, name, _finisher())
        except ModelNotFoundError:
            finished = None  # the caller's own read says so
        yield finished


def _finisher() -> str:
    return f"{resolve_user()}@{socket.gethostname()} pid {os.getpid()}"


def _resolve_strategy(strategy: LockStrategy) -> tuple[LockStrategy, Path | None]:
    uri = _registry_uri()
    store = local_store_dir(uri)
    if strategy == "auto":
        strategy = "file" if store is not None else "registry"
    if strategy == "file" and store is None:
        raise RegistryError(f"a file lock needs a local store; the registry is {uri}")
    return strategy, store


@contextmanager
def _held(
    client: RegistryAccess, name: str, strategy: LockStrategy, timeout: float, ttl: float
) -> Iterator[None]:
    strategy, store = _resolve_strategy(strategy)
    if strategy == "file":
        assert store is not None
        with _file_lock(store, name, timeout):
            yield
        return
    mutex = _RegistryMutex(client, name, ttl=ttl)
    mutex.acquire(timeout)
    try:
        yield
    finally:
        mutex.release()


@contextmanager
def _file_lock(store: Path, name: str, timeout: float) -> Iterator[None]:
    """The OS lock next to a local store, its holder written beside it for waiters."""
    store.mkdir(parents=True, exist_ok=True)
    path = store / LOCK_FILE_NAME
    info = path.with_name(path.name + HOLDER_SUFFIX)
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        holder = _read_holder_file(info)
        _log.warning(
            "waiting for the registry lock %s, held by %s; %s",
            path,
            holder.describe(),
            _unlock_hint(name),
        )
        try:
            lock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise RegistryLockTimeout(
                f"registry lock {path} still held after {timeout:.0f}s by "
                f"{_read_holder_file(info).describe()}; {_unlock_hint(name)}"
            ) from None
    me = LockHolder.me(ttl=float("inf"))
    try:
        tmp = info.with_name(f"{info.name}.{os.getpid()}")
        tmp.write_text(me.to_json())
        tmp.replace(info)
        yield
    finally:
        if _read_holder_file(info).owner == me.owner:
            info.unlink(missing_ok=True)
        lock.release()


def _read_holder_file(info: Path) -> LockHolder:
    try:
        return LockHolder.from_json(info.read_text())
    except OSError:
        return LockHolder(owner="?", user="an unknown process")


class _RegistryMutex:
    """A mutex held as a registered model `<name>.promotion-lock` (creation is atomic).

    The holder and its lease live in the lock model's description (a column of
    its row, so they travel with a rename); a daemon thread renews the lease.
    """

    def __init__(self, client: RegistryAccess, name: str, *, ttl: float) -> None:
        self.client = client
        self.name = name
        self.lock_name = f"{name}{LOCK_SUFFIX}"
        self.ttl = ttl
        self.holder = LockHolder.me(ttl)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        told: str | None = None
        while True:
            now = time.time()
            self.holder = replace(self.holder, since=now, expires=now + self.ttl)
            try:
                self.client.create_registered_model(
                    self.lock_name,
                    description=self.holder.to_json(),
                    tags={"flywheel.lock": "promotion lock; `flywheel registry unlock` breaks it"},
                )
                break
            except StoreError as err:
                # "exists" is the expected refusal; "does not exist" too: MLflow's
                # SQL store looks the clashing model up after the failed insert,
                # and the holder may have released it in between.
                if _error_code(err) not in (*_EXISTS, _NOT_FOUND):
                    raise
            holder = self._break_if_abandoned()
            if holder is not None and holder.owner != told:
                told = holder.owner
                _log.warning(
                    "waiting for the registry lock %r, held by %s; %s",
                    self.lock_name,
                    holder.describe(),
                    _unlock_hint(self.name),
                )
            if time.monotonic() > deadline:
                raise RegistryLockTimeout(
                    f"registry lock {self.lock_name!r} still held after {timeout:.0f}s by "
                    f"{holder.describe() if holder else 'unknown'}; {_unlock_hint(self.name)}"
                )
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)
        self._renewer = threading.Thread(target=self._renew, name="registry-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        """Extend the lease every third of it while the lock is ours."""
        while not self._stop.wait(self.ttl / 3):
            try:
                holder = _holder(self.client, self.lock_name)
                if holder is None or holder.owner != self.holder.owner:
                    _log.warning("the registry lock %r was broken while held", self.lock_name)
                    return
                self.holder = self.holder.renewed(self.ttl)
                self.client.update_registered_model(
                    self.lock_name, description=self.holder.to_json()
                )
            except StoreError as err:  # a server hiccup: try again next tick
                _log.warning("could not renew the registry lock lease: %s", err)

    def _break_if_abandoned(self) -> LockHolder | None:
        """Remove the lock if its holder died or its lease expired; returns a live holder."""
        holder = _holder(self.client, self.lock_name)
        if holder is None or not (holder.is_dead() or holder.is_expired()):
            return holder
        # Rename first: only one waiter can rename a given lock model away.
        grave = f"{self.lock_name}.abandoned-{uuid.uuid4().hex[:12]}"
        try:
            self.client.rename_registered_model(self.lock_name, grave)
        except StoreError as err:
            if _error_code(err) in (_NOT_FOUND, *_EXISTS):
                return None  # another waiter broke it first
            raise
        moved = _holder(self.client, grave)
        if moved is not None and moved.owner != holder.owner:
            # It was a fresh lock taken after the abandoned one went: give it back.
            self.client.rename_registered_model(grave, self.lock_name)
            return moved
        self.client.delete_registered_model(grave)
        return None

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=10)
        holder = _holder(self.client, self.lock_name)
        if holder is not None and holder.owner == self.holder.owner:
            self.client.delete_registered_model(self.lock_name)


def _holder(client: RegistryAccess, lock_name: str) -> LockHolder | None:
    """Who holds the registry lock model, None if nobody."""
    try:
        model = client.get_registered_model(lock_name)
    except StoreError as err:
        if _error_code(err) == _NOT_FOUND:
            return None
        raise
    return LockHolder.from_json(model.description)


@dataclass(frozen=True)
class Unlocked:
    """What `unlock` did.

    Attributes:
        holder: whose lock it broke (None: nobody held it).
        finished: the half-done transition it then finished (None: none).
    """

    holder: LockHolder | None
    finished: Intent | None


def unlock(
    name: str,
    *,
    reason: str,
    who: str | None = None,
    strategy: LockStrategy = "auto",
) -> Unlocked:
    """Break the registry lock of a model, record it in the model's log, finish what was pending.

    For an operator whose registry is blocked by a holder that will not come
    back (a hung process, a host that went away with a lease still running).
    Breaking the lock of a live holder lets another transition run beside it:
    the waiting message names the holder so that a person can check first.
    `auto` breaks both kinds a model can have (the store's file lock, the lock
    model); then the lock is taken as `registry_lock` would take it.

    Raises:
        RegistryError: no reason given, or no such model.
    """
    check_reason(reason, "breaking the registry lock")
    by = resolve_user(who)
    client = _client()
    store = local_store_dir(_registry_uri())
    holders: list[LockHolder] = []
    if store is not None and strategy in ("auto", "file"):
        path = store / LOCK_FILE_NAME
        info = path.with_name(path.name + HOLDER_SUFFIX)
        if info.exists():
            holders.append(_read_holder_file(info))
        # A new lock file is a new lock: a holder still running keeps only the old inode.
        path.unlink(missing_ok=True)
        info.unlink(missing_ok=True)
    if strategy in ("auto", "registry"):
        lock_name = f"{name}{LOCK_SUFFIX}"
        held = _holder(client, lock_name)
        if held is not None:
            holders.append(held)
            try:
                client.delete_registered_model(lock_name)
            except StoreError as err:
                if _error_code(err) != _NOT_FOUND:
                    raise
    holder = holders[0] if holders else None
    with registry_lock(name, strategy=strategy, timeout=30.0) as finished:
        note = f"broke the lock of {holder.describe()}" if holder else "no lock was held"
        append_log(client, name, LogEntry(new_txid(), "unlock", utc_now(), by, reason, note=note))
    return Unlocked(holder, finished)


def recover(name: str, *, strategy: LockStrategy = "auto", timeout: float = 60.0) -> Intent | None:
    """Finish the transition a killed process left half-done, if there is one.

    Commands that take no lock for themselves (`flywheel models`) call it
    first, so that they show a finished transition, never a half-done one. It
    costs one read when nothing is pending; a transition still running is
    waited for, not finished.

    Returns:
        The intent it finished, None if none.

    Raises:
        ModelNotFoundError: no such model.
        RegistryLockTimeout: the lock was held longer than `timeout`.
    """
    if pending_intent(name, _get_model(_client(), name).tags) is None:
        return None
    with registry_lock(name, strategy=strategy, timeout=timeout) as finished:
        return finished


def lock_path_for(uri: str) -> Path | None:
    """Where the `file` lock of a local store lives, None for a server.

    >>> lock_path_for("sqlite:////tmp/x/mlflow.db")
    PosixPath('/tmp/x/.flywheel-registry.lock')
    """
    store = local_store_dir(uri)
    return None if store is None else store / LOCK_FILE_NAME
