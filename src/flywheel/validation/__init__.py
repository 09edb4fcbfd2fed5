"""The data gate: validate a dataset against the data contract derived from the plan.

The contract is not written per dataset: `build_suite` derives a Great
Expectations suite from the data plan (`params.yaml: data`) and the gate's
thresholds (`params.yaml: validation`). What GX cannot see in the manifest
alone is computed here first, vectorised, as extra columns that the suite then
checks row by row, so every failure names the offending rows by `image_id`:

* `stratum` — `style/noise`; counted per split against the plan's minimum.
* `sha256_splits`, `group_splits` — the splits holding any row with the same
  content hash / source glyph (`"train+test"` is leakage).
* `file_status` — the result of opening each image file: `ok` or why not.

`validate_dataset` runs the suite through a Checkpoint in a file-backed GX
context, which also writes Data Docs (HTML naming the bad rows), and returns a
plain `ValidationReport`; `print_report` renders it for a person.

Nothing here makes a network call. GX 1.x sends no usage statistics (the
context's `analytics_enabled` is set off anyway); the Data Docs pages link
bootstrap/jQuery/vega from CDNs, so offline they render unstyled.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.expectations.row_conditions import Column
from PIL import Image, UnidentifiedImageError
from rich.padding import Padding
from rich.table import Table
from tqdm import tqdm

from flywheel.config import (
    MANIFEST_SPLITS,
    PRODUCTION_SOURCE,
    SPLITS,
    DataPlan,
    Params,
    ValidationConfig,
)
from flywheel.data.manifest import COLUMNS, ManifestError, load_manifest, stratum
from flywheel.env import state_dir
from flywheel.validation.expectations import (
    ExpectColumnValueCountsToBeAtLeast,
    ExpectColumnValueSharesToBeBetween,
)

if TYPE_CHECKING:
    from great_expectations.core import ExpectationValidationResult
    from great_expectations.data_context import FileDataContext
    from rich.console import Console

__all__ = [
    "DERIVED_COLUMNS",
    "FILE_OK",
    "Failure",
    "ManifestError",
    "Offender",
    "ValidationReport",
    "ValidationSetupError",
    "add_derived_columns",
    "build_suite",
    "check_file",
    "check_image_files",
    "class_share_bounds",
    "count_by_stratum",
    "print_report",
    "splits_sharing",
    "validate_dataset",
]

INDEX_COLUMN = "image_id"
"""The column that names a row in every failure."""

FILE_OK = "ok"
"""`file_status` of a file that exists, decodes, and matches the manifest's size and hash."""

DERIVED_COLUMNS: dict[str, str] = {
    "stratum": "style/noise of the row",
    "sha256_splits": "splits holding the row's content hash, '+'-joined in split order",
    "group_splits": "splits holding the row's source glyph, '+'-joined in split order",
    "file_status": f"'{FILE_OK}' or why the image file is not what the manifest says",
}
"""Columns the gate adds to the manifest before GX sees it (`file_status` only with file checks)."""

PARALLEL_MIN_FILES = 5_000
"""Below this many files a process pool costs more to start than it saves."""

_STR_COLUMNS = [c for c, t in COLUMNS.items() if t == "str"]
_INT_COLUMNS = [c for c, t in COLUMNS.items() if t == "int64"]


class ValidationSetupError(RuntimeError):
    """The gate could not run at all (e.g. the GX context folder is unusable)."""


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Offender:
    """One offending row (`key` = its image_id) or, for table-level rules, one offending value."""

    key: str
    value: Any


@dataclass(frozen=True)
class Failure:
    """One failed expectation, in words a person can act on.

    Attributes:
        expectation: GX expectation type, e.g. `expect_column_values_to_be_in_set`.
        column: the column it checks (None for table-level rules).
        rule: the contract clause in words, e.g. "label is one of the plan's classes".
        observed: what GX observed (a count summary, a value, a mapping).
        unexpected_count: offending rows, for row-level rules.
        key_name: what `Offender.key` is: `image_id`, or the checked column for aggregate rules.
        offenders: the first few offending rows or values.
        error: the exception message when the expectation could not be evaluated.
    """

    expectation: str
    column: str | None
    rule: str
    observed: Any
    unexpected_count: int | None = None
    key_name: str = INDEX_COLUMN
    offenders: tuple[Offender, ...] = ()
    error: str | None = None


