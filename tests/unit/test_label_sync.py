"""Asynchronous labelling: the threshold, outstanding and settled batches, what each labeller
counts as complete, and the recorded sync decisions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flywheel.config import DataPlan, LabelConfig, Params, SyncConfig
from flywheel.data.ground_truth import write_ground_truth
from flywheel.demo.oracle import OracleLabeler
from flywheel.labeling import Labeler, LabelingResult, LabelStudioExportLabeler, QueueError
from flywheel.labeling.sync import (
    Completion,
    completion,
    outstanding_batches,
    record_settled,
    settled_keys,
)
from flywheel.workflows.label_sync import (
    count_completed,
    read_syncs,
    record_sync,
    started,
    sync_decision,
    sync_failed,
)

CLASSES = ("0", "1", "2")
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _task(request_id: str, *labels: str) -> dict[str, Any]:
    annotations = [
        {
            "id": n,
            "completed_by": n,
            "result": [
                {
                    "from_name": "label",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": [label]},
                }
            ],
            "was_cancelled": False,
            "created_at": "2026-12-01T10:00:00",
            "updated_at": "2026-12-01T10:00:00",
        }
        for n, label in enumerate(labels, start=1)
    ]
    return {
        "id": int(request_id.removeprefix("r")),
        "data": {
            "image": f"/data/local-files/?d={request_id}.png",
            "request_id": request_id,
            "index": 0,
        },
        "annotations": annotations,
        "predictions": [],
    }


def _rows(rows: list[tuple[str, str]]) -> pd.DataFrame:
    """Ground-truth rows `(request_id, label)`, index 0."""
    return pd.DataFrame(
        {"request_id": [r for r, _ in rows], "index": 0, "label": [label for _, label in rows]}
    )


def _params(tmp_path: Path, labeler: str = "label-studio-export", needed: int = 2) -> Params:
    return Params(
        data=DataPlan(classes=CLASSES),
        state={"url": str(tmp_path / "state")},  # type: ignore[arg-type]
        label=LabelConfig(labeler=labeler, sync=SyncConfig(min_completed=needed)),
    )


def _queue(tmp_path: Path, batch: str, *request_ids: str) -> None:
    folder = tmp_path / "state" / "labeling" / "queue"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{batch}.json").write_text(json.dumps([_task(r) for r in request_ids]))


def _export(tmp_path: Path, name: str, tasks: list[dict[str, Any]]) -> None:
    folder = tmp_path / "state" / "labeling" / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(tasks))


# ------------------------------------------------------------------ the threshold


@pytest.mark.parametrize(
    ("completed", "outstanding", "needed", "ready"),
    [
        (0, 0, 1, False),  # nothing outstanding: nothing to update
        (0, 10, 1, False),  # nobody labelled yet
        (4, 10, 5, False),  # one short
        (5, 10, 5, True),  # exactly the threshold
        (10, 10, 5, True),  # every task, above it
        (3, 3, 50, False),  # a small batch, complete, below the threshold: wait for more
    ],
)
def test_the_threshold_decides(completed: int, outstanding: int, needed: int, ready: bool) -> None:
    status = Completion(1, outstanding, completed, needed)

    decision = sync_decision(status, now=NOW)

    assert status.ready is ready
    assert decision.action == ("fired" if ready else "held")
    assert decision.reasons == [status.summary()]
    assert f"{completed} of {outstanding} outstanding tasks complete" in status.summary()
    assert status.summary().endswith("update" if ready else "wait")
    assert (decision.completed, decision.outstanding, decision.needed) == (
        completed,
        outstanding,
        needed,
    )


def test_min_completed_is_a_positive_count() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        SyncConfig(min_completed=0)


# ------------------------------------------------------------ outstanding, settled


def test_a_batch_is_outstanding_until_a_merge_settled_every_task(tmp_path: Path) -> None:
    _queue(tmp_path, "b1", "r1", "r2")
    _queue(tmp_path, "b2", "r3")
    queue, merged = tmp_path / "state/labeling/queue", tmp_path / "state/labeling/merged"

    assert [b.name for b in outstanding_batches(queue, settled_keys(merged))] == [
        "b1.json",
        "b2.json",
    ]
    record_settled(merged, [("r1", 0), ("r3", 0)], "abc123", now=NOW)
    assert record_settled(merged, [], "abc123") is None  # nothing to record

    (left,) = outstanding_batches(queue, settled_keys(merged))
    assert (left.name, left.keys()) == ("b1.json", {("r2", 0)})
    assert completion([left], {("r2", 0), ("r1", 0)}, 1) == Completion(1, 1, 1, 1)
    (merged / "broken.json").write_text('{"keys": 3}')
    with pytest.raises(QueueError, match=r"broken\.json: not a merge record"):
        settled_keys(merged)


# ------------------------------------------------------ what each labeller counts


class RecordsOnly(Labeler):
    """A labeller with nothing of its own to count: the interface's default."""

    def label(self, params: Params, queue_dir: Path, **_: Any) -> LabelingResult:
        raise NotImplementedError


