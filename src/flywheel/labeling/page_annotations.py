"""Page annotations read back from Label Studio: pixel boxes with their LaTeX, checked and agreed.

A page annotation is a list of results (`flywheel.labeling.pages`): for each
region a rectangle (`label.from_name`, `rectanglelabels`) and its text
(`latex`, `textarea`), linked by the region `id`. Read from the API (the
tasks as `flywheel.labeling.studio.read_tasks` lists them, which is also the
JSON export's shape) or from a JSON_MIN export, every annotation becomes a
`PageVote`: its regions in whole pixels clipped to the page (`to_pixels`),
each with its transcript in canonical form (`canonical_latex`).

Nothing is dropped in silence. Per task, these are *problems* that hold the
task back (reported, never merged): a rectangle without text, a text without a
rectangle, a box with no area on the page, a transcript using a token outside
`data.pages.vocabulary` (named, with the region), a JSON_MIN record whose
boxes and texts cannot be paired. Skipped (cancelled) annotations never count;
a task without a submitted annotation is *unlabelled* (left for later).

**Agreement.** Several annotators on one page are resolved by
`label.annotators`, each annotator's latest annotation being their vote. Two
votes *agree* when their regions pair up one to one, each pair overlapping
with IoU ≥ `AGREE_IOU` (0.5) and reading the same tokens (`regions_agree`).
Then `latest` takes the newest vote; `unanimous` needs every vote to agree
with the newest; `majority` takes the vote that agrees with the most votes
(itself included) — when two votes that disagree have that same support it is
a tie, and the task is held back. The page's label is the newest vote of the
winning side (its boxes as that annotator drew them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flywheel.data.pages import Region, tokenize
from flywheel.labeling.exports import MIN_META, LabelImportError, _annotator, _key_of, _task_name
from flywheel.labeling.pages import (
    RECTANGLE_TYPE,
    TEXT_CONTROL,
    TEXT_TYPE,
    PixelBox,
    box_iou,
    canonical_latex,
    to_pixels,
)
from flywheel.labeling.queue import Key

AGREE_IOU = 0.5
"""Two annotators' boxes are one region when their IoU is at least this (and the text equal)."""


class PageLabelError(LabelImportError):
    """Page annotations that cannot be used; the message names each task and why."""


@dataclass(frozen=True)
class LabelledRegion:
    """One region an annotator labelled: where (pixels, `PixelBox`) and what (canonical LaTeX)."""

    region_id: str
    box: PixelBox
    latex: str


@dataclass(frozen=True)
class PageVote:
    """One annotator's annotation of one page.

    Attributes:
        task: how messages name the task (`task 12 (request r-1 index 0)`).
        task_id: Label Studio's task id (text).
        key: `(request_id, index)` from the task's data.
        data: the task's data fields.
        annotator: who (text).
        at: when (ISO 8601), the order of a re-annotation.
        order: position in what was read: the tie-break of equal times.
        width, height: the page's size (the rectangles' `original_width/height`).
        regions: the labelled regions, in the annotation's order.
        problems: why this vote cannot be used (empty: it can).
    """

    task: str
    task_id: str
    key: Key
    data: Mapping[str, Any]
    annotator: str
    at: str
    order: int
    width: int
    height: int
    regions: tuple[LabelledRegion, ...]
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class PageLabel:
    """A page's agreed label: the regions of the winning vote, and how many annotators voted."""

    key: Key
    task_id: str
    width: int
    height: int
    regions: tuple[LabelledRegion, ...]
    annotators: int
    annotated_at: str
    data: Mapping[str, Any]

    def to_regions(self, image_id: str) -> list[Region]:
        """The regions as the page dataset writes them (`flywheel.data.pages.Region`),
        in reading order (top to bottom, then left to right)."""
        ordered = sorted(self.regions, key=lambda r: (r.box[1], r.box[0]))
        return [
            Region(image_id, k, x0, y0, x1 - x0, y1 - y0, r.latex)
            for k, (r, (x0, y0, x1, y1)) in enumerate((r, r.box) for r in ordered)
        ]


