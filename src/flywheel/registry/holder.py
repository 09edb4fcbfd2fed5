"""Who holds a registry lock: user, host, process, since when, until when; alive or not.

A `LockHolder` is written where the lock is (the lock model's description, a
file beside the OS lock) so that a waiter can say whom it waits for, and tell
a dead holder (same host: its PID is gone, or is another process now) from a
live one whose lease it must respect.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from flywheel.registry.history import resolve_user


@dataclass(frozen=True)
class LockHolder:
    """Who holds a registry lock.

    Attributes:
        owner: a unique token of this holding.
        user: who runs the holding process.
        host: the host it runs on.
        pid: its process id (None if unknown).
        started: its start time in clock ticks since boot (`/proc`), to tell a
            reused PID from the holder; None where there is no `/proc`.
        since: when it took the lock (epoch seconds).
        expires: when its lease ends if not renewed (epoch seconds; inf for a
            file lock, which the OS releases when the process ends).
    """

    owner: str
    user: str = "?"
    host: str = "?"
    pid: int | None = None
    started: str | None = None
    since: float = 0.0
    expires: float = 0.0

    @classmethod
    def me(cls, ttl: float) -> LockHolder:
        """This process, taking a lock now."""
        now = time.time()
        return cls(
            owner=uuid.uuid4().hex[:12],
            user=resolve_user(),
            host=socket.gethostname(),
            pid=os.getpid(),
            started=_process_start(os.getpid()),
            since=now,
            expires=now + ttl,
        )

    @classmethod
    def from_json(cls, text: str | None) -> LockHolder:
        """Read `to_json`'s output; anything else is an unknown holder whose lease has expired."""
        try:
            raw = json.loads(text or "")
        except json.JSONDecodeError:
            raw = None
        if not isinstance(raw, dict):
            return cls(owner="?")
        fields = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in raw.items() if k in fields and v is not None})
        except TypeError:
            return cls(owner=str(raw.get("owner", "?")))

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    def renewed(self, ttl: float) -> LockHolder:
        """The same holding with a fresh lease."""
        return replace(self, expires=time.time() + ttl)

    def is_dead(self) -> bool:
        """True when the holder ran on this host and its process is gone (or is another now)."""
        if self.host != socket.gethostname() or self.pid is None:
            return False
        return not _process_alive(self.pid, self.started)

    def is_expired(self) -> bool:
        return self.expires <= time.time()

    def describe(self) -> str:
        """`alice@host pid 42 since 09:30:00 UTC, lease expires 09:30:15 UTC`."""
        who = f"{self.user}@{self.host}" + (f" pid {self.pid}" if self.pid else "")
        if self.owner != "?" and self.user == "?":
            who = self.owner  # a lock written by hand or by an older flywheel
        until = (
            "held until that process ends"
            if self.expires == float("inf")
            else f"lease expires {_clock(self.expires)}, renewed while it runs"
        )
        return f"{who} since {_clock(self.since)}, {until}"


def _clock(epoch: float) -> str:
    if epoch <= 0:
        return "?"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), None without `/proc`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name may hold spaces


def _process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True  # no /proc: trust kill(0)
    if fields[0] == "Z":
        return False  # killed, not yet reaped by its parent
    return started is None or fields[19] == started
