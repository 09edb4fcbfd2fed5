"""Label Studio's export formats, read as Label Studio writes them, into one list of votes.

Label Studio exports labels in several shapes; each becomes a list of
`Vote`s, one per (task, annotation):

* **JSON** (Export → JSON): a list of tasks, each with `data` and
  `annotations[].result[]` (`from_name`, `type: choices`, `value.choices`);
  before Label Studio 1.0 the list was named `completions`, read the same way.
* **JSON_MIN** (Export → JSON-MIN): one flat object per annotation: the task's
  data fields, `id` (the task), `annotator`, `annotation_id`, `created_at`,
  `updated_at`, and one field per control holding its value (a single choice
  as text).

CSV and TSV exports are refused with a message naming the JSON export: they
flatten the task data into columns and lose types.

Several annotators on one task are resolved by `label.annotators`
(`resolve_votes`): each annotator's latest annotation is their vote; then
`majority` (the default: the most frequent label; a tie is an error),
`unanimous` (any disagreement is an error) or `latest` (the newest vote wins).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flywheel.labeling.queue import Key, task_key

STOCK_CONTROL = "choice"
"""The Choices control's name in Label Studio's stock image-classification template."""

MIN_META = frozenset({"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time"})
"""Fields JSON_MIN adds to a task's data fields (besides the controls)."""

TEXT_EXPORT_SUFFIXES = frozenset({".csv", ".tsv"})
"""Export files in a format flywheel refuses (with a message naming the JSON export)."""

JSON_EXPORT_HINT = (
    "flywheel reads Label Studio's JSON export: in the project, Export → JSON "
    "(or JSON-MIN), then import that file"
)


class LabelImportError(ValueError):
    """A Label Studio export that cannot be imported; the message names the file and the task."""


@dataclass(frozen=True)
class Vote:
    """One annotation of one task: who chose what, when.

    Attributes:
        task: how the task is named in messages (`task 12`).
        task_id: Label Studio's task id (text; '' when absent).
        key: `(request_id, index)` from the task's data.
        data: the task's data fields.
        annotator: who annotated (text; the annotation's own id when unknown).
        at: when (ISO 8601 text; '' when unknown), the order of a relabel.
        choices: control name → the chosen values (a JSON_MIN text value as one).
        order: position in the file, the tie-break of equal times.
    """

    task: str
    task_id: str
    key: Key
    data: Mapping[str, Any]
    annotator: str
    at: str
    choices: Mapping[str, Any]
    order: int


def is_text_export(head: str) -> bool:
    """Whether a file's first line looks like a CSV or TSV header rather than JSON.

    >>> is_text_export("id,image,choice,annotator")
    True
    >>> is_text_export('[{"id": 1}]')
    False
    """
    first = head.lstrip("\ufeff \t\r\n")[:1]
    return bool(head.strip()) and first not in {"[", "{"} and ("," in head or "\t" in head)


def _task_name(task: Mapping[str, Any], position: int) -> str:
    """How a task is named in errors: its id when it has one, else its position."""
    task_id = task.get("id")
    return f"task {task_id}" if task_id is not None else f"task #{position} (no id)"


def _key_of(data: Mapping[str, Any], where: str) -> Key:
    key = task_key({"data": data})
    if key is None:
        raise LabelImportError(
            f"{where}: data.request_id and data.index are required (they key the label "
            "to its logged prediction); was the task created by `flywheel curate`?"
        )
    return key


def _annotator(annotation: Mapping[str, Any], fallback: str) -> str:
    who = annotation.get("completed_by", annotation.get("annotator"))
    if isinstance(who, Mapping):  # some exports expand the user: {"id": 1, "email": ...}
        who = who.get("id", who.get("email"))
    return str(who) if who not in (None, "") else fallback


def _json_votes(task: Mapping[str, Any], position: int, source: str) -> list[Vote]:
    """The votes of one task of a JSON export (`annotations`, or pre-1.0 `completions`)."""
    name = _task_name(task, position)
    data = task.get("data")
    if not isinstance(data, Mapping):
        raise LabelImportError(f"{source}: {name}: `data` is not an object")
    key = _key_of(data, f"{source}: {name}")
    where = f"{source}: {name} (request {key[0]} index {key[1]})"
    annotations = task.get("annotations", task.get("completions")) or []
    if not isinstance(annotations, list):
        raise LabelImportError(f"{where}: `annotations` is not a list")
    votes = []
    for number, annotation in enumerate(annotations):
        if not isinstance(annotation, Mapping) or annotation.get("was_cancelled", False):
            continue
        results = annotation.get("result") or []
        if not isinstance(results, list):
            raise LabelImportError(f"{where}: the annotation's `result` is not a list")
        choices: dict[str, Any] = {}
        for result in results:
            if isinstance(result, Mapping) and result.get("type", "choices") == "choices":
                control = str(result.get("from_name"))
                if control in choices:
                    raise LabelImportError(f"{where}: 2 results for control {control!r}")
                value = result.get("value")
                choices[control] = value.get("choices") if isinstance(value, Mapping) else None
        votes.append(
            Vote(
                task=where,
                task_id=str(task.get("id", "")),
                key=key,
                data=data,
                annotator=_annotator(annotation, f"annotation {annotation.get('id', number)}"),
                at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
                choices=choices,
                order=position * 10_000 + number,
            )
        )
    return votes