@dataclass(frozen=True)
class PageLabels:
    """What a read of page tasks yields.

    Attributes:
        labels: one per page whose votes are usable and decided.
        held: one message per task held back (its problems, or annotators the rule
            cannot decide), naming the task.
        unlabelled: ids of tasks without a submitted annotation (none yet, or skipped).
        skipped: skipped (cancelled) annotations seen.
    """

    labels: tuple[PageLabel, ...]
    held: tuple[str, ...]
    unlabelled: tuple[str, ...]
    skipped: int


def read_regions(
    results: Sequence[Any],
    *,
    box_name: str,
    vocabulary: set[str],
    size: tuple[int, int] | None,
) -> tuple[tuple[LabelledRegion, ...], tuple[int, int] | None, list[str]]:
    """The regions of one annotation's results, the page size they give, and their problems.

    Args:
        results: the annotation's `result` list.
        box_name: the rectangles' control (`label.from_name`).
        vocabulary: the plan's tokens.
        size: the page's size when the task's data records it.
    """
    boxes: dict[str, Mapping[str, Any]] = {}
    texts: dict[str, list[Any]] = {}
    order: list[str] = []
    for result in results:
        if not isinstance(result, Mapping):
            continue
        region_id, value = str(result.get("id", "")), result.get("value")
        if not isinstance(value, Mapping):
            continue
        if result.get("type") == RECTANGLE_TYPE and result.get("from_name") == box_name:
            boxes[region_id] = result
        elif result.get("type") == TEXT_TYPE and result.get("from_name") == TEXT_CONTROL:
            texts[region_id] = list(value.get("text") or [])
        else:
            continue
        if region_id not in order:
            order.append(region_id)
    problems: list[str] = []
    regions: list[LabelledRegion] = []
    for region_id in order:
        if region_id not in boxes:
            problems.append(f"region {region_id}: a transcription without a box")
            continue
        rect = boxes[region_id]
        if size is None and rect.get("original_width") and rect.get("original_height"):
            size = (int(rect["original_width"]), int(rect["original_height"]))
        text = [str(t).strip() for t in texts.get(region_id, []) if str(t).strip()]
        if not text:
            problems.append(f"region {region_id}: a box without a transcription")
            continue
        if len(text) > 1:
            problems.append(f"region {region_id}: {len(text)} transcriptions ({text}), not one")
            continue
        found = _region(region_id, rect["value"], text[0], size, vocabulary)
        if isinstance(found, str):
            problems.append(found)
        else:
            regions.append(found)
    return tuple(regions), size, problems


def _region(
    region_id: str,
    value: Mapping[str, Any],
    text: str,
    size: tuple[int, int] | None,
    vocabulary: set[str],
) -> LabelledRegion | str:
    """One region, or the problem that keeps it out."""
    if size is None:
        return f"region {region_id}: the page size is unknown (no original_width/height)"
    try:
        box = to_pixels(value, *size)
    except ValueError as err:
        return f"region {region_id}: {err}"
    if box[2] <= box[0] or box[3] <= box[1]:
        return f"region {region_id}: the box has no area on the page"
    unknown = sorted(set(tokenize(text)) - vocabulary)
    if unknown:
        return (
            f"region {region_id}: the transcription {text!r} uses {unknown}, not in "
            "data.pages.vocabulary"
        )
    return LabelledRegion(region_id, box, canonical_latex(text))


def _data_size(data: Mapping[str, Any]) -> tuple[int, int] | None:
    try:
        return int(data["width"]), int(data["height"])
    except (KeyError, TypeError, ValueError):
        return None


def task_votes(
    task: Mapping[str, Any], position: int, *, box_name: str, vocabulary: set[str], source: str
) -> tuple[list[PageVote], int]:
    """The votes of one task as the API lists it (or the JSON export writes it), and its skips.

    Raises:
        PageLabelError: the task has no `data` with its key.
    """
    name = _task_name(task, position)
    data = task.get("data")
    if not isinstance(data, Mapping):
        raise PageLabelError(f"{source}: {name}: `data` is not an object")
    key = _key_of(data, f"{source}: {name}")
    where = f"{source}: {name} (request {key[0]} index {key[1]})"
    votes: list[PageVote] = []
    skipped = 0
    for number, annotation in enumerate(task.get("annotations") or []):
        if not isinstance(annotation, Mapping):
            continue
        if annotation.get("was_cancelled", False):
            skipped += 1
            continue
        results = annotation.get("result") or []
        regions, size, problems = read_regions(
            results if isinstance(results, list) else [],
            box_name=box_name,
            vocabulary=vocabulary,
            size=_data_size(data),
        )
        votes.append(
            PageVote(
                task=where,
                task_id=str(task.get("id", "")),
                key=key,
                data=data,
                annotator=_annotator(annotation, f"annotation {annotation.get('id', number)}"),
                at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
                order=position * 10_000 + number,
                width=size[0] if size else 0,
                height=size[1] if size else 0,
                regions=regions,
                problems=tuple(problems),
            )
        )
    return votes, skipped


