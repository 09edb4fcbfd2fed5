"""Page labelling without a server: coordinates, tasks, annotations read back, agreement, cost."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from flywheel.config import Params, parse_params
from flywheel.labeling.page_annotations import (
    LabelledRegion,
    PageLabelError,
    parse_page_tasks,
    regions_agree,
)
from flywheel.labeling.pages import (
    PagePrediction,
    PredictedRegion,
    canonical_latex,
    page_cost,
    page_task,
    region_results,
    to_percent,
    to_pixels,
)
from flywheel.labeling.studio import label_interface
from tests.support.pages import tiny_page_params

VOCABULARY = tiny_page_params().data.pages.vocabulary  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("box", "width", "height"),
    [
        ((0, 0, 1, 1), 1, 1),
        ((3, 7, 50, 19), 192, 192),
        ((0, 0, 256, 256), 256, 256),
        ((17, 101, 230, 133), 257, 199),  # odd sizes: percentages that do not terminate
        ((1, 1, 2, 2), 3, 7),
    ],
)
def test_pixels_to_percent_and_back_is_the_identity(
    box: tuple[int, int, int, int], width: int, height: int
) -> None:
    assert to_pixels(to_percent(box, width, height), width, height) == box


def test_round_trip_over_random_boxes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        width, height = (int(v) for v in rng.integers(1, 2000, size=2))
        x0, x1 = sorted(int(v) for v in rng.integers(0, width + 1, size=2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height + 1, size=2))
        box = (x0, y0, x1, y1)
        assert to_pixels(to_percent(box, width, height), width, height) == box


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"x": -5, "y": -5, "width": 20, "height": 20}, (0, 0, 15, 15)),  # clipped at 0
        ({"x": 95, "y": 95, "width": 20, "height": 20}, (95, 95, 100, 100)),  # and at the side
        ({"x": 10.004, "y": 10.006, "width": 0.5, "height": 0.49}, (10, 10, 11, 10)),  # rounded
        ({"x": 50, "y": 10, "width": 10, "height": 20, "rotation": 180}, (40, 0, 50, 10)),
    ],
)
def test_to_pixels_rounds_clips_and_unrotates(
    value: dict[str, float], expected: tuple[int, int, int, int]
) -> None:
    assert to_pixels(value, 100, 100) == expected


def test_to_pixels_refuses_a_value_without_coordinates() -> None:
    with pytest.raises(ValueError, match="not a rectangle"):
        to_pixels({"x": 1, "y": 2, "width": "wide"}, 10, 10)


def test_canonical_latex_drops_spaces_but_keeps_a_command_apart() -> None:
    assert canonical_latex(" x ^ {2} + 3 x ") == "x^{2}+3x"
    assert canonical_latex("2 \\times x") == "2\\times x"


def _prediction(*regions: tuple[tuple[int, int, int, int], str, float, float]) -> PagePrediction:
    return PagePrediction(
        request_id="req-1",
        index=0,
        width=200,
        height=100,
        regions=tuple(PredictedRegion(box, s, text, c) for box, text, s, c in regions),
        detector_version="3",
        recognizer_version="7",
        image_path="/served/req-1.png",
    )


def test_a_page_task_pre_annotates_each_region_as_a_rectangle_and_its_text() -> None:
    task = page_task(
        _prediction(((20, 10, 60, 30), "1+2", 0.9, 0.5), ((100, 50, 180, 70), "x^{2}", 0.8, 1.0)),
        batch_id="b1",
    )
    assert task["data"]["request_id"] == "req-1"
    assert task["data"]["index"] == 0
    assert task["data"]["image_path"] == "/served/req-1.png"
    (prediction,) = task["predictions"]
    assert prediction["score"] == pytest.approx((0.9 * 0.5 + 0.8 * 1.0) / 2)
    assert prediction["model_version"] == "detector 3 + recognizer 7"
    results = prediction["result"]
    assert [(r["id"], r["type"]) for r in results] == [
        ("r00", "rectanglelabels"),
        ("r00", "textarea"),
        ("r01", "rectanglelabels"),
        ("r01", "textarea"),
    ]
    first = results[0]
    assert (first["original_width"], first["original_height"]) == (200, 100)
    assert first["value"] == {
        "x": 10.0,
        "y": 10.0,
        "width": 20.0,
        "height": 20.0,
        "rotation": 0,
        "rectanglelabels": ["formula"],
    }
    assert results[3]["value"]["text"] == ["x^{2}"]
    # What the annotator would submit unchanged reads back as the prediction.
    labels = parse_page_tasks(
        [{**task, "id": 1, "annotations": [{"id": 1, "result": results}]}],
        box_name="label",
        vocabulary=VOCABULARY,
    )
    (label,) = labels.labels
    assert [(r.box, r.latex) for r in label.regions] == [
        ((20, 10, 60, 30), "1+2"),
        ((100, 50, 180, 70), "x^{2}"),
    ]


def _results(*regions: tuple[str, tuple[int, int, int, int], str | None]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for region_id, box, text in regions:
        pair = region_results(
            region_id, box, text or "", 100, 100, box_name="label", to_name="image"
        )
        out += pair if text is not None else pair[:1]
    return out


def _task(task_id: int, *annotations: tuple[str, list[dict[str, Any]] | None]) -> dict[str, Any]:
    """A task as the API lists it; an annotation of None results is a skip."""
    return {
        "id": task_id,
        "data": {"request_id": f"req-{task_id}", "index": 0, "width": 100, "height": 100},
        "annotations": [
            {
                "id": k,
                "completed_by": who,
                "result": result or [],
                "was_cancelled": result is None,
                "updated_at": f"2026-12-07T10:00:0{k}Z",
            }
            for k, (who, result) in enumerate(annotations)
        ],
    }


def _parse(*tasks: dict[str, Any], rule: str = "majority", strict: bool = False) -> Any:
    return parse_page_tasks(
        list(tasks), box_name="label", vocabulary=VOCABULARY, annotators=rule, strict=strict
    )


def test_an_unknown_token_is_an_error_naming_the_task_and_the_token() -> None:
    bad = _task(7, ("1", _results(("a", (10, 10, 40, 20), "\\alpha+1"))))
    good = _task(8, ("1", _results(("a", (10, 10, 40, 20), "1+1"))))
    read = _parse(bad, good)
    assert [label.key for label in read.labels] == [("req-8", 0)]
    (held,) = read.held
    assert "task 7" in held
    assert "req-7" in held
    assert "\\\\alpha" in held
    assert "data.pages.vocabulary" in held
    with pytest.raises(PageLabelError, match=r"task 7 .*alpha"):
        _parse(bad, good, strict=True)


def test_a_box_without_text_and_a_text_without_a_box_are_reported() -> None:
    text_only = region_results(
        "c", (50, 50, 70, 60), "2", 100, 100, box_name="label", to_name="image"
    )
    task = _task(3, ("1", _results(("a", (10, 10, 40, 20), None)) + text_only[1:]))
    (held,) = _parse(task).held
    assert "region a: a box without a transcription" in held
    assert "region c: a transcription without a box" in held


def test_skipped_and_unannotated_tasks_never_become_labels() -> None:
    read = _parse(_task(1, ("1", None)), _task(2))
    assert read.labels == ()
    assert read.held == ()
    assert read.unlabelled == ("1", "2")
    assert read.skipped == 1


R = LabelledRegion


@pytest.mark.parametrize(
    ("a", "b", "agree"),
    [
        ([R("a", (0, 0, 10, 10), "1")], [R("b", (0, 0, 10, 10), "1")], True),
        ([R("a", (0, 0, 10, 10), "1")], [R("b", (2, 2, 10, 10), "1")], True),  # IoU 0.64
        ([R("a", (0, 0, 10, 10), "1")], [R("b", (5, 0, 15, 10), "1")], False),  # IoU 1/3
        ([R("a", (0, 0, 10, 10), "x+1")], [R("b", (0, 0, 10, 10), "x + 1")], True),  # tokens
        ([R("a", (0, 0, 10, 10), "1")], [R("b", (0, 0, 10, 10), "7")], False),
        ([R("a", (0, 0, 10, 10), "1")], [], False),  # a region missed
        (
            [R("a", (0, 0, 10, 10), "1"), R("b", (20, 0, 30, 10), "2")],
            [R("c", (20, 0, 30, 10), "2"), R("d", (0, 0, 10, 10), "1")],
            True,  # order does not matter
        ),
        ([], [], True),
    ],
)
def test_agreement_is_a_one_to_one_match_at_iou_half_with_equal_text(
    a: list[LabelledRegion], b: list[LabelledRegion], agree: bool
) -> None:
    assert regions_agree(a, b) is agree
    assert regions_agree(b, a) is agree


ONE = _results(("a", (10, 10, 40, 20), "1+2"))
ONE_MOVED = _results(("z", (11, 11, 41, 21), "1+2"))  # the same region, drawn again
OTHER = _results(("a", (10, 10, 40, 20), "1+3"))


@pytest.mark.parametrize(
    ("rule", "annotations", "outcome"),
    [
        ("majority", [("1", ONE), ("2", ONE_MOVED)], "z"),  # agree: the newest of them
        ("majority", [("1", ONE), ("2", OTHER), ("3", ONE_MOVED)], "z"),  # 2:1
        ("majority", [("1", OTHER), ("2", ONE), ("3", ONE_MOVED)], "z"),
        ("majority", [("1", ONE), ("2", OTHER)], "split"),  # 1:1, a tie
        ("unanimous", [("1", ONE), ("2", ONE_MOVED)], "z"),
        ("unanimous", [("1", ONE), ("2", OTHER), ("3", ONE_MOVED)], "do not agree"),
        ("latest", [("1", ONE), ("2", OTHER)], "a"),
        ("majority", [("1", OTHER), ("1", ONE)], "a"),  # one annotator's latest is their vote
    ],
)
def test_several_annotators_are_resolved_by_the_rule(
    rule: str, annotations: list[tuple[str, list[dict[str, Any]]]], outcome: str
) -> None:
    read = _parse(_task(5, *annotations), rule=rule)
    if len(outcome) == 1:
        (label,) = read.labels
        assert [r.region_id for r in label.regions] == [outcome]
        assert label.annotators == len({who for who, _ in annotations})
    else:
        assert read.labels == ()
        (held,) = read.held
        assert outcome in held
        assert "task 5" in held


def test_json_min_pairs_boxes_and_texts_by_position_only_when_the_counts_agree() -> None:
    rect = {"x": 10, "y": 10, "width": 30, "height": 10, "rotation": 0}
    rect |= {"rectanglelabels": ["formula"], "original_width": 100, "original_height": 100}
    paired = {"id": 1, "request_id": "req-1", "index": 0, "label": [rect], "latex": ["x^{2}"]}
    unpaired = {"id": 2, "request_id": "req-2", "index": 0, "label": [rect], "latex": []}
    read = _parse(paired, unpaired)
    (label,) = read.labels
    assert [(r.box, r.latex) for r in label.regions] == [((10, 10, 40, 20), "x^{2}")]
    (held,) = read.held
    assert "task 2" in held
    assert "use the JSON export" in held


def test_a_page_costs_its_boxes_and_transcriptions() -> None:
    params = parse_params({"curate": {"cost": {"prices": {"box": 0.5, "transcription": 1.0}}}})
    spend = page_cost([3, 0, 2], params)
    assert (spend.pages, spend.boxes, spend.transcriptions) == (3, 5, 5)
    assert spend.spend == pytest.approx(7.5)
    without = parse_params({"curate": {"cost": {"prices": {"choice": 0.1}}}})
    with pytest.raises(KeyError, match="box, transcription"):
        page_cost([1], without)


def test_the_interface_follows_the_plan() -> None:
    pages = label_interface(tiny_page_params())
    assert '<RectangleLabels name="label" toName="image"' in pages
    assert '<TextArea name="latex" toName="image" perRegion="true"' in pages
    assert "\\frac" in pages  # the vocabulary, as the placeholder
    digits = label_interface(Params())
    assert "<Choices" in digits
    assert "RectangleLabels" not in digits
