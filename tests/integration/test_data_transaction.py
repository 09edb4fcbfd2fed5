"""The data transaction's folder switch and its undo, on a real filesystem (no DVC needed).

Every state a killed switch can leave (after the atomic exchange, or half-way
through the two-rename switch used where `RENAME_EXCHANGE` is missing) is
undone by `recover` to the old folder; a journal that is not one, or one whose
process still runs, is refused rather than guessed at.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from flywheel.data import transaction
from flywheel.data.transaction import (
    ASIDE,
    JOURNAL,
    begin,
    manifest_sha256,
    recover,
    stage_copy,
    switch,
    work_dir,
)
from flywheel.data.versioning import DataVersionError

OLD = "a" * 32


def _repo(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A repository whose data.dvc records OLD, its dataset, and a staged merged copy."""
    repo = tmp_path / "repo"
    dataset = repo / "data" / "ds"
    (dataset / "images").mkdir(parents=True)
    (dataset / "images" / "old.png").write_bytes(b"old image")
    (dataset / "manifest.csv").write_text("image_id\nold\n")
    (repo / "data.dvc").write_text(f"outs:\n- md5: {OLD}.dir\n  path: data\n")
    staged = stage_copy(dataset, work_dir(repo))
    (staged / "images" / "new.png").write_bytes(b"new image")
    (staged / "manifest.csv").unlink()  # a hard link to the old one: replaced, never written into
    (staged / "manifest.csv").write_text("image_id\nnew\nold\n")
    return repo, dataset, staged


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_the_staged_copy_shares_the_files_and_leaves_the_dataset_alone(tmp_path: Path) -> None:
    _, dataset, staged = _repo(tmp_path)

    assert _files(dataset) == {"images/old.png": b"old image", "manifest.csv": b"image_id\nold\n"}
    assert os.path.samefile(dataset / "images" / "old.png", staged / "images" / "old.png")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_switch_trades_the_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    _, dataset, staged = _repo(tmp_path)
    old, new = _files(dataset), _files(staged)
    if not exchange:
        monkeypatch.setattr(transaction, "_exchange", lambda a, b: False)

    switch(dataset, staged)

    assert (_files(dataset), _files(staged)) == (new, old)
    assert not staged.with_name(staged.name + ASIDE).exists()


def _switched(dataset: Path, staged: Path) -> None:
    switch(dataset, staged)


def _first_rename(dataset: Path, staged: Path) -> None:
    os.rename(dataset, staged.with_name(staged.name + ASIDE))


def _second_rename(dataset: Path, staged: Path) -> None:
    os.rename(dataset, staged.with_name(staged.name + ASIDE))
    os.rename(staged, dataset)


KILLED_AT: dict[str, Callable[[Path, Path], None]] = {
    "before-the-switch": lambda dataset, staged: None,
    "after-the-exchange": _switched,
    "after-the-first-of-two-renames": _first_rename,
    "after-the-second-of-two-renames": _second_rename,
}


@pytest.mark.parametrize("state", list(KILLED_AT))
def test_a_merge_killed_before_data_dvc_changed_is_undone(tmp_path: Path, state: str) -> None:
    repo, dataset, staged = _repo(tmp_path)
    old = _files(dataset)
    begin(
        repo,
        None,
        "merge",
        push=False,
        dataset=os.path.relpath(dataset, repo),
        staged=os.path.relpath(staged, repo),
        manifest_sha256=manifest_sha256(staged) or "",
    )
    (repo / "data.dvc").write_text("outs:\n- md5: ")  # and a `dvc add` cut off mid-write
    KILLED_AT[state](dataset, staged)

    said = recover(repo)

    assert said is not None
    assert f"undid an interrupted merge (process {os.getpid()}" in said
    assert f"back at data version {OLD}" in said
    assert _files(dataset) == old
    assert OLD in (repo / "data.dvc").read_text()
    assert not (work_dir(repo) / JOURNAL).exists()
    assert not (work_dir(repo) / "staging").exists() or not any(
        (work_dir(repo) / "staging").iterdir()
    )
    assert recover(repo) is None  # nothing left to do


def test_a_journal_that_is_not_one_is_named_not_guessed(tmp_path: Path) -> None:
    repo, _, _ = _repo(tmp_path)
    (work_dir(repo) / JOURNAL).write_text("{not json")

    with pytest.raises(DataVersionError, match=rf"{JOURNAL}: not a data transaction journal"):
        recover(repo)


def test_an_operation_whose_process_still_runs_is_left_alone(tmp_path: Path) -> None:
    repo, _, staged = _repo(tmp_path)
    begin(repo, None, "merge", push=False, dataset="data/ds", staged="x", manifest_sha256="")
    journal = work_dir(repo) / JOURNAL
    journal.write_text(
        journal.read_text().replace(f'"pid": {os.getpid()}', f'"pid": {os.getppid()}')
    )
    # the parent (pytest's runner or shell) started before the journal's time: it is "running"
    with pytest.raises(DataVersionError, match=r"another flywheel process .* wait for it"):
        recover(repo)
    assert journal.exists()
    assert staged.exists()
