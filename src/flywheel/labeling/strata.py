"""The stratum of a labelled production image, when nobody recorded one (`merge.strata`).

The data contract counts images per stratum (`style/noise`), but real traffic
carries no stratum: only the demo's simulator knows what it sent. A labelled
image whose stratum neither the simulator's truth nor the labeller recorded
gets one by the rule `merge.strata` declares:

* `production` (the default): the explicit stratum `production/production`
  (`PRODUCTION_STRATUM`), outside the plan, which the data gate allows for
  `source = production` rows and counts in no planned minimum;
* `refuse`: the merge stops with an error naming the images;
* a planned stratum `style/noise`: every such image goes there (a project of
  one stratum, e.g. an import's `unknown/unknown`);
* `package.module:function`: a rule, called with the label row and the logged
  prediction (features, predicted label, confidence; None when the log lacks
  it), that returns a planned `style/noise`, or None for `production/production`.

No labelled image is skipped for want of a stratum.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flywheel.config import PRODUCTION_STRATUM, DataPlan, nfc

PRODUCTION = f"{PRODUCTION_STRATUM}/{PRODUCTION_STRATUM}"
"""The stratum name of production images whose stratum nobody knows."""

StratumFunction = Callable[[Mapping[str, Any], Mapping[str, Any] | None], str | None]
"""A declared rule: (label row, logged prediction or None) -> `style/noise` or None."""


class StratumError(ValueError):
    """`merge.strata` cannot be used, or it refuses images without a stratum (names them)."""


@dataclass(frozen=True)
class StratumRule:
    """`merge.strata`, resolved against the plan.

    Attributes:
        setting: the configured value, for messages.
        planned: the plan's stratum names (`style/noise`).
        fixed: the stratum every unknown image gets (None: refuse or a function decides).
        function: the declared rule (None: not a function).
    """

    setting: str
    planned: frozenset[str]
    fixed: tuple[str, str] | None = None
    function: StratumFunction | None = None

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
    ) -> tuple[str, str] | None:
        """The `(style, noise)` of an image without a recorded stratum; None: refused.

        Raises:
            StratumError: the function returned something that is not a planned stratum.
        """
        if self.fixed is not None:
            return self.fixed
        if self.function is None:
            return None
        value = self.function(record, logged)
        if value is None:
            return PRODUCTION_STRATUM, PRODUCTION_STRATUM
        name = nfc(str(value))
        if name not in self.planned and name != PRODUCTION:
            raise StratumError(
                f"merge.strata {self.setting}: returned {value!r} for request "
                f"{record.get('request_id')} index {record.get('index')}; expected one of "
                f"{sorted(self.planned)}, {PRODUCTION!r} or None"
            )
        style, noise = name.split("/")
        return style, noise


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
        StratumError: a `style/noise` outside the plan, or a function that cannot be imported.
    """
    planned = frozenset(plan.strata.names())
    if setting == "production":
        return StratumRule(setting, planned, fixed=(PRODUCTION_STRATUM, PRODUCTION_STRATUM))
    if setting == "refuse":
        return StratumRule(setting, planned)
    if ":" in setting:
        try:
            function = pkgutil.resolve_name(setting)
        except (ImportError, AttributeError, ValueError) as err:
            raise StratumError(f"merge.strata {setting!r}: cannot import it: {err}") from err
        if not callable(function):
            raise StratumError(f"merge.strata {setting!r} is not a function")
        return StratumRule(setting, planned, function=function)
    if setting not in planned:
        raise StratumError(
            f"merge.strata {setting!r} is not a stratum of the plan {sorted(planned)}"
        )
    style, noise = setting.split("/")
    return StratumRule(setting, planned, fixed=(style, noise))