@dataclass
class ValidationReport:
    """What the gate decided about one dataset, as plain data (JSON-friendly via `asdict`).

    Attributes:
        dataset_dir: the validated dataset folder.
        success: every expectation passed.
        n_rows: manifest rows.
        n_expectations: expectations evaluated.
        failures: failed expectations, in the suite's order.
        counts: images per stratum and split, `{stratum: {split: n}}` (planned strata first).
        planned: the least number of images each stratum needs, per split.
        files_checked: whether image files were opened (`check_files`).
        data_docs: the Data Docs HTML page of this validation result.
        elapsed_s: wall time of the whole gate.
        timings: seconds per phase (`load`, `files`, `derive`, `gx`).
        data_version: the DVC data version, when the caller knows it.
    """

    dataset_dir: Path
    success: bool
    n_rows: int
    n_expectations: int
    failures: list[Failure]
    counts: dict[str, dict[str, int]]
    planned: dict[str, int]
    files_checked: bool
    data_docs: Path | None
    elapsed_s: float
    timings: dict[str, float] = field(default_factory=dict)
    data_version: str | None = None

    def failure(self, expectation: str, column: str | None = None) -> Failure | None:
        """The first failure of this expectation type (on this column), or None."""
        for failed in self.failures:
            if failed.expectation == expectation and (column is None or failed.column == column):
                return failed
        return None


# ------------------------------------------------------------------------ file checks


def check_file(path: Path, *, sha256: str | None, width: int | None, height: int | None) -> str:
    """Open one image file and say whether it is what the manifest row claims.

    Checks, in order: the file can be read, it decodes completely (a truncated
    PNG fails here), its size is the manifest's `width`×`height`, its bytes hash
    to the manifest's `sha256`. Manifest values that are missing are not compared
    (the not-null rules flag those rows).

    Returns:
        `"ok"`, `"missing"`, `"undecodable: <reason>"`,
        `"size WxH != manifest WxH"` or `"sha256 mismatch"`.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return "missing"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size = image.size
    except UnidentifiedImageError:
        return "undecodable: not an image file"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"undecodable: {err}"
    if width is not None and height is not None and size != (width, height):
        return f"size {size[0]}x{size[1]} != manifest {width}x{height}"
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        return "sha256 mismatch"
    return FILE_OK


_FileRow = tuple[str | None, str | None, int | None, int | None]  # path, sha256, width, height


def _check_rows(dataset_dir: Path, rows: Sequence[_FileRow]) -> list[str]:
    """`check_file` for a chunk of manifest rows; the unit of work of the process pool."""
    out: list[str] = []
    for rel, sha, width, height in rows:
        if rel is None:
            out.append("missing: no path")
            continue
        parts = PurePosixPath(rel)
        if parts.is_absolute() or ".." in parts.parts:
            out.append("path outside the dataset folder")
            continue
        out.append(check_file(dataset_dir / parts, sha256=sha, width=width, height=height))
    return out


def _column_or_none(manifest: pd.DataFrame, column: str) -> list[Any]:
    """A manifest column as Python objects with missing values (or a missing column) as None."""
    if column not in manifest:
        return [None] * len(manifest)
    values = manifest[column].astype(object)
    return values.where(values.notna(), None).tolist()


def _default_workers() -> int:
    """CPUs this process may use (its affinity mask: containers and taskset set it), at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS and Windows have no affinity mask
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def check_image_files(
    dataset_dir: str | Path,
    manifest: pd.DataFrame,
    *,
    workers: int | None = None,
    chunk_size: int = 1_000,
    min_parallel: int = PARALLEL_MIN_FILES,
    progress: bool = True,
) -> pd.Series:
    """Check every row's image file (`check_file`), in parallel for large datasets.

    Files are checked in chunks by a process pool (decoding and hashing are
    CPU-bound, so threads would serialise on the GIL); below `min_parallel`
    files, or with `workers=1`, in this process.

    Args:
        dataset_dir: the folder `path` is relative to.
        manifest: rows with `path`, `sha256`, `width`, `height` (missing columns count as missing).
        workers: processes to use; default: usable CPUs, at most 8.
        chunk_size: rows per task handed to a worker.
        min_parallel: fewest files worth starting a process pool for.
        progress: show a progress bar (on stderr, when it is a terminal).

    Returns:
        `file_status` per row, aligned with `manifest.index`.
    """
    dataset_dir = Path(dataset_dir)
    widths, heights = _column_or_none(manifest, "width"), _column_or_none(manifest, "height")
    rows: list[_FileRow] = list(
        zip(
            _column_or_none(manifest, "path"),
            _column_or_none(manifest, "sha256"),
            [None if w is None else int(w) for w in widths],
            [None if h is None else int(h) for h in heights],
            strict=True,
        )
    )
    chunks = [rows[i : i + chunk_size] for i in range(0, len(rows), chunk_size)]
    workers = workers or _default_workers()
    results: list[list[str]] = [[] for _ in chunks]
    bar = tqdm(
        total=len(rows), desc="check image files", unit="file", disable=None if progress else True
    )
    with bar:
        if workers <= 1 or len(rows) < min_parallel:
            for i, chunk in enumerate(chunks):
                results[i] = _check_rows(dataset_dir, chunk)
                bar.update(len(chunk))
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
                futures = {
                    pool.submit(_check_rows, dataset_dir, chunk): i
                    for i, chunk in enumerate(chunks)
                }
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    bar.update(len(chunks[i]))
    return pd.Series(
        [status for chunk in results for status in chunk],
        index=manifest.index,
        name="file_status",
        dtype=object,
    )


