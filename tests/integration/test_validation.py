"""The data gate with real Great Expectations: a clean dataset passes, each defect fails by name.

Every test runs the real suite through a real file-backed GX context in a temp
folder, on a small hand-made dataset (36 tiny PNGs and their manifest) that
meets its plan exactly; each defect is injected into a fresh copy.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from flywheel.config import SPLITS, DataPlan, Params, Strata, ValidationConfig
from flywheel.data.manifest import ManifestError, load_manifest, save_manifest, sha256_file
from flywheel.validation import ValidationReport, validate_dataset

pytestmark = pytest.mark.slow

PLAN = DataPlan(
    name="tiny",
    image_size=16,
    classes=("0", "1", "2"),
    strata=Strata(style=("handwritten", "printed"), noise=("clean", "blur")),
    per_stratum={"train": 3, "val": 3, "test": 3},
)
PARAMS = Params(
    data=PLAN, validation=ValidationConfig(class_balance_tolerance=0.3, failed_rows_shown=5)
)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path)


def _write_dataset(dataset_dir: Path, plan: DataPlan) -> pd.DataFrame:
    """One image per split × stratum × class: exactly the plan's counts, classes even."""
    rng = np.random.default_rng(0)
    rows = []
    for split in SPLITS:
        for style in plan.strata.style:
            for noise in plan.strata.noise:
                for label in plan.classes:
                    image_id = f"{split}-{style}-{noise}-{label}"
                    rel = f"images/{split}/{image_id}.png"
                    size = plan.image_size
                    _write_png(
                        dataset_dir / rel, rng.integers(0, 256, (size, size), dtype=np.uint8)
                    )
                    rows.append(
                        {
                            "image_id": image_id,
                            "path": rel,
                            "label": label,
                            "split": split,
                            "style": style,
                            "noise": noise,
                            "source": "handmade",
                            "group": f"glyph-{image_id}",
                            "sha256": sha256_file(dataset_dir / rel),
                            "width": size,
                            "height": size,
                        }
                    )
    manifest = pd.DataFrame(rows)
    save_manifest(manifest, dataset_dir)
    return manifest


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset_dir = tmp_path_factory.mktemp("clean") / "tiny"
    _write_dataset(dataset_dir, PLAN)
    return dataset_dir


