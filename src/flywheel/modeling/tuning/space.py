"""The search space: `tune.space` checked against params.yaml, sampled, applied to a copy.

Keys are dotted params.yaml keys (`train.model.width`); every bound and choice
is checked to be a valid value of its key before the first trial runs.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from flywheel.config import (
    CategoricalDimension,
    FloatDimension,
    IntDimension,
    Params,
)

if TYPE_CHECKING:
    import optuna

Dimension = FloatDimension | IntDimension | CategoricalDimension


class TuneError(ValueError):
    """The search cannot run as configured (names the offending `tune.*` key)."""


def validate_space(params: Params) -> dict[str, Dimension]:
    """Check `tune.space` against the configuration it tunes; the space when it is usable.

    Each key must name an existing value (not a section) of params.yaml; the
    dimension's kind must fit the value (no float range over an integer
    setting); every bound and choice must itself be a valid value of that key
    (`train.model.width: {low: 2}` fails here, not in trial 7); and `train.epochs`
    cannot be both searched and fixed by `tune.epochs_per_trial`.

    Raises:
        TuneError: naming the key and what is wrong with it.
    """
    space = dict(params.tune.space)
    tree = params.model_dump(mode="json")
    for key, dim in space.items():
        where = f"tune.space[{key!r}]"
        current = _lookup(tree, key, where)
        if isinstance(current, bool) and not isinstance(dim, CategoricalDimension):
            raise TuneError(
                f"{where}: {key} is a boolean; use type: categorical, choices [true, false]"
            )
        if isinstance(current, int) and isinstance(dim, FloatDimension):  # bool handled above
            raise TuneError(f"{where}: {key} is an integer setting; use type: int")
        if isinstance(current, str) and not isinstance(dim, CategoricalDimension):
            raise TuneError(f"{where}: {key} is a text setting; use type: categorical")
        for value in boundary_values(dim):
            try:
                apply_overrides(params, {key: value})
            except ValidationError as err:
                first = err.errors()[0]
                raise TuneError(
                    f"{where}: {value!r} is not a valid value of {key}: {first['msg']}"
                ) from None
    if "train.epochs" in space and params.tune.epochs_per_trial is not None:
        raise TuneError(
            "tune.space['train.epochs']: tune.epochs_per_trial fixes the epochs of every "
            "trial; set it to null to search train.epochs"
        )
    return space


def _lookup(tree: Mapping[str, Any], dotted: str, where: str) -> Any:
    """The value at `a.b.c` of a nested mapping; a clear error for a missing key or a section."""
    node: Any = tree
    walked: list[str] = []
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            raise TuneError(f"{where}: {'.'.join(walked)} is a value, not a section")
        if part not in node:
            close = difflib.get_close_matches(part, [str(k) for k in node], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            section = ".".join(walked) or "params.yaml"
            raise TuneError(f"{where}: unknown key {part!r} in {section}{hint}")
        node = node[part]
        walked.append(part)
    if isinstance(node, Mapping):
        raise TuneError(f"{where}: {dotted} is a section, not a value; name one of its keys")
    return node


def boundary_values(dim: Dimension) -> list[Any]:
    """The extreme values a dimension can produce: its bounds, or every choice.

    >>> boundary_values(IntDimension(type="int", low=8, high=32, step=8))
    [8, 32]
    >>> boundary_values(CategoricalDimension(type="categorical", choices=(32, 64)))
    [32, 64]
    """
    if isinstance(dim, CategoricalDimension):
        return list(dim.choices)
    return [dim.low, dim.high]


def contains(dim: Dimension, value: Any) -> bool:
    """Whether the dimension can produce `value` (used to seed trial 0 with params.yaml's values).

    >>> contains(FloatDimension(type="float", low=1e-4, high=1e-2, log=True), 3e-3)
    True
    >>> contains(IntDimension(type="int", low=8, high=32, step=8), 12)
    False
    """
    if isinstance(dim, CategoricalDimension):
        return any(type(c) is type(value) and c == value for c in dim.choices)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if not dim.low <= value <= dim.high:
        return False
    if isinstance(dim, IntDimension):
        return isinstance(value, int) and (value - dim.low) % dim.step == 0
    if dim.step is not None:
        steps = (value - dim.low) / dim.step
        return math.isclose(steps, round(steps), abs_tol=1e-9)
    return True


def suggest_params(trial: optuna.Trial, space: Mapping[str, Dimension]) -> dict[str, Any]:
    """Draw one value per dimension from the trial (the Optuna parameter name is the dotted key).

    Floats are tidied to 10 significant digits (`tidy`), so a stepped 0.3 is
    trained, logged and recommended as 0.3, not 0.30000000000000004.
    """
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if isinstance(dim, CategoricalDimension):
            values[key] = trial.suggest_categorical(key, list(dim.choices))
        elif isinstance(dim, IntDimension):
            values[key] = trial.suggest_int(key, dim.low, dim.high, step=dim.step, log=dim.log)
        else:
            values[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
    return {key: tidy(value) for key, value in values.items()}


def tidy(value: Any) -> Any:
    """A float rounded to 10 significant digits; anything else unchanged.

    >>> tidy(0.1 + 0.2), tidy(0.0020554062603827007), tidy(32), tidy("adamw")
    (0.3, 0.00205540626, 32, 'adamw')
    """
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.10g}")
    return value


def apply_overrides(params: Params, overrides: Mapping[str, Any]) -> Params:
    """A copy of `params` with dotted keys replaced, validated like a loaded params.yaml.

    Raises:
        pydantic.ValidationError: a value the schema refuses.
    """
    tree = params.model_dump(mode="json")
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[leaf] = value
    return Params.model_validate(tree)


def baseline_values(params: Params, space: Mapping[str, Dimension]) -> dict[str, Any]:
    """params.yaml's own value of every dimension that can produce it (trial 0 of a new study)."""
    tree = params.model_dump(mode="json")
    values = {key: _lookup(tree, key, key) for key in space}
    return {key: v for key, v in values.items() if contains(space[key], v)}