# --------------------------------------------------------------------- derived columns


def splits_sharing(keys: pd.Series, splits: pd.Series) -> pd.Series:
    """For each row, the splits that hold any row with the same key, '+'-joined in split order.

    A value naming two splits is leakage. Vectorised: only keys found in more
    than one split (rare in a good dataset) are joined in Python. Rows with a
    missing key get a missing value.

    >>> keys = pd.Series(["a", "a", "b", "c", "c"])
    >>> splits_sharing(keys, pd.Series(["test", "train", "val", "val", "val"])).tolist()
    ['train+test', 'train+test', 'val', 'val', 'val']
    """
    order = {name: i for i, name in enumerate(SPLITS)}
    frame = pd.DataFrame({"key": keys, "split": splits})
    n_splits = frame.groupby("key", dropna=True)["split"].transform("nunique")
    out = frame["split"].astype(object).where(n_splits == 1)
    shared = n_splits > 1
    if shared.any():
        pairs = (
            frame.loc[shared, ["key", "split"]]
            .dropna()
            .drop_duplicates()
            .sort_values(
                "split", key=lambda s: s.map(order).fillna(len(order)).astype(str) + s.astype(str)
            )
        )
        joined = pairs.groupby("key")["split"].agg("+".join)
        out[shared] = frame.loc[shared, "key"].map(joined)
    return out.rename(None)


def add_derived_columns(
    manifest: pd.DataFrame, file_status: pd.Series | None = None
) -> pd.DataFrame:
    """The manifest plus the columns the suite checks but the manifest cannot state itself.

    See `DERIVED_COLUMNS`. A derived column whose source columns are missing is
    left empty; the schema rule names the missing source column.

    Args:
        manifest: as `load_manifest` returns it.
        file_status: `check_image_files`'s result; None adds no `file_status` column.
    """
    frame = manifest.copy()
    if {"style", "noise"} <= set(frame.columns):
        frame["stratum"] = stratum(frame).where(frame["style"].notna() & frame["noise"].notna())
    else:
        frame["stratum"] = pd.Series(None, index=frame.index, dtype=object)
    for key, derived in (("sha256", "sha256_splits"), ("group", "group_splits")):
        if {key, "split"} <= set(frame.columns):
            frame[derived] = splits_sharing(frame[key], frame["split"])
        else:
            frame[derived] = pd.Series(None, index=frame.index, dtype=object)
    if file_status is not None:
        frame["file_status"] = file_status.reindex(frame.index)
    # A deep copy consolidates the column blocks once; GX filters and copies the
    # frame per expectation and would otherwise consolidate every copy (~1.5 s at 100k rows).
    return frame.copy()


