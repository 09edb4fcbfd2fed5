"""The data gate's pure parts: derived columns, file checks, share bounds, the derived suite."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from flywheel.config import DataPlan, Strata, ValidationConfig
from flywheel.data.manifest import COLUMNS
from flywheel.validation import (
    FILE_OK,
    Failure,
    FilePlan,
    Offender,
    ValidationReport,
    add_derived_columns,
    build_suite,
    check_file,
    check_image_files,
    class_share_bounds,
    count_by_stratum,
    print_report,
    splits_sharing,
)

PLAN = DataPlan(
    name="unit",
    image_size=8,
    classes=("a", "b"),
    strata=Strata(style=("hand", "print"), noise=("clean",)),
    per_stratum={"train": 4, "val": 0, "test": 2},
)


@pytest.mark.parametrize(
    ("keys", "splits", "expected"),
    [
        (["a", "b"], ["train", "val"], ["train", "val"]),
        (["a", "a"], ["train", "train"], ["train", "train"]),
        (["a", "a", "b"], ["test", "train", "val"], ["train+test", "train+test", "val"]),
        (["a", "a", "a"], ["test", "val", "train"], ["train+val+test"] * 3),
        (["a", "a"], ["train", "holdout"], ["train+holdout", "train+holdout"]),
        ([None, "a"], ["train", "val"], [None, "val"]),
        ([], [], []),
    ],
)
def test_splits_sharing(
    keys: list[str | None], splits: list[str], expected: list[str | None]
) -> None:
    got = splits_sharing(pd.Series(keys, dtype=object), pd.Series(splits, dtype=object))

    assert [None if pd.isna(v) else v for v in got] == expected


def test_splits_sharing_keeps_the_index() -> None:
    index = pd.Index([10, 3, 7])
    got = splits_sharing(
        pd.Series(["k", "k", "j"], index=index), pd.Series(["val", "test", "val"], index=index)
    )

    assert got.to_dict() == {10: "val+test", 3: "val+test", 7: "val"}


@pytest.mark.parametrize(
    ("n_classes", "tolerance", "expected"),
    [
        (10, 0.25, (0.075, 0.125)),
        (2, 0.0, (0.5, 0.5)),
        (4, 1.0, (0.0, 0.5)),
        (1, 0.1, (0.9, 1.1)),
    ],
)
def test_class_share_bounds(
    n_classes: int, tolerance: float, expected: tuple[float, float]
) -> None:
    assert class_share_bounds(n_classes, tolerance) == pytest.approx(expected)


def test_class_share_bounds_needs_a_class() -> None:
    with pytest.raises(ValueError, match="at least one class"):
        class_share_bounds(0, 0.25)


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0]), 200, dtype=np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


GOOD = _png((8, 8))


@pytest.mark.parametrize(
    ("content", "sha256", "size", "expected"),
    [
        (GOOD, hashlib.sha256(GOOD).hexdigest(), (8, 8), FILE_OK),
        (None, "x", (8, 8), "missing"),
        (
            GOOD[:50],
            hashlib.sha256(GOOD[:50]).hexdigest(),
            (8, 8),
            "undecodable: image file is truncated",
        ),
        (b"not an image", "x", (8, 8), "undecodable: not an image file"),
        (GOOD, hashlib.sha256(GOOD).hexdigest(), (8, 9), "size 8x8 != manifest 8x9"),
        (GOOD, "0" * 64, (8, 8), "sha256 mismatch"),
        (GOOD, None, (None, None), FILE_OK),  # unknown manifest values are not compared
    ],
)
def test_check_file(
    tmp_path: Path,
    content: bytes | None,
    sha256: str | None,
    size: tuple[int | None, int | None],
    expected: str,
) -> None:
    path = tmp_path / "image.png"
    if content is not None:
        path.write_bytes(content)

    status = check_file(path, sha256=sha256, width=size[0], height=size[1])

    assert status.startswith(expected)


@pytest.mark.parametrize(
    ("mode", "level", "plan", "expected"),
    [
        ("L", 200, FilePlan(1), FILE_OK),
        ("RGB", 200, FilePlan(3), FILE_OK),
        ("I;16", 4000, FilePlan(1, 4095), FILE_OK),
        ("L", 16, FilePlan(1, 16), FILE_OK),
        ("RGB", 200, FilePlan(1), "channels: RGB image where the plan has grey"),
        ("L", 200, FilePlan(3), "channels: grey (L) image where the plan has RGB"),
        ("I;16", 4000, FilePlan(1), "bit depth: 16-bit image (I;16) where the plan has 8-bit"),
        ("I;16", 4000, FilePlan(3), "channels: 16-bit grey image where the plan has RGB"),
        ("L", 200, FilePlan(1, 4095), "bit depth: 8-bit image where the plan has 16-bit"),
        ("L", 17, FilePlan(1, 16), "levels: a pixel of level 17 is above data.white_level 16"),
    ],
)
def test_files_are_checked_against_the_plans_channels_and_levels(
    tmp_path: Path, mode: str, level: int, plan: FilePlan, expected: str
) -> None:
    path = tmp_path / "image.png"
    Image.new(mode, (8, 8), level if mode != "RGB" else (level, 0, 0)).save(path)

    status = check_file(path, sha256=None, width=8, height=8, plan=plan)

    assert status.startswith(expected), status


def test_a_failed_file_names_the_users_file_it_was_imported_from(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), (9, 0, 0)).save(tmp_path / "a.png")
    manifest = pd.DataFrame(
        {
            "path": ["a.png"],
            "sha256": [None],
            "width": [8],
            "height": [8],
            "group": ["import:train/Grün Äpfel/IMG 1.png"],
        }
    )

    status = check_image_files(tmp_path, manifest, workers=1, progress=False, plan=FilePlan(1))

    assert status[0] == (
        "channels: RGB image where the plan has grey (data.channels: 1) "
        "(imported from train/Grün Äpfel/IMG 1.png)"
    )


def _manifest_with_files(dataset_dir: Path, n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        data = _png((8, 8 + i % 3))  # three sizes, so statuses differ and order shows
        rel = f"images/{i:03d}.png"
        (dataset_dir / "images").mkdir(parents=True, exist_ok=True)
        (dataset_dir / rel).write_bytes(data)
        rows.append(
            {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "width": 8, "height": 8}
        )
    return pd.DataFrame(rows).astype({"width": "Int64", "height": "Int64"})


def test_check_image_files_in_a_pool_matches_in_process(tmp_path: Path) -> None:
    manifest = _manifest_with_files(tmp_path, 30)
    manifest.loc[4, "path"] = "../outside.png"
    manifest.loc[5, "path"] = None
    manifest.index = manifest.index + 100  # results follow the manifest's index

    serial = check_image_files(tmp_path, manifest, workers=1, progress=False)
    pooled = check_image_files(
        tmp_path, manifest, workers=2, chunk_size=4, min_parallel=0, progress=False
    )

    pd.testing.assert_series_equal(serial, pooled)
    assert list(serial.index) == list(manifest.index)
    assert serial[100] == FILE_OK
    assert serial[101] == "size 8x9 != manifest 8x8"
    assert serial[104] == "path outside the dataset folder"
    assert serial[105] == "missing: no path"


def _manifest(rows: list[dict[str, object]]) -> pd.DataFrame:
    base = dict.fromkeys(COLUMNS, "x") | {"width": 8, "height": 8}
    return pd.DataFrame([base | row for row in rows])


def test_add_derived_columns() -> None:
    manifest = _manifest(
        [
            {
                "image_id": "1",
                "split": "train",
                "style": "hand",
                "noise": "clean",
                "sha256": "s1",
                "group": "g1",
            },
            {
                "image_id": "2",
                "split": "test",
                "style": "print",
                "noise": "clean",
                "sha256": "s1",
                "group": "g2",
            },
            {
                "image_id": "3",
                "split": "test",
                "style": None,
                "noise": "clean",
                "sha256": "s3",
                "group": "g2",
            },
        ]
    )
    status = pd.Series(["ok", "missing", "ok"])

    frame = add_derived_columns(manifest, status)

    assert frame["stratum"].tolist()[:2] == ["hand/clean", "print/clean"]
    assert pd.isna(frame["stratum"][2])  # no "None/clean" stratum
    assert frame["sha256_splits"].tolist() == ["train+test", "train+test", "test"]
    assert frame["group_splits"].tolist() == ["train", "test", "test"]
    assert frame["file_status"].tolist() == ["ok", "missing", "ok"]
    assert list(manifest.columns) == list(COLUMNS)  # the input is not modified


def test_add_derived_columns_without_source_columns() -> None:
    manifest = _manifest([{"image_id": "1"}]).drop(columns=["group", "style"])

    frame = add_derived_columns(manifest)

    assert frame["group_splits"].isna().all()
    assert frame["stratum"].isna().all()
    assert "file_status" not in frame


def test_count_by_stratum_lists_planned_strata_with_zeros_first() -> None:
    frame = add_derived_columns(
        _manifest(
            [
                {"split": "train", "style": "print", "noise": "clean"},
                {"split": "train", "style": "print", "noise": "clean"},
                {"split": "test", "style": "fancy", "noise": "clean"},
            ]
        )
    )

    counts = count_by_stratum(frame, PLAN)

    assert list(counts) == ["hand/clean", "print/clean", "fancy/clean"]
    assert counts["hand/clean"] == {"train": 0, "val": 0, "test": 0}
    assert counts["print/clean"] == {"train": 2, "val": 0, "test": 0}
    assert counts["fancy/clean"]["test"] == 1


def _by_type(
    suite_expectations: list[object],
) -> dict[tuple[str, str | None], list[dict[str, object]]]:
    out: dict[tuple[str, str | None], list[dict[str, object]]] = {}
    for expectation in suite_expectations:
        config = expectation.configuration  # type: ignore[attr-defined]
        out.setdefault((config.type, config.kwargs.get("column")), []).append(config.kwargs)
    return out


def test_build_suite_derives_the_contract_from_the_plan() -> None:
    suite = build_suite(PLAN, ValidationConfig(class_balance_tolerance=0.5))
    rules = _by_type(suite.expectations)

    assert suite.name == "unit_contract"
    assert rules[("expect_column_values_to_be_in_set", "label")][0]["value_set"] == ["a", "b"]
    assert rules[("expect_column_values_to_be_in_set", "style")][0]["value_set"] == [
        "hand",
        "print",
    ]
    assert rules[("expect_column_values_to_be_in_set", "width")][0]["value_set"] == [8]
    assert rules[("expect_column_values_to_be_in_set", "file_status")][0]["value_set"] == [FILE_OK]
    for column in COLUMNS:
        assert ("expect_column_values_to_not_be_null", column) in rules
        assert ("expect_column_values_to_be_of_type", column) in rules
    (schema,) = [
        e for e in suite.expectations if e.expectation_type == "expect_table_columns_to_match_set"
    ]
    assert schema.exact_match is True  # type: ignore[attr-defined]
    assert set(schema.column_set) == set(COLUMNS) | {  # type: ignore[attr-defined]
        "stratum",
        "sha256_splits",
        "group_splits",
        "file_status",
    }

    # val plans no images: no count or balance rule for it
    counts = rules[("expect_column_value_counts_to_be_at_least", "stratum")]
    assert [c["min_counts"] for c in counts] == [
        {"hand/clean": 4, "print/clean": 4},
        {"hand/clean": 2, "print/clean": 2},
    ]
    shares = rules[("expect_column_value_shares_to_be_between", "label")]
    assert len(shares) == 2
    assert (shares[0]["min_share"], shares[0]["max_share"]) == pytest.approx((0.25, 0.75))


def test_build_suite_without_file_checks_has_no_file_rule() -> None:
    suite = build_suite(PLAN, ValidationConfig(), check_files=False)
    rules = _by_type(suite.expectations)

    assert ("expect_column_values_to_be_in_set", "file_status") not in rules
    assert "file_status" not in rules[("expect_table_columns_to_match_set", None)][0]["column_set"]


def test_every_rule_says_what_it_checks() -> None:
    suite = build_suite(PLAN, ValidationConfig())

    assert all(e.meta and e.meta.get("rule") for e in suite.expectations)


def _report(failures: list[Failure], **overrides: object) -> ValidationReport:
    fields: dict[str, object] = {
        "dataset_dir": Path("data/digits"),
        "success": not failures,
        "n_rows": 6,
        "n_expectations": 40,
        "failures": failures,
        "counts": {"hand/clean": {"train": 4, "val": 0, "test": 2}},
        "planned": {"train": 4, "val": 0, "test": 2},
        "files_checked": True,
        "data_docs": Path("/tmp/gx/docs/page.html"),
        "elapsed_s": 1.0,
    }
    return ValidationReport(**(fields | overrides))  # type: ignore[arg-type]


def _printed(report: ValidationReport) -> str:
    console = Console(record=True, width=200)
    print_report(report, console)
    return console.export_text()


def test_print_report_shows_each_failure_with_its_rows() -> None:
    failure = Failure(
        expectation="expect_column_values_to_be_in_set",
        column="label",
        rule="label is one of the plan's classes",
        observed="12 of 6000 rows",
        unexpected_count=12,
        offenders=tuple(Offender(f"img-{i}", "7") for i in range(5)),
    )

    text = _printed(_report([failure]))

    assert "FAILED: 39/40" in text
    assert "label is one of the plan's classes" in text
    assert "img-4" in text
    assert "and 7 more rows" in text
    assert "Data Docs: /tmp/gx/docs/page.html" in text


def test_print_report_on_success_shows_counts_and_data_version() -> None:
    text = _printed(_report([], data_version="3f2a9c", files_checked=False))

    assert "PASSED: 40/40" in text
    assert "hand/clean" in text
    assert "train (≥4)" in text
    assert "data version: 3f2a9c" in text
    assert "--no-files" in text
