"""Stage 10 (first half): the labelling queue and labels, in Label Studio's JSON formats.

The queue is a folder of batches, `<label dir>/queue/<batch-id>.json`, each a
list of Label Studio *tasks* ready for its import: `data.image` is a URL Label
Studio can serve (local-files storage by default), `data.request_id` and
`data.index` key the task to its logged prediction, and the model's answer
rides along as a *prediction* (a pre-annotation a labeller confirms or fixes).
`label_config_xml` is the matching labelling interface: one single-choice
control over the plan's classes.

Labels come back as a Label Studio JSON export (`import_labels`): a list of
tasks whose `annotations[].result[].value.choices` hold the class. The whole
file is checked before anything is written — a label outside the classes, a
task without its key, two tasks giving one image different labels are errors
that name the task — and the labels are appended to the ground-truth store
(`flywheel.labeling.ground_truth`) in one file. Importing the same export twice writes
nothing the second time.

For the demo, `label_with_oracle` answers the queue from the traffic
simulator's hidden truth and writes a Label Studio export, which then goes
through `import_labels` exactly as a person's export would.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import pandas as pd

from flywheel.config import LabelConfig, Params
from flywheel.env import state_dir
from flywheel.labeling.ground_truth import (
    KEY,
    LABELLER_ORIGINS,
    ORIGIN_LABEL_STUDIO,
    ORIGIN_ORACLE,
    ORIGIN_SIMULATOR,
    latest_per_key,
    read_ground_truth,
    write_ground_truth,
)

QUEUE_DIR = "queue"
EXPORTS_DIR = "exports"
LABEL_CONFIG_NAME = "label_config.xml"
ORACLE_USER = 0
"""`completed_by` of the oracle's annotations (Label Studio user ids start at 1)."""

LABEL_COLUMNS: tuple[str, ...] = (
    "request_id",
    "index",
    "label",
    "task_id",
    "batch_id",
    "image_path",
    "annotated_at",
)
"""Columns `parse_export` returns, one row per labelled task."""

Key = tuple[str, int]


class LabelImportError(ValueError):
    """A Label Studio export that cannot be imported; the message names the file and the task."""


class QueueError(ValueError):
    """A labelling-queue batch that is missing or unreadable."""


# ------------------------------------------------------------------ folders


def labeling_dir(cfg: LabelConfig) -> Path:
    """`label.dir`, or `<state dir>/labeling`: holds `queue/`, `exports/`, `label_config.xml`."""
    return cfg.dir if cfg.dir is not None else state_dir() / "labeling"


def queue_dir(cfg: LabelConfig) -> Path:
    """Where curation writes the batches Label Studio imports."""
    return labeling_dir(cfg) / QUEUE_DIR


def exports_dir(cfg: LabelConfig) -> Path:
    """Where the oracle writes its Label Studio exports."""
    return labeling_dir(cfg) / EXPORTS_DIR


def write_json_atomic(path: Path, value: Any) -> Path:
    """Write JSON to `path` whole or not at all (a temporary sibling, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(value, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------- Label Studio formats


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


def task_key(task: Mapping[str, Any]) -> Key | None:
    """`(request_id, index)` of a task's `data`, None when either is missing or malformed."""
    data = task.get("data")
    if not isinstance(data, Mapping):
        return None
    request_id, index = data.get("request_id"), data.get("index")
    if not isinstance(request_id, str) or not request_id:
        return None
    if isinstance(index, bool) or not isinstance(index, int | str):
        return None
    try:
        return request_id, int(index)
    except ValueError:
        return None


# -------------------------------------------------------------------- queue


def read_batch(path: Path) -> list[dict[str, Any]]:
    """The tasks of one queue batch.

    Raises:
        QueueError: the file is missing, not JSON, or not a list of tasks with keys.
    """
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QueueError(f"{path}: no such queue batch") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise QueueError(f"{path}: not a JSON file: {err}") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise QueueError(f"{path}: a queue batch is a JSON list of Label Studio tasks")
    for position, task in enumerate(tasks):
        if task_key(task) is None:
            raise QueueError(f"{path}: task {position} has no data.request_id / data.index")
    return tasks


