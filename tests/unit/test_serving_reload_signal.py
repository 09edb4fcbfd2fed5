"""Reload requests between the workers of one server (`serving.reload.ReloadSignal`), no server."""

from __future__ import annotations

import atexit
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from serving.reload import RELOAD_DIR_ENV, ReloadSignal
from serving.service import FlywheelService


def test_a_request_reaches_every_other_worker_once(tmp_path: Path) -> None:
    sender, other, third = ReloadSignal(tmp_path), ReloadSignal(tmp_path), ReloadSignal(tmp_path)
    token = sender.send()
    assert token.startswith(f"{os.getpid()}-")
    assert other.received() == token
    assert third.received() == token
    assert other.received() is None  # answered once
    assert sender.received() is None  # a worker never answers its own request
    assert [p.name for p in tmp_path.iterdir()] == [ReloadSignal.FILE]  # no temporary left


def test_every_request_counts_even_in_quick_succession(tmp_path: Path) -> None:
    """Each `send` replaces the file (a new inode): no two requests look alike to a reader."""
    sender, other = ReloadSignal(tmp_path), ReloadSignal(tmp_path)
    for _ in range(20):
        token = sender.send()
        assert other.received() == token


def test_the_workers_answer_each_others_requests(tmp_path: Path) -> None:
    first, second = ReloadSignal(tmp_path), ReloadSignal(tmp_path)
    from_first = first.send()
    from_second = second.send()  # before it looked: the newest request is the one that counts
    assert second.received() is None  # its own
    assert first.received() == from_second
    assert from_first != from_second


def test_a_request_from_before_a_worker_started_is_not_for_it(tmp_path: Path) -> None:
    ReloadSignal(tmp_path).send()
    assert ReloadSignal(tmp_path).received() is None  # e.g. a worker BentoML restarted


def test_a_missing_folder_is_no_request_and_cannot_be_sent_to(tmp_path: Path) -> None:
    gone = ReloadSignal(tmp_path / "gone")
    assert gone.received() is None
    with pytest.raises(OSError, match="gone"):
        gone.send()


def test_the_server_process_gives_its_workers_a_private_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deployment hook (run by `bentoml serve` before it starts the workers)."""
    at_exit: list[tuple[Callable[..., object], tuple[object, ...], dict[str, object]]] = []
    monkeypatch.setattr(atexit, "register", lambda f, *a, **kw: at_exit.append((f, a, kw)))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(RELOAD_DIR_ENV, raising=False)
    FlywheelService.inner.open_reload_channel()
    first = Path(os.environ[RELOAD_DIR_ENV])
    FlywheelService.inner.open_reload_channel()  # another server: another folder
    second = Path(os.environ[RELOAD_DIR_ENV])
    assert first != second
    for folder in (first, second):
        assert folder.parent == tmp_path
        assert folder.name.startswith("flywheel-reload-")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    ReloadSignal(first).send()
    for cleanup, args, kwargs in at_exit:  # what the server process does when it exits
        cleanup(*args, **kwargs)
    assert not first.exists()
    assert not second.exists()