def count_by_stratum(frame: pd.DataFrame, plan: DataPlan) -> dict[str, dict[str, int]]:
    """Images per stratum and split: the plan's strata first (zeros included), then any others."""
    if not {"style", "noise", "split"} <= set(frame.columns):
        return {}
    strata = frame["stratum"] if "stratum" in frame else stratum(frame)
    sizes = frame.groupby([strata.rename("stratum"), frame["split"]]).size()
    planned = plan.strata.names()
    others = sorted(set(sizes.index.get_level_values(0)) - set(planned))
    splits = list(SPLITS) + sorted(set(sizes.index.get_level_values(1)) - set(SPLITS))
    return {s: {sp: int(sizes.get((s, sp), 0)) for sp in splits} for s in [*planned, *others]}


# ------------------------------------------------------------------------------ suite


def class_share_bounds(n_classes: int, tolerance: float) -> tuple[float, float]:
    """The share each of K classes may hold: 1/K within ±tolerance (relative).

    >>> class_share_bounds(10, 0.25)
    (0.075, 0.125)
    """
    if n_classes < 1:
        raise ValueError("need at least one class")
    even = 1.0 / n_classes
    return round(even * (1 - tolerance), 12), round(even * (1 + tolerance), 12)


def _rule(sentence: str) -> dict[str, str]:
    """Expectation `meta` carrying the contract clause in words (for reports)."""
    return {"rule": sentence}


def build_suite(
    plan: DataPlan, cfg: ValidationConfig, *, check_files: bool = True
) -> gx.ExpectationSuite:
    """Derive the data contract from the plan, as a GX expectation suite.

    Covers: the exact column set and types; no nulls; label, split, style and
    noise within the plan; unique `image_id` and `sha256`; no content hash and no
    source glyph in two splits; image size; (with `check_files`) every file
    readable and matching the manifest; at least the planned count per stratum
    in each split; each class's share per split within the tolerance.

    Merged production data (`flywheel.data.merge`) is allowed: the split may
    also be the evaluation-only `holdout`, which no planned count covers, and
    rows with `source = production` count towards the per-stratum minimums but
    not towards class balance — that rule is the plan's promise about the data
    it generates, while labelled traffic is as balanced as the traffic was.

    Each expectation's `meta["rule"]` states its clause in words.

    Args:
        plan: the data plan.
        cfg: the gate's thresholds.
        check_files: include the rule on `file_status` (the caller adds that column).
    """
    # Built as a list and handed to the constructor: `ExpectationSuite.add_expectation`
    # looks the suite up in whichever GX context is current in the process.
    expectations: list[gxe.Expectation] = []
    add = expectations.append
    derived = [c for c in DERIVED_COLUMNS if check_files or c != "file_status"]

    add(
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[*COLUMNS, *derived],
            exact_match=True,
            meta=_rule("the manifest has exactly the schema's columns"),
        )
    )
    for column in COLUMNS:
        add(
            gxe.ExpectColumnValuesToNotBeNull(
                column=column, meta=_rule(f"{column} is filled in every row")
            )
        )
    for column in _STR_COLUMNS:
        add(
            gxe.ExpectColumnValuesToBeOfType(
                column=column, type_="str", meta=_rule(f"{column} is text")
            )
        )
    for column in _INT_COLUMNS:
        add(
            gxe.ExpectColumnValuesToBeOfType(
                column=column, type_="int64", meta=_rule(f"{column} is an integer")
            )
        )

    memberships: list[tuple[str, Sequence[str], str]] = [
        ("label", plan.classes, "label is one of the plan's classes"),
        ("split", MANIFEST_SPLITS, "split is one of " + "/".join(MANIFEST_SPLITS)),
        ("style", plan.strata.style, "style is one of the plan's styles"),
        ("noise", plan.strata.noise, "noise is one of the plan's noises"),
    ]
    for column, values, sentence in memberships:
        add(
            gxe.ExpectColumnValuesToBeInSet(
                column=column, value_set=list(values), meta=_rule(sentence)
            )
        )
    for column in ("width", "height"):
        add(
            gxe.ExpectColumnValuesToBeInSet(
                column=column,
                value_set=[plan.image_size],
                meta=_rule(f"{column} is the plan's image size ({plan.image_size})"),
            )
        )

    add(gxe.ExpectColumnValuesToBeUnique(column="image_id", meta=_rule("image_id is unique")))
    add(
        gxe.ExpectColumnValuesToBeUnique(
            column="sha256", meta=_rule("no two rows hold the same image bytes (sha256 unique)")
        )
    )
    for column, what in (
        ("sha256_splits", "image content (sha256)"),
        ("group_splits", "source glyph (group)"),
    ):
        add(
            gxe.ExpectColumnValuesToBeInSet(
                column=column,
                value_set=list(MANIFEST_SPLITS),
                meta=_rule(f"no {what} is in more than one split (leakage)"),
            )
        )
    if check_files:
        add(
            gxe.ExpectColumnValuesToBeInSet(
                column="file_status",
                value_set=[FILE_OK],
                meta=_rule(
                    "every image file exists, decodes, and has the manifest's size and sha256"
                ),
            )
        )

    lo, hi = class_share_bounds(len(plan.classes), cfg.class_balance_tolerance)
    for split in SPLITS:
        need = plan.per_stratum[split]  # type: ignore[index]  # keys are the Literal splits
        if need <= 0:
            continue
        in_split = Column("split") == split
        sentence = f"split {split}: at least {need} images in every stratum"
        add(
            ExpectColumnValueCountsToBeAtLeast(
                column="stratum",
                min_counts=dict.fromkeys(plan.strata.names(), need),
                row_condition=in_split,
                description=sentence,
                meta=_rule(sentence),
            )
        )
        sentence = (
            f"split {split}: every class holds {lo:.1%}–{hi:.1%} of the planned images "
            f"(1/{len(plan.classes)} ± {cfg.class_balance_tolerance:.0%}; "
            f"source {PRODUCTION_SOURCE} excluded)"
        )
        add(
            ExpectColumnValueSharesToBeBetween(
                column="label",
                value_set=list(plan.classes),
                min_share=lo,
                max_share=hi,
                row_condition=in_split & (Column("source") != PRODUCTION_SOURCE),
                description=sentence,
                meta=_rule(sentence),
            )
        )
    suite = gx.ExpectationSuite(name=f"{plan.name}_contract", expectations=expectations)
    if len(suite.expectations) != len(expectations):  # GX logs and drops invalid ones
        raise ValueError(f"the suite derived from the plan lost expectations: {plan}")
    return suite


