"""The stratum of a labelled production image, when nobody recorded one (`merge.strata`).

The data contract counts images per stratum (`style/noise` for an image plan,
`level/writing/noise` for a page plan: `stratum_columns`), but real traffic
carries no stratum: only the demo's simulator knows what it sent. A labelled
image whose stratum neither the simulator's truth nor the labeller recorded
gets one by the rule `merge.strata` declares:

* `production` (the default): the explicit stratum `production/production`
  (`production/production/production` on a page plan; `PRODUCTION_STRATUM`
  in every column), outside the plan, which the data gate allows for
  production rows and counts in no planned minimum;
* `refuse`: the merge stops with an error naming the images;
* a planned stratum (`style/noise`, `level/writing/noise`): every such image
  goes there (a project of one stratum, e.g. an import's `unknown/unknown`);
* `package.module:function`: a rule, called with the label row and the logged
  prediction (features, predicted label, confidence; None when the log lacks
  it), that returns a planned stratum, or None for the production stratum.

No labelled image is skipped for want of a stratum.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from flywheel.config import PRODUCTION_STRATUM, DataPlan, nfc
from flywheel.data.pages import STRATA_COLUMNS

PRODUCTION = f"{PRODUCTION_STRATUM}/{PRODUCTION_STRATUM}"
"""The stratum name of an image plan's production images whose stratum nobody knows."""

StratumFunction = Callable[[Mapping[str, Any], Mapping[str, Any] | None], str | None]
"""A declared rule: (label row, logged prediction or None) -> a planned stratum or None."""


def stratum_columns(plan: DataPlan) -> tuple[str, ...]:
    """The manifest columns a stratum names, in order.

    >>> from flywheel.config import DataPlan
    >>> stratum_columns(DataPlan())
    ('style', 'noise')
    """
    return STRATA_COLUMNS if plan.is_pages else ("style", "noise")


def planned_strata(plan: DataPlan) -> list[str]:
    """The plan's stratum names (`style/noise`, or `level/writing/noise`), in plan order."""
    if plan.pages is not None:
        return plan.pages.strata.names()
    return plan.strata.names()


class StratumError(ValueError):
    """`merge.strata` cannot be used, or it refuses images without a stratum (names them)."""


@dataclass(frozen=True)
class StratumRule:
    """`merge.strata`, resolved against the plan.

    Attributes:
        setting: the configured value, for messages.
        planned: the plan's stratum names (`style/noise`, or `level/writing/noise`).
        columns: the manifest columns a stratum names (`stratum_columns`).
        fixed: the stratum every unknown image gets (None: refuse or a function decides).
        function: the declared rule (None: not a function).
    """

    setting: str
    planned: frozenset[str]
    columns: tuple[str, ...] = ("style", "noise")
    fixed: tuple[str, ...] | None = None
    function: StratumFunction | None = None

    @property
    def production(self) -> str:
        """The production stratum's name: `PRODUCTION_STRATUM` in every column."""
        return "/".join([PRODUCTION_STRATUM] * len(self.columns))

    @property
    def refuses(self) -> bool:
        """Whether an image without a stratum stops the merge."""
        return self.fixed is None and self.function is None

    @property
    def needs_log(self) -> bool:
        """Whether the rule reads the logged predictions."""
        return self.function is not None

    def stratum_of(
        self, record: Mapping[str, Any], logged: Mapping[str, Any] | None
    ) -> tuple[str, ...] | None:
        """The stratum (`(style, noise)`, or `(level, writing, noise)`) of an image without
        a recorded one; None: refused.

        Raises:
            StratumError: the function returned something that is not a planned stratum.
        """
        if self.fixed is not None:
            return self.fixed
        if self.function is None:
            return None
        value = self.function(record, logged)
        name = self.production if value is None else nfc(str(value))
        if name not in self.planned and name != self.production:
            raise StratumError(
                f"merge.strata {self.setting}: returned {value!r} for request "
                f"{record.get('request_id')} index {record.get('index')}; expected one of "
                f"{sorted(self.planned)}, {self.production!r} or None"
            )
        return tuple(name.split("/"))

    def resolve(
        self,
        record: Mapping[str, Any],
        known: Mapping[str, Any],
        logged: Mapping[str, Any] | None,
    ) -> tuple[tuple[str, ...], str] | None:
        """The stratum of one labelled image and where it came from (`recorded`, `rule`,
        `declared`, `production`: `flywheel.labeling.merge.STRATUM_SOURCES`); None: refused.

        The simulator's truth (`known`) first, then the labeller's own (`record`);
        where neither recorded every column, this rule decides. A recorded stratum
        is returned as it is, planned or not (the caller skips one outside the plan).
        """
        recorded = [text(known.get(c)) or text(record.get(c)) for c in self.columns]
        if all(value is not None for value in recorded):
            return tuple(nfc(str(value)) for value in recorded), "recorded"
        found = self.stratum_of(record, logged)
        if found is None:
            return None
        if "/".join(found) == self.production:
            return found, "production"
        return found, "rule" if self.function is not None else "declared"


def text(value: Any) -> str | None:
    """A non-empty string value, else None (NaN, None, pandas' NA, '').

    >>> text(float("nan")), text(""), text(3)
    (None, None, '3')
    """
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return None
    return str(value) or None


def stratum_rule(setting: str, plan: DataPlan) -> StratumRule:
    """Resolve `merge.strata` (see the module docstring) for this plan.

    >>> from flywheel.config import DataPlan, Strata
    >>> plan = DataPlan(strata=Strata(style=("a",), noise=("x",)))
    >>> stratum_rule("a/x", plan).fixed, stratum_rule("production", plan).fixed
    (('a', 'x'), ('production', 'production'))
    >>> stratum_rule("b/x", plan)
    Traceback (most recent call last):
    ...
    flywheel.labeling.strata.StratumError: merge.strata 'b/x' is not a stratum of the plan ['a/x']

    Raises:
        StratumError: a stratum outside the plan, or a function that cannot be imported.
    """
    planned = frozenset(planned_strata(plan))
    columns = stratum_columns(plan)
    if setting == "production":
        fixed = (PRODUCTION_STRATUM,) * len(columns)
        return StratumRule(setting, planned, columns, fixed=fixed)
    if setting == "refuse":
        return StratumRule(setting, planned, columns)
    if ":" in setting:
        try:
            function = pkgutil.resolve_name(setting)
        except (ImportError, AttributeError, ValueError) as err:
            raise StratumError(f"merge.strata {setting!r}: cannot import it: {err}") from err
        if not callable(function):
            raise StratumError(f"merge.strata {setting!r} is not a function")
        return StratumRule(setting, planned, columns, function=function)
    if setting not in planned:
        raise StratumError(
            f"merge.strata {setting!r} is not a stratum of the plan {sorted(planned)}"
        )
    return StratumRule(setting, planned, columns, fixed=tuple(setting.split("/")))
