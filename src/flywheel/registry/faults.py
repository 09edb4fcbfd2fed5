"""Fault injection: a process that kills itself with SIGKILL between two registry writes.

The crash tests (tests/integration/registry/test_crashes.py) set `FAULT_ENV` to
the name of a step (`alias:production`, `record:promote:production`, …); the
process running the transition dies at that step exactly as `kill -9` would,
with no cleanup, and the test checks what the next command makes of it. Unset
(always, outside those tests), a fault point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "FLYWHEEL_FAULT_AT"
"""The step at which the process SIGKILLs itself (tests only)."""


def fault_point(step: str) -> None:
    """Die here, by SIGKILL, if `FAULT_ENV` names `step`; otherwise do nothing."""
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
