"""The demo's labellers: an oracle that answers the labelling queue from the simulator's truth.

`LabelStudioOracle` (params.yaml's `label.labeler`) is the product's
`LabelStudioLabeler` with one difference: between publishing the tasks to the
running Label Studio and reading the annotations back, the oracle annotates
them through Label Studio's API as a member of the organisation
(`ORACLE_EMAIL`, with its own access token), as a person in the browser would.
So the demo exercises the production path, server included.

`label_with_oracle` answers the queue from the traffic simulator's hidden
truth (`origin="simulator"` in the ground-truth store) and writes a Label
Studio export, which then goes through `flywheel.labeling.import_labels`
exactly as a person's export would. `OracleLabeler` is the same as a
`flywheel.labeling.Labeler`, for the pipeline's label step
(`label.labeler: flywheel.demo.oracle:OracleLabeler` in params.yaml).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel.config import Params
from flywheel.data.ground_truth import (
    ORIGIN_ORACLE,
    ORIGIN_SIMULATOR,
    ground_truth_dir,
    latest_per_key,
    read_ground_truth,
)
from flywheel.labeling import (
    Key,
    Labeler,
    LabelImport,
    LabelingResult,
    choice_result,
    exports_dir,
    import_labels,
    labelled_keys,
    no_labels,
    queue_batches,
    queue_dir,
    queued_keys,
    read_batch,
    task_key,
    write_json_atomic,
)
from flywheel.labeling.server import Connection, member_token
from flywheel.labeling.studio import LabelStudioLabeler, read_tasks, sdk_client
from flywheel.storage import Location, join, state_url

ORACLE_USER = 0
"""`completed_by` of the oracle's annotations (Label Studio user ids start at 1)."""


def answer_tasks(
    tasks: Iterable[Mapping[str, Any]],
    truth: Mapping[Key, str],
    *,
    from_name: str,
    to_name: str,
    answered_at: str,
) -> tuple[list[dict[str, Any]], int]:
    """The tasks as a Label Studio export, each annotated with its true label where known.

    Tasks whose key has no truth keep an empty `annotations` list (as Label
    Studio exports tasks nobody labelled).

    Returns:
        The export's tasks, and how many were answered.
    """
    export: list[dict[str, Any]] = []
    answered = 0
    for number, task in enumerate(tasks, start=1):
        key = task_key(task)
        out = {**task, "id": task.get("id", number), "annotations": []}
        label = truth.get(key) if key is not None else None
        if label is not None:
            answered += 1
            out["annotations"] = [
                {
                    "id": number,
                    "completed_by": ORACLE_USER,
                    "result": [choice_result(label, from_name, to_name, id=f"oracle-{number}")],
                    "was_cancelled": False,
                    "ground_truth": False,
                    "created_at": answered_at,
                    "updated_at": answered_at,
                    "lead_time": 0.0,
                }
            ]
        export.append(out)
    return export, answered


def simulator_truth(gt_root: Location | None = None) -> dict[Key, str]:
    """The simulator's recorded truth per `(request_id, index)` (its latest label of each)."""
    simulated = latest_per_key(read_ground_truth(gt_root, origins=[ORIGIN_SIMULATOR]))
    return {
        (str(r), int(i)): str(label)
        for r, i, label in zip(
            simulated["request_id"], simulated["index"], simulated["label"], strict=True
        )
    }


@dataclass(frozen=True)
class OracleResult:
    """What `label_with_oracle` did.

    Attributes:
        batches: the queue batches it answered.
        export: the Label Studio export it wrote (None when nothing was pending).
        tasks: pending tasks it saw (not labelled before).
        answered: tasks it knew the truth of.
        imported: the import of its export (None without an export).
    """

    batches: tuple[Location, ...]
    export: Location | None
    tasks: int
    answered: int
    imported: LabelImport | None = None
    unanswered: tuple[str, ...] = field(default=())


def label_with_oracle(
    params: Params,
    *,
    batch: str | None = None,
    queue: Location | None = None,
    export_dir: Location | None = None,
    gt_root: Location | None = None,
) -> OracleResult:
    """The demo labeller: answer the queue from the simulator's truth, then import the answers.

    Pending tasks (not labelled yet) of the chosen batches are answered with
    the simulator's recorded truth (`origin="simulator"`); the answers are
    written as a Label Studio JSON export and imported with `import_labels`
    (`origin="oracle"`), the path a person's export takes.

    Args:
        params: `data.classes` and `label` are used.
        batch: one queue batch id (default: every batch in the queue).
        queue: the queue folder (default `queue_dir(params.label)`).
        export_dir: where the export goes (default `exports_dir(params.label)`).
        gt_root: the ground-truth folder (default `<state dir>/ground_truth`).

    Raises:
        QueueError: `batch` does not exist or a batch is unreadable.
    """
    cfg = params.label
    state = state_url(params.state.url)
    gt_root = gt_root if gt_root is not None else ground_truth_dir(state)
    batches = queue_batches(queue if queue is not None else queue_dir(cfg, state), batch)
    done = labelled_keys(gt_root)
    pending: list[dict[str, Any]] = []
    pending_keys: set[Key] = set()
    for path in batches:
        for task in read_batch(path):
            key = task_key(task)
            if key is not None and key not in done and key not in pending_keys:
                pending_keys.add(key)
                pending.append(task)
    if not pending:
        return OracleResult(batches=tuple(batches), export=None, tasks=0, answered=0)
    truth = simulator_truth(gt_root)
    now = datetime.now(UTC)
    export_tasks, answered = answer_tasks(
        pending,
        truth,
        from_name=cfg.from_name,
        to_name=cfg.to_name,
        answered_at=now.isoformat(timespec="microseconds"),
    )
    name = batch.removesuffix(".json") if batch else "queue"
    folder = export_dir if export_dir is not None else exports_dir(cfg, state)
    export = write_json_atomic(
        join(folder, f"{name}-oracle-{now:%Y%m%dT%H%M%S%fZ}.json"), export_tasks
    )
    imported = import_labels(
        export,
        params.data.classes,
        cfg,
        served=pending_keys,
        origin=ORIGIN_ORACLE,
        gt_root=gt_root,
        allow_empty=True,  # tasks the simulator did not send stay unlabelled
    )
    return OracleResult(
        batches=tuple(batches),
        export=export,
        tasks=len(pending),
        answered=answered,
        imported=imported,
        unanswered=imported.unlabelled,
    )


