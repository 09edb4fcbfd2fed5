"""Asynchronous labelling: send a curated batch, read back what people completed, decide.

The loop is two pipelines because people take days (`flywheel.labeling.sync`
says where each queued task stands):

* the `curation` pipeline ends with `send_batch`: the batch goes before the
  annotators (`Labeler.send`: into the Label Studio project, or left in the
  queue folder for people to import);
* the `update` pipeline starts with `collect_labels`: every completed
  annotation of every outstanding batch is read back and recorded
  (`Labeler.label`), and when at least `label.sync.min_completed` are complete,
  `update_dataset` merges them (and records them as settled) and training runs.

`flywheel label sync` (and its CronJob) counts first (`count_completed`,
through `Labeler.completed`, recording nothing) and starts an update run only
when the threshold is met.

A page plan (`data.is_pages`) goes the same way with its own folders and
labeller (`flywheel.labeling.page_labeler`): the page queue
(`<label dir>/page-queue/`), the pages its merges settled
(`<label dir>/page-merged/`), and page labels, read back whole from Label
Studio (or the saved exports) each time, as a page labels table.

Each of `flywheel label sync`'s decisions is a `SyncDecision`, recorded beside
the drift trigger's (`<state URL>/monitoring/triggers/label-sync/`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from flywheel.config import Params
from flywheel.storage import Location, glob, join, read_bytes, state_url, write_bytes
from flywheel.workflows.loop import LABELS_FILE
from flywheel.workflows.output import say, write_json

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.labeling.sync import Completion

SyncAction = Literal["fired", "held", "failed"]
"""fired: an update run started (locally, or submitted); held: too few complete;
failed: the threshold was met and the run could not be started or failed."""


def send_batch(params: Params, queue_dir: Path) -> int:
    """Put the curated batch before the annotators (`Labeler.send`); return its tasks.

    The curation pipeline's last step: nobody waits for the annotations.
    """
    from flywheel.labeling import queued_keys
    from flywheel.labeling.page_labeler import labeler_of

    say(labeler_of(params).send(params, queue_dir))
    return len(queued_keys(queue_dir))


def sync_folders(params: Params) -> tuple[Location, Location]:
    """The plan's queue folder and the folder of its merge records (settled keys).

    The digits' `<label dir>/queue` and `merged`; a page plan's `page-queue` and `page-merged`.
    """
    from flywheel.labeling import queue_dir
    from flywheel.labeling.sync import merged_dir

    if params.data.is_pages:
        from flywheel.curation.pages import page_queue_dir
        from flywheel.labeling.page_labeler import page_merged_dir

        return page_queue_dir(params), page_merged_dir(params)
    state = state_url(params.state.url)
    return queue_dir(params.label, state), merged_dir(params.label, state)


def count_completed(params: Params, *, gt_root: Location | None = None) -> Completion:
    """How many tasks of the outstanding batches are complete, recording nothing.

    Raises:
        flywheel.labeling.QueueError: a queue batch or a merge record is unreadable.
        flywheel.labeling.LabelImportError: a saved export holding queued tasks is wrong.
        flywheel.labeling.server.LabelStudioError: the Label Studio labeller's
            server cannot be reached or refused.
    """
    from flywheel.labeling.page_labeler import labeler_of
    from flywheel.labeling.sync import completion, outstanding_batches, settled_keys

    queue, merged = sync_folders(params)
    batches = outstanding_batches(queue, settled_keys(merged))
    done = labeler_of(params).completed(params, queue, gt_root=gt_root) if batches else set()
    return completion(batches, done, params.label.sync.min_completed)


def collect_labels(
    params: Params,
    *,
    labels_out: Path,
    metrics_out: Path | None = None,
    gt_root: Location | None = None,
) -> Completion:
    """Read back every completed annotation of every outstanding batch; decide on the threshold.

    The outstanding tasks are written as a queue folder of their own
    (`labels_out/queue/`) and labelled by `label.labeler` (which records what
    it reads back in the ground-truth store); the labels of the outstanding
    tasks, whichever run recorded them (late annotations of earlier batches
    included), go to `labels_out/labels.parquet` for `update_dataset`.
    `metrics_out` receives the counts (`Completion.scalars`). A page plan's
    labels are those its labeller reads back (a page labels table,
    `flywheel.labeling.page_labeler.page_labels_frame`).

    Returns:
        The counts; `ready` says whether the update goes on.
    """
    from flywheel.data.ground_truth import ground_truth_dir
    from flywheel.labeling import read_labels
    from flywheel.labeling.page_labeler import labeler_of, page_labels_frame
    from flywheel.labeling.sync import completion, outstanding_batches, settled_keys, write_batches

    state = state_url(params.state.url)
    gt_root = gt_root if gt_root is not None else ground_truth_dir(state)
    queue, merged = sync_folders(params)
    batches = outstanding_batches(queue, settled_keys(merged))
    labels_out.mkdir(parents=True, exist_ok=True)
    keys = set().union(*(b.keys() for b in batches)) if batches else set()
    read = None
    if batches:
        folder = write_batches(batches, labels_out / "queue")
        read = labeler_of(params).label(params, folder, export_dir=labels_out, gt_root=gt_root)
        say(read.summary)
    if params.data.is_pages:  # read back whole each time: the labeller's are the labels
        labels = _labels_of(read.labels, keys) if read is not None else page_labels_frame([])
    else:
        labels = _labels_of(read_labels(gt_root), keys)
    labels.to_parquet(labels_out / LABELS_FILE, index=False)
    status = completion(batches, set(_keys(labels)), params.label.sync.min_completed)
    if metrics_out is not None:
        write_json(metrics_out, status.scalars())
    say(status.summary())
    return status


def _keys(labels: pd.DataFrame) -> list[tuple[str, int]]:
    """The `(request_id, index)` of each row."""
    return list(zip(map(str, labels["request_id"]), map(int, labels["index"]), strict=True))


def _labels_of(labels: pd.DataFrame, keys: set[tuple[str, int]]) -> pd.DataFrame:
    """The rows of `labels` whose key is one of `keys`."""
    import pandas as pd

    mask = pd.Series([key in keys for key in _keys(labels)], index=labels.index, dtype=bool)
    return labels[mask].reset_index(drop=True)  # a Series: an empty list would pick columns


def settle_labels(params: Params, labels: pd.DataFrame, version: str) -> Location | None:
    """Record the labels a merge into `version` took (merged or skipped for good) as settled."""
    from flywheel.labeling.sync import record_settled

    return record_settled(sync_folders(params)[1], _keys(labels), version)


# ------------------------------------------------------------------ the record


@dataclass(frozen=True)
class SyncDecision:
    """One `flywheel label sync`'s decision, as recorded in the state store.

    Attributes:
        time: when it decided (UTC, ISO).
        action: fired, held or failed.
        reasons: why.
        batches: outstanding batches.
        outstanding: their tasks not settled yet.
        completed: of those, complete.
        needed: `label.sync.min_completed`.
        where: `local` (the KFP local runner) or `kfp` (submitted); '' when held.
        run_id: the update run started.
        run_url: where the KFP UI shows it.
        namespace: the namespace it runs in.
    """

    time: str
    action: SyncAction
    reasons: list[str]
    batches: int
    outstanding: int
    completed: int
    needed: int
    where: str = ""
    run_id: str | None = None
    run_url: str | None = None
    namespace: str | None = None

    @property
    def when(self) -> datetime:
        """`time` as a datetime (UTC)."""
        return datetime.fromisoformat(self.time).astimezone(UTC)

    def summary(self) -> str:
        """One line for the Job's log."""
        run = f": run {self.run_id}" if self.run_id else ""
        return f"label sync {self.action.upper()}{run} ({'; '.join(self.reasons)})"


