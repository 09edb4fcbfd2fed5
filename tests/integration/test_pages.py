"""The page collector, its label formats, the page data gate (real GX) and DVC, on a tiny plan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flywheel.config import Params
from flywheel.data.manifest import sha256_file
from flywheel.data.pages import (
    ANNOTATIONS_NAME,
    LABELS_DIR,
    MANIFEST_NAME,
    load_boxes,
    load_crops,
    load_page_manifest,
    pairwise_iou,
)
from flywheel.demo.pages import collect_pages
from flywheel.validation import ValidationReport, validate_dataset
from tests.support.pages import tiny_page_params, tiny_page_plan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny page plan's dataset, collected once (copy it before changing it)."""
    root = tmp_path_factory.mktemp("pages")
    collect_pages(tiny_page_plan(), root, progress=False)
    return root / "pages"


@pytest.fixture
def dataset(collected: Path, tmp_path: Path) -> Path:
    """A private copy of the collected dataset, free to break."""
    return Path(shutil.copytree(collected, tmp_path / "pages"))


def _validate(dataset_dir: Path, tmp_path: Path) -> ValidationReport:
    return validate_dataset(
        dataset_dir, tiny_page_params(), context_dir=tmp_path / "gx", progress=False
    )


def test_plan_is_met_and_every_label_format_agrees(collected: Path) -> None:
    manifest = load_page_manifest(collected)
    boxes = load_boxes(collected)
    crops = load_crops(collected)

    assert len(manifest) == 8 * 3  # 8 strata, one page per split each
    assert manifest.groupby(["level", "writing", "noise", "split"]).size().eq(1).all()
    assert manifest["n_boxes"].between(2, 4).all()
    assert {k: len(v) for k, v in boxes.items()} == dict(
        zip(manifest["image_id"], manifest["n_boxes"], strict=True)
    )
    assert len(crops) == manifest["n_boxes"].sum()
    for row in manifest.itertuples():
        lines = (collected / LABELS_DIR / f"{row.image_id}.txt").read_text().splitlines()
        assert len(lines) == row.n_boxes
        for line, region in zip(lines, boxes[row.image_id], strict=True):
            _, cx, _, _, h = (float(v) for v in line.split())
            assert cx * row.width == pytest.approx(region.x + region.w / 2, abs=1e-3)
            assert h * row.height == pytest.approx(region.h, abs=1e-3)
        assert sha256_file(collected / row.path) == row.sha256


def test_boxes_are_tight_and_disjoint(collected: Path) -> None:
    manifest = load_page_manifest(collected).set_index("image_id")
    for image_id, regions in load_boxes(collected).items():
        page = np.asarray(Image.open(collected / manifest.loc[image_id, "path"]), dtype=float)
        paper = np.median(page)
        for r in regions:
            inside = page[r.y : r.y + r.h, r.x : r.x + r.w]
            # Ink on each edge of the box: nothing to trim.
            for edge in (inside[0], inside[-1], inside[:, 0], inside[:, -1]):
                assert edge.min() < paper - 30, (image_id, r.region)
        iou = pairwise_iou(np.array([[r.x, r.y, r.w, r.h] for r in regions]))
        assert iou.max() == 0.0, image_id


def test_no_source_glyph_reaches_two_splits(collected: Path) -> None:
    manifest = load_page_manifest(collected)
    owners: dict[str, set[str]] = {}
    for glyphs, split in zip(manifest["glyphs"], manifest["split"], strict=True):
        for glyph in glyphs.split():
            owners.setdefault(glyph, set()).add(split)
    assert owners
    assert all(len(splits) == 1 for splits in owners.values())
    assert any(g.startswith("sklearn_digits:") for g in owners)
    assert any(g.startswith("writer:") for g in owners)
    assert any(g.startswith("mathtext:") for g in owners)


def test_same_seed_same_bytes(collected: Path, tmp_path: Path) -> None:
    collect_pages(tiny_page_plan(), tmp_path, progress=False)
    for name in (MANIFEST_NAME, ANNOTATIONS_NAME, "crops.csv"):
        assert (tmp_path / "pages" / name).read_bytes() == (collected / name).read_bytes()


def test_the_gate_passes_the_collected_pages(collected: Path, tmp_path: Path) -> None:
    report = _validate(collected, tmp_path)
    assert report.success, report.failures
    assert report.data_docs is not None
    assert report.data_docs.is_file()


