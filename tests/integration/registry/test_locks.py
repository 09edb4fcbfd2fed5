"""Locks that tell the truth, and transitions that refuse to undo what happened while they waited.

A real process holds the registry lock (a lease in the registry): a waiter
names it (user, host, PID, since, lease end, how to break it), the lease is
renewed past its length while the holder lives, and once the holder is killed
the next command takes the lock at once. A lock of another host is waited for
until its lease expires, or broken by `flywheel registry unlock`, recorded.
A rollback or promote that waited while another transition moved production
is refused naming it, unless forced.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import filelock
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flywheel import registry
from flywheel.cli import app
from tests.support.processes import subprocess_env
from tests.support.registry_store import Store
from tests.support.registry_store import aliases as _aliases
from tests.support.registry_store import bless as _bless
from tests.support.registry_store import register_versions as _register

pytestmark = pytest.mark.slow  # a real MLflow store and processes: seconds

HOLD = """
import sys, time
from flywheel.registry import registry_lock
with registry_lock(sys.argv[1], strategy="registry", ttl=float(sys.argv[2])):
    print("held", flush=True)
    time.sleep(300)
"""


def _in_production(name: str, versions: list[str]) -> None:
    """versions[0] then versions[1] promoted: production versions[1], previous versions[0]."""
    _bless(name, versions[0], champion=None)
    registry.promote(name, versions[0], reason="first")
    _bless(name, versions[1], champion=versions[0])
    registry.promote(name, versions[1], reason="second")


def _lock_holder(name: str) -> registry.LockHolder:
    model = MlflowClient().get_registered_model(name + registry.LOCK_SUFFIX)
    return registry.LockHolder.from_json(model.description)


def test_a_live_holder_is_named_and_renewed_a_killed_one_is_broken_at_once(
    uses_store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name = "lock-live"
    versions = _register(uses_store, name, 2)
    _bless(name, versions[0], champion=None)
    ttl = 4.0
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, name, str(ttl)],
        env=subprocess_env({"MLFLOW_TRACKING_URI": uses_store.uri, "FLYWHEEL_USER": "alice"}),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        first = _lock_holder(name)
        assert (first.user, first.host, first.pid) == ("alice", socket.gethostname(), holder.pid)

        started = time.monotonic()
        with (
            caplog.at_level("WARNING", logger="flywheel.registry"),
            pytest.raises(registry.RegistryLockTimeout) as timeout,
        ):
            registry.promote(name, versions[0], reason="x", lock="registry", lock_timeout=2 * ttl)
        assert time.monotonic() - started >= 2 * ttl  # waited past the lease: it was renewed
        message = str(timeout.value)
        for part in (
            f"alice@{socket.gethostname()} pid {holder.pid}",
            "since ",
            "lease expires ",
            f"flywheel registry unlock --model {name} --reason",
        ):
            assert part in message
        assert _lock_holder(name).expires > first.expires + ttl / 2  # renewed while held
        waiting = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
        assert len(waiting) == 1  # said once, naming the holder
        assert f"pid {holder.pid}" in waiting[0]
        caplog.clear()

        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with caplog.at_level("WARNING", logger="flywheel.registry"):
            registry.promote(name, versions[0], reason="after", lock="registry", lock_timeout=60)
        assert not [r for r in caplog.records if "waiting for" in r.getMessage()]
        assert _aliases(name)["production"] == versions[0]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)


def _foreign_lock(name: str, expires_in: float) -> None:
    """A lock model as a holder on another host would leave it."""
    now = time.time()
    holder = registry.LockHolder("f00", "bob", "elsewhere", 4242, None, now, now + expires_in)
    MlflowClient().create_registered_model(
        name + registry.LOCK_SUFFIX, description=holder.to_json()
    )


def test_another_hosts_lock_expires_or_is_broken_by_unlock_which_is_recorded(
    uses_store: Store,
) -> None:
    name = "lock-foreign"
    versions = _register(uses_store, name, 2)
    _in_production(name, versions)

    _foreign_lock(name, expires_in=2.0)  # its PID means nothing here: the lease decides
    started = time.monotonic()
    registry.rollback(name, reason="lease ran out", lock="registry", lock_timeout=60)
    assert time.monotonic() - started >= 1.0
    assert _aliases(name)["production"] == versions[0]

    _foreign_lock(name, expires_in=600.0)
    with pytest.raises(registry.RegistryLockTimeout, match="bob@elsewhere pid 4242"):
        registry.rollback(name, reason="x", lock="registry", lock_timeout=1)
    result = CliRunner().invoke(
        app, ["registry", "unlock", "--model", name, "--reason", "host elsewhere is gone"]
    )
    assert result.exit_code == 0, result.output
    assert "broke the registry lock of bob@elsewhere pid 4242" in result.output
    unlocks = [e for e in registry.read_log(_model_tags(name)) if e.action == "unlock"]
    assert len(unlocks) == 1
    assert (unlocks[0].by, unlocks[0].reason) == ("tester", "host elsewhere is gone")
    assert "bob@elsewhere pid 4242" in unlocks[0].note
    registry.rollback(name, reason="unlocked", lock="registry", lock_timeout=5)
    assert _aliases(name)["production"] == versions[1]

    empty = CliRunner().invoke(app, ["registry", "unlock", "--model", name, "--reason", " "])
    assert empty.exit_code == 2
    assert "needs a reason" in empty.output


def _model_tags(name: str) -> dict[str, str]:
    return dict(MlflowClient().get_registered_model(name).tags)


class _Waiting(logging.Handler):
    """Sets an event when a registry command says it waits for the lock."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "waiting for the registry lock" in record.getMessage():
            self.event.set()