def queue_batches(folder: Path, batch: str | None = None) -> list[Path]:
    """The batch files of a queue folder, oldest first; with `batch`, only that one.

    Raises:
        QueueError: `batch` names no file in the folder.
    """
    folder = Path(folder)
    if batch is not None:
        path = folder / (batch if batch.endswith(".json") else f"{batch}.json")
        if not path.is_file():
            known = [p.stem for p in sorted(folder.glob("*.json"))]
            raise QueueError(f"no queue batch {batch!r} in {folder}; batches: {known or 'none'}")
        return [path]
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def queued_keys(folder: Path) -> set[Key]:
    """Every `(request_id, index)` already in a queue batch of `folder`."""
    keys: set[Key] = set()
    for path in queue_batches(folder):
        keys.update(k for k in map(task_key, read_batch(path)) if k is not None)
    return keys


def labelled_keys(gt_root: Path | None = None) -> set[Key]:
    """Every `(request_id, index)` a labeller (person or oracle) has labelled."""
    labels = read_ground_truth(gt_root, origins=LABELLER_ORIGINS)
    return {(str(r), int(i)) for r, i in zip(labels["request_id"], labels["index"], strict=True)}


# ------------------------------------------------------------------- import


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

    path: Path
    origin: str
    labels: pd.DataFrame
    written: int
    unchanged: int
    unlabelled: tuple[str, ...]
    file: Path | None


def import_labels(
    path: Path,
    classes: Sequence[str],
    cfg: LabelConfig,
    *,
    origin: str = ORIGIN_LABEL_STUDIO,
    gt_root: Path | None = None,
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
    path = Path(path)
    if origin not in LABELLER_ORIGINS:
        raise LabelImportError(f"origin must be one of {list(LABELLER_ORIGINS)}, got {origin!r}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelImportError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LabelImportError(f"{path}: not a JSON file: {err}") from None
    parsed = parse_export(raw, classes, from_name=cfg.from_name, source=str(path))
    labels = parsed.labels
    existing = latest_per_key(read_ground_truth(gt_root, origins=LABELLER_ORIGINS))
    if not existing.empty and not labels.empty:
        before = labels.merge(
            existing[[*KEY, "label"]].rename(columns={"label": "previous"}), on=KEY, how="left"
        )
        new = labels[(before["previous"] != before["label"]).to_numpy()]
    else:
        new = labels
    file = write_ground_truth(new.assign(origin=origin), gt_root)
    return LabelImport(
        path=path,
        origin=origin,
        labels=labels,
        written=len(new),
        unchanged=len(labels) - len(new),
        unlabelled=parsed.unlabelled,
        file=file,
    )


def read_labels(gt_root: Path | None = None) -> pd.DataFrame:
    """The current label of every image a labeller labelled (the latest one per key)."""
    return latest_per_key(read_ground_truth(gt_root, origins=LABELLER_ORIGINS))


# ------------------------------------------------------------------- oracle


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

    batches: tuple[Path, ...]
    export: Path | None
    tasks: int
    answered: int
    imported: LabelImport | None = None
    unanswered: tuple[str, ...] = field(default=())


def label_with_oracle(
    params: Params,
    *,
    batch: str | None = None,
    queue: Path | None = None,
    export_dir: Path | None = None,
    gt_root: Path | None = None,
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
    batches = queue_batches(queue if queue is not None else queue_dir(cfg), batch)
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
    simulated = latest_per_key(read_ground_truth(gt_root, origins=[ORIGIN_SIMULATOR]))
    truth = {
        (str(r), int(i)): str(label)
        for r, i, label in zip(
            simulated["request_id"], simulated["index"], simulated["label"], strict=True
        )
    }
    now = datetime.now(UTC)
    export_tasks, answered = answer_tasks(
        pending,
        truth,
        from_name=cfg.from_name,
        to_name=cfg.to_name,
        answered_at=now.isoformat(timespec="microseconds"),
    )
    name = batch.removesuffix(".json") if batch else "queue"
    folder = export_dir if export_dir is not None else exports_dir(cfg)
    export = write_json_atomic(folder / f"{name}-oracle-{now:%Y%m%dT%H%M%S%fZ}.json", export_tasks)
    imported = import_labels(
        export, params.data.classes, cfg, origin=ORIGIN_ORACLE, gt_root=gt_root
    )
    return OracleResult(
        batches=tuple(batches),
        export=export,
        tasks=len(pending),
        answered=answered,
        imported=imported,
        unanswered=imported.unlabelled,
    )