def test_each_labeller_counts_what_is_complete_without_recording(tmp_path: Path) -> None:
    params = _params(tmp_path)
    gt = tmp_path / "state" / "ground_truth"
    _queue(tmp_path, "b1", "r1", "r2", "r3", "r4")
    queue = tmp_path / "state" / "labeling" / "queue"
    # r1 was read back earlier; r2 is in a saved export; r3 was cancelled; r4 is in no export.
    write_ground_truth(
        _rows([("r1", "0")]).assign(origin="label-studio"),
        gt,
    )
    cancelled = _task("r3", "1")
    cancelled["annotations"][0]["was_cancelled"] = True
    _export(tmp_path, "project-1.json", [_task("r2", "2"), cancelled])

    assert RecordsOnly().completed(params, queue, gt_root=gt) == {("r1", 0)}
    assert LabelStudioExportLabeler().completed(params, queue, gt_root=gt) == {("r1", 0), ("r2", 0)}
    # The oracle answers whatever the simulator sent, as soon as it is asked.
    write_ground_truth(_rows([("r4", "1")]).assign(origin="simulator"), gt)
    assert OracleLabeler().completed(params, queue, gt_root=gt) == {("r1", 0), ("r4", 0)}
    assert len(list(gt.glob("*.parquet"))) == 2  # counting recorded nothing


def test_count_completed_counts_only_the_outstanding_tasks(tmp_path: Path) -> None:
    params = _params(tmp_path, needed=2)
    _queue(tmp_path, "b1", "r1", "r2")
    _queue(tmp_path, "b2", "r3", "r4")
    _export(tmp_path, "a.json", [_task("r1", "0"), _task("r2", "1"), _task("r3", "2")])
    record_settled(tmp_path / "state/labeling/merged", [("r1", 0), ("r2", 0)], "v1", now=NOW)

    status = count_completed(params)

    assert status == Completion(batches=1, outstanding=2, completed=1, needed=2)
    assert not status.ready
    assert count_completed(_params(tmp_path, needed=1)).ready


def test_sync_decisions_are_recorded_beside_the_trigger_decisions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    held = sync_decision(Completion(1, 10, 2, 5), now=NOW)
    fired = started(sync_decision(Completion(2, 12, 6, 5), now=NOW.replace(hour=13)), "kfp", "r-1")
    failed = sync_failed(
        sync_decision(Completion(2, 12, 6, 5), now=NOW.replace(hour=14)), "local", "failed"
    )

    for decision in (fired, held, failed):
        location = record_sync(state, decision)
        assert Path(str(location)).parent == state / "monitoring" / "triggers" / "label-sync"

    assert read_syncs(state) == [held, fired, failed]
    assert fired.summary() == f"label sync FIRED: run r-1 ({fired.reasons[0]})"
    assert failed.reasons[-1] == "local: failed"
