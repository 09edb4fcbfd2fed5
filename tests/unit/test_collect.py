"""The demo collector: the plan fulfilled exactly, deterministically, without leakage."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import SOURCE_POOLS, DataPlan, Scenario
from flywheel.data.files import DatasetWriteError, staged_dir
from flywheel.data.manifest import COLUMNS, load_manifest, sha256_file, stratum
from flywheel.demo.collect import (
    CollectError,
    allocate_counts,
    assign_groups,
    collect_batch,
    collect_dataset,
    scenario_mix,
)
from flywheel.demo.render import PRINTED_FONTS, GlyphLibrary

PER_STRATUM = {"train": 20, "val": 10, "test": 10}
TINY = DataPlan(name="tiny", seed=7, per_stratum=PER_STRATUM)
SHIFTED = Scenario(
    mix={"handwritten/shadow": 0.45, "handwritten/rotated": 0.45, "printed/clean": 0.1},
    severity={"shadow": 1.6, "rotated": 1.6},
)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("data")
    return root / TINY.name, collect_dataset(TINY, root, progress=False)


@pytest.fixture(scope="module")
def library() -> GlyphLibrary:
    return GlyphLibrary.load(TINY.classes)


def test_same_seed_gives_byte_identical_files(
    dataset: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    folder, _ = dataset
    again = collect_dataset(TINY, tmp_path, progress=False)
    first, second = _files(folder), _files(tmp_path / TINY.name)
    assert len(first) == len(again) + 1  # every image and the manifest
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_another_seed_gives_other_images(
    dataset: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    _, manifest = dataset
    other = collect_dataset(TINY.model_copy(update={"seed": 8}), tmp_path, progress=False)
    assert set(other["sha256"]).isdisjoint(manifest["sha256"])


def test_every_stratum_gets_its_planned_count_with_balanced_classes(
    dataset: tuple[Path, pd.DataFrame],
) -> None:
    _, manifest = dataset
    counts = manifest.groupby([stratum(manifest), "split"]).size()
    expected = {(s, split): n for s in TINY.strata.names() for split, n in PER_STRATUM.items()}
    assert counts.to_dict() == expected
    per_class = manifest.groupby([stratum(manifest), "split", "label"]).size().unstack("label")
    assert list(per_class.columns) == list(TINY.classes)
    for (_, split), row in per_class.iterrows():
        assert set(row) == {PER_STRATUM[split] // len(TINY.classes)}


def test_no_glyph_and_no_image_is_shared_between_splits(dataset: tuple[Path, pd.DataFrame]) -> None:
    _, manifest = dataset
    for column in ("group", "sha256"):
        splits_per_value = manifest.groupby(column)["split"].nunique()
        assert splits_per_value.max() == 1, splits_per_value[splits_per_value > 1].head()
    assert manifest["sha256"].is_unique  # not even within a split


def test_a_stratum_uses_distinct_glyphs_while_its_pool_lasts(
    dataset: tuple[Path, pd.DataFrame],
) -> None:
    _, manifest = dataset
    handwritten = manifest[manifest["style"] == "handwritten"]
    # 2 images per class and stratum in train: the pools (~100 scans per class) suffice.
    repeats = handwritten.groupby(["split", "noise", "label"])["group"].agg(
        lambda g: g.duplicated().sum()
    )
    assert repeats.sum() == 0


def test_manifest_matches_the_files(dataset: tuple[Path, pd.DataFrame]) -> None:
    folder, manifest = dataset
    on_disk = load_manifest(folder)
    assert list(on_disk.columns) == list(COLUMNS)
    pd.testing.assert_frame_equal(on_disk.astype(manifest.dtypes.to_dict()), manifest)
    assert manifest["image_id"].is_unique
    assert set(manifest["source"]) == {"sklearn_digits", "font"}
    assert (manifest["source"] == "font").eq(manifest["style"] == "printed").all()
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == sorted(
        manifest["path"]
    )
    for row in manifest.itertuples():
        assert row.path == f"images/{row.split}/{row.label}/{row.image_id}.png"
        assert sha256_file(folder / row.path) == row.sha256
        with Image.open(folder / row.path) as image:
            image.load()
            assert (image.format, image.mode, image.size) == ("PNG", "L", (32, 32))
        assert (row.width, row.height) == (32, 32)


def test_groups_are_cut_by_the_shares_and_do_not_depend_on_counts(library: GlyphLibrary) -> None:
    pools = assign_groups(TINY, library)
    bigger = assign_groups(
        TINY.model_copy(update={"per_stratum": {"train": 500, "val": 1, "test": 0}}), library
    )
    assert pools == bigger
    for style in TINY.strata.style:
        for label in TINY.classes:
            cells = [pools[(pool, style, label)] for pool in SOURCE_POOLS]
            groups = [g.group for cell in cells for g in cell]
            assert len(groups) == len(set(groups))  # disjoint
            assert sorted(groups) == sorted(g.group for g in library.glyphs(style, label))
            for pool, cell in zip(SOURCE_POOLS, cells, strict=True):
                share = TINY.source_shares[pool]
                assert abs(len(cell) - share * len(groups)) <= 1
    assert len(pools[("production", "printed", "3")]) == round(0.1 * len(PRINTED_FONTS))


def test_batches_come_from_the_production_pool_only(
    dataset: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    _, manifest = dataset
    batch = collect_batch(TINY, Scenario(), 200, seed=1, out_dir=tmp_path / "batch")
    assert set(batch["group"]).isdisjoint(manifest["group"])
    assert set(batch["sha256"]).isdisjoint(manifest["sha256"])
    assert set(batch["split"]) == {"production"}
    assert set(batch["label"]) <= set(TINY.classes)
    assert len(set(batch["label"])) == len(TINY.classes)
    assert stratum(batch).value_counts().to_dict() == dict.fromkeys(TINY.strata.names(), 25)
    assert load_manifest(tmp_path / "batch")["image_id"].tolist() == batch["image_id"].tolist()
    for row in batch.itertuples():
        assert sha256_file(tmp_path / "batch" / row.path) == row.sha256


def test_batch_follows_the_scenario_mix(tmp_path: Path) -> None:
    batch = collect_batch(TINY, SHIFTED, 60, seed=3, out_dir=tmp_path)
    counts = stratum(batch).value_counts().to_dict()
    assert counts == {"handwritten/shadow": 27, "handwritten/rotated": 27, "printed/clean": 6}
    # Interleaved like traffic, not sorted by stratum.
    assert stratum(batch).iloc[:20].nunique() > 1


def test_batch_is_deterministic_per_seed(tmp_path: Path) -> None:
    one = collect_batch(TINY, SHIFTED, 30, seed=5, out_dir=tmp_path / "a")
    two = collect_batch(TINY, SHIFTED, 30, seed=5, out_dir=tmp_path / "b")
    other = collect_batch(TINY, SHIFTED, 30, seed=6, out_dir=tmp_path / "c")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    pd.testing.assert_frame_equal(one, two)
    assert set(one["sha256"]).isdisjoint(other["sha256"])


def test_severity_changes_only_the_noise_it_names(tmp_path: Path) -> None:
    mix = Scenario(mix={"handwritten/rotated": 1, "printed/clean": 1, "printed/blur": 1})
    harsher = mix.model_copy(update={"severity": {"rotated": 2.5}})
    base = collect_batch(TINY, mix, 30, seed=9, out_dir=tmp_path / "base")
    drifted = collect_batch(TINY, harsher, 30, seed=9, out_dir=tmp_path / "drifted")
    assert base["image_id"].tolist() == drifted["image_id"].tolist()
    changed = base["sha256"] != drifted["sha256"]
    assert changed.eq(base["noise"] == "rotated").all()
    one = np.asarray(Image.open(tmp_path / "base" / base["path"].iloc[0]), dtype=np.int16)
    assert one.shape == (32, 32)


@pytest.mark.parametrize(
    ("weights", "n", "expected"),
    [
        ({"a": 1.0}, 7, {"a": 7}),
        ({"a": 0.5, "b": 0.25, "c": 0.25}, 10, {"a": 5, "b": 3, "c": 2}),
        ({"a": 1.0, "b": 1.0, "c": 1.0}, 10, {"a": 4, "b": 3, "c": 3}),
        ({"a": 0.9, "b": 0.1, "c": 0.0}, 3, {"a": 3, "b": 0, "c": 0}),
        ({"a": 0.45, "b": 0.45, "c": 0.1}, 0, {"a": 0, "b": 0, "c": 0}),
    ],
)
def test_allocate_counts(weights: dict[str, float], n: int, expected: dict[str, int]) -> None:
    assert allocate_counts(weights, n) == expected


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        (Scenario(mix={"printed/fog": 1.0}), r"unknown strata \['printed/fog'\]"),
        (Scenario(mix={"printed/blur": -1.0, "printed/clean": 2.0}), "must be >= 0"),
        (Scenario(mix={"printed/blur": 0.0}), "sum to more than 0"),
        (Scenario(severity={"fog": 2.0}), r"unknown noise \['fog'\]"),
        (Scenario(severity={"blur": -1.0}), r"negative for \['blur'\]"),
    ],
)
def test_bad_scenarios_are_rejected(scenario: Scenario, message: str, tmp_path: Path) -> None:
    with pytest.raises(CollectError, match=message):
        collect_batch(TINY, scenario, 5, seed=0, out_dir=tmp_path / "batch")
    assert not (tmp_path / "batch").exists()


def test_plan_mix_is_uniform_over_strata() -> None:
    mix = scenario_mix(TINY, Scenario())
    assert list(mix) == TINY.strata.names()
    assert set(mix.values()) == {1 / 8}


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"classes": ("0", "x")}, r"classes \['x'\] are not among"),
        (
            {"strata": {"style": ("printed",), "noise": ("clean", "fog")}},
            r"unknown noise \['fog'\]",
        ),
        (
            {"source_shares": {"train": 0.6, "val": 0.01, "test": 0.29, "production": 0.1}},
            r"'val' pool no printed glyphs",
        ),
        ({"name": "../escape"}, "plain folder name"),
    ],
)
def test_impossible_plans_fail_clearly(
    update: dict[str, object], message: str, tmp_path: Path
) -> None:
    plan = DataPlan.model_validate({**TINY.model_dump(), **update})
    with pytest.raises(CollectError, match=message):
        collect_dataset(plan, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_recollecting_replaces_the_dataset_and_leaves_nothing_else(tmp_path: Path) -> None:
    small = TINY.model_copy(update={"per_stratum": {"train": 10, "val": 10, "test": 10}})
    collect_dataset(TINY, tmp_path, progress=False)
    (tmp_path / ".tiny.partial-killed").mkdir()  # what a killed run leaves behind
    manifest = collect_dataset(small, tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]
    assert len(list((tmp_path / "tiny").rglob("*.png"))) == len(manifest) == 8 * 30


def test_a_folder_flywheel_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    target = tmp_path / "tiny"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(DatasetWriteError, match=r"holds \['notes.txt'\].*not replaced"):
        collect_dataset(TINY, tmp_path, progress=False)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_a_failed_write_leaves_the_old_dataset_untouched(tmp_path: Path) -> None:
    target = tmp_path / "set"
    with staged_dir(target) as stage:
        (stage / "manifest.csv").write_text("old\n")

    def write_then_die() -> None:
        with staged_dir(target) as stage:
            (stage / "manifest.csv").write_text("new\n")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_then_die()
    assert (target / "manifest.csv").read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_cli_collect_prints_the_counts_table(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  name: cli\n  per_stratum: {train: 10, val: 10, test: 10}\n")
    root = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["data", "collect", "--params", str(params), "--set", f"data.root={root}"]
    )
    assert result.exit_code == 0, result.output
    assert "collected 240 images" in result.output
    assert "printed/rotated" in result.output
    assert Counter(load_manifest(root / "cli")["split"]) == {"train": 80, "val": 80, "test": 80}


def test_cli_collect_reports_a_bad_plan_without_a_traceback(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  root: {tmp_path}\n  classes: ['0', 'A']\n")
    result = CliRunner().invoke(app, ["data", "collect", "--params", str(params)])
    assert result.exit_code == 2
    assert "classes ['A'] are not among" in result.output
    assert "Traceback" not in result.output
