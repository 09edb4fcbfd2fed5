"""The Label Studio labeller: queued tasks into a live Label Studio project, annotations back out.

`LabelStudioLabeler` (`label.labeler: label-studio`) talks to a running
server through `label-studio-sdk` (`flywheel label server` starts one locally;
`flywheel.labeling.server.connect` finds it):

1. **The project** titled `label.studio.project` is found, else created: its
   labelling interface generated from the data plan (`label_interface`), its
   instructions the work guide `label.studio.guide` (Markdown, shown as HTML).
2. **The tasks** of the queued batches that the project does not hold yet are
   imported with the model's answer as a pre-annotation (prediction, score and
   model version). Images are served by the server's local-files storage
   (`/data/local-files/?d=<path under LOCAL_FILES_DOCUMENT_ROOT>`; a storage
   covering their folder is added to the project), or, when the state is in
   object storage (a cluster), name their `s3://` object, which the project's
   S3 storage pre-signs (`flywheel.labeling.image_storage`).
3. **The annotations** are read back through the API (every task of the project,
   with its annotations). Cancelled (skipped) annotations never count; drafts are
   not annotations. Several annotators are resolved per task by
   `label.annotators`; a task the rule cannot decide (a tie, a disagreement
   under `unanimous`) is held back and reported, the others go on. The labels
   are recorded in the ground-truth store and returned for the merge; a
   snapshot of what was read goes to `export_dir`, as an export would.

`annotate` runs between 2 and 3; it does nothing here (people annotate in
their own time). The demo's oracle overrides it to answer through the API.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from flywheel.data.ground_truth import ORIGIN_LABEL_STUDIO
from flywheel.labeling.base import Labeler, LabelingResult, no_labels
from flywheel.labeling.exports import LabelImportError
from flywheel.labeling.image_storage import (
    add_local_storage,
    add_s3_storage,
    is_s3,
    local_image_url,
    s3_folders,
    s3_keys,
)
from flywheel.labeling.label_studio import label_config_xml, parse_export, record_labels
from flywheel.labeling.pages import page_interface
from flywheel.labeling.queue import (
    Key,
    logged_keys,
    queue_batches,
    queued_keys,
    read_batch,
    task_key,
    write_json_atomic,
)
from flywheel.labeling.server import Connection, LabelStudioError, connect
from flywheel.storage import Location

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

    from flywheel.config import Params

PAGE_SIZE = 500


def label_interface(params: Params) -> str:
    """The project's labelling interface from the data plan.

    A page plan (`data.pages`) gets the region interface: `formula` rectangles
    with a LaTeX transcription per region (`flywheel.labeling.pages`); any other
    plan an image and one choice of `data.classes`.
    """
    if params.data.pages is not None:
        return page_interface(params)
    return label_config_xml(params.data.classes, params.label.from_name, params.label.to_name)


def read_guide(path: Path) -> str:
    """The work guide as HTML for the project's instructions (Label Studio shows HTML).

    Raises:
        LabelStudioError: the guide file is missing.
    """
    from markdown_it import MarkdownIt

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabelStudioError(
            f"label.studio.guide: no such file {path} (the annotators' instructions)"
        ) from None
    return str(MarkdownIt().render(text))


def sdk_client(connection: Connection, token: str | None = None) -> LabelStudio:
    """A `label-studio-sdk` client of the server, as the owner or as the member owning `token`."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=connection.url, api_key=token or connection.token, timeout=120)


def find_or_create_project(client: LabelStudio, params: Params) -> int:
    """The id of the project titled `label.studio.project`, created from the plan if missing.

    Raises:
        LabelStudioError: the project exists with a labelling interface lacking the
            `label.from_name` control (another project of the same title).
    """
    cfg = params.label.studio
    found = find_project(client, params)
    if found is not None:
        return found
    created = client.projects.create(
        title=cfg.project,
        label_config=label_interface(params),
        expert_instruction=read_guide(cfg.guide),
        show_instruction=True,
        show_skip_button=True,
    )
    if created.id is None:
        raise LabelStudioError(f"Label Studio created project {cfg.project!r} without an id")
    return int(created.id)