@pytest.fixture
def dataset(clean_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the clean dataset, free to damage."""
    return Path(shutil.copytree(clean_dataset, tmp_path / "tiny"))


def _validate(dataset_dir: Path, tmp_path: Path, **kwargs: object) -> ValidationReport:
    return validate_dataset(
        dataset_dir,
        PARAMS,
        context_dir=tmp_path / "gx",
        progress=False,
        **kwargs,  # type: ignore[arg-type]
    )


def _failed(report: ValidationReport) -> set[tuple[str, str | None]]:
    return {(f.expectation, f.column) for f in report.failures}


def test_clean_dataset_passes_and_writes_data_docs(dataset: Path, tmp_path: Path) -> None:
    report = _validate(dataset, tmp_path)

    assert report.success, report.failures
    assert report.failures == []
    assert report.n_rows == 36
    assert report.n_expectations > 30
    assert report.files_checked
    assert report.counts["handwritten/clean"] == {"train": 3, "val": 3, "test": 3}
    assert report.planned == {"train": 3, "val": 3, "test": 3}
    assert report.data_docs is not None
    assert report.data_docs.is_file()
    assert report.data_docs.suffix == ".html"
    assert report.data_docs.is_relative_to(tmp_path / "gx")


def test_validation_makes_no_network_call(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[object] = []

    def refuse(sock: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError(f"network call during validation: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)

    report = _validate(dataset, tmp_path)

    assert report.success
    assert attempts == []


def test_rerun_in_the_same_context_reuses_it(dataset: Path, tmp_path: Path) -> None:
    first = _validate(dataset, tmp_path)
    second = _validate(dataset, tmp_path)

    assert first.success
    assert second.success
    assert first.data_docs != second.data_docs  # one page per validation run
    assert first.data_docs is not None
    assert first.data_docs.is_file()


# --------------------------------------------------------------------------- defects

Defect = Callable[[Path, pd.DataFrame], pd.DataFrame]


def _truncate_png(dataset_dir: Path, m: pd.DataFrame) -> pd.DataFrame:
    path = dataset_dir / m.loc[m.image_id == "train-printed-clean-1", "path"].item()
    path.write_bytes(path.read_bytes()[:60])
    return m


def _unknown_label(dataset_dir: Path, m: pd.DataFrame) -> pd.DataFrame:
    m.loc[m.image_id == "val-handwritten-blur-2", "label"] = "7"
    return m


def _duplicate_across_splits(dataset_dir: Path, m: pd.DataFrame) -> pd.DataFrame:
    """The test image test-printed-blur-0 is replaced by the bytes of a training image."""
    source = m.image_id == "train-printed-blur-0"
    target = m.image_id == "test-printed-blur-0"
    shutil.copyfile(
        dataset_dir / m.loc[source, "path"].item(), dataset_dir / m.loc[target, "path"].item()
    )
    m.loc[target, "sha256"] = m.loc[source, "sha256"].item()
    return m


def _glyph_across_splits(dataset_dir: Path, m: pd.DataFrame) -> pd.DataFrame:
    m.loc[m.image_id == "test-handwritten-clean-1", "group"] = "glyph-train-handwritten-clean-1"
    return m


def _missing_stratum(dataset_dir: Path, m: pd.DataFrame) -> pd.DataFrame:
    gone = (m.split == "val") & (m["style"] == "printed") & (m.noise == "blur")
    for rel in m.loc[gone, "path"]:
        (dataset_dir / rel).unlink()
    return m[~gone]


def _wrong_image_size(dataset_dir: Path, m: pd.DataFrame) -> pd.DataFrame:
    """A consistent row and file, but 12×12 where the plan says 16×16."""
    row = m.image_id == "train-handwritten-clean-0"
    path = dataset_dir / m.loc[row, "path"].item()
    _write_png(path, np.zeros((12, 12), dtype=np.uint8))
    m.loc[row, ["width", "height", "sha256"]] = [12, 12, sha256_file(path)]
    return m


def _file_not_manifest_size(dataset_dir: Path, m: pd.DataFrame) -> pd.DataFrame:
    path = dataset_dir / m.loc[m.image_id == "val-printed-clean-2", "path"].item()
    _write_png(path, np.zeros((16, 12), dtype=np.uint8))
    return m


def _missing_file(dataset_dir: Path, m: pd.DataFrame) -> pd.DataFrame:
    (dataset_dir / m.loc[m.image_id == "test-printed-clean-0", "path"].item()).unlink()
    return m


def _class_imbalance(dataset_dir: Path, m: pd.DataFrame) -> pd.DataFrame:
    m.loc[(m.split == "train") & (m.label == "2"), "label"] = "0"
    return m


def _null_stratum_value(dataset_dir: Path, m: pd.DataFrame) -> pd.DataFrame:
    m.loc[m.image_id == "train-handwritten-blur-1", "noise"] = None
    return m


IN_SET = "expect_column_values_to_be_in_set"
COUNTS = "expect_column_value_counts_to_be_at_least"
SHARES = "expect_column_value_shares_to_be_between"
UNIQUE = "expect_column_values_to_be_unique"


@pytest.mark.parametrize(
    ("defect", "failed", "key", "value"),
    [
        pytest.param(
            _truncate_png,
            {(IN_SET, "file_status")},
            "train-printed-clean-1",
            "undecodable",
            id="truncated-png",
        ),
        pytest.param(
            _unknown_label, {(IN_SET, "label")}, "val-handwritten-blur-2", "7", id="unknown-label"
        ),
        pytest.param(
            _duplicate_across_splits,
            {(IN_SET, "sha256_splits"), (UNIQUE, "sha256")},
            "test-printed-blur-0",
            "train+test",
            id="duplicate-image-across-splits",
        ),
        pytest.param(
            _glyph_across_splits,
            {(IN_SET, "group_splits")},
            "test-handwritten-clean-1",
            "train+test",
            id="glyph-across-splits",
        ),
        pytest.param(
            _missing_stratum, {(COUNTS, "stratum")}, "printed/blur", 0, id="missing-stratum"
        ),
        pytest.param(
            _wrong_image_size,
            {(IN_SET, "width"), (IN_SET, "height")},
            "train-handwritten-clean-0",
            12,
            id="wrong-image-size",
        ),
        pytest.param(
            _file_not_manifest_size,
            {(IN_SET, "file_status")},
            "val-printed-clean-2",
            "size 12x16 != manifest 16x16",
            id="file-size-differs-from-manifest",
        ),
        pytest.param(
            _missing_file,
            {(IN_SET, "file_status")},
            "test-printed-clean-0",
            "missing",
            id="missing-file",
        ),
        pytest.param(_class_imbalance, {(SHARES, "label")}, "2", 0.0, id="class-imbalance"),
        pytest.param(
            _null_stratum_value,
            {("expect_column_values_to_not_be_null", "noise"), (COUNTS, "stratum")},
            "train-handwritten-blur-1",
            None,
            id="null-noise",
        ),
    ],
)
def test_each_defect_fails_its_own_expectation(
    dataset: Path,
    tmp_path: Path,
    defect: Defect,
    failed: set[tuple[str, str]],
    key: str,
    value: object,
) -> None:
    save_manifest(defect(dataset, load_manifest(dataset)), dataset)

    report = _validate(dataset, tmp_path)

    assert not report.success
    assert _failed(report) == failed
    # the first expected failure names the offending row (or stratum/class) and its bad value
    named = {o.key: o.value for f in report.failures for o in f.offenders}
    assert key in named, report.failures
    if isinstance(value, str):
        assert str(named[key]).startswith(value)
    else:
        assert named[key] == value


def test_only_production_rows_may_hold_the_unknown_stratum(dataset: Path, tmp_path: Path) -> None:
    """`production/production` is the stratum of labelled traffic nobody stratified."""
    manifest = load_manifest(dataset)
    row = manifest.image_id == "train-handwritten-clean-0"
    manifest.loc[row, ["style", "noise"]] = ["production", "production"]
    save_manifest(manifest, dataset)

    collected = _validate(dataset, tmp_path)

    assert {(IN_SET, "style"), (IN_SET, "noise")} <= _failed(collected)
    named = {o.key: o.value for f in collected.failures for o in f.offenders}
    assert named["train-handwritten-clean-0"] == "production"

    manifest.loc[row, "source"] = "production"
    save_manifest(manifest, dataset)

    merged = _validate(dataset, tmp_path)

    assert not {(IN_SET, "style"), (IN_SET, "noise")} & _failed(merged)


def test_missing_stratum_is_named_per_split(dataset: Path, tmp_path: Path) -> None:
    save_manifest(_missing_stratum(dataset, load_manifest(dataset)), dataset)

    report = _validate(dataset, tmp_path)

    failure = report.failure(COUNTS)
    assert failure is not None
    assert failure.rule == "split val: at least 3 images in every stratum"
    assert failure.observed["printed/blur"] == 0
    assert report.counts["printed/blur"] == {"train": 3, "val": 0, "test": 3}


def test_data_docs_name_the_offending_rows(dataset: Path, tmp_path: Path) -> None:
    save_manifest(_unknown_label(dataset, load_manifest(dataset)), dataset)

    report = _validate(dataset, tmp_path)

    assert report.data_docs is not None
    html = report.data_docs.read_text()
    assert "val-handwritten-blur-2" in html


def test_extra_column_fails_the_schema(dataset: Path, tmp_path: Path) -> None:
    manifest = load_manifest(dataset).assign(comment="hand-made")
    manifest.to_csv(dataset / "manifest.csv", index=False)

    report = _validate(dataset, tmp_path)

    assert _failed(report) == {("expect_table_columns_to_match_set", None)}
    failure = report.failures[0]
    assert [(o.key, o.value) for o in failure.offenders] == [("comment", "unexpected")]


def test_without_file_checks_the_files_are_not_opened(dataset: Path, tmp_path: Path) -> None:
    save_manifest(_truncate_png(dataset, load_manifest(dataset)), dataset)

    report = _validate(dataset, tmp_path, check_files=False)

    assert report.success
    assert not report.files_checked
    assert "files" not in report.timings


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda d: None, "no manifest", id="missing"),
        pytest.param(
            lambda d: (d / "manifest.csv").write_bytes(b"\xff\xfe\x00garbage\x00\xff"),
            "not a readable CSV",
            id="not-a-csv",
        ),
    ],
)
def test_unreadable_manifest_is_a_clear_error(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    dataset_dir = tmp_path / "empty"
    dataset_dir.mkdir()
    make(dataset_dir)

    with pytest.raises(ManifestError, match=message) as err:
        _validate(dataset_dir, tmp_path)

    assert str(dataset_dir / "manifest.csv") in str(err.value)


def test_a_freshly_collected_dataset_passes(tmp_path: Path) -> None:
    from flywheel.demo.collect import collect_dataset

    plan = DataPlan(
        name="collected",
        root=tmp_path / "data",
        seed=3,
        per_stratum={"train": 10, "val": 10, "test": 10},
    )
    collect_dataset(plan, progress=False)

    report = validate_dataset(
        plan.dataset_dir, Params(data=plan), context_dir=tmp_path / "gx", progress=False
    )

    assert report.success, report.failures
    assert report.n_rows == 10 * 3 * len(plan.strata.names())


# ------------------------------------------------------------------------------ CLI


@pytest.fixture
def params_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """params.yaml for the tiny plan; the GX context goes to tmp via FLYWHEEL_HOME."""
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    return path


def _cli(*args: str) -> tuple[int, str]:
    from flywheel.cli import app

    result = CliRunner().invoke(app, ["validate", *args])
    return result.exit_code, result.output


def test_cli_exits_zero_on_a_clean_dataset(
    dataset: Path, params_file: Path, tmp_path: Path
) -> None:
    code, output = _cli("--params", str(params_file), "--dataset", str(dataset))

    assert code == 0, output
    assert "PASSED" in output
    assert "Data Docs:" in output
    assert (tmp_path / "home" / "gx" / "great_expectations.yml").is_file()


def test_cli_exits_nonzero_and_names_rows_on_failure(dataset: Path, params_file: Path) -> None:
    save_manifest(_unknown_label(dataset, load_manifest(dataset)), dataset)

    code, output = _cli("--params", str(params_file), "--dataset", str(dataset))

    assert code == 1, output
    assert "FAILED" in output
    assert "label is one of the plan's classes" in output
    assert "val-handwritten-blur-2" in output


def test_cli_reports_a_missing_manifest_without_traceback(
    params_file: Path, tmp_path: Path
) -> None:
    code, output = _cli("--params", str(params_file), "--dataset", str(tmp_path / "nowhere"))

    assert code == 2
    assert "no manifest" in output
    assert "Traceback" not in output
