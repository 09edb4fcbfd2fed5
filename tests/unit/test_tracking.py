"""MLflow set-up and lineage tags: where runs go, and what they record about their origin."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flywheel.tracking import (
    LINEAGE_TAGS,
    TAG_DATA_VERSION,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_PIPELINE_RUN_ID,
    flatten_params,
    git_state,
    hash_params,
    lineage_tags,
    local_store_dir,
    resolve_tracking,
)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:////abs/dir/mlflow.db", Path("/abs/dir")),
        ("sqlite:///rel/mlflow.db", Path("rel")),
        ("file:///tmp/mlruns", Path("/tmp/mlruns")),
        ("/tmp/mlruns", Path("/tmp/mlruns")),
        ("http://mlflow.mlops:5000", None),
        ("databricks", None),
    ],
)
def test_local_store_dir(uri: str, expected: Path | None) -> None:
    assert local_store_dir(uri) == expected


def test_default_store_is_sqlite_under_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "state"))
    config = resolve_tracking()
    assert config.uri == f"sqlite:///{tmp_path}/state/mlflow/mlflow.db"
    assert config.artifact_root == (tmp_path / "state/mlflow/artifacts").as_uri()


def test_env_uri_wins_and_a_server_keeps_its_artifact_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_tracking().uri == "http://mlflow:5000"
    assert resolve_tracking().artifact_root is None


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"a": 1}, {"a": "1"}),
        ({"t": {"m": {"w": 16}, "lr": 0.1}}, {"t.m.w": "16", "t.lr": "0.1"}),
        ({"classes": ["0", "1"], "none": None}, {"classes": '["0", "1"]', "none": "None"}),
        ({}, {}),
    ],
)
def test_flatten_params(params: dict, expected: dict[str, str]) -> None:
    assert flatten_params(params) == expected


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({"x": 1, "y": 2}, {"y": 2, "x": 1}, True),
        ({"x": 1}, {"x": 2}, False),
        ({"x": {"y": [1, 2]}}, {"x": {"y": [2, 1]}}, False),
    ],
)
def test_hash_params(a: dict, b: dict, same: bool) -> None:
    assert (hash_params(a) == hash_params(b)) is same


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_git_state_sees_commit_and_dirty_tree(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    for pointer in ("data.dvc", "sub/other.dvc", "dvc.lock"):
        (tmp_path / pointer).write_text("outs: [{md5: a.dir}]\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    commit, dirty = git_state(tmp_path)
    assert len(commit) == 40
    assert dirty == "false"

    (tmp_path / "untracked.txt").write_text("ignored by the flag\n")
    assert git_state(tmp_path)[1] == "false"
    # A new data version rewrites DVC's pointers: recorded as the data version, not as code.
    for pointer in ("data.dvc", "sub/other.dvc", "dvc.lock"):
        (tmp_path / pointer).write_text("outs: [{md5: b.dir}]\n")
    assert git_state(tmp_path)[1] == "false"
    assert git_state(tmp_path / "sub")[1] == "false"
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path) == (commit, "true")


def test_lineage_tags_outside_git_use_the_image_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repo above tmp_path
    monkeypatch.setenv("FLYWHEEL_GIT_COMMIT", "abc123")
    monkeypatch.setenv("FLYWHEEL_PIPELINE_RUN_ID", "run-42")

    tags = lineage_tags(data_version=None, params_hash="h", device="cpu", repo=tmp_path)

    assert set(tags) == set(LINEAGE_TAGS)
    assert tags[TAG_GIT_COMMIT] == "abc123"
    assert tags[TAG_GIT_DIRTY] == "unknown"
    assert tags[TAG_DATA_VERSION] == "unknown"
    assert tags[TAG_PIPELINE_RUN_ID] == "run-42"
