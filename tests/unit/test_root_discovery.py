"""The project root: the nearest folder holding params.yaml, found as git finds its repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.cli.project_root import DEFAULT_DATA_ROOT, absolute_location
from flywheel.config import DataPlan
from flywheel.env import find_project_root


def test_the_nearest_folder_holding_params_yaml_is_the_root(tmp_path: Path) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "data" / "inner"
    inner.mkdir(parents=True)
    (outer / "params.yaml").write_text("data: {}\n")
    (outer / "data" / "params.yaml").mkdir()  # a folder of that name marks nothing

    assert find_project_root(inner) == outer
    assert find_project_root(outer) == outer
    (inner / "params.yaml").write_text("data: {}\n")
    assert find_project_root(inner) == inner  # a nested project wins, as in git


def test_outside_any_project_there_is_no_root(tmp_path: Path) -> None:
    assert (
        find_project_root(tmp_path) is None
        or (find_project_root(tmp_path) / "params.yaml").is_file()
    )
    assert find_project_root(tmp_path) != tmp_path


def test_a_location_typed_relative_is_made_absolute_and_a_url_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    assert absolute_location("logs/../preds") == str(tmp_path / "preds")
    assert absolute_location("s3://bucket/preds") == "s3://bucket/preds"


def test_the_default_data_root_is_the_plans() -> None:
    assert Path(DEFAULT_DATA_ROOT) == DataPlan().root
