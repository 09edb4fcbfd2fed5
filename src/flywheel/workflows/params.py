"""The configuration a step runs with, from the parameters a pipeline run carries.

A pipeline run carries the whole params.yaml as one parameter (`params_document`,
so a cached step's key changes whenever any value does), the run's `--set` pairs,
and a few values as parameters of their own (`FIRST_CLASS_PARAMETERS`); each step
reads them back with `resolve_params`. Building a run's arguments is the
pipelines' (`pipelines.arguments`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from flywheel.config import ConfigError, Params, parse_params
from flywheel.config.overrides import parse_overrides

FIRST_CLASS_PARAMETERS: dict[str, str] = {
    "task": "train.task",
    "epochs": "train.epochs",
    "learning_rate": "train.lr",
    "min_accuracy": "evaluate.gates.min_accuracy",
}
"""Pipeline parameters of their own (shown and editable one by one in the KFP UI) → params key."""


def params_document(params: Params) -> str:
    """params as the one-line JSON text the pipelines carry in their `params` parameter.

    Text rather than a mapping because KFP's parameters cannot hold nulls, and
    params.yaml has them (`null` turns a gate off); one line because the KFP
    compiler copies defaults into a YAML comment and a line break there breaks
    the compiled file. Every key is written out, so a run shows the whole
    configuration it used. Keys are sorted: the text is part of the cache key of
    every step, and the same configuration must always read the same.
    """
    return json.dumps(params.model_dump(mode="json"), sort_keys=True, allow_nan=False)


def resolve_params(
    params: str | Mapping[str, Any],
    overrides: Sequence[str] = (),
    *,
    task: str | None = None,
    epochs: int | None = None,
    learning_rate: float | None = None,
    min_accuracy: float | None = None,
) -> Params:
    """The configuration a step runs with: params.yaml, the overrides, then the first-class ones.

    The pipeline carries the whole params.yaml as one parameter (so a cached
    step's key changes whenever any value does), the `--set` pairs of the run,
    and a few values as parameters of their own; those win over both.

    Args:
        params: params.yaml as JSON text (the pipeline's `params`) or as a mapping.
        overrides: `dotted.key=value` pairs, e.g. `["train.batch_size=64"]`.
        task: `train.task`, when given: in a plan with a section per task
            (`tasks`), the run takes that task's values.
        epochs: `train.epochs`, when given.
        learning_rate: `train.lr`, when given.
        min_accuracy: `evaluate.gates.min_accuracy`, when given.

    A run that switches the task of a pipeline built for another one leaves a
    first-class parameter at the value it was built with to the run's task's
    section: `epochs` built as the detector's 30 becomes the recogniser's when
    the run asks for `task=recognition` without giving `epochs` a new value.

    Raises:
        ConfigError: not JSON, or the result does not match the schema (names the key).
    """
    if isinstance(params, str):
        try:
            raw = json.loads(params)
        except json.JSONDecodeError as err:
            raise ConfigError(f"pipeline parameter params: not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError("pipeline parameter params: expected a mapping at the top level")
    else:
        raw = dict(params)
    merged = parse_overrides(overrides)
    given = {"epochs": epochs, "learning_rate": learning_rate, "min_accuracy": min_accuracy}
    built: Params | None = None
    if task:
        built = parse_params(raw, merged, source="pipeline parameters")
        switched = built.train.task != task
        merged["train.task"] = task
        if not switched:
            built = None
    for name, value in given.items():
        if value is None:
            continue
        key = FIRST_CLASS_PARAMETERS[name]
        if built is not None and value == dotted_value(built, key):
            continue  # left as built for the other task: the run's task's section decides
        merged[key] = value
    return parse_params(raw, merged, source="pipeline parameters")


def dotted_value(params: Params, key: str) -> Any:
    """The value at a dotted key of `params` (`train.lr`)."""
    node: Any = params
    for part in key.split("."):
        node = getattr(node, part)
    return node