def sync_decision(
    status: Completion,
    *,
    now: datetime | None = None,
    previous: Sequence[SyncDecision] = (),
    cooldown_minutes: float = 0.0,
) -> SyncDecision:
    """The decision on the counts: fire the update when the threshold is met, else hold.

    A submitted update run (`where` kfp) holds later syncs for `cooldown_minutes`
    (`label.sync.cooldown_minutes`): it merges the labels only when it gets to
    its merge step, and a second run started before then would train again on
    the same labels. A local run has finished (or failed) by the time it is
    recorded, so it holds nothing.

    >>> from datetime import timedelta
    >>> from flywheel.labeling.sync import Completion
    >>> ready, noon = Completion(1, 60, 55, 50), datetime(2026, 5, 4, 12, tzinfo=UTC)
    >>> earlier = started(sync_decision(ready, now=noon), "kfp", "r-1")
    >>> sync_decision(ready, now=noon + timedelta(minutes=30), previous=[earlier],
    ...               cooldown_minutes=120).reasons[-1]
    'update run r-1 was submitted 30 min ago: syncs hold for label.sync.cooldown_minutes (120)'
    >>> sync_decision(ready, now=noon + timedelta(minutes=150), previous=[earlier],
    ...               cooldown_minutes=120).action
    'fired'
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    reasons = [status.summary()]
    submitted = [d for d in previous if d.action == "fired" and d.where == "kfp" and d.when <= now]
    last = max(submitted, key=lambda d: d.when, default=None)
    cooling = (
        status.ready
        and last is not None
        and (now - last.when).total_seconds() < cooldown_minutes * 60
    )
    if cooling and last is not None:
        minutes = (now - last.when).total_seconds() / 60
        reasons.append(
            f"update run {last.run_id} was submitted {minutes:.0f} min ago: syncs hold for "
            f"label.sync.cooldown_minutes ({cooldown_minutes:g})"
        )
    return SyncDecision(
        time=now.isoformat(),
        action="fired" if status.ready and not cooling else "held",
        reasons=reasons,
        batches=status.batches,
        outstanding=status.outstanding,
        completed=status.completed,
        needed=status.needed,
    )


def started(
    decision: SyncDecision, where: str, run_id: str, run_url: str = "", namespace: str = ""
) -> SyncDecision:
    """The decision with the update run it started."""
    return replace(
        decision, where=where, run_id=run_id, run_url=run_url or None, namespace=namespace or None
    )


def sync_failed(decision: SyncDecision, where: str, error: str) -> SyncDecision:
    """The decision of an update run that could not be started, or failed."""
    return replace(
        decision, action="failed", where=where, reasons=[*decision.reasons, f"{where}: {error}"]
    )


def syncs_dir(state: Location) -> Location:
    """Where sync decisions are recorded: beside the drift trigger's, `triggers/label-sync`."""
    from flywheel.workflows.trigger import triggers_dir

    return join(triggers_dir(state), "label-sync")