def oracle_completed(params: Params, queue: Location, gt_root: Location | None) -> set[Key]:
    """The queued tasks the oracle has answered or will answer when asked: it knows their truth.

    The oracle answers as soon as it is asked (`label`), so a task it knows is
    as good as complete: the demo's loop runs in one go.
    """
    root = gt_root if gt_root is not None else ground_truth_dir(state_url(params.state.url))
    return queued_keys(queue) & (labelled_keys(root) | set(simulator_truth(root)))


class OracleLabeler(Labeler):
    """The demo's labeller: `label_with_oracle` over the queued batches.

    Its Label Studio export goes to `export_dir` and through `import_labels`
    (`origin="oracle"`), the path a person's export takes.
    """

    def label(
        self,
        params: Params,
        queue_dir: Path,
        *,
        export_dir: Path,
        gt_root: Location | None = None,
    ) -> LabelingResult:
        """Answer the pending tasks of the batches in `queue_dir` (see `label_with_oracle`)."""
        result = label_with_oracle(params, queue=queue_dir, export_dir=export_dir, gt_root=gt_root)
        return LabelingResult(
            labels=result.imported.labels if result.imported is not None else no_labels(),
            summary=(
                f"oracle answered {result.answered} of {result.tasks} pending tasks "
                f"({len(result.unanswered)} without truth)"
            ),
            exports=() if result.export is None else (result.export,),
        )

    def completed(
        self, params: Params, queue_dir: Location, *, gt_root: Location | None = None
    ) -> set[Key]:
        """The queued tasks the oracle knows the truth of (`oracle_completed`)."""
        return oracle_completed(params, queue_dir, gt_root)


ORACLE_EMAIL = "oracle@flywheel.local"
"""The oracle's Label Studio account (a member of the owner's organisation)."""

ORACLE_CONCURRENCY = 4
"""Submissions in flight at once."""


def oracle_token(connection: Connection, email: str) -> str:
    """The oracle's access token: its own member's on a server this machine started, else
    the owner's (a cluster's server, reached through LABEL_STUDIO_URL/_API_KEY: the token
    Job mints the owner's only)."""
    if connection.data_dir is None and email not in connection.members:
        return connection.token
    return member_token(connection, email)


def annotate_as_oracle(
    connection: Connection,
    project: int,
    params: Params,
    gt_root: Location | None = None,
    *,
    email: str = ORACLE_EMAIL,
) -> tuple[int, int]:
    """Submit the simulator's truth for the project's tasks the oracle has not annotated.

    Acts through the API as the member `email` (the tasks it lists are those an
    annotator sees, with only its own annotations). Tasks the simulator did not
    send are skipped, as a person skips an image they cannot tell.

    Returns:
        Annotations submitted, and tasks skipped.
    """
    from concurrent.futures import ThreadPoolExecutor

    client = sdk_client(connection, oracle_token(connection, email))
    truth = simulator_truth(gt_root)
    cfg = params.label
    answers: list[tuple[int, str | None]] = []
    for task in read_tasks(client, project, include="id,data,annotations"):  # ids: enough
        if not task.get("annotations"):
            key = task_key(task)
            answers.append((int(task["id"]), truth.get(key) if key is not None else None))

    def submit(answer: tuple[int, str | None]) -> None:
        task_id, label = answer
        client.annotations.create(
            id=task_id,
            result=[] if label is None else [choice_result(label, cfg.from_name, cfg.to_name)],
            was_cancelled=label is None,
            lead_time=0.0,
        )

    # Label Studio answers each submission in ~0.2-0.7 s of its own CPU; a few in
    # flight at once halve the wall time, as several people labelling would.
    with ThreadPoolExecutor(max_workers=ORACLE_CONCURRENCY) as pool:
        list(pool.map(submit, answers))
    skipped = sum(label is None for _, label in answers)
    submitted = len(answers) - skipped
    return submitted, skipped


class LabelStudioOracle(LabelStudioLabeler):
    """The demo's labeller: the product's Label Studio labeller, the oracle its annotator.

    Labels are recorded with `origin="oracle"` (they are the simulator's truth).
    """

    origin = ORIGIN_ORACLE

    def annotate(
        self, connection: Connection, project: int, params: Params, gt_root: Location | None
    ) -> None:
        """The oracle annotates the published tasks through the API (`annotate_as_oracle`)."""
        annotate_as_oracle(connection, project, params, gt_root)

    def completed(
        self, params: Params, queue_dir: Location, *, gt_root: Location | None = None
    ) -> set[Key]:
        """The queued tasks the oracle knows the truth of (`oracle_completed`)."""
        return oracle_completed(params, queue_dir, gt_root)
