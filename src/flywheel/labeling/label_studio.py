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

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from xml.sax.saxutils import quoteattr

import pandas as pd

from flywheel.config import LabelConfig, Params, nfc
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
from flywheel.labeling.exports import (
    JSON_EXPORT_HINT,
    TEXT_EXPORT_SUFFIXES,
    LabelImportError,
    Vote,
    choose_control,
    chosen_label,
    export_votes,
    is_text_export,
    resolve_votes,
)
from flywheel.labeling.queue import (
    Key,
    exports_dir,
    logged_keys,
    queued_keys,
    read_json,
    task_key,
)
from flywheel.storage import (
    Location,
    as_location,
    glob,
    is_file,
    name,
    read_bytes,
    state_url,
    write_bytes,
)


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
        control: the Choices control the labels were read from (None: none found).
        format: `JSON` (also pre-1.0 `completions`) or `JSON_MIN`.
    """

    labels: pd.DataFrame
    unlabelled: tuple[str, ...] = ()
    control: str | None = None
    format: str = "JSON"

    def no_label_reason(self, classes: Sequence[str], from_name: str) -> str:
        """Why the export yields no label: empty, nothing annotated, or no choice of a class."""
        if not self.unlabelled:
            return "it holds no task"
        if self.control is None:
            return (
                f"none of its {len(self.unlabelled)} tasks has an annotation choosing a class "
                f"with the control {from_name!r} (label.from_name) or any Choices control; "
                "were they labelled (and submitted, not skipped) in Label Studio?"
            )
        return (
            f"none of its {len(self.unlabelled)} tasks has an annotation choosing one of "
            f"{list(classes)} with the control {self.control!r}"
        )


def parse_export(
    tasks: Any,
    classes: Sequence[str],
    *,
    from_name: str,
    source: str = "export",
    annotators: str = "majority",
    served: Collection[Key] | None = None,
) -> ParsedExport:
    """Read the labels out of a Label Studio JSON or JSON_MIN export, checking every task.

    The class is the choice of the `from_name` control, else of the export's
    only Choices control (Label Studio's stock template names it `choice`).
    Cancelled annotations do not count; several annotators on one task are
    resolved by `annotators` (`flywheel.labeling.exports.resolve_votes`).
    Labels are compared with the classes in Unicode NFC. Tasks without a
    usable annotation are reported as unlabelled.

    Args:
        tasks: the parsed JSON (a list of tasks, or of JSON_MIN records).
        classes: the plan's classes.
        from_name: the Choices control that holds the class (`label.from_name`).
        source: the file name, for messages.
        annotators: `label.annotators`: majority, unanimous or latest.
        served: the keys that were served (queued or logged); a label for any
            other is refused. None: not checked.

    Raises:
        LabelImportError: not a list of tasks; a task without `data.request_id`
            and `data.index`; a choice that is not exactly one of the classes;
            annotators the rule refuses; a request never served; two tasks
            giving one image different labels. The message names the task.
    """
    votes, unlabelled, fmt = export_votes(tasks, source)
    control = choose_control(votes, from_name, source, fmt)
    by_task: dict[str, list[tuple[Vote, str]]] = {}
    order: list[str] = []
    for vote in votes:
        label = chosen_label(vote, control) if control is not None else None
        if vote.task not in by_task:
            by_task[vote.task] = []
            order.append(vote.task)
        if label is not None:
            by_task[vote.task].append((vote, nfc(label)))
    known = set(classes)
    rows: list[dict[str, Any]] = []
    seen: dict[Key, tuple[str, str]] = {}
    unserved: list[str] = []
    for task in order:
        if not by_task[task]:
            first = next(v for v in votes if v.task == task)
            unlabelled.append(first.task_id or task)
            continue
        vote, label = resolve_votes(by_task[task], annotators)
        if label not in known:
            raise LabelImportError(
                f"{task}: label {label!r} is not one of the classes {list(classes)}"
            )
        if served is not None and vote.key not in served:
            unserved.append(f"{vote.key[0]}#{vote.key[1]}")
        if vote.key in seen and seen[vote.key][0] != label:
            raise LabelImportError(
                f"{task}: labels it {label!r}, but {seen[vote.key][1]} labels the same image "
                f"{seen[vote.key][0]!r}"
            )
        if vote.key in seen:
            continue
        seen[vote.key] = (label, task.removeprefix(f"{source}: ").split(" (request")[0])
        rows.append(_label_row(vote, label))
    if unserved:
        raise LabelImportError(
            f"{source}: {len(unserved)} labels are for requests that were never served "
            f"(in no labelling-queue batch and not in the prediction log), e.g. "
            f"{', '.join(unserved[:5])}; was the export made from another project or machine?"
        )
    labels = pd.DataFrame(rows, columns=list(LABEL_COLUMNS)).astype(
        {"request_id": "str", "index": "int64", "label": "str"}
    )
    return ParsedExport(
        labels=labels, unlabelled=tuple(dict.fromkeys(unlabelled)), control=control, format=fmt
    )


def _label_row(vote: Vote, label: str) -> dict[str, Any]:
    """A labels-table row (`LABEL_COLUMNS`) of the vote that decided a task."""
    return {
        "request_id": vote.key[0],
        "index": vote.key[1],
        "label": label,
        "task_id": vote.task_id,
        "batch_id": str(vote.data.get("batch_id", "")),
        "image_path": vote.data.get("image_path") or None,
        "annotated_at": vote.at,
    }


def read_export(path: Location) -> Any:
    """The parsed JSON of an export file (checked by `parse_export`): the one read of an export.

    Raises:
        LabelImportError: the file is missing or not JSON; a CSV or TSV export is
            refused with a message naming the JSON export.
    """
    suffix = PurePosixPath(name(path)).suffix.lower()
    if suffix in TEXT_EXPORT_SUFFIXES:
        raise LabelImportError(
            f"{path}: a {suffix.lstrip('.').upper()} export cannot be imported; {JSON_EXPORT_HINT}"
        )
    try:
        return read_json(path, LabelImportError)
    except LabelImportError:
        if is_file(as_location(path)) and is_text_export(_first_line(path)):
            raise LabelImportError(
                f"{path}: looks like a CSV or TSV export, not JSON; {JSON_EXPORT_HINT}"
            ) from None
        raise


def _first_line(path: Location) -> str:
    return read_bytes(as_location(path))[:4096].decode("utf-8", errors="replace").split("\n")[0]


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
    served: Collection[Key] | None,
    origin: str = ORIGIN_LABEL_STUDIO,
    gt_root: Location | None = None,
    allow_empty: bool = False,
) -> LabelImport:
    """Import a Label Studio JSON or JSON_MIN export into the ground-truth store, all or nothing.

    The whole file is parsed and checked first (`parse_export`); then the
    labels that are new, or differ from the latest label of their image, are
    appended as one file. Re-importing an export writes nothing.

    Args:
        path: the export (JSON or JSON_MIN).
        classes: the plan's classes.
        cfg: `label` of params.yaml (`from_name`, `annotators`).
        served: the keys that were served (`flywheel.labeling.served_keys`): a
            label for any other request is refused. None: not checked.
        origin: `label-studio` for people's labels, `oracle` for the demo oracle's.
        gt_root: the ground-truth folder (default `<state dir>/ground_truth`).
        allow_empty: accept an export that yields no label (else an error saying why).

    Raises:
        LabelImportError: the file is missing, not JSON (a CSV export is named as
            such), yields no label, or a task is wrong (see `parse_export`);
            nothing is written then.
    """
    path = as_location(path)
    if origin not in LABELLER_ORIGINS:
        raise LabelImportError(f"origin must be one of {list(LABELLER_ORIGINS)}, got {origin!r}")
    parsed = parse_export(
        read_export(path),
        classes,
        from_name=cfg.from_name,
        source=str(path),
        annotators=cfg.annotators,
        served=served,
    )
    labels = parsed.labels
    if labels.empty and not allow_empty:
        raise LabelImportError(
            f"{path}: no label to import: {parsed.no_label_reason(classes, cfg.from_name)}"
        )
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

    People label the queued batches in Label Studio and save its JSON (or
    JSON_MIN) export into the exports folder (`<label dir>/exports/`). The exports there that
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
        source = self._source(params)
        if gt_root is None:
            gt_root = ground_truth_dir(state_url(params.state.url))
        queued = queued_keys(queue_dir)
        exports, parsed = self._read_exports(params, source, queued)
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
                + _text_exports_note(source)
            ),
            exports=tuple(export_dir / name(path) for path in exports),
        )

    def completed(
        self, params: Params, queue_dir: Location, *, gt_root: Location | None = None
    ) -> set[Key]:
        """The queued tasks labelled in a saved export or the ground-truth store.

        Raises:
            LabelImportError: an export holding queued tasks has a wrong task.
        """
        queued = queued_keys(queue_dir)
        _, parsed = self._read_exports(params, self._source(params), queued)
        exported = {
            (str(r), int(i))
            for frame in parsed
            for r, i in zip(frame["request_id"], frame["index"], strict=True)
        }
        return (exported & queued) | super().completed(params, queue_dir, gt_root=gt_root)

    def _source(self, params: Params) -> Location:
        """The folder of exports."""
        if self.source is not None:
            return as_location(self.source)
        return exports_dir(params.label, state_url(params.state.url))

    def _read_exports(
        self, params: Params, source: Location, queued: set[Key]
    ) -> tuple[list[Location], list[pd.DataFrame]]:
        """The exports holding a queued task, and their labels, each checked whole."""
        from flywheel.monitoring.prediction_log import predictions_dir

        served = queued | logged_keys(predictions_dir(params))
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
                        annotators=params.label.annotators,
                        served=served,
                    ).labels
                )
        return exports, parsed


def _holds_any(tasks: Any, keys: set[Key]) -> bool:
    """Whether an export's tasks include one of `keys`."""
    return isinstance(tasks, list) and any(
        isinstance(task, Mapping) and (task_key(task) or task_key({"data": task})) in keys
        for task in tasks
    )


def _text_exports_note(source: Location) -> str:
    """A warning for CSV/TSV exports in the exports folder, which are not read."""
    ignored = sorted(name(p) for suffix in TEXT_EXPORT_SUFFIXES for p in glob(source, f"*{suffix}"))
    if not ignored:
        return ""
    return (
        f"; ignored {len(ignored)} CSV/TSV exports ({', '.join(ignored[:3])}): {JSON_EXPORT_HINT}"
    )