# ------------------------------------------------------------------------- GX running


def _open_context(root: Path) -> FileDataContext:
    """The file-backed GX context at `root` (created on first use), quiet and offline."""
    try:
        context = gx.get_context(mode="file", context_root_dir=root)
    except (gx.exceptions.GreatExpectationsError, OSError) as err:
        raise ValidationSetupError(
            f"{root}: cannot open the Great Expectations context: {err}"
        ) from err
    variables = context.variables
    progress_bars: Any = variables.progress_bars or {}
    if variables.analytics_enabled is not False or progress_bars.get("globally", True):
        variables.analytics_enabled = False
        variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        variables.save()
    return context


def _register(
    context: FileDataContext,
    asset_name: str,
    suite: gx.ExpectationSuite,
    result_format: dict[str, Any],
) -> gx.Checkpoint:
    """Add or update datasource → asset → batch definition → suite → validation → checkpoint."""
    source = context.data_sources.add_or_update_pandas("flywheel_manifests")
    try:
        asset = source.get_asset(asset_name)
    except LookupError:
        asset = source.add_dataframe_asset(asset_name)
    try:
        batch = asset.get_batch_definition("manifest")
    except KeyError:
        batch = asset.add_batch_definition_whole_dataframe("manifest")
    suite = context.suites.add_or_update(suite)
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=f"{asset_name}-{suite.name}", data=batch, suite=suite)
    )
    return context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=f"{asset_name}-gate",
            validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
            result_format=result_format,
        )
    )


