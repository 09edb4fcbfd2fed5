"""Test support for end-to-end tests: a tiny flywheel project in a DVC repository.

Tests import it as `tests.project_support` (the repository root is on
`sys.path`, see `pythonpath` in pyproject.toml).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from flywheel.config import Params
from flywheel.data.versioning import track_dataset
from flywheel.demo.collect import collect_dataset


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