def _while_waiting(
    uses_store: Store, late: Callable[[], registry.AliasChange], meanwhile: Callable[[], object]
) -> registry.AliasChange | Exception:
    """Run `late` in a thread blocked on the store's lock; run `meanwhile`; then let `late` go.

    `meanwhile` takes the registry strategy's lock, so it runs while `late` waits
    for the file lock, as another operator's command would.
    """
    path = registry.lock_path_for(uses_store.uri)
    assert path is not None
    outcome: list[registry.AliasChange | Exception] = []

    def run() -> None:
        try:
            outcome.append(late())
        except Exception as err:
            outcome.append(err)

    waiting = _Waiting()
    logger = logging.getLogger("flywheel.registry")
    logger.addHandler(waiting)
    held = filelock.FileLock(path)
    held.acquire(timeout=30)
    thread = threading.Thread(target=run)
    try:
        thread.start()
        assert waiting.event.wait(timeout=60), "the late command never waited for the lock"
        meanwhile()
    finally:
        held.release()
        logger.removeHandler(waiting)
        thread.join(timeout=120)
    return outcome[0]


def test_a_transition_that_waited_does_not_undo_one_made_meanwhile_unless_forced(
    uses_store: Store,
) -> None:
    name = "lock-overtaken"
    v1, v2, v3 = _register(uses_store, name, 3)
    _in_production(name, [v1, v2])

    # Two operators roll back at once: the second would silently undo the first.
    late = _while_waiting(
        uses_store,
        lambda: registry.rollback(name, reason="second operator", who="bob"),
        lambda: registry.rollback(name, reason="first operator", who="ann", lock="registry"),
    )
    assert isinstance(late, registry.TransitionOvertakenError), late
    assert f"rollback of version {v1} by ann" in str(late)
    assert "--force" in str(late)
    assert (_aliases(name)["production"], _aliases(name)["previous"]) == (v1, v2)

    # A promote overtaken by a rollback: refused, naming the rollback.
    _bless(name, v3, champion=v1)
    late = _while_waiting(
        uses_store,
        lambda: registry.promote(name, v3, reason="ship", who="bob"),
        lambda: registry.rollback(name, reason="incident", who="ann", lock="registry"),
    )
    assert isinstance(late, registry.TransitionOvertakenError), late
    assert f"rollback of version {v2} by ann" in str(late)
    assert _aliases(name)["production"] == v2

    # Forced, the late rollback goes on and undoes what happened meanwhile.
    late = _while_waiting(
        uses_store,
        lambda: registry.rollback(name, reason="I know", who="bob", force=True),
        lambda: registry.rollback(name, reason="meanwhile", who="ann", lock="registry"),
    )
    assert isinstance(late, registry.AliasChange), late
    assert (late.production, late.previous) == (v2, v1)
    log = registry.read_log(_model_tags(name))
    assert [(e.action, e.by, e.production) for e in log[-2:]] == [
        ("rollback", "ann", v1),
        ("rollback", "bob", v2),
    ]


def test_the_cli_says_whom_it_waits_for_and_refuses_an_overtaken_rollback(
    uses_store: Store, tmp_path: Path
) -> None:
    name = "lock-cli"
    versions = _register(uses_store, name, 2)
    _in_production(name, versions)
    path = registry.lock_path_for(uses_store.uri)
    assert path is not None
    held = filelock.FileLock(path)
    held.acquire(timeout=30)
    try:
        late = subprocess.Popen(
            [sys.executable, "-m", "flywheel.cli", "rollback", "--model", name, "-r", "late"],
            env=subprocess_env({"MLFLOW_TRACKING_URI": uses_store.uri, "FLYWHEEL_USER": "bob"}),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert late.stderr is not None
        waiting = next(
            (line for line in iter(late.stderr.readline, "") if "registry lock" in line), ""
        )  # whom it waits for (MLflow may warn first)
        assert "waiting for the registry lock" in waiting
        assert "flywheel registry unlock" in waiting
        registry.rollback(name, reason="meanwhile", who="ann", lock="registry")
    finally:
        held.release()
    out, err = late.communicate(timeout=120)
    assert late.returncode == 1, (out, err)
    assert "refused" in err
    assert f"rollback of version {versions[0]} by ann" in " ".join(err.split())
    assert _aliases(name)["production"] == versions[0]
