"""Fixtures shared by the test tiers; the builders behind them are in `tests/support/`.

Module-scoped fixtures are built once per test module that asks for them:

* `mlflow_store`: a fresh SQLite MLflow store selected through `MLFLOW_TRACKING_URI`;
* `dataset`: the module's tiny data plan (its `data_plan` fixture) collected
  by the real collector (a suite that shares one set-up across its modules
  overrides it at package scope, e.g. tests/integration/monitoring/).

Every test run loads this file, a single unit test's too: heavy libraries are
imported inside the fixtures that need them. Like the product's entry points,
the test process turns telemetry off and lets PyTorch's OpenMP threads sleep
instead of spin (`flywheel.env.configure_process`) before anything imports
torch; the servers and steps the tests start inherit it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.config import DataPlan
from flywheel.env import configure_process
from tests.support.plans import collect_plan
from tests.support.tracking import tracking_env

configure_process()
# pytest-xdist's workers are started with COLUMNS=80 and LINES=24 in their environment;
# Rich would fix the CLI's console at that width when it is imported, and a test that
# widens it for one command (CliRunner's env={"COLUMNS": ...}) could not.
for _fixed in ("COLUMNS", "LINES"):
    os.environ.pop(_fixed, None)

# `import dvc` sets up DVC's log handlers, bound to the sys.stdout and sys.stderr of that
# moment (wrapped by colorama). Imported first inside a test, they would write to that
# test's capture (CliRunner's, capsys's), closed when it ends: a later test's DVC message
# then fails with "I/O operation on closed file". Imported here (66 ms), they write to the
# session's capture, which lasts.
import dvc  # noqa: E402, F401


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh SQLite tracking store, selected the way deployments do: the environment."""
    with tracking_env(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="module")
def dataset(data_plan: DataPlan, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset folder of `data_plan` (a fixture the test module defines), collected."""
    return collect_plan(data_plan, tmp_path_factory.mktemp("data"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """With `FLYWHEEL_NO_SKIPS=1` (CI: .ci/run), a skipped test fails instead.

    A test skips when what it needs is missing here (Label Studio, PostgreSQL,
    kubectl); on a laptop that is a note, in CI it would be a real component
    left untested while the run looks green.
    """
    report = yield
    if (
        os.environ.get("FLYWHEEL_NO_SKIPS") == "1"
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped, and FLYWHEEL_NO_SKIPS=1 (CI) forbids skips: {reason}"
    return report