def _edit_annotation(dataset: Path, **changes: object) -> str:
    """Change the first annotation; returns its box id."""
    path = dataset / ANNOTATIONS_NAME
    doc = json.loads(path.read_text())
    doc["annotations"][0].update(changes)
    path.write_text(json.dumps(doc))
    return str(doc["annotations"][0]["crop_id"])


@pytest.mark.parametrize(
    ("changes", "column", "rule"),
    [
        ({"bbox": [180, 10, 40, 20]}, "inside", "inside its page"),
        ({"bbox": [10, 10, 0, 20]}, "area", "positive area"),
        ({"latex": ""}, "n_tokens", "non-empty"),
        ({"latex": r"\int x"}, "vocabulary_status", "vocabulary"),
    ],
)
def test_the_gate_names_each_bad_box(
    dataset: Path, tmp_path: Path, changes: dict[str, object], column: str, rule: str
) -> None:
    box_id = _edit_annotation(dataset, **changes)

    report = _validate(dataset, tmp_path)

    assert not report.success
    failed = next(f for f in report.failures if f.column == column)
    assert rule in failed.rule
    assert failed.key_name == "box_id"
    assert [o.key for o in failed.offenders] == [box_id]


def test_the_gate_catches_overlapping_boxes(dataset: Path, tmp_path: Path) -> None:
    doc = json.loads((dataset / ANNOTATIONS_NAME).read_text())
    first, second = doc["annotations"][:2]
    assert first["image_id"] == second["image_id"]
    second["bbox"] = first["bbox"]
    (dataset / ANNOTATIONS_NAME).write_text(json.dumps(doc))

    report = _validate(dataset, tmp_path)

    failed = report.failure("expect_column_values_to_be_between", "max_iou")
    assert failed is not None
    assert {o.key for o in failed.offenders} == {first["crop_id"], second["crop_id"]}


def test_the_gate_catches_a_missing_stratum(dataset: Path, tmp_path: Path) -> None:
    manifest = pd.read_csv(dataset / MANIFEST_NAME, dtype=str, keep_default_na=False)
    gone = (manifest["level"] == "high") & (manifest["writing"] == "handwritten")
    gone &= manifest["noise"] == "rotated"
    manifest[~gone].to_csv(dataset / MANIFEST_NAME, index=False)

    report = _validate(dataset, tmp_path)

    assert not report.success
    failed = [f for f in report.failures if f.column == "stratum"]
    assert {f.rule for f in failed} >= {
        "split train: at least 1 pages in every stratum",
        "split train: at least 2 boxes in every stratum",
    }
    assert all(o.key == "high/handwritten/rotated" for f in failed for o in f.offenders)


def test_the_gate_catches_a_glyph_in_two_splits(dataset: Path, tmp_path: Path) -> None:
    manifest = pd.read_csv(dataset / MANIFEST_NAME, dtype=str, keep_default_na=False)
    train_glyph = manifest.loc[manifest["split"] == "train", "glyphs"].iloc[0].split()[0]
    victim = manifest.index[manifest["split"] == "test"][0]
    manifest.loc[victim, "glyphs"] += f" {train_glyph}"
    manifest.to_csv(dataset / MANIFEST_NAME, index=False)

    report = _validate(dataset, tmp_path)

    failed = report.failure("expect_column_values_to_be_in_set", "glyph_splits")
    assert failed is not None
    assert manifest.loc[victim, "image_id"] in {o.key for o in failed.offenders}


def test_the_gate_catches_yolo_labels_that_disagree(dataset: Path, tmp_path: Path) -> None:
    label = next((dataset / LABELS_DIR).glob("*.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")

    report = _validate(dataset, tmp_path)

    failed = report.failure("expect_column_values_to_be_in_set", "labels_status")
    assert failed is not None
    assert [o.key for o in failed.offenders] == [label.stem]


def test_ensure_tracks_pages_in_their_own_pointer(tmp_path: Path) -> None:
    from flywheel.data.versioning import data_version, dvc_file, ensure_dataset, is_clean
    from tests.support.project import make_git_dvc_repo

    repo = make_git_dvc_repo(tmp_path / "repo", remote=tmp_path / "remote")
    plan = Params(data=tiny_page_plan(per_split=1)).data

    how, version = ensure_dataset(plan, repo)
    assert how == "collected"
    assert dvc_file(repo, plan) == repo / "data-pages.dvc"
    assert version == data_version(repo, plan)
    for gone in ("data-pages", ".dvc/cache"):
        shutil.rmtree(repo / gone)
    shutil.rmtree(tmp_path / "remote")

    assert ensure_dataset(plan, repo) == ("regenerated", version)
    assert is_clean(repo, plan)
