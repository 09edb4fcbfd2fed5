"""Processes the product starts and stops: a free port, a process group to stop, a worker's tie.

Every server flywheel starts (`flywheel serve` under the demo, the dashboards,
Label Studio) runs in its own session, so that its workers share one process
group; `stop_process_group` ends all of them, not only the leader.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on `host:port` now (a bind as servers make it would succeed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def stop_process_group(process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
    """SIGTERM the group `process` leads, SIGKILL what is left of it after `timeout_s`.

    The whole group is waited for, not only its leader: a server's leader can end
    while a process it started (BentoML's arbiter, a worker) is still shutting
    down, and that one would outlive the caller, holding a port and open pipes.
    The process must have been started with `start_new_session=True`.

    Returns:
        The leader's exit status.
    """
    group = process.pid  # a session's leader: the group is its pid
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _group_alive(group) and time.monotonic() < deadline:
        process.poll()  # reap the leader, or it stays in the group as a zombie
        time.sleep(0.1)
    _signal_group(group, signal.SIGKILL)
    return int(process.wait())


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group has ended
        os.killpg(group, signum)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


PR_SET_PDEATHSIG = 1
"""prctl(2)'s option: the signal the calling process gets when its parent dies (Linux)."""


def die_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send this process `signum` when its parent process dies.

    A server's worker calls it, so that `kill -9` of the server (its parent)
    takes the worker with it instead of leaving it serving and holding the port.
    If the parent is already gone, the signal is sent at once.

    Returns:
        Whether the kernel took the request (False off Linux, where nothing is done).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the parent died before the request was made
        os.kill(os.getpid(), signum)
    return True


PORT_IN_USE = "is in use"
"""In every message that says a port is taken (`port_holder`), for callers that retry."""

WORKER_MARK = "serving.service:FlywheelService"
"""In the command line of every process of a flywheel server (BentoML's and its workers)."""


def port_holder(host: str, port: int) -> str | None:
    """Who holds `host:port`, in words, or None when a server could bind it now.

    A flywheel server's worker whose server is gone (its parent is init) is
    named as an orphan, with the command that stops it.
    """
    import psutil

    if port_is_free(host, port):
        return None
    try:
        pids = sorted(
            {
                c.pid
                for c in psutil.net_connections(kind="tcp")
                if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid
            }
        )
    except psutil.AccessDenied:  # another user's sockets (macOS without root)
        pids = []
    if not pids:
        return f"port {port} on {host} {PORT_IN_USE} by another process"
    described = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            command = " ".join(process.cmdline())
            orphan = process.ppid() == 1
        except psutil.Error:
            continue
        if WORKER_MARK in command and orphan:
            described.append(
                f"pid {pid}, a flywheel server's worker left behind by a server that was "
                f"killed: stop it with `kill {pid}`"
            )
        else:
            described.append(f"pid {pid} ({command[:120]})")
    holders = "; ".join(described or ["another process"])
    return f"port {port} on {host} {PORT_IN_USE}: held by {holders}"


FAULT_ENV = "FLYWHEEL_FAULT_AT"
"""The step at which the process SIGKILLs itself (the crash tests only)."""


def fault_point(step: str) -> None:
    """Die here, by SIGKILL, if `FAULT_ENV` names `step`; otherwise do nothing.

    The crash tests (`tests/integration/registry/test_crashes.py`,
    `tests/integration/test_data_crashes.py`) set `FAULT_ENV` to one step; the
    process dies there exactly as `kill -9` would, with no cleanup, and the test
    checks what the next command makes of it. Unset (always, outside those
    tests), a fault point costs one dictionary lookup.
    """
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
