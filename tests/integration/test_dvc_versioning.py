"""Data versions with real DVC: track, push, pull, regenerate, refuse to clobber."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flywheel.config import DataPlan, Strata
from flywheel.data.manifest import load_manifest, sha256_file
from flywheel.data.versioning import (
    DataVersionError,
    data_version,
    ensure_dataset,
    is_clean,
    track_dataset,
)
from tests.support.project import make_git_dvc_repo

pytestmark = pytest.mark.slow

DEMO_GENERATOR = "flywheel.demo.collect:collect_dataset"  # params.yaml's data.generator


@pytest.fixture
def plan() -> DataPlan:
    return DataPlan(
        seed=7,
        strata=Strata(style=("handwritten", "printed"), noise=("clean", "blur")),
        per_stratum={"train": 10, "val": 4, "test": 4},
        generator=DEMO_GENERATOR,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git + DVC repository whose default remote is a folder in tmp."""
    return make_git_dvc_repo(tmp_path / "repo", remote=tmp_path / "remote")


def _file_hashes(dataset_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(dataset_dir)): sha256_file(p)
        for p in sorted(dataset_dir.rglob("*"))
        if p.is_file()
    }


def test_first_run_collects_tracks_and_pushes(repo: Path, plan: DataPlan) -> None:
    how, version = ensure_dataset(plan, repo)

    assert how == "collected"
    assert version == data_version(repo, plan)
    assert len(version) == 32
    assert is_clean(repo, plan)
    assert any((repo.parent / "remote").rglob("*")), "push left nothing in the remote"
    assert len(load_manifest(repo / "data" / plan.name)) == 4 * (10 + 4 + 4)  # 4 strata


def test_pull_round_trip_gives_identical_data(repo: Path, plan: DataPlan) -> None:
    _, version = ensure_dataset(plan, repo)
    before = _file_hashes(repo / "data")
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")

    how, again = ensure_dataset(plan, repo)

    assert (how, again) == ("pulled", version)
    assert _file_hashes(repo / "data") == before


def test_regenerates_from_seed_when_remote_is_empty(repo: Path, plan: DataPlan) -> None:
    _, version = ensure_dataset(plan, repo)
    before = _file_hashes(repo / "data")
    for gone in ("data", ".dvc/cache"):
        shutil.rmtree(repo / gone)
    shutil.rmtree(repo.parent / "remote")

    how, again = ensure_dataset(plan, repo)

    assert (how, again) == ("regenerated", version)
    assert _file_hashes(repo / "data") == before
    assert is_clean(repo, plan)


def test_unrecorded_changes_are_refused_and_kept(repo: Path, plan: DataPlan) -> None:
    ensure_dataset(plan, repo)
    extra = repo / "data" / plan.name / "images" / "mine.png"
    extra.write_bytes(b"not recorded anywhere")

    with pytest.raises(DataVersionError, match="does not record"):
        ensure_dataset(plan, repo)

    assert extra.read_bytes() == b"not recorded anywhere"


def test_track_records_a_new_version(repo: Path, plan: DataPlan) -> None:
    _, first = ensure_dataset(plan, repo)
    manifest = repo / "data" / plan.name / "manifest.csv"
    manifest.write_text(manifest.read_text() + "")  # unchanged bytes: same version
    assert track_dataset(repo, plan, push=False) == first

    (repo / "data" / plan.name / "notes.txt").write_text("a new file\n")
    second = track_dataset(repo, plan, push=False)

    assert second != first
    assert is_clean(repo, plan)


def test_regenerated_data_that_differs_is_an_error(repo: Path, plan: DataPlan) -> None:
    ensure_dataset(plan, repo)
    for gone in ("data", ".dvc/cache"):
        shutil.rmtree(repo / gone)
    shutil.rmtree(repo.parent / "remote")

    with pytest.raises(DataVersionError, match="does not match"):
        ensure_dataset(plan.model_copy(update={"seed": plan.seed + 1}), repo)


def test_data_version_without_pointer_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataVersionError, match="not found"):
        data_version(tmp_path)


def test_without_a_generator_missing_data_is_a_clear_error(repo: Path, plan: DataPlan) -> None:
    _, version = ensure_dataset(plan, repo)
    for gone in ("data", ".dvc/cache"):
        shutil.rmtree(repo / gone)
    shutil.rmtree(repo.parent / "remote")

    with pytest.raises(DataVersionError, match=rf"did not restore .*{version}.*remote"):
        ensure_dataset(plan.model_copy(update={"generator": None}), repo)
    assert not (repo / "data").exists()


def test_the_generators_version_is_recorded_and_regenerated_only_on_request(
    repo: Path, plan: DataPlan
) -> None:
    _, version = ensure_dataset(plan, repo)
    meta = (repo / "data.dvc").read_text()
    assert f"version: {version}" in meta
    assert plan.generator in meta
    (repo / "data" / plan.name / "notes.txt").write_text("real data, not the generator's\n")
    second = track_dataset(repo, plan, push=False)
    for gone in ("data", ".dvc/cache"):
        shutil.rmtree(repo / gone)

    with pytest.raises(DataVersionError, match=rf"did not restore .*{second}.*--regenerate"):
        ensure_dataset(plan, repo)
    assert not (repo / "data").exists()
    with pytest.raises(DataVersionError, match="does not match"):  # asked: it tries, and says so
        ensure_dataset(plan, repo, regenerate=True)


def test_without_a_generator_or_a_pointer_file_nothing_is_made(repo: Path, plan: DataPlan) -> None:
    with pytest.raises(DataVersionError, match=r"no data\.dvc .*flywheel data track"):
        ensure_dataset(plan.model_copy(update={"generator": None}), repo)
    assert not (repo / "data").exists()


def test_a_generator_that_cannot_be_imported_is_named(repo: Path, plan: DataPlan) -> None:
    with pytest.raises(DataVersionError, match=r"data\.generator 'flywheel\.nowhere:make'"):
        ensure_dataset(plan.model_copy(update={"generator": "flywheel.nowhere:make"}), repo)
