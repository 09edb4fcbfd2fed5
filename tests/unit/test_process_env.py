"""Entry points set up the process before torch loads: telemetry off, OpenMP threads that sleep."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flywheel.env import CPU_SHARING, TELEMETRY_OFF

# A CLI command that gets past the root callback and fails fast (no such params file).
PROBE = """
import os, sys
from flywheel.cli.root import app
try:
    app(["models", "--params", "/nonexistent/params.yaml"])
except SystemExit:
    pass
print("torch loaded before:", "torch" in sys.modules)
for key in sys.argv[1:]:
    print(key, os.environ.get(key))
"""


def _run_cli(env: dict[str, str]) -> list[str]:
    keys = [*CPU_SHARING, *TELEMETRY_OFF]
    return subprocess.run(
        [sys.executable, "-c", PROBE, *keys], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {*CPU_SHARING, *TELEMETRY_OFF}}


@pytest.mark.slow  # a fresh interpreter per case: seconds on a busy machine
def test_the_cli_sets_cpu_sharing_and_telemetry_off_before_torch_loads() -> None:
    out = _run_cli(_clean_env())

    assert out[0] == "torch loaded before: False"
    assert out[1:] == [f"{k} {v}" for k, v in {**CPU_SHARING, **TELEMETRY_OFF}.items()]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["ACTIVE", "PASSIVE"])
def test_a_users_openmp_policy_wins(policy: str) -> None:
    out = _run_cli({**_clean_env(), "OMP_WAIT_POLICY": policy})

    assert f"OMP_WAIT_POLICY {policy}" in out
