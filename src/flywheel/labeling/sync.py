"""Asynchronous labelling: the outstanding batches, how many of their tasks are complete, and
whether that is enough to start the update pipeline.

People take days, so one run sends a batch and ends (the `curation` pipeline)
and a later one (the `update` pipeline) merges what they completed. Between
the two, the state store says where each queued task stands:

* **queued**: in a batch of the queue folder (`<label dir>/queue/`);
* **settled**: handed to a merge that recorded a data version (merged, or
  skipped for good: already in the dataset, no stored image, ...). Each merge
  writes one record, `<label dir>/merged/<time>-<version>.json`, whole, so a
  laptop's folder and a cluster's bucket keep the same history;
* **outstanding**: queued and not settled. A batch is outstanding while any of
  its tasks is;
* **complete**: outstanding with an annotation its labeller counts as done
  (`flywheel.labeling.Labeler.completed`: decided, not cancelled, not a draft).

`Completion.ready` is the threshold: at least `label.sync.min_completed`
complete tasks start an update.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel.config import LabelConfig
from flywheel.labeling.queue import (
    Key,
    QueueError,
    labeling_dir,
    queue_batches,
    read_batch,
    read_json,
    task_key,
    write_json_atomic,
)
from flywheel.storage import Location, glob, join, name

MERGED_DIR = "merged"


@dataclass(frozen=True)
class Completion:
    """How far people have come with the outstanding batches.

    Attributes:
        batches: outstanding batches (a task of theirs is neither merged nor skipped).
        outstanding: their tasks not settled yet.
        completed: of those, tasks with a complete annotation.
        needed: `label.sync.min_completed`.
    """

    batches: int
    outstanding: int
    completed: int
    needed: int

    @property
    def ready(self) -> bool:
        """Whether enough tasks are complete to merge and retrain (never on none).

        >>> Completion(2, 40, 20, 20).ready, Completion(2, 40, 19, 20).ready
        (True, False)
        """
        return self.completed >= max(self.needed, 1)

    def summary(self) -> str:
        """One line for the step's log and the command.

        >>> print(Completion(2, 40, 12, 20).summary())  # doctest: +NORMALIZE_WHITESPACE
        12 of 40 outstanding tasks complete (2 batches); 20 needed
        (label.sync.min_completed): wait
        """
        verdict = "update" if self.ready else "wait"
        return (
            f"{self.completed} of {self.outstanding} outstanding tasks complete "
            f"({self.batches} batch{'' if self.batches == 1 else 'es'}); {self.needed} needed "
            f"(label.sync.min_completed): {verdict}"
        )

    def scalars(self) -> dict[str, float]:
        """The counts as metrics for the KFP UI."""
        return {
            "outstanding_batches": float(self.batches),
            "outstanding_tasks": float(self.outstanding),
            "completed_tasks": float(self.completed),
            "min_completed": float(self.needed),
        }


def merged_dir(cfg: LabelConfig, state: Location | None = None) -> Location:
    """Where merges record the keys they settled: `<label dir>/merged`."""
    return join(labeling_dir(cfg, state), MERGED_DIR)


def record_settled(
    folder: Location, keys: Iterable[Key], data_version: str, *, now: datetime | None = None
) -> Location | None:
    """Record the keys a merge settled (merged or skipped for good) as one whole object.

    Returns:
        The record, None when there was no key.
    """
    ordered = sorted(set(keys))
    if not ordered:
        return None
    now = (now or datetime.now(UTC)).astimezone(UTC)
    record = {
        "time": now.isoformat(),
        "data_version": data_version,
        "keys": [[request_id, index] for request_id, index in ordered],
    }
    return write_json_atomic(
        join(folder, f"{now:%Y%m%dT%H%M%S%fZ}-{data_version[:12] or 'none'}.json"), record
    )


def settled_keys(folder: Location) -> set[Key]:
    """Every key a recorded merge settled.

    Raises:
        QueueError: a record is unreadable.
    """
    keys: set[Key] = set()
    for path in glob(folder, "*.json"):
        record = read_json(path, QueueError)
        try:
            keys.update((str(r), int(i)) for r, i in record["keys"])
        except (KeyError, TypeError, ValueError):
            raise QueueError(
                f"{path}: not a merge record (keys: [[request_id, index], ...])"
            ) from None
    return keys


@dataclass(frozen=True)
class OutstandingBatch:
    """A queue batch with tasks not settled yet.

    Attributes:
        name: its file name (`<batch-id>.json`).
        tasks: its tasks not settled, as queued.
    """

    name: str
    tasks: list[dict[str, Any]]

    def keys(self) -> set[Key]:
        """The keys of its outstanding tasks."""
        return {k for k in map(task_key, self.tasks) if k is not None}


def outstanding_batches(queue: Location, settled: set[Key]) -> list[OutstandingBatch]:
    """The batches of the queue folder holding a task not settled, oldest first.

    Raises:
        QueueError: a batch is unreadable.
    """
    batches = []
    for path in queue_batches(queue):
        tasks = [t for t in read_batch(path) if task_key(t) not in settled]
        if tasks:
            batches.append(OutstandingBatch(name(path), tasks))
    return batches


def write_batches(batches: Iterable[OutstandingBatch], folder: Path) -> Path:
    """Write the outstanding tasks as a queue folder of their own (for `Labeler.label`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for batch in batches:
        write_json_atomic(folder / batch.name, batch.tasks)
    return folder


def completion(
    batches: list[OutstandingBatch], completed: set[Key], min_completed: int
) -> Completion:
    """The counts of the outstanding batches, `completed` the keys a labeller counts as done.

    >>> batch = OutstandingBatch("b.json", [{"data": {"request_id": "r", "index": 0}}])
    >>> completion([batch], {("r", 0), ("other", 0)}, 1)
    Completion(batches=1, outstanding=1, completed=1, needed=1)
    """
    keys = set().union(*(b.keys() for b in batches)) if batches else set()
    return Completion(len(batches), len(keys), len(keys & completed), min_completed)
