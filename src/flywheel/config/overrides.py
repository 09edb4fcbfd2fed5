"""`--set` overrides: `dotted.key=value` pairs, read into the mapping `load_params` applies.

The one reader of the pairs a person writes to change single values of
params.yaml: the CLI's `--set`, and the same pairs as a pipeline run carries
them to its steps (`flywheel.workflows`). Values are YAML, so `3` is a number,
`null` turns a gate off and `[a, b]` is a list.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from flywheel.config import ConfigError


class OverrideError(ConfigError):
    """One pair cannot be read: no `=`, no key, or a value that is not YAML."""

    def __init__(self, pair: str, reason: str) -> None:
        super().__init__(pair, reason)  # args stay (pair, reason): the error pickles

    @property
    def pair(self) -> str:
        """The pair as given."""
        return str(self.args[0])

    @property
    def reason(self) -> str:
        """What is wrong with it."""
        return str(self.args[1])

    def __str__(self) -> str:
        return f"override {self.pair!r}: {self.reason}"


def parse_override(pair: str) -> tuple[str, Any]:
    """One `dotted.key=value` pair into its key and its value, read as YAML.

    >>> parse_override(" train.optimizer = sgd")
    ('train.optimizer', 'sgd')

    Raises:
        OverrideError: no `=`, an empty key, or a value that is not YAML.
    """
    key, sep, value = pair.partition("=")
    if not sep or not key.strip():
        raise OverrideError(pair, "expected dotted.key=value")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise OverrideError(pair, f"the value is not YAML: {err}") from None


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """`dotted.key=value` pairs into a mapping of dotted keys; for a key given twice, the last wins.

    >>> parse_overrides(["train.epochs=3", "evaluate.gates.max_ece=null"])
    {'train.epochs': 3, 'evaluate.gates.max_ece': None}

    Raises:
        OverrideError: a pair that cannot be read (a `ConfigError`).
    """
    return dict(parse_override(pair) for pair in pairs)
