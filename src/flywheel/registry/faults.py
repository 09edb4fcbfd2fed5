"""Fault injection: a process that kills itself with SIGKILL between two registry writes.

The crash tests (tests/integration/registry/test_crashes.py) set `FAULT_ENV` to
the name of a step (`alias:production`, `record:promote:production`, …); the
process running the transition dies at that step exactly as `kill -9` would,
with no cleanup, and the test checks what the next command makes of it. The
mechanism is `flywheel.processes.fault_point`, which the data versions'
transactions (`flywheel.data.transaction`) use too.
"""

from __future__ import annotations

from flywheel.processes import FAULT_ENV, fault_point

__all__ = ["FAULT_ENV", "fault_point"]