def min_vote(
    record: Mapping[str, Any], position: int, *, box_name: str, vocabulary: set[str], source: str
) -> PageVote:
    """The vote of one JSON_MIN record: its `box_name` list of rectangles, its `latex` texts.

    JSON_MIN drops the region ids: the rectangles and the texts are two lists in
    the annotation's order. They are paired by position when their counts
    agree; otherwise the pairing is unknown and the vote has that problem.
    """
    name = _task_name(record, position)
    key = _key_of(record, f"{source}: {name}")
    data = {k: v for k, v in record.items() if k not in MIN_META}
    rects = record.get(box_name) or []
    texts = record.get(TEXT_CONTROL) or []
    rects = rects if isinstance(rects, list) else [rects]
    texts = texts if isinstance(texts, list) else [texts]
    problems: list[str] = []
    results: list[dict[str, Any]] = []
    if len(rects) != len(texts):
        problems.append(
            f"{len(rects)} boxes but {len(texts)} transcriptions: JSON_MIN does not say which "
            "text is whose box; use the JSON export"
        )
    else:
        for k, (rect, text) in enumerate(zip(rects, texts, strict=True)):
            rect = rect if isinstance(rect, Mapping) else {}
            common = {"id": f"#{k}", "original_width": rect.get("original_width")}
            common["original_height"] = rect.get("original_height")
            results.append({**common, "from_name": box_name, "type": RECTANGLE_TYPE, "value": rect})
            results.append(
                {**common, "from_name": TEXT_CONTROL, "type": TEXT_TYPE, "value": {"text": [text]}}
            )
    regions, size, found = read_regions(
        results, box_name=box_name, vocabulary=vocabulary, size=_data_size(data)
    )
    return PageVote(
        task=f"{source}: {name} (request {key[0]} index {key[1]})",
        task_id=str(record.get("id", "")),
        key=key,
        data=data,
        annotator=_annotator(record, f"annotation {record.get('annotation_id', position)}"),
        at=str(record.get("updated_at") or record.get("created_at") or ""),
        order=position,
        width=size[0] if size else 0,
        height=size[1] if size else 0,
        regions=regions,
        problems=tuple(problems + found),
    )


# ------------------------------------------------------------------ agreement


def regions_agree(
    a: Sequence[LabelledRegion], b: Sequence[LabelledRegion], min_iou: float = AGREE_IOU
) -> bool:
    """Whether two annotations label the same page alike: the regions pair up one to one,
    each pair with IoU ≥ `min_iou` and the same tokens.

    >>> r = LabelledRegion
    >>> regions_agree([r("a", (0, 0, 10, 10), "1")], [r("b", (1, 1, 10, 10), "1")])
    True
    >>> regions_agree([r("a", (0, 0, 10, 10), "1")], [r("b", (1, 1, 10, 10), "7")])
    False
    >>> regions_agree([r("a", (0, 0, 10, 10), "1")], [r("b", (0, 0, 4, 4), "1")])
    False
    """
    if len(a) != len(b):
        return False
    pairs = sorted(
        (
            (box_iou(x.box, y.box), i, j)
            for i, x in enumerate(a)
            for j, y in enumerate(b)
            if tokenize(x.latex) == tokenize(y.latex)
        ),
        reverse=True,
    )
    used_a: set[int] = set()
    used_b: set[int] = set()
    for iou, i, j in pairs:  # greedy by IoU: a page's boxes do not overlap each other
        if iou < min_iou:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
    return len(used_a) == len(a)


