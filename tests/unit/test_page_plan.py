"""The page plan's configuration, the page layout's pure helpers, and the expression generators."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.config import DEFAULT_VOCABULARY, ConfigError, load_params
from flywheel.data.pages import (
    Region,
    load_boxes,
    page_manifest_frame,
    pairwise_iou,
    tokenize,
    write_annotations,
    write_yolo_labels,
)
from flywheel.demo.collect import rng_for
from flywheel.demo.pages.expressions import LEVELS, expression, parse
from flywheel.demo.pages.handwriting import TEMPLATES

ROOT = Path(__file__).resolve().parents[2]


def test_page_plan_file_loads_and_digits_plan_is_untouched() -> None:
    pages = load_params(ROOT / "plans" / "pages.yaml")
    digits = load_params(ROOT / "params.yaml")

    assert pages.data.pages is not None
    assert pages.data.is_pages
    assert pages.data.pages.strata.level == ("elementary", "middle", "high")
    assert pages.data.generator == "flywheel.demo.pages:collect_pages"
    assert str(pages.data.root) == "data-pages"
    assert digits.data.pages is None
    assert not digits.data.is_pages


def test_page_plan_round_trips_through_its_dump() -> None:
    """Pipelines pass params as `model_dump` JSON: a dumped page plan must load again."""
    from flywheel.config import parse_params

    params = load_params(ROOT / "plans" / "pages.yaml")
    assert parse_params(json.loads(json.dumps(params.model_dump(mode="json")))) == params


@pytest.mark.parametrize(
    ("key", "value"),
    [("data.classes", ["1", "2"]), ("data.strata", {"style": ["a"], "noise": ["b"]})],
)
def test_digit_keys_beside_pages_are_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match="takes no digits keys"):
        load_params(ROOT / "plans" / "pages.yaml", {key: value})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("data.pages.expressions", [4, 2], "low <= high"),
        ("data.pages.vocabulary", ["x", "x"], "distinct"),
        ("data.pages.strata.level", [], "non-empty"),
        ("data.pages.max_iou", 1.5, "less than 1"),
        ("data.pages.colour", "red", "Extra inputs"),
    ],
)
def test_bad_page_plans_fail_at_load(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_params(ROOT / "plans" / "pages.yaml", {key: value})


@pytest.mark.parametrize(
    ("latex", "tokens"),
    [
        ("12+7=19", ["1", "2", "+", "7", "=", "1", "9"]),
        (r"8\times3", ["8", r"\times", "3"]),
        (r"\sqrt{x}", [r"\sqrt", "{", "x", "}"]),
        ("", []),
    ],
)
def test_tokenize(latex: str, tokens: list[str]) -> None:
    assert tokenize(latex) == tokens


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        ([[0, 0, 10, 10], [10, 0, 10, 10]], 0.0),  # touching is not overlapping
        ([[0, 0, 10, 10], [0, 0, 10, 10]], 1.0),
        ([[0, 0, 10, 10], [5, 0, 10, 10]], 1 / 3),
    ],
)
def test_pairwise_iou(boxes: list[list[int]], expected: float) -> None:
    assert pairwise_iou(np.array(boxes))[0, 1] == pytest.approx(expected)


@pytest.mark.parametrize("level", LEVELS)
def test_every_expression_parses_and_uses_the_default_vocabulary(level: str) -> None:
    drawable = {*TEMPLATES, *(str(d) for d in range(10)), "^", "{", "}", r"\frac", r"\sqrt"}
    for i in range(300):
        latex = expression(level, rng_for(0, "test", level, i))
        assert " " not in latex
        assert set(tokenize(latex)) <= set(DEFAULT_VOCABULARY), latex
        assert set(tokenize(latex)) <= drawable, latex
        assert parse(latex), latex


def test_coco_and_yolo_written_from_one_set_of_regions(tmp_path: Path) -> None:
    manifest = page_manifest_frame(
        [
            {"image_id": n, "path": f"images/train/{n}.png", "split": "train", "level": "high",
             "writing": "printed", "noise": "clean", "sha256": n, "width": 100, "height": 50,
             "n_boxes": k, "glyphs": "mathtext:cm"}
            for n, k in (("b", 0), ("a", 2))
        ]
    )  # fmt: skip
    regions = [Region("a", 1, 50, 10, 20, 10, "x"), Region("a", 0, 0, 0, 10, 10, r"\frac{1}{2}")]

    write_annotations(manifest, regions, tmp_path)
    write_yolo_labels(manifest, regions, tmp_path)
    doc = json.loads((tmp_path / "annotations.json").read_text())

    assert doc["categories"] == [{"id": 1, "name": "formula"}]
    assert [a["bbox"] for a in doc["annotations"]] == [[0, 0, 10, 10], [50, 10, 20, 10]]
    assert load_boxes(tmp_path) == {"a": sorted(regions, key=lambda r: r.region), "b": []}
    assert (tmp_path / "labels" / "a.txt").read_text().splitlines() == [
        "0 0.050000 0.100000 0.100000 0.200000",
        "0 0.600000 0.300000 0.200000 0.200000",
    ]
    assert (tmp_path / "labels" / "b.txt").read_text() == ""
    assert isinstance(manifest, pd.DataFrame)
