"""The gate's decision as plain data, and how it is shown to a person.

`ValidationReport` (with its `Failure`s and their `Offender`s) is what
`flywheel.validation.validate_dataset` returns; `failure_of` turns one failed
GX result into a `Failure`; `print_report` renders a report on a console.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from rich.padding import Padding
from rich.table import Table

if TYPE_CHECKING:
    from great_expectations.core import ExpectationValidationResult
    from rich.console import Console

INDEX_COLUMN = "image_id"
"""The column that names a row in every failure."""


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


# ------------------------------------------------------------------- GX results


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


def failure_of(
    er: ExpectationValidationResult,
    max_rows: int,
    columns: Iterable[str],
    *,
    index_column: str = INDEX_COLUMN,
) -> Failure:
    """Summarise one failed GX result: the rule, what was observed, the first offenders.

    Args:
        er: the failed result.
        max_rows: offending rows to keep.
        columns: the validated frame's columns (to explain errors on a missing one).
        index_column: the column that names a row (a page table's `box_id`, say).
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
            Offender(key=str(row.get(index_column)), value=_plain(row.get(column)))
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
            key_name=index_column,
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
