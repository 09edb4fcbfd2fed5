"""The page plan's labellers: page tasks before the annotators, page labels back, as one table.

The digits' `Labeler` interface (`send` / `label` / `completed`) over page
tasks (`flywheel.labeling.pages.page_task`, queued by
`flywheel.curation.pages.curate_pages` in `<label dir>/page-queue/`):

* `PageStudioLabeler` (`label.labeler: label-studio`): the page project of a
  running Label Studio (`flywheel.labeling.page_studio`): `send` imports the
  batches' tasks, `label` reads every task back and resolves its annotators
  (`flywheel.labeling.page_annotations`), `completed` counts without recording;
* `PageExportLabeler` (`label.labeler: label-studio-export`): the Label Studio
  exports (JSON or JSON_MIN) people saved into `<label dir>/page-exports/`.

`page_labeler_for(params)` picks one for a page plan; a class path names
another `PageLabeler` (the demo's oracle, `flywheel.demo.page_oracle:PageStudioOracle`).

Between the pipeline's steps the labels travel as a table (`labels.parquet`,
`page_labels_frame` / `page_labels_from_frame`): one row per page keyed by
`request_id` and `index`, its regions as JSON (`region_id`, pixel `box`,
canonical `latex`) and the task's data as JSON (where the page is stored, and
the stratum when someone recorded it). Label Studio keeps the annotations, so
nothing else records them: which pages a merge settled is kept under
`<label dir>/page-merged/` (`page_merged_dir`, `flywheel.labeling.sync`'s
records), so a later run never merges a page twice.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from flywheel.labeling.base import Labeler, LabelerError, LabelingResult, make_labeler
from flywheel.labeling.page_annotations import LabelledRegion, PageLabel, parse_page_tasks
from flywheel.labeling.queue import (
    Key,
    labeling_dir,
    queue_batches,
    queued_keys,
    read_batch,
    read_json,
    write_json_atomic,
)
from flywheel.labeling.server import Connection, connect
from flywheel.storage import Location, glob, join, name, state_url

if TYPE_CHECKING:
    from flywheel.config import Params
    from flywheel.labeling.page_studio import PageRead

PAGE_LABEL_COLUMNS: tuple[str, ...] = (
    "request_id",
    "index",
    "task_id",
    "batch_id",
    "width",
    "height",
    "annotators",
    "annotated_at",
    "regions",
    "data",
)
"""Columns of a page labels table: one row per page; `regions` and `data` are JSON text."""

PAGE_EXPORTS_DIR = "page-exports"
"""Label Studio exports of the page project people saved: `<label dir>/page-exports/`."""
PAGE_MERGED_DIR = "page-merged"
"""Records of the pages each merge settled: `<label dir>/page-merged/` (the digits' `merged/`)."""


def page_exports_dir(params: Params) -> Location:
    """Where people save the page project's exports: `<label dir>/page-exports`."""
    return join(labeling_dir(params.label, state_url(params.state.url)), PAGE_EXPORTS_DIR)


def page_merged_dir(params: Params) -> Location:
    """Where page merges record the pages they settled: `<label dir>/page-merged`."""
    return join(labeling_dir(params.label, state_url(params.state.url)), PAGE_MERGED_DIR)


# ------------------------------------------------------------------ the table


def page_labels_frame(labels: Iterable[PageLabel]) -> pd.DataFrame:
    """Page labels as the table the pipeline's steps hand on (`PAGE_LABEL_COLUMNS`).

    >>> label = PageLabel(("r-1", 0), "7", 64, 64, (LabelledRegion("a", (1, 2, 30, 12), "x+1"),),
    ...                   1, "2026-12-07T10:00:00+00:00", {"batch_id": "b", "image_path": "/p.png"})
    >>> frame = page_labels_frame([label])
    >>> frame.loc[0, ["request_id", "batch_id", "regions"]].tolist()
    ['r-1', 'b', '[{"region_id": "a", "box": [1, 2, 30, 12], "latex": "x+1"}]']
    >>> page_labels_from_frame(frame) == [label]
    True
    """
    rows = [
        {
            "request_id": label.key[0],
            "index": int(label.key[1]),
            "task_id": str(label.task_id),
            "batch_id": str(label.data.get("batch_id") or ""),
            "width": int(label.width),
            "height": int(label.height),
            "annotators": int(label.annotators),
            "annotated_at": str(label.annotated_at),
            "regions": json.dumps(
                [
                    {"region_id": r.region_id, "box": list(r.box), "latex": r.latex}
                    for r in label.regions
                ]
            ),
            "data": json.dumps(dict(label.data), sort_keys=True, default=str),
        }
        for label in labels
    ]
    frame = pd.DataFrame(rows, columns=list(PAGE_LABEL_COLUMNS))
    return frame.astype({"index": "int64"}) if rows else frame


def page_labels_from_frame(frame: pd.DataFrame) -> list[PageLabel]:
    """The page labels of a table `page_labels_frame` wrote.

    Raises:
        ValueError: a column is missing, or a row's regions or data are not its JSON.
    """
    missing = [c for c in PAGE_LABEL_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"not a page labels table (columns {list(PAGE_LABEL_COLUMNS)}): missing {missing}; "
            "a digits labels table given to a page plan?"
        )
    labels = []
    for row in frame.itertuples(index=False):
        try:
            regions = tuple(
                LabelledRegion(str(r["region_id"]), _box(r["box"]), str(r["latex"]))
                for r in json.loads(str(row.regions))
            )
            data = json.loads(str(row.data))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"page label {row.request_id}#{row.index}: unreadable regions or data: {err}"
            ) from None
        labels.append(
            PageLabel(
                key=(str(row.request_id), int(row.index)),
                task_id=str(row.task_id),
                width=int(row.width),
                height=int(row.height),
                regions=regions,
                annotators=int(row.annotators),
                annotated_at=str(row.annotated_at),
                data=data,
            )
        )
    return labels


