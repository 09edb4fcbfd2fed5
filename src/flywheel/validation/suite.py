"""The data contract as a Great Expectations suite, from the plan and the gate's thresholds."""

from __future__ import annotations

from collections.abc import Sequence

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.expectations.row_conditions import Column

from flywheel.config import (
    MANIFEST_SPLITS,
    PRODUCTION_SOURCE,
    PRODUCTION_STRATUM,
    SPLITS,
    DataPlan,
    ValidationConfig,
)
from flywheel.data.manifest import COLUMNS
from flywheel.validation.columns import DERIVED_COLUMNS
from flywheel.validation.expectations import (
    ExpectColumnValueCountsToBeAtLeast,
    ExpectColumnValueSharesToBeBetween,
)
from flywheel.validation.files import FILE_OK

_STR_COLUMNS = [c for c, t in COLUMNS.items() if t == "str"]
_INT_COLUMNS = [c for c, t in COLUMNS.items() if t == "int64"]


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

    Merged production data (`flywheel.labeling.merge`) is allowed: the split may
    also be the evaluation-only `holdout`, which no planned count covers, and
    rows with `source = production` count towards the per-stratum minimums but
    not towards class balance — that rule is the plan's promise about the data
    it generates, while labelled traffic is as balanced as the traffic was. A
    production row may also hold the stratum `production/production`
    (`PRODUCTION_STRATUM`: nobody recorded its stratum), which no minimum covers.

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
        planned_only = column in {"style", "noise"}
        add(
            gxe.ExpectColumnValuesToBeInSet(
                column=column,
                value_set=list(values),
                # Production rows may instead hold the unknown stratum (next expectation).
                row_condition=(Column("source") != PRODUCTION_SOURCE) if planned_only else None,
                meta=_rule(
                    f"{sentence} (source {PRODUCTION_SOURCE}: or {PRODUCTION_STRATUM})"
                    if planned_only
                    else sentence
                ),
            )
        )
    for column in ("style", "noise"):
        values = getattr(plan.strata, column)
        sentence = (
            f"{column} of a {PRODUCTION_SOURCE} row is one of the plan's or {PRODUCTION_STRATUM} "
            "(labelled traffic whose stratum nobody recorded)"
        )
        add(
            gxe.ExpectColumnValuesToBeInSet(
                column=column,
                value_set=[*values, PRODUCTION_STRATUM],
                row_condition=Column("source") == PRODUCTION_SOURCE,
                meta=_rule(sentence),
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