def _plain(value: Any) -> Any:
    """A numpy/pandas scalar as a plain Python value (missing → None)."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


def _error_message(exception_info: Any) -> str | None:
    """The exception message(s) GX recorded for an expectation, if it raised.

    GX stores either one `{raised_exception, exception_message}` dict or a dict
    of them keyed by metric.
    """
    if not isinstance(exception_info, dict):
        return None
    infos: Iterable[Any] = (
        [exception_info] if "raised_exception" in exception_info else exception_info.values()
    )
    messages = {
        str(info.get("exception_message"))
        for info in infos
        if isinstance(info, dict) and info.get("raised_exception")
    }
    return "; ".join(sorted(messages)) or None


def _failure(er: ExpectationValidationResult, max_rows: int, columns: Iterable[str]) -> Failure:
    """Summarise one failed GX result: the rule, what was observed, the first offenders.

    Args:
        er: the failed result.
        max_rows: offending rows to keep.
        columns: the validated frame's columns (to explain errors on a missing one).
    """
    config = er.expectation_config
    assert config is not None  # a result from a suite run always carries its configuration
    kwargs = config.kwargs
    column = kwargs.get("column")
    rule = (config.meta or {}).get("rule") or config.description or config.type
    result: dict[str, Any] = dict(er.result or {})
    error = _error_message(er.exception_info)
    if error and column is not None and column not in columns:
        error = f"the manifest has no column {column!r}"
    raw_details = result.get("details")
    details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}

    if "unexpected_count" in result:  # a row-level (column map) rule
        rows = result.get("partial_unexpected_index_list") or []
        offenders = tuple(
            Offender(key=str(row.get(INDEX_COLUMN)), value=_plain(row.get(column)))
            for row in rows[:max_rows]
            if isinstance(row, dict)
        )
        if not offenders:  # no index column to name rows by: show the values
            offenders = tuple(
                Offender(key="?", value=_plain(v))
                for v in (result.get("partial_unexpected_list") or [])[:max_rows]
            )
        count = int(result["unexpected_count"])
        return Failure(
            expectation=config.type,
            column=column,
            rule=rule,
            observed=f"{count} of {result.get('element_count')} rows",
            unexpected_count=count,
            offenders=offenders,
            error=error,
        )

    offenders = ()
    key_name = column or "value"
    if isinstance(details.get("offending"), dict):  # our aggregate rules
        offenders = tuple(Offender(str(k), _plain(v)) for k, v in details["offending"].items())
    elif isinstance(details.get("mismatched"), dict):  # table columns
        key_name = "column"
        offenders = tuple(
            Offender(str(name), how)
            for how, names in details["mismatched"].items()
            for name in names
        )
    return Failure(
        expectation=config.type,
        column=column,
        rule=rule,
        observed=_plain(result.get("observed_value")),
        key_name=key_name,
        offenders=offenders,  # one per stratum / class / column: few, all shown
        error=error,
    )


def _docs_page(context: FileDataContext, key: Any) -> Path | None:
    """The local Data Docs page of one validation result (the site index if not found)."""
    for site in context.get_docs_sites_urls(resource_identifier=key):
        url = site.get("site_url")
        if url and urlparse(url).scheme == "file":
            return Path(url2pathname(urlparse(url).path))
    return None


def validate_dataset(
    dataset_dir: str | Path,
    params: Params,
    *,
    check_files: bool = True,
    context_dir: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ValidationReport:
    """Validate a dataset folder against the contract derived from `params`.

    Reads `manifest.csv`, checks the image files (optional), adds the derived
    columns, runs the suite from `build_suite` through a Checkpoint in a
    file-backed GX context and writes Data Docs.

    Args:
        dataset_dir: `data/<name>`: `manifest.csv` plus images.
        params: the loaded `params.yaml` (plan and thresholds).
        check_files: open, decode and hash every image file.
        context_dir: the GX context folder; default `state_dir()/"gx"`.
        workers: processes for the file checks (default: usable CPUs, at most 8).
        progress: show a progress bar for the file checks.

    Returns:
        The report; `report.success` is the gate's decision.

    Raises:
        ManifestError: there is no readable `manifest.csv` in `dataset_dir`.
        ValidationSetupError: the GX context folder cannot be used.
    """
    started = time.perf_counter()
    dataset_dir = Path(dataset_dir)
    plan, cfg = params.data, params.validation
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    manifest = load_manifest(dataset_dir)
    timings["load"] = time.perf_counter() - tick

    status = None
    if check_files:
        tick = time.perf_counter()
        status = check_image_files(dataset_dir, manifest, workers=workers, progress=progress)
        timings["files"] = time.perf_counter() - tick

    tick = time.perf_counter()
    frame = add_derived_columns(manifest, status)
    timings["derive"] = time.perf_counter() - tick

    tick = time.perf_counter()
    suite = build_suite(plan, cfg, check_files=check_files)
    context = _open_context(Path(context_dir) if context_dir else state_dir() / "gx")
    # COMPLETE: Data Docs show the offending rows' ids only when GX keeps them all
    # (one bad row in 100k costs nothing; every row bad costs seconds, measured in
    # benchmarks/validation.py). The report keeps the first `failed_rows_shown`.
    result_format: dict[str, Any] = {
        "result_format": "COMPLETE",
        "partial_unexpected_count": cfg.failed_rows_shown,
        "return_unexpected_index_query": False,
    }
    if INDEX_COLUMN in frame:
        result_format["unexpected_index_column_names"] = [INDEX_COLUMN]
    asset_name = dataset_dir.resolve().name or "dataset"
    checkpoint = _register(context, asset_name, suite, result_format)
    run_id = RunIdentifier(run_name=asset_name, run_time=dt.datetime.now(dt.UTC))
    outcome = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
    timings["gx"] = time.perf_counter() - tick

    key, suite_result = next(iter(outcome.run_results.items()))
    failures = sorted(  # table-level (schema) failures first: they explain the others
        (
            _failure(er, cfg.failed_rows_shown, frame.columns)
            for er in suite_result.results
            if not er.success
        ),
        key=lambda failed: failed.column is not None,
    )
    return ValidationReport(
        dataset_dir=dataset_dir,
        success=bool(outcome.success),
        n_rows=len(frame),
        n_expectations=len(suite_result.results),
        failures=failures,
        counts=count_by_stratum(frame, plan),
        planned={split: int(n) for split, n in plan.per_stratum.items()},
        files_checked=check_files,
        data_docs=_docs_page(context, key),
        elapsed_s=time.perf_counter() - started,
        timings=timings,
    )


# ---------------------------------------------------------------------------- printing


def _short(value: Any, width: int = 160) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def print_report(report: ValidationReport, console: Console) -> None:
    """Print the gate's decision: counts per stratum × split, each failure with its rows, Data Docs.

    Offending rows were already cut to `validation.failed_rows_shown` by
    `validate_dataset`.
    """
    table = Table(title=f"images per stratum and split ({report.n_rows} rows)")
    table.add_column("stratum")
    splits = next(iter(report.counts.values()), {}).keys()
    for split in splits:
        need = report.planned.get(split)
        table.add_column(f"{split} (≥{need})" if need is not None else split, justify="right")
    for name, row in report.counts.items():
        cells = []
        for split, n in row.items():
            need = report.planned.get(split, 0)
            cells.append(f"[red]{n}[/red]" if n < need else str(n))
        table.add_row(name, *cells)
    console.print(table)

    for failed in report.failures:
        target = f" on {failed.column}" if failed.column else ""
        console.print(
            f"[red]✗[/red] [bold]{failed.rule}[/bold]  [dim]{failed.expectation}{target}[/dim]"
        )
        if failed.error:
            console.print(f"    [red]could not evaluate:[/red] {_short(failed.error)}")
        else:
            console.print(f"    observed: {_short(failed.observed)}")
        if failed.offenders:
            rows = Table(box=None, padding=(0, 2), show_edge=False)
            rows.add_column(failed.key_name, style="cyan")
            rows.add_column("value")
            for offender in failed.offenders:
                rows.add_row(offender.key, _short(offender.value, 100))
            console.print(Padding(rows, (0, 0, 0, 4), expand=False))
            if failed.unexpected_count and failed.unexpected_count > len(failed.offenders):
                more = failed.unexpected_count - len(failed.offenders)
                console.print(f"    … and {more} more rows (see Data Docs)")

    passed = report.n_expectations - len(report.failures)
    verdict = "[green]PASSED[/green]" if report.success else "[red]FAILED[/red]"
    files = "" if report.files_checked else " (image files not opened: --no-files)"
    console.print(
        f"data contract {verdict}: {passed}/{report.n_expectations} expectations met "
        f"on {report.dataset_dir} in {report.elapsed_s:.1f} s{files}"
    )
    if report.data_version:
        console.print(f"data version: [bold]{report.data_version}[/bold]")
    # soft_wrap: a path broken across lines cannot be copied or clicked
    console.print(f"Data Docs: {report.data_docs or 'not written'}", soft_wrap=True)