def _box(values: Sequence[Any]) -> tuple[int, int, int, int]:
    """A region's pixel box `(x0, y0, x1, y1)` from its JSON list.

    Raises:
        ValueError: not four numbers.
    """
    x0, y0, x1, y1 = (int(v) for v in values)
    return x0, y0, x1, y1


def _queued_tasks(queue_dir: Location) -> list[dict[str, Any]]:
    return [t for path in queue_batches(queue_dir) for t in read_batch(path)]


def _summary(where: str, labels: Sequence[PageLabel], queued: set[Key], read: str) -> str:
    return f"{where}: {len(labels)} of {len(queued)} queued pages labelled; {read}"


# ------------------------------------------------------------------ the labellers


class PageLabeler(Labeler):
    """A `Labeler` of page tasks: its `label` returns a page labels table (`page_labels_frame`).

    Subclasses read the labels (`read_labels`); this class keeps those of the
    queued pages and lets a subclass add what it knows of a page (`known`).
    """

    @abstractmethod
    def read_labels(
        self, params: Params, queue_dir: Location, export_dir: Path
    ) -> tuple[list[PageLabel], str]:
        """Every page label the labeller holds, and one line saying what was read.

        Args:
            params: the page plan.
            queue_dir: the queued batches (a labeller that publishes them does so first).
            export_dir: where what was read is kept, as an export would be.
        """

    def known(self, params: Params, label: PageLabel) -> Mapping[str, Any]:
        """What is known of the page besides its label (a stratum, source glyphs): none here."""
        del params, label
        return {}

    def label(
        self,
        params: Params,
        queue_dir: Path,
        *,
        export_dir: Path,
        gt_root: Location | None = None,
    ) -> LabelingResult:
        """The labels of the queued pages (`page_labels_frame`), the newest per page.

        `gt_root` is not used: page labels are read back whole every time (the
        annotations stay in Label Studio or in the saved exports).
        """
        del gt_root
        _require_pages(params)
        queued = queued_keys(queue_dir)
        every, read = self.read_labels(params, queue_dir, export_dir)
        newest: dict[Key, PageLabel] = {}
        for label in sorted(every, key=lambda lb: lb.annotated_at):
            if label.key in queued:
                extra = self.known(params, label)
                newest[label.key] = (
                    label if not extra else _with_data(label, {**label.data, **extra})
                )
        labels = [newest[k] for k in sorted(newest)]
        return LabelingResult(
            labels=page_labels_frame(labels),
            summary=_summary(type(self).__name__, labels, queued, read),
        )

    def completed(
        self, params: Params, queue_dir: Location, *, gt_root: Location | None = None
    ) -> set[Key]:
        """The queued pages with a usable label, read without recording."""
        import tempfile

        del gt_root
        _require_pages(params)
        with tempfile.TemporaryDirectory(prefix="flywheel-pages-") as scratch:
            every, _ = self.read_labels(params, queue_dir, Path(scratch))
        return {label.key for label in every} & queued_keys(queue_dir)


def _with_data(label: PageLabel, data: Mapping[str, Any]) -> PageLabel:
    from dataclasses import replace

    return replace(label, data=data)


def _require_pages(params: Params) -> None:
    if not params.data.is_pages:
        raise LabelerError(
            f"plan {params.data.name!r} is not a page plan (no data.pages): page labellers "
            "label page tasks only"
        )