def _min_vote(record: Mapping[str, Any], position: int, source: str) -> Vote:
    """The vote of one JSON_MIN record (one annotation, the task's data fields inline)."""
    name = _task_name(record, position)
    key = _key_of(record, f"{source}: {name}")
    data = {k: v for k, v in record.items() if k not in MIN_META}
    return Vote(
        task=f"{source}: {name} (request {key[0]} index {key[1]})",
        task_id=str(record.get("id", "")),
        key=key,
        data=data,
        annotator=_annotator(record, f"annotation {record.get('annotation_id', position)}"),
        at=str(record.get("updated_at") or record.get("created_at") or ""),
        choices={k: v for k, v in data.items() if k not in {"request_id", "index"}},
        order=position,
    )


def export_votes(tasks: Any, source: str) -> tuple[list[Vote], list[str], str]:
    """Every vote in an export, the ids of tasks without any, and the format's name.

    Raises:
        LabelImportError: not a list of objects, or a task without its key.
    """
    if not isinstance(tasks, list):
        raise LabelImportError(
            f"{source}: expected Label Studio's JSON or JSON_MIN export (a list of tasks), "
            f"got {type(tasks).__name__}"
        )
    votes: list[Vote] = []
    empty: list[str] = []
    is_min = bool(tasks) and all(isinstance(t, Mapping) and "data" not in t for t in tasks)
    for position, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            raise LabelImportError(f"{source}: task #{position} is not an object")
        found = (
            [_min_vote(task, position, source)] if is_min else _json_votes(task, position, source)
        )
        if not found:
            empty.append(str(task.get("id", f"#{position}")))
        votes.extend(found)
    return votes, empty, "JSON_MIN" if is_min else "JSON"


def choose_control(votes: Sequence[Vote], from_name: str, source: str, fmt: str) -> str | None:
    """The control that holds the class: `label.from_name`, else the only Choices control.

    In JSON_MIN, where a control's type is not written, the stock template's
    `choice` is the fallback. None: no vote names any control.

    Raises:
        LabelImportError: several Choices controls and none is `label.from_name`.
    """
    seen = sorted({c for v in votes for c in v.choices})
    if from_name in seen:
        return from_name
    if fmt == "JSON_MIN":
        return STOCK_CONTROL if STOCK_CONTROL in seen else None
    if len(seen) == 1:
        return seen[0]
    if seen:
        raise LabelImportError(
            f"{source}: no Choices control named {from_name!r} (label.from_name), and "
            f"several others: {seen}; set label.from_name to the one holding the class"
        )
    return None


def chosen_label(vote: Vote, control: str) -> str | None:
    """The one value `vote` chose for `control`; None when it chose nothing there.

    Raises:
        LabelImportError: not exactly one value.
    """
    if control not in vote.choices:
        return None
    value = vote.choices[control]
    if isinstance(value, Mapping):  # JSON_MIN writes a multiple choice as {"choices": [...]}
        value = value.get("choices")
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or len(value) != 1:
        raise LabelImportError(
            f"{vote.task}: control {control!r} must hold exactly one choice, got {value!r}"
        )
    return str(value[0])


def resolve_votes(labelled: Sequence[tuple[Vote, str]], rule: str) -> tuple[Vote, str]:
    """The label of one task from its annotators' labels, by `label.annotators`.

    Each annotator's latest vote counts; then `latest` takes the newest,
    `majority` the most frequent (a tie is an error), `unanimous` the only one
    (any disagreement is an error).

    Raises:
        LabelImportError: the annotators disagree in a way the rule refuses; names the task.
    """

    def newest(item: tuple[Vote, str]) -> tuple[str, int]:
        return item[0].at, item[0].order

    per_annotator: dict[str, tuple[Vote, str]] = {}
    for item in sorted(labelled, key=newest):
        per_annotator[item[0].annotator] = item
    final = sorted(per_annotator.values(), key=newest)
    if rule == "latest" or len(final) == 1:
        return final[-1]
    counts = Counter(label for _, label in final).most_common()
    said = ", ".join(f"{label!r} ×{n}" for label, n in counts)
    if rule == "unanimous" and len(counts) > 1:
        raise LabelImportError(
            f"{final[-1][0].task}: the annotators disagree ({said}) and label.annotators is "
            "unanimous; resolve it in Label Studio or choose majority or latest"
        )
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        raise LabelImportError(
            f"{final[-1][0].task}: the annotators are split ({said}), no majority; resolve "
            "it in Label Studio (or set label.annotators: latest)"
        )
    winner = counts[0][0]
    return next(item for item in reversed(final) if item[1] == winner)