def record_sync(state: Location, decision: SyncDecision) -> Location:
    """Write one sync decision into the state store (a whole object, named by its time)."""
    stamp = decision.when.strftime("%Y%m%dT%H%M%S%fZ")
    return write_bytes(
        join(syncs_dir(state), f"{stamp}-{decision.action}.json"),
        (json.dumps(asdict(decision), indent=2) + "\n").encode("utf-8"),
    )


def read_syncs(state: Location) -> list[SyncDecision]:
    """The recorded sync decisions, oldest first.

    Raises:
        flywheel.workflows.trigger.TriggerError: a record is not a sync decision.
    """
    from flywheel.workflows.trigger import TriggerError

    decisions = []
    for location in glob(syncs_dir(state), "*.json"):
        try:
            decisions.append(SyncDecision(**json.loads(read_bytes(location))))
        except (TypeError, ValueError) as err:
            raise TriggerError(f"{location}: not a label sync decision: {err}") from None
    return sorted(decisions, key=lambda d: d.when)


__all__ = [
    "SyncAction",
    "SyncDecision",
    "collect_labels",
    "count_completed",
    "read_syncs",
    "record_sync",
    "send_batch",
    "settle_labels",
    "started",
    "sync_decision",
    "sync_failed",
    "sync_folders",
    "syncs_dir",
]
