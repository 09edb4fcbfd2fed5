"""`decide_once`: local rank 0 decides, the other ranks of the machine take its answer."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from flywheel.data.versioning import DataVersionError
from flywheel.workflows.datasets import decide_once, launch_key


def test_the_other_ranks_take_rank_0s_answer_and_never_decide(tmp_path: Path) -> None:
    answer = tmp_path / "ranks" / "lineage-x.json"
    calls: list[int] = []

    def decide(rank: int) -> str:
        calls.append(rank)
        time.sleep(0.3)  # rank 1 is already waiting
        return "abc"

    got: dict[int, str] = {}
    waiting = threading.Thread(
        target=lambda: got.update({1: decide_once(answer, lambda: decide(1), local_rank=1)})
    )
    waiting.start()
    got[0] = decide_once(answer, lambda: decide(0), local_rank=0)
    waiting.join(timeout=10)
    assert got == {0: "abc", 1: "abc"}
    assert calls == [0]


def test_a_waiting_rank_raises_rank_0s_reason(tmp_path: Path) -> None:
    answer = tmp_path / "answer.json"

    def refuse() -> str:
        raise DataVersionError("data/ does not match data.dvc")

    with pytest.raises(DataVersionError, match="does not match"):
        decide_once(answer, refuse, local_rank=0)
    with pytest.raises(DataVersionError, match="local rank 0 failed: data/ does not match"):
        decide_once(answer, lambda: "never", local_rank=1, timeout_s=5)


def test_a_waiting_rank_times_out_naming_the_answer_file(tmp_path: Path) -> None:
    answer = tmp_path / "answer.json"
    with pytest.raises(DataVersionError, match=f"no answer to {answer} within 1 s"):
        decide_once(answer, lambda: "never", local_rank=1, timeout_s=1)


def test_the_launch_key_names_the_agent_and_the_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    first = launch_key()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "3")
    assert first.startswith("run-")
    assert first.endswith("-2")
    assert launch_key() != first