class PageStudioLabeler(PageLabeler):
    """Page tasks into the page project of a running Label Studio, people's annotations back.

    Args:
        connection: the server (default `flywheel.labeling.server.connect`).
    """

    def __init__(self, connection: Connection | None = None) -> None:
        self.connection = connection

    def annotate(self, connection: Connection, project: int, params: Params) -> None:
        """Between publishing and reading back: nothing (people annotate in their own time)."""

    def send(self, params: Params, queue_dir: Path) -> str:
        """Import the queued page tasks the project does not hold yet.

        Raises:
            LabelStudioError: no server, or it refused a request.
        """
        from flywheel.labeling.page_studio import publish_pages

        _require_pages(params)
        connection = self.connection or connect(params.label.studio)
        project, sent = publish_pages(connection, params, _queued_tasks(queue_dir))
        return f"Label Studio project {project} at {connection.url}: {sent} page tasks sent"

    def read_labels(
        self, params: Params, queue_dir: Location, export_dir: Path
    ) -> tuple[list[PageLabel], str]:
        """Publish what is missing, let `annotate` run, read every page task back.

        Raises:
            LabelStudioError: no server, or it refused a request.
        """
        from flywheel.labeling.page_studio import publish_pages, read_page_labels

        connection = self.connection or connect(params.label.studio)
        project, _ = publish_pages(connection, params, _queued_tasks(queue_dir))
        self.annotate(connection, project, params)
        read: PageRead = read_page_labels(connection, params, snapshot_dir=export_dir)
        return list(read.labels.labels), read.summary()

    def completed(
        self, params: Params, queue_dir: Location, *, gt_root: Location | None = None
    ) -> set[Key]:
        """The queued pages the project holds a decided annotation of; nothing is published.

        Raises:
            LabelStudioError: no server, or it refused a request.
        """
        from flywheel.labeling.page_studio import read_page_labels
        from flywheel.labeling.studio import find_project, refused_as_error, sdk_client

        del gt_root
        _require_pages(params)
        connection = self.connection or connect(params.label.studio)
        with refused_as_error(connection):
            if find_project(sdk_client(connection), params) is None:
                return set()
        read = read_page_labels(connection, params)
        return {label.key for label in read.labels.labels} & queued_keys(queue_dir)


class PageExportLabeler(PageLabeler):
    """The page project's Label Studio exports (JSON or JSON_MIN) saved in `page_exports_dir`.

    Every export there is read (a later export of a page wins); the ones that
    hold a queued page are copied into the step's `export_dir`.
    """

    def read_labels(
        self, params: Params, queue_dir: Location, export_dir: Path
    ) -> tuple[list[PageLabel], str]:
        """The labels of every saved export.

        Raises:
            flywheel.labeling.page_annotations.PageLabelError: an export is not
                Label Studio's tasks, or a task has no key.
        """
        from flywheel.labeling.page_annotations import PageLabelError

        pages = params.data.pages
        assert pages is not None
        folder = page_exports_dir(params)
        queued = queued_keys(queue_dir)
        labels: list[PageLabel] = []
        held = 0
        exports = glob(folder, "*.json")
        for path in exports:
            read = parse_page_tasks(
                read_json(path, PageLabelError),
                box_name=params.label.from_name,
                vocabulary=pages.vocabulary,
                annotators=params.label.annotators,
                source=str(path),
            )
            labels.extend(read.labels)
            held += len(read.held)
            if any(label.key in queued for label in read.labels):
                export_dir.mkdir(parents=True, exist_ok=True)
                write_json_atomic(export_dir / name(path), read_json(path, PageLabelError))
        return labels, f"{len(exports)} exports in {folder}, {held} page tasks held back"


PAGE_LABELERS: dict[str, str] = {
    "label-studio": "flywheel.labeling.page_labeler:PageStudioLabeler",
    "label-studio-export": "flywheel.labeling.page_labeler:PageExportLabeler",
}
"""`label.labeler` short names for a page plan, and the classes they name."""


def page_labeler_for(params: Params) -> PageLabeler:
    """The page labeller `label.labeler` names: a short name or `package.module:Class`.

    Raises:
        LabelerError: not a page plan, or the name is neither a short name nor an
            importable `PageLabeler` subclass (a digits labeller names itself).
    """
    _require_pages(params)
    labeler: PageLabeler = make_labeler(
        params.label.labeler,
        PAGE_LABELERS,
        PageLabeler,
        unknown=f"a page plan takes one of {sorted(PAGE_LABELERS)} or a class path "
        "`package.module:Class` of a PageLabeler",
        not_one="is not a page labeller (a subclass of flywheel.labeling.page_labeler."
        "PageLabeler); a page plan's tasks are pages",
    )
    return labeler


def labeler_of(params: Params) -> Labeler:
    """The labeller of the plan: `page_labeler_for` a page plan, else `labeler_for(label)`."""
    from flywheel.labeling.base import labeler_for

    return page_labeler_for(params) if params.data.is_pages else labeler_for(params.label)


__all__ = [
    "PAGE_EXPORTS_DIR",
    "PAGE_LABELERS",
    "PAGE_LABEL_COLUMNS",
    "PAGE_MERGED_DIR",
    "PageExportLabeler",
    "PageLabeler",
    "PageStudioLabeler",
    "labeler_of",
    "page_exports_dir",
    "page_labeler_for",
    "page_labels_frame",
    "page_labels_from_frame",
    "page_merged_dir",
]
