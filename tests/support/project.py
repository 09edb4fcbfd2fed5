"""A tiny flywheel project in a DVC repository, and a git + DVC repository to version data in."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from flywheel.config import Params
from flywheel.data.versioning import track_dataset
from flywheel.demo.collect import collect_dataset

PROJECT_ENV = ("FLYWHEEL_HOME", "MLFLOW_TRACKING_URI", "FLYWHEEL_PIPELINE_RUN_ID")
"""What a test's environment may set that would override a project's embedded defaults."""


def make_project(root: Path, params: Params) -> tuple[Path, str]:
    """A DVC repository (no git) at `root` with `params` as params.yaml and its dataset tracked.

    Returns:
        The root and the recorded data version.
    """
    root.mkdir()
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"],
        cwd=root,
        check=True,
        capture_output=True,
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    collect_dataset(params.data, root / "data", progress=False)
    return root, track_dataset(root, params.data, push=False)


@contextmanager
def in_project(root: Path) -> Iterator[Path]:
    """`root` as the working directory, with the embedded defaults (none of `PROJECT_ENV` set).

    Undone on exit, so a module-scoped fixture can hold it for the module.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for key in PROJECT_ENV:
            patch.delenv(key, raising=False)
        yield root


def dvc(repo: Path, *args: str) -> None:
    """Run `dvc <args>` in `repo` (this interpreter's DVC); fail on a non-zero exit."""
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True)


def make_git_dvc_repo(repo: Path, remote: Path) -> Path:
    """A git + DVC repository at `repo` (analytics off), its default remote the folder `remote`."""
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    dvc(repo, "remote", "add", "-d", "tmp", str(remote))
    return repo
