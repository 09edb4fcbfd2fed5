"""The registry lock: one alias read-modify-write of a registered model at a time.

A local store (SQLite file, file store) is locked with an OS file lock next to
its database; a tracking server with a registered model `<name>.promotion-lock`
used as a mutex (see `flywheel.registry` for why both are race-safe).
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import filelock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from flywheel.registry.errors import RegistryError, RegistryLockTimeout
from flywheel.registry.history import resolve_user
from flywheel.registry.store import _EXISTS, _NOT_FOUND, _client, _error_code, _registry_uri
from flywheel.tracking import local_store_dir

LockStrategy = Literal["auto", "file", "registry"]


LOCK_SUFFIX = ".promotion-lock"
"""A `registry` lock of model NAME is a registered model named NAME + this."""


LOCK_FILE_NAME = ".flywheel-registry.lock"
"""A `file` lock lives in the local store's folder under this name."""


@contextmanager
def registry_lock(
    name: str,
    *,
    strategy: LockStrategy = "auto",
    timeout: float = 60.0,
    ttl: float = 300.0,
) -> Iterator[None]:
    """Serialize alias read-modify-writes of a registered model across processes and machines.

    Args:
        name: the registered model.
        strategy: `file` (an OS lock next to a local store), `registry` (a lock
            model in the registry itself; works against a tracking server), or
            `auto`: `file` for a local store, `registry` otherwise.
        timeout: seconds to wait for the lock.
        ttl: seconds after which a `registry` lock is considered abandoned and
            may be broken (a transition takes well under a second).

    Raises:
        RegistryLockTimeout: not acquired within `timeout`.
        RegistryError: `file` asked for a store that is not local.
    """
    uri = _registry_uri()
    store = local_store_dir(uri)
    if strategy == "auto":
        strategy = "file" if store is not None else "registry"
    if strategy == "file":
        if store is None:
            raise RegistryError(f"a file lock needs a local store; the registry is {uri}")
        store.mkdir(parents=True, exist_ok=True)
        path = store / LOCK_FILE_NAME
        lock = filelock.FileLock(path)
        try:
            lock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise RegistryLockTimeout(
                f"registry lock {path} still held after {timeout:.0f}s by another process"
            ) from None
        try:
            yield
        finally:
            lock.release()
    else:
        mutex = _RegistryMutex(_client(), name, ttl=ttl)
        mutex.acquire(timeout)
        try:
            yield
        finally:
            mutex.release()


class _RegistryMutex:
    """A mutex held as a registered model `<name>.promotion-lock` (creation is atomic).

    The owner and expiry live in the lock model's description (a column of its
    row, so they travel with a rename).
    """

    def __init__(self, client: MlflowClient, name: str, *, ttl: float) -> None:
        self.client = client
        self.lock_name = f"{name}{LOCK_SUFFIX}"
        self.ttl = ttl
        self.owner = (
            f"{resolve_user()}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        )

    def _describe(self) -> str:
        return json.dumps({"owner": self.owner, "expires": time.time() + self.ttl})

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            try:
                self.client.create_registered_model(
                    self.lock_name,
                    description=self._describe(),
                    tags={"flywheel.lock": "promotion lock; delete only if no promotion runs"},
                )
                return
            except MlflowException as err:
                # "exists" is the expected refusal; "does not exist" too: MLflow's
                # SQL store looks the clashing model up after the failed insert,
                # and the holder may have released it in between.
                if _error_code(err) not in (*_EXISTS, _NOT_FOUND):
                    raise
            holder = self._break_if_abandoned()
            if time.monotonic() > deadline:
                raise RegistryLockTimeout(
                    f"registry lock {self.lock_name!r} still held after {timeout:.0f}s "
                    f"(holder: {holder or 'unknown'})"
                )
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)

    def _holder(self, lock_name: str) -> dict[str, Any] | None:
        try:
            model = self.client.get_registered_model(lock_name)
        except MlflowException as err:
            if _error_code(err) == _NOT_FOUND:
                return None
            raise
        try:
            info = json.loads(model.description or "")
        except json.JSONDecodeError:
            info = None
        return info if isinstance(info, dict) else {"owner": "?", "expires": 0.0}

    def _break_if_abandoned(self) -> str | None:
        """Remove the lock if its holder's lease has expired; returns the holder's name."""
        holder = self._holder(self.lock_name)
        if holder is None or float(holder.get("expires", 0.0)) > time.time():
            return None if holder is None else str(holder.get("owner"))
        # Rename first: only one waiter can rename a given lock model away.
        grave = f"{self.lock_name}.abandoned-{uuid.uuid4().hex[:12]}"
        try:
            self.client.rename_registered_model(self.lock_name, grave)
        except MlflowException as err:
            if _error_code(err) in (_NOT_FOUND, *_EXISTS):
                return None  # another waiter broke it first
            raise
        moved = self._holder(grave)
        if moved is not None and moved.get("owner") != holder.get("owner"):
            # It was a fresh lock taken after the abandoned one went: give it back.
            self.client.rename_registered_model(grave, self.lock_name)
            return str(moved.get("owner"))
        self.client.delete_registered_model(grave)
        return None

    def release(self) -> None:
        holder = self._holder(self.lock_name)
        if holder is not None and holder.get("owner") == self.owner:
            self.client.delete_registered_model(self.lock_name)


def lock_path_for(uri: str) -> Path | None:
    """Where the `file` lock of a local store lives, None for a server.

    >>> lock_path_for("sqlite:////tmp/x/mlflow.db")
    PosixPath('/tmp/x/.flywheel-registry.lock')
    """
    store = local_store_dir(uri)
    return None if store is None else store / LOCK_FILE_NAME
