"""Processes the tests start: servers on a free port, `make` in the repository, env for both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest

from flywheel.monitoring.dashboards import free_port as free_port  # re-exported for the tests
from tests.support import REPO

BIN = Path(sys.executable).parent  # the environment's scripts: flywheel, mlflow, evidently, dvc
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "BENTOML_DO_NOT_TRACK": "true",
}


def replace_flag(args: list[str], flag: str, value: str) -> list[str]:
    """`args` with `--flag=...` set to `value` (the flag must be there)."""
    assert any(a.startswith(f"{flag}=") for a in args), f"{flag} not in {args}"
    return [f"{flag}={value}" if a.startswith(f"{flag}=") else a for a in args]


def http_get(url: str, host: str | None = None, timeout: float = 5) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_until_up(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if http_get(url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not up after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server started in its own session, workers included."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def subprocess_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment with the venv's scripts first on PATH, telemetry off, and `extra`."""
    env = {**os.environ, **TELEMETRY_OFF, **extra}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return env


def make(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run make in the repository (no MAKEFLAGS inherited from an outer make)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
