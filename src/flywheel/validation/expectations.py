"""Custom Great Expectations expectations the data contract needs and GX 1.x lacks.

GX has no built-in "every planned value occurs at least N times" (a stratum with
zero rows has no row to flag, so no column-map expectation can see it) and its
distribution expectations (KL divergence, chi-square) pass or fail without saying
*which* class is off. Both are column-aggregate expectations over the
`column.value_counts` metric, so they run on any GX execution engine and respect
`row_condition` (the data gate uses one per split).

Importing this module registers the expectations with GX (its metaclass does);
`flywheel.validation` imports it before building a suite.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd
from great_expectations.expectations.expectation import ColumnAggregateExpectation


def _value_counts(metrics: dict[str, Any]) -> pd.Series:
    """The `column.value_counts` metric (NaNs excluded), indexed by value as text."""
    counts: pd.Series = metrics["column.value_counts"]
    counts.index = counts.index.astype(str)
    return counts


class ExpectColumnValueCountsToBeAtLeast(ColumnAggregateExpectation):
    """Expect each listed value to occur at least its minimum number of times.

    A value that does not occur at all counts 0, so a missing stratum fails.
    The result's `observed_value` maps every listed value to its count;
    `details.offending` holds the values below their minimum.

    Args:
        column: the column whose values are counted (e.g. the derived `stratum`).
        min_counts: value -> the least number of rows it must have.
    """

    min_counts: dict[str, int]

    metric_dependencies: ClassVar[tuple[str, ...]] = ("column.value_counts",)
    success_keys: ClassVar[tuple[str, ...]] = ("min_counts",)
    args_keys: ClassVar[tuple[str, ...]] = ("column", "min_counts")

    def _validate(
        self,
        metrics: dict[str, Any],
        runtime_configuration: dict[str, Any] | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        counts = _value_counts(metrics)
        observed = {value: int(counts.get(value, 0)) for value in self.min_counts}
        offending = {v: n for v, n in observed.items() if n < self.min_counts[v]}
        return {
            "success": not offending,
            "result": {"observed_value": observed, "details": {"offending": offending}},
        }


class ExpectColumnValueSharesToBeBetween(ColumnAggregateExpectation):
    """Expect each listed value's share of the (non-null) rows to lie in [min_share, max_share].

    A listed value that does not occur has share 0. Values outside the list
    still count in the denominator (an unknown label dilutes the known ones),
    but are left to set-membership expectations to flag. The result's
    `observed_value` maps every listed value to its share (4 decimals);
    `details.offending` holds those out of range.

    Args:
        column: the column whose value shares are checked (e.g. `label`).
        value_set: the values that must each hold a share in range.
        min_share: least share, inclusive.
        max_share: greatest share, inclusive.
    """

    value_set: list[str]
    min_share: float
    max_share: float

    metric_dependencies: ClassVar[tuple[str, ...]] = ("column.value_counts",)
    success_keys: ClassVar[tuple[str, ...]] = ("value_set", "min_share", "max_share")
    args_keys: ClassVar[tuple[str, ...]] = ("column", "value_set", "min_share", "max_share")

    def _validate(
        self,
        metrics: dict[str, Any],
        runtime_configuration: dict[str, Any] | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        counts = _value_counts(metrics)
        total = int(counts.sum())
        shares = {v: (float(counts.get(v, 0)) / total if total else 0.0) for v in self.value_set}
        observed = {v: round(s, 4) for v, s in shares.items()}
        offending = {
            v: observed[v] for v, s in shares.items() if not self.min_share <= s <= self.max_share
        }
        return {
            "success": not offending,
            "result": {
                "observed_value": observed,
                "details": {"offending": offending, "rows": total},
            },
        }
