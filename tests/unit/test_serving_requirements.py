"""The serving image's requirements (`serving.requirements`): derived from the lock, current."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from serving.requirements import (
    OUTPUT,
    SERVICE_REQUIREMENTS,
    RequirementsError,
    closure,
    main,
    read_lock,
    render,
)


def test_the_committed_file_is_current_with_the_lock() -> None:
    assert main(["--check"]) == 0, "run `python -m serving.requirements`"


def test_every_pin_is_the_locks() -> None:
    lock = read_lock()
    pins = [line for line in OUTPUT.read_text().splitlines() if "==" in line]
    assert pins
    for line in pins:
        name = canonicalize_name(line.split("==")[0])
        if name != "setuptools":  # `pip freeze` leaves it out of the lock
            assert lock[name] == line


def test_the_closure_follows_requirements_and_leaves_out_training_packages() -> None:
    names = closure(SERVICE_REQUIREMENTS)
    assert {"bentoml", "mlflow", "torch"} <= names
    assert {"sqlalchemy", "starlette", "sympy"} <= names  # mlflow's, bentoml's, torch's own
    assert not {"dvc", "great-expectations", "evidently", "kfp", "optuna"} & names


def test_a_package_missing_from_the_lock_is_named(tmp_path: Path) -> None:
    lock = tmp_path / "constraints.txt"
    lock.write_text("numpy==2.0.0  # a comment\n")
    pins = read_lock(lock)
    assert pins == {"numpy": "numpy==2.0.0"}
    with pytest.raises(RequirementsError, match="pillow"):
        render({"numpy", "pillow"}, pins)