def resolve_page_votes(votes: Sequence[PageVote], rule: str) -> PageVote:
    """The vote that labels a page, by `label.annotators` (module docstring: *Agreement*).

    Raises:
        PageLabelError: a counting vote has problems, or the annotators disagree in
            a way the rule refuses; the message names the task.
    """
    latest: dict[str, PageVote] = {}
    for vote in sorted(votes, key=lambda v: (v.at, v.order)):
        latest[vote.annotator] = vote
    final = sorted(latest.values(), key=lambda v: (v.at, v.order))
    newest = final[-1]
    broken = [v for v in final if v.problems]
    if broken:
        said = "; ".join(f"{p} (annotator {v.annotator})" for v in broken for p in v.problems)
        raise PageLabelError(f"{newest.task}: {said}")
    if rule == "latest" or len(final) == 1:
        return newest
    support = {id(v): sum(regions_agree(v.regions, w.regions) for w in final) for v in final}
    if rule == "unanimous":
        if support[id(newest)] != len(final):
            raise PageLabelError(
                f"{newest.task}: the {len(final)} annotators do not agree (regions matched at "
                f"IoU ≥ {AGREE_IOU} with equal text) and label.annotators is unanimous; "
                "resolve it in Label Studio or choose majority or latest"
            )
        return newest
    best = max(support.values())
    top = [v for v in final if support[id(v)] == best]
    if any(not regions_agree(v.regions, top[-1].regions) for v in top):
        raise PageLabelError(
            f"{newest.task}: the {len(final)} annotators are split (each side "
            f"{best} of {len(final)}; regions matched at IoU ≥ {AGREE_IOU} with equal text), "
            "no majority; resolve it in Label Studio (or set label.annotators: latest)"
        )
    return top[-1]


def parse_page_tasks(
    tasks: Any,
    *,
    box_name: str,
    vocabulary: Sequence[str],
    annotators: str = "majority",
    source: str = "export",
    strict: bool = False,
) -> PageLabels:
    """Page labels from the API's task list, a JSON export or a JSON_MIN export.

    Args:
        tasks: the parsed JSON: tasks with `data` and `annotations`, or JSON_MIN records.
        box_name: the rectangles' control (`label.from_name`).
        vocabulary: `data.pages.vocabulary`.
        annotators: `label.annotators`.
        source: names the origin in messages.
        strict: raise on the first read if any task is held back (an export
            imported whole), instead of reporting it.

    Raises:
        PageLabelError: not a list of tasks, or a task without its key; with
            `strict`, any task held back (all named).
    """
    if not isinstance(tasks, list):
        raise PageLabelError(
            f"{source}: expected Label Studio's tasks (a JSON list), got {type(tasks).__name__}"
        )
    known = set(vocabulary)
    is_min = bool(tasks) and all(isinstance(t, Mapping) and "data" not in t for t in tasks)
    by_task: dict[str, list[PageVote]] = {}
    unlabelled: list[str] = []
    skipped = 0
    for position, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            raise PageLabelError(f"{source}: task #{position} is not an object")
        if is_min:
            votes = [min_vote(task, position, box_name=box_name, vocabulary=known, source=source)]
        else:
            votes, cancelled = task_votes(
                task, position, box_name=box_name, vocabulary=known, source=source
            )
            skipped += cancelled
        if not votes:
            unlabelled.append(str(task.get("id", f"#{position}")))
        for vote in votes:
            by_task.setdefault(vote.task, []).append(vote)
    labels: list[PageLabel] = []
    held: list[str] = []
    for votes in by_task.values():
        try:
            vote = resolve_page_votes(votes, annotators)
        except PageLabelError as err:
            held.append(str(err))
            continue
        labels.append(
            PageLabel(
                key=vote.key,
                task_id=vote.task_id,
                width=vote.width,
                height=vote.height,
                regions=vote.regions,
                annotators=len({v.annotator for v in votes}),
                annotated_at=vote.at,
                data=vote.data,
            )
        )
    if strict and held:
        raise PageLabelError(
            f"{source}: {len(held)} page tasks cannot be used, so nothing was read: "
            + " | ".join(held)
        )
    return PageLabels(tuple(labels), tuple(held), tuple(unlabelled), skipped)


__all__ = [
    "AGREE_IOU",
    "LabelledRegion",
    "PageLabel",
    "PageLabelError",
    "PageLabels",
    "PageVote",
    "min_vote",
    "parse_page_tasks",
    "read_regions",
    "regions_agree",
    "resolve_page_votes",
    "task_votes",
]
