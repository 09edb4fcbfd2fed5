"""`flywheel ARGS` as a real process, forked from a warm one instead of started cold.

A cold `python -m flywheel.cli` spends seconds importing MLflow before it does
anything; tests that need a fresh process per case (one that SIGKILLs itself
mid-transition, `tests/integration/registry/test_crashes.py`) would pay that
every time. A `multiprocessing` forkserver imports the CLI and MLflow once;
every command is then a new process forked from it, with its own environment
and working directory, that runs the `flywheel` script's entry point and ends
however that ends (an exit status, or the signal that killed it). The
forkserver holds no open store, file or connection when it forks: those are
made in the child, after the fork.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Mapping
from multiprocessing.context import ForkServerContext
from pathlib import Path

PRELOAD = [
    "flywheel.cli",
    "flywheel.registry",
    "mlflow",
    "dvc.repo",
    "flywheel.data.sync",
    "flywheel.labeling.merge",
    "flywheel.validation",
]
"""What the forkserver imports once, before any fork (the data crash tests' merges need DVC
and the data gate: seconds each to import)."""

_context: ForkServerContext | None = None


def _forkserver() -> ForkServerContext:
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        _context = context
    return _context


def _flywheel(args: list[str], env: dict[str, str], cwd: str, log: str) -> None:
    """The child: this environment and folder, output to `log`, then the script's entry point."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = ["flywheel", *args]
    from flywheel.cli.root import main

    main()


def run_forked(
    args: list[str], env: Mapping[str, str], cwd: Path, log: Path, timeout: float = 300
) -> int:
    """Run `flywheel ARGS` in a process forked from the warm forkserver.

    Args:
        args: the command line after `flywheel`.
        env: the whole environment of the process.
        cwd: its working directory.
        log: where its stdout and stderr go.
        timeout: seconds before it is killed and this fails.

    Returns:
        Its exit status, negative for the signal that ended it (as `subprocess`).
    """
    process = _forkserver().Process(target=_flywheel, args=(args, dict(env), str(cwd), str(log)))
    process.start()
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"flywheel {' '.join(args)} ran past {timeout} s:\n{log.read_text()}")
    return int(process.exitcode)
