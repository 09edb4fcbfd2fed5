"""Label Studio's JSON formats, the import of its exports, and the product labeller built on it.

Labels come back as a Label Studio JSON export (`import_labels`): a list of
tasks whose `annotations[].result[].value.choices` hold the class. The whole
file is checked before anything is written — a label outside the classes, a
task without its key, two tasks giving one image different labels are errors
that name the task — and the labels are appended to the ground-truth store
(`flywheel.data.ground_truth`) in one file. Importing the same export twice
writes nothing the second time.

`LabelStudioExportLabeler` (`label.labeler: label-studio-export`) is the
labeller of the pipeline's label step in production: people label the queued
batches in Label Studio and save its JSON export into the exports folder; the
step imports the exports that hold queued tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import pandas as pd

from flywheel.config import LabelConfig, Params
from flywheel.data.ground_truth import (
    KEY,
    LABELLER_ORIGINS,
    ORIGIN_LABEL_STUDIO,
    ground_truth_dir,
    latest_per_key,
    read_ground_truth,
    write_ground_truth,
)
from flywheel.labeling.base import LABEL_COLUMNS, Labeler, LabelingResult, no_labels
from flywheel.labeling.queue import Key, exports_dir, queued_keys, read_json, task_key
from flywheel.storage import (
    Location,
    as_location,
    glob,
    name,
    read_bytes,
    state_url,
    write_bytes,
)


class LabelImportError(ValueError):
    """A Label Studio export that cannot be imported; the message names the file and the task."""


def label_config_xml(classes: Sequence[str], from_name: str, to_name: str) -> str:
    """The Label Studio labelling interface for the queue: an image and one choice of class.

    >>> print(label_config_xml(["0", "1"], "label", "image"))  # doctest: +NORMALIZE_WHITESPACE
    <View>
      <Image name="image" value="$image"/>
      <Choices name="label" toName="image" choice="single" showInline="true" required="true">
        <Choice value="0"/>
        <Choice value="1"/>
      </Choices>
    </View>
    """
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (
        "<View>\n"
        f'  <Image name={quoteattr(to_name)} value="$image"/>\n'
        f"  <Choices name={quoteattr(from_name)} toName={quoteattr(to_name)} "
        'choice="single" showInline="true" required="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>"
    )


def choice_result(label: str, from_name: str, to_name: str, **extra: Any) -> dict[str, Any]:
    """One `result` item of a Label Studio annotation or prediction choosing `label`.

    >>> choice_result("7", "label", "image")
    {'from_name': 'label', 'to_name': 'image', 'type': 'choices', 'value': {'choices': ['7']}}
    """
    return {
        **extra,
        "from_name": from_name,
        "to_name": to_name,
        "type": "choices",
        "value": {"choices": [label]},
    }


@dataclass(frozen=True)
class ParsedExport:
    """What a Label Studio export holds.

    Attributes:
        labels: one row per labelled task (`LABEL_COLUMNS`).
        unlabelled: ids of tasks with no usable annotation (none, all cancelled,
            or none choosing a class), left for later.
    """

    labels: pd.DataFrame
    unlabelled: tuple[str, ...] = ()


def _task_name(task: Mapping[str, Any], position: int) -> str:
    """How a task is named in errors: its id when it has one, else its position."""
    task_id = task.get("id")
    return f"task {task_id}" if task_id is not None else f"task #{position} (no id)"


def _latest_annotation(task: Mapping[str, Any], where: str) -> Mapping[str, Any] | None:
    annotations = task.get("annotations") or []
    if not isinstance(annotations, list):
        raise LabelImportError(f"{where}: `annotations` is not a list")
    usable = [
        a
        for a in annotations
        if isinstance(a, Mapping) and not a.get("was_cancelled", False) and a.get("result")
    ]
    if not usable:
        return None
    # ISO 8601 times sort as text; annotations without times keep their order.
    return max(
        enumerate(usable),
        key=lambda item: (
            str(item[1].get("updated_at") or item[1].get("created_at") or ""),
            item[0],
        ),
    )[1]


def _chosen_label(annotation: Mapping[str, Any], from_name: str, where: str) -> str | None:
    results = annotation.get("result")
    if not isinstance(results, list):
        raise LabelImportError(f"{where}: the annotation's `result` is not a list")
    chosen = [r for r in results if isinstance(r, Mapping) and r.get("from_name") == from_name]
    if not chosen:
        return None
    if len(chosen) > 1:
        raise LabelImportError(f"{where}: {len(chosen)} results for control {from_name!r}")
    value = chosen[0].get("value")
    choices = value.get("choices") if isinstance(value, Mapping) else None
    if not isinstance(choices, list) or len(choices) != 1:
        raise LabelImportError(
            f"{where}: control {from_name!r} must hold exactly one choice, got {choices!r}"
        )
    return str(choices[0])


def parse_export(
    tasks: Any, classes: Sequence[str], *, from_name: str, source: str = "export"
) -> ParsedExport:
    """Read the labels out of a Label Studio JSON export, checking every task.

    Per task, the latest annotation that was not cancelled counts (a relabel
    wins); its result for the `from_name` control must choose exactly one of
    `classes`. Tasks without such an annotation are reported as unlabelled.

    Args:
        tasks: the parsed JSON (Label Studio's "JSON" export: a list of tasks).
        classes: the plan's classes.
        from_name: the Choices control that holds the class.
        source: the file name, for messages.

    Raises:
        LabelImportError: not a list of tasks; a task without `data.request_id`
            and `data.index`; a choice that is not exactly one of the classes;
            two tasks giving one image different labels. The message names the task.
    """
    if not isinstance(tasks, list):
        raise LabelImportError(
            f"{source}: expected Label Studio's JSON export (a list of tasks), "
            f"got {type(tasks).__name__}"
        )
    known = set(classes)
    rows: list[dict[str, Any]] = []
    unlabelled: list[str] = []
    seen: dict[Key, tuple[str, str]] = {}
    for position, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            raise LabelImportError(f"{source}: task #{position} is not an object")
        name = _task_name(task, position)
        where = f"{source}: {name}"
        key = task_key(task)
        if key is None:
            raise LabelImportError(
                f"{where}: data.request_id and data.index are required (they key the label "
                "to its logged prediction); was the task created by `flywheel curate`?"
            )
        where = f"{where} (request {key[0]} index {key[1]})"
        annotation = _latest_annotation(task, where)
        label = None if annotation is None else _chosen_label(annotation, from_name, where)
        if label is None:
            unlabelled.append(str(task.get("id", f"#{position}")))
            continue
        if label not in known:
            raise LabelImportError(
                f"{where}: label {label!r} is not one of the classes {list(classes)}"
            )
        if key in seen and seen[key][0] != label:
            raise LabelImportError(
                f"{where}: labels it {label!r}, but {seen[key][1]} labels the same image "
                f"{seen[key][0]!r}"
            )
        if key in seen:
            continue
        seen[key] = (label, name)
        data = task["data"]
        assert annotation is not None  # a label came from it
        rows.append(
            {
                "request_id": key[0],
                "index": key[1],
                "label": label,
                "task_id": str(task.get("id", "")),
                "batch_id": str(data.get("batch_id", "")),
                "image_path": data.get("image_path") or None,
                "annotated_at": str(
                    annotation.get("updated_at") or annotation.get("created_at") or ""
                ),
            }
        )
    labels = pd.DataFrame(rows, columns=list(LABEL_COLUMNS)).astype(
        {"request_id": "str", "index": "int64", "label": "str"}
    )
    return ParsedExport(labels=labels, unlabelled=tuple(unlabelled))


def read_export(path: Location) -> Any:
    """The parsed JSON of an export file (checked by `parse_export`).

    Raises:
        LabelImportError: the file is missing or not JSON.
    """
    return read_json(path, LabelImportError)


@dataclass(frozen=True)
class LabelImport:
    """What `import_labels` did.

    Attributes:
        path: the export file.
        origin: recorded on the rows (`label-studio` or `oracle`).
        labels: the labelled tasks in the file (`LABEL_COLUMNS`).
        written: rows appended to the ground-truth store (new or changed labels).
        unchanged: labels the store already had.
        unlabelled: ids of tasks without a usable annotation.
        file: the ground-truth file written (None when nothing was new).
    """

    path: Location
    origin: str
    labels: pd.DataFrame
    written: int
    unchanged: int
    unlabelled: tuple[str, ...]
    file: Location | None


def import_labels(
    path: Location,
    classes: Sequence[str],
    cfg: LabelConfig,
    *,
    origin: str = ORIGIN_LABEL_STUDIO,
    gt_root: Location | None = None,
) -> LabelImport:
    """Import a Label Studio JSON export into the ground-truth store, all or nothing.

    The whole file is parsed and checked first (`parse_export`); then the
    labels that are new, or differ from the latest label of their image, are
    appended as one file. Re-importing an export writes nothing.

    Args:
        path: the export (JSON).
        classes: the plan's classes.
        cfg: `label` of params.yaml (`from_name`).
        origin: `label-studio` for people's labels, `oracle` for the demo oracle's.
        gt_root: the ground-truth folder (default `<state dir>/ground_truth`).

    Raises:
        LabelImportError: the file is missing or not JSON, or a task is wrong
            (see `parse_export`); nothing is written then.
    """
    path = as_location(path)
    if origin not in LABELLER_ORIGINS:
        raise LabelImportError(f"origin must be one of {list(LABELLER_ORIGINS)}, got {origin!r}")
    parsed = parse_export(read_export(path), classes, from_name=cfg.from_name, source=str(path))
    labels = parsed.labels
    new, file = record_labels(labels, origin=origin, gt_root=gt_root)
    return LabelImport(
        path=path,
        origin=origin,
        labels=labels,
        written=len(new),
        unchanged=len(labels) - len(new),
        unlabelled=parsed.unlabelled,
        file=file,
    )


def record_labels(
    labels: pd.DataFrame, *, origin: str, gt_root: Location | None = None
) -> tuple[pd.DataFrame, Location | None]:
    """Append the labels that are new, or differ from their image's latest label, in one file.

    Args:
        labels: one row per image (`LABEL_COLUMNS`; keys unique).
        origin: recorded on the rows (`label-studio` or `oracle`).
        gt_root: the ground-truth folder (default `<state dir>/ground_truth`).

    Returns:
        The rows written, and the ground-truth file (None when nothing was new).
    """
    existing = latest_per_key(read_ground_truth(gt_root, origins=LABELLER_ORIGINS))
    if not existing.empty and not labels.empty:
        before = labels.merge(
            existing[[*KEY, "label"]].rename(columns={"label": "previous"}), on=KEY, how="left"
        )
        new = labels[(before["previous"] != before["label"]).to_numpy()]
    else:
        new = labels
    return new, write_ground_truth(new.assign(origin=origin), gt_root)


def read_labels(gt_root: Location | None = None) -> pd.DataFrame:
    """The current label of every image a labeller labelled (the latest one per key)."""
    return latest_per_key(read_ground_truth(gt_root, origins=LABELLER_ORIGINS))


# ------------------------------------------------------------------ labeller


class LabelStudioExportLabeler(Labeler):
    """The product labeller: the Label Studio exports that hold queued tasks, imported.

    People label the queued batches in Label Studio and save its "JSON" export
    into the exports folder (`<label dir>/exports/`). The exports there that
    hold a task of a batch in the queue are checked whole (`parse_export`: one
    wrong task and nothing is written), their labels recorded as `import_labels`
    records a file's (`origin="label-studio"`; where two exports label an image,
    the later file name wins; labels recorded before are not written again), and
    the exports copied to `export_dir`. Queued tasks no export labels yet stay
    unlabelled until a later run.

    Args:
        source: the folder of exports (default: `exports_dir(params.label)`).
    """

    def __init__(self, source: Location | None = None) -> None:
        self.source = source

    def label(
        self,
        params: Params,
        queue_dir: Path,
        *,
        export_dir: Path,
        gt_root: Location | None = None,
    ) -> LabelingResult:
        """Import the exports holding tasks of the batches in `queue_dir`.

        Raises:
            LabelImportError: an export in the folder is not JSON, or one holding
                queued tasks has a wrong task (see `parse_export`); nothing is written.
            flywheel.labeling.QueueError: a queue batch is unreadable.
        """
        source = (
            as_location(self.source)
            if self.source is not None
            else exports_dir(params.label, state_url(params.state.url))
        )
        if gt_root is None:
            gt_root = ground_truth_dir(state_url(params.state.url))
        queued = queued_keys(queue_dir)
        exports: list[Location] = []
        parsed: list[pd.DataFrame] = []
        for path in glob(source, "*.json"):
            tasks = read_export(path)
            if _holds_any(tasks, queued):
                exports.append(path)
                parsed.append(
                    parse_export(
                        tasks,
                        params.data.classes,
                        from_name=params.label.from_name,
                        source=str(path),
                    ).labels
                )
        labels = no_labels()
        written = 0
        if parsed:
            every = pd.concat(parsed, ignore_index=True)
            every = every.drop_duplicates(subset=list(KEY), keep="last").reset_index(drop=True)
            new, _ = record_labels(every, origin=ORIGIN_LABEL_STUDIO, gt_root=gt_root)
            written = len(new)
            keys = pd.Series(list(zip(every["request_id"], every["index"], strict=True)))
            labels = every[keys.isin(queued).to_numpy()].reset_index(drop=True)
        export_dir.mkdir(parents=True, exist_ok=True)
        for path in exports:
            copy = export_dir / name(path)
            if not isinstance(path, Path) or path.resolve() != copy.resolve():
                write_bytes(copy, read_bytes(path))
        return LabelingResult(
            labels=labels,
            summary=(
                f"{len(labels)} of {len(queued)} queued tasks labelled in {len(exports)} "
                f"Label Studio exports from {source} ({written} new labels)"
            ),
            exports=tuple(export_dir / name(path) for path in exports),
        )


def _holds_any(tasks: Any, keys: set[Key]) -> bool:
    """Whether an export's tasks include one of `keys`."""
    return isinstance(tasks, list) and any(
        isinstance(task, Mapping) and task_key(task) in keys for task in tasks
    )
