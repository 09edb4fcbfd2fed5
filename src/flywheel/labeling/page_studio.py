"""Page tasks through a running Label Studio: the project from the page plan, tasks in, labels out.

The same server, project and helpers as the digits' `label-studio` labeller
(`flywheel.labeling.studio`): the project titled `label.studio.project` is
found or created with the page plan's interface (`label_interface` picks the
region interface for a page plan) and the page guide; `publish_pages` imports
the pre-annotated page tasks it does not hold yet (images through local-files
storage); `read_page_labels` reads every task back through the API and turns
the annotations into pixel boxes with their LaTeX (`flywheel.labeling.page_annotations`),
with the spend of the completed pages (`flywheel.labeling.pages.page_cost`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.labeling.page_annotations import PageLabels, parse_page_tasks
from flywheel.labeling.pages import PageSpend, page_cost
from flywheel.labeling.queue import task_key, write_json_atomic
from flywheel.labeling.server import Connection, LabelStudioError
from flywheel.labeling.studio import (
    find_or_create_project,
    find_project,
    publish_tasks,
    read_tasks,
    refused_as_error,
    sdk_client,
)

if TYPE_CHECKING:
    from flywheel.config import Params


def publish_pages(
    connection: Connection, params: Params, tasks: Sequence[dict[str, Any]]
) -> tuple[int, int]:
    """Import the page tasks the project does not hold yet (`page_task`'s); (project, sent).

    Raises:
        LabelStudioError: the server refused a request, or the plan is not a page plan.
    """
    if params.data.pages is None:
        raise LabelStudioError(f"plan {params.data.name!r} is not a page plan (no data.pages)")
    client = sdk_client(connection)
    with refused_as_error(connection):
        project = find_or_create_project(client, params)
        listed = read_tasks(client, project, include="id,data")
        present = {k for k in map(task_key, listed) if k is not None}
        sent = publish_tasks(
            client, project, tasks, present, connection, presign=params.label.studio.presign
        )
    return project, sent


@dataclass(frozen=True)
class PageRead:
    """What `read_page_labels` read.

    Attributes:
        project: the Label Studio project.
        tasks: tasks in the project.
        labels: the labels, held-back tasks and unlabelled tasks.
        spend: what the completed (labelled) pages cost.
        per_batch: the same per queue batch (`data.batch_id`; '' for none).
        snapshot: the tasks as read, kept as an export would be (None: not kept).
    """

    project: int
    tasks: int
    labels: PageLabels
    spend: PageSpend
    per_batch: dict[str, PageSpend]
    snapshot: Path | None = None

    def summary(self) -> str:
        """One line for the log: labelled, held back (first reasons), unlabelled, spend."""
        held = self.labels.held
        return (
            f"Label Studio project {self.project}: {len(self.labels.labels)} of {self.tasks} "
            f"page tasks labelled, {len(held)} held back"
            + (f" ({'; '.join(held[:3])})" if held else "")
            + f", {len(self.labels.unlabelled)} without a submitted annotation "
            f"({self.labels.skipped} skipped); spend {self.spend.describe()}"
            + "".join(f"; batch {b or '-'}: {s.describe()}" for b, s in self.per_batch.items())
        )


def read_page_labels(
    connection: Connection, params: Params, *, snapshot_dir: Path | None = None
) -> PageRead:
    """Every page task of the project, read back through the API and resolved.

    Args:
        connection: the server.
        params: `data.pages.vocabulary`, `label` (`from_name`, `annotators`,
            `studio.project`) and `curate.cost` (the prices).
        snapshot_dir: where to keep the tasks as read (a JSON export's shape).

    Raises:
        LabelStudioError: no such project, or the server refused a request.
    """
    pages = params.data.pages
    if pages is None:
        raise LabelStudioError(f"plan {params.data.name!r} is not a page plan (no data.pages)")
    client = sdk_client(connection)
    with refused_as_error(connection):
        project = find_project(client, params)
        if project is None:
            raise LabelStudioError(
                f"Label Studio at {connection.url} has no project {params.label.studio.project!r}"
            )
        tasks = read_tasks(client, project)
    snapshot = None
    if snapshot_dir is not None:
        snapshot_dir.mkdir(parents=True, exist_ok=True)
        snapshot = Path(
            str(write_json_atomic(snapshot_dir / f"label-studio-pages-{project}.json", tasks))
        )
    labels = parse_page_tasks(
        tasks,
        box_name=params.label.from_name,
        vocabulary=pages.vocabulary,
        annotators=params.label.annotators,
        source=f"project {project}",
    )
    spend = page_cost([len(label.regions) for label in labels.labels], params)
    batches: dict[str, list[int]] = {}
    for label in labels.labels:
        batches.setdefault(str(label.data.get("batch_id") or ""), []).append(len(label.regions))
    per_batch = {batch: page_cost(counts, params) for batch, counts in sorted(batches.items())}
    return PageRead(project, len(tasks), labels, spend, per_batch, snapshot)


__all__ = ["PageRead", "publish_pages", "read_page_labels"]