def find_project(client: LabelStudio, params: Params) -> int | None:
    """The id of the project titled `label.studio.project`, None when there is none.

    Raises:
        LabelStudioError: the project lacks the `label.from_name` control.
    """
    cfg = params.label.studio
    for project in client.projects.list(title=cfg.project, page_size=PAGE_SIZE):
        if project.title == cfg.project and project.id is not None:
            if f'name="{params.label.from_name}"' not in (project.label_config or ""):
                raise LabelStudioError(
                    f"Label Studio project {cfg.project!r} (id {project.id}) has no control "
                    f"{params.label.from_name!r}: rename it or set label.studio.project"
                )
            return int(project.id)
    return None


@contextmanager
def refused_as_error(connection: Connection) -> Iterator[None]:
    """A request Label Studio refused, as a `LabelStudioError` naming the server."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except ApiError as err:
        raise LabelStudioError(
            f"Label Studio at {connection.url} refused a request: {err.status_code} "
            f"{str(err.body)[:500]}"
        ) from err


def read_tasks(
    client: LabelStudio, project: int, include: str | None = None
) -> list[dict[str, Any]]:
    """Every task of the project as JSON, with its annotations and predictions in full.

    An annotator's client sees only their own annotations. `include` names the
    task fields to return instead (then an annotation is only its id): Label
    Studio computes a dozen aggregates per task otherwise (200 tasks on a busy
    machine: ~2 s for `id,data`, ~11 s in full).
    """
    # resolve_uri=False: the data as imported (`s3://...`), not rewritten to the
    # server's /tasks/<id>/resolve/ links (which it does for every field of a storage's URL).
    pager = client.tasks.list(
        project=project, fields="all", include=include, page_size=PAGE_SIZE, resolve_uri=False
    )
    return [task.model_dump(mode="json", warnings=False) for task in pager]


def publish_tasks(
    client: LabelStudio,
    project: int,
    tasks: Sequence[dict[str, Any]],
    present: set[Key],
    connection: Connection,
    *,
    presign: bool = True,
) -> int:
    """Import the tasks the project does not hold yet, with their predictions; return how many.

    An image in S3 keeps its `s3://` URL and the project gets an S3 storage of
    its bucket (`flywheel.labeling.image_storage`); with a local server another
    image's URL is rewritten to its local-files URL (from `data.image_path`); a
    remote server gets the URL curation wrote.

    Raises:
        LabelStudioError: images in S3 and no S3 keys in the environment.
    """
    from label_studio_sdk.types import ImportApiRequest

    root = Path(connection.document_root) if connection.document_root else None
    folders: set[Path] = set()
    in_s3: list[str] = []
    requests: list[ImportApiRequest] = []
    for task in tasks:
        key = task_key(task)
        if key is None or key in present:
            continue
        present.add(key)
        data = dict(task["data"])
        if is_s3(str(data.get("image", ""))):
            in_s3.append(str(data["image"]))
        elif root is not None and data.get("image_path"):
            data["image"], folder = local_image_url(str(data["image_path"]), root)
            folders.add(folder)
        predictions = [
            {key: p.get(key) for key in ("result", "score", "model_version")}
            for p in task.get("predictions", [])
        ]
        # unchecked: a prediction imported with its task has no task id yet
        requests.append(ImportApiRequest.construct(data=data, predictions=predictions))
    if folders:
        add_local_storage(client, project, folders)
    if in_s3:
        add_s3_storage(client, project, s3_folders(in_s3), s3_keys(), presign=presign)
    if requests:
        client.projects.import_tasks(id=project, request=requests, commit_to_project=True)
    return len(requests)


class LabelStudioLabeler(Labeler):
    """The product labeller: tasks into a running Label Studio, people's annotations back.

    Args:
        connection: the server (default `flywheel.labeling.server.connect`: the
            environment's `LABEL_STUDIO_URL`/`_API_KEY`, else the connection file).
    """

    origin: str = ORIGIN_LABEL_STUDIO
    """Recorded on the labels in the ground-truth store."""

    def __init__(self, connection: Connection | None = None) -> None:
        self.connection = connection

    def annotate(
        self, connection: Connection, project: int, params: Params, gt_root: Location | None
    ) -> None:
        """Between publishing and reading back: nothing (people annotate in their own time)."""

    def label(
        self,
        params: Params,
        queue_dir: Path,
        *,
        export_dir: Path,
        gt_root: Location | None = None,
    ) -> LabelingResult:
        """Publish the queued tasks, then read every completed annotation back and record it.

        Raises:
            LabelStudioError: no server, or it refused a request.
            flywheel.labeling.QueueError: a queue batch is unreadable.
        """
        from flywheel.monitoring.prediction_log import predictions_dir

        connection = self.connection or connect(params.label.studio)
        client = sdk_client(connection)
        queued = queued_keys(queue_dir)
        with refused_as_error(connection):
            project, sent = self._publish(client, connection, params, queue_dir)
            self.annotate(connection, project, params, gt_root)
            tasks = read_tasks(client, project)
        now = datetime.now(UTC)
        export_dir.mkdir(parents=True, exist_ok=True)
        snapshot = write_json_atomic(
            export_dir / f"label-studio-project-{project}-{now:%Y%m%dT%H%M%S%fZ}.json", tasks
        )
        served = queued | logged_keys(predictions_dir(params))
        every, held = resolve_tasks(tasks, params, served, source=f"project {project}")
        new, _ = record_labels(every, origin=self.origin, gt_root=gt_root)
        keys = pd.Series(list(zip(every["request_id"], every["index"], strict=True)), dtype=object)
        labels = every[keys.isin(queued).to_numpy()].reset_index(drop=True)
        return LabelingResult(
            labels=labels,
            summary=(
                f"Label Studio project {project} at {connection.url}: {sent} tasks sent, "
                f"{len(labels)} of {len(queued)} queued tasks labelled ({len(new)} new labels), "
                f"{len(held)} held back" + (f" ({'; '.join(held[:3])})" if held else "")
            ),
            exports=(snapshot,),
        )

    def send(self, params: Params, queue_dir: Path) -> str:
        """Publish the queued tasks to the project (created from the plan if missing).

        Raises:
            LabelStudioError: no server, or it refused a request.
        """
        connection = self.connection or connect(params.label.studio)
        with refused_as_error(connection):
            project, sent = self._publish(sdk_client(connection), connection, params, queue_dir)
        return f"Label Studio project {project} at {connection.url}: {sent} tasks sent"

    def completed(
        self, params: Params, queue_dir: Location, *, gt_root: Location | None = None
    ) -> set[Key]:
        """The queued tasks the project holds a decided annotation of (or the store a label).

        Reads the project's tasks through the API; records nothing.

        Raises:
            LabelStudioError: no server, or it refused a request.
        """
        from flywheel.monitoring.prediction_log import predictions_dir

        connection = self.connection or connect(params.label.studio)
        client = sdk_client(connection)
        queued = queued_keys(queue_dir)
        with refused_as_error(connection):
            project = find_project(client, params)
            tasks = read_tasks(client, project) if project is not None else []
        served = queued | logged_keys(predictions_dir(params))
        every, _ = resolve_tasks(tasks, params, served, source=f"project {project}")
        annotated = set(zip(map(str, every["request_id"]), map(int, every["index"]), strict=True))
        return (annotated & queued) | super().completed(params, queue_dir, gt_root=gt_root)

    def _publish(
        self, client: LabelStudio, connection: Connection, params: Params, queue_dir: Location
    ) -> tuple[int, int]:
        """The project, found or created, and how many queued tasks were imported into it."""
        queued_tasks = [t for path in queue_batches(queue_dir) for t in read_batch(path)]
        project = find_or_create_project(client, params)
        listed = read_tasks(client, project, include="id,data")
        present = {k for k in map(task_key, listed) if k is not None}
        sent = publish_tasks(
            client, project, queued_tasks, present, connection, presign=params.label.studio.presign
        )
        return project, sent


def resolve_tasks(
    tasks: Sequence[dict[str, Any]], params: Params, served: set[Key], *, source: str
) -> tuple[pd.DataFrame, list[str]]:
    """Each task's label by `label.annotators`; tasks the rule cannot decide are held back.

    Returns:
        The labels (`LABEL_COLUMNS`, one row per decided task), and one message
        per task held back (a tie, a disagreement, a request never served).
    """
    frames: list[pd.DataFrame] = []
    held: list[str] = []
    for task in tasks:
        if not task.get("annotations"):
            continue
        try:
            parsed = parse_export(
                [task],
                params.data.classes,
                from_name=params.label.from_name,
                source=source,
                annotators=params.label.annotators,
                served=served,
            )
        except LabelImportError as err:
            held.append(str(err))
            continue
        if not parsed.labels.empty:
            frames.append(parsed.labels)
    labels = pd.concat(frames, ignore_index=True) if frames else no_labels()
    return labels, held
