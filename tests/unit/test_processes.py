"""Stopping a server's process group: every process in it ends, not only the leader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flywheel.processes import free_port, stop_process_group


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _group(child: str, pidfile: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A bash leader that waits for one child running `child`; returns the leader and its pid."""
    announce = f"echo $BASHPID > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}"
    script = f"({child}; {announce}; exec sleep 300) & wait"
    process = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    return process, int(pidfile.read_text())


def test_a_child_that_ignores_sigterm_and_outlives_its_leader_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # The leader ends on SIGTERM; its child ignores SIGTERM (as a server busy shutting down).
    process, child = _group("trap '' TERM", pidfile)

    started = time.monotonic()
    status = stop_process_group(process, timeout_s=1.0)

    assert status != 0  # the leader ended by its signal
    assert _gone(child), "the child outlived stop_process_group"
    assert time.monotonic() - started < 15


def test_a_group_that_ends_on_sigterm_is_not_waited_for(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    process, child = _group("true", pidfile)

    started = time.monotonic()
    stop_process_group(process, timeout_s=60.0)

    assert time.monotonic() - started < 10  # the timeout is a ceiling, not a wait
    assert _gone(child)


def test_free_port_can_be_bound() -> None:
    import socket

    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_a_worker_tied_to_its_parent_ends_when_the_parent_is_killed(tmp_path: Path) -> None:
    """The worker calls die_with_parent; `kill -9` of its parent ends it too."""
    pidfile = tmp_path / "worker.pid"
    worker = (
        "import os, time, sys; from flywheel.processes import die_with_parent; "
        f"assert die_with_parent(); open({str(pidfile)!r} + '.tmp', 'w').write(str(os.getpid())); "
        f"os.rename({str(pidfile)!r} + '.tmp', {str(pidfile)!r}); time.sleep(300)"
    )
    spawn = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {worker!r}])"
    parent = subprocess.Popen(
        [sys.executable, "-c", spawn + "; time.sleep(300)"], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists():
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.05)
        child = int(pidfile.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _gone(child), "the worker outlived its killed parent"
    finally:
        stop_process_group(parent, timeout_s=1.0)


def test_flywheel_serve_names_an_orphaned_worker_that_holds_its_port(tmp_path: Path) -> None:
    """A worker whose server is gone (its parent is init) holds the port: serve says which."""
    from typer.testing import CliRunner

    from flywheel.cli import app
    from flywheel.processes import WORKER_MARK, port_holder

    port = free_port()
    pidfile = tmp_path / "orphan.pid"
    holder = (
        "import os, socket, time; s = socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); "
        f"open({str(pidfile)!r} + '.tmp', 'w').write(str(os.getpid())); "
        f"os.rename({str(pidfile)!r} + '.tmp', {str(pidfile)!r}); time.sleep(300)"
    )
    # bash starts it in the background and exits: the holder is reparented to init
    subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -c "$0" {WORKER_MARK} >/dev/null 2>&1 &', holder],
        check=True,
    )
    deadline = time.monotonic() + 30
    while not pidfile.exists():
        assert time.monotonic() < deadline, "the holder never started"
        time.sleep(0.05)
    orphan = int(pidfile.read_text())
    try:
        said = port_holder("127.0.0.1", port)
        assert said is not None
        assert f"pid {orphan}, a flywheel server's worker left behind" in said
        assert f"`kill {orphan}`" in said

        params = tmp_path / "params.yaml"
        params.write_text("data: {name: held}\n")
        result = CliRunner().invoke(
            app, ["serve", "--params", str(params), "--port", str(port)], env={"COLUMNS": "400"}
        )
        assert result.exit_code == 2, result.output
        assert f"`kill {orphan}`" in result.output
    finally:
        os.kill(orphan, signal.SIGKILL)
    assert _gone(orphan)
    assert port_holder("127.0.0.1", port) is None
