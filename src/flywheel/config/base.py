"""What every configuration section shares: frozen, extra keys refused, one error type."""

from __future__ import annotations

import unicodedata

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """`params.yaml` is missing, unreadable or does not match the schema."""


class FrozenConfig(BaseModel):
    """A section of params.yaml: immutable once loaded; an unknown key is an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def nfc(text: str) -> str:
    """`text` in Unicode normal form C, the one form names are compared in.

    macOS writes file names decomposed (NFD: "u" + combining diaeresis), most
    editors and Label Studio composed (NFC: "ü"); the two look alike and
    compare unequal. Every class name, label and folder name is compared
    after this.

    >>> nfc("gru\u0308n") == "grün"
    True
    """
    return unicodedata.normalize("NFC", text)


def distinct_names(values: tuple[str, ...]) -> tuple[str, ...]:
    """`values` in NFC, checked to be a non-empty list of distinct names (a field validator's rule).

    >>> distinct_names(("clean", "blur"))
    ('clean', 'blur')
    """
    values = tuple(nfc(v) for v in values)
    if not values or len(set(values)) != len(values):
        raise ValueError("must be a non-empty list of distinct names")
    return values


def validation_metric(value: str) -> str:
    """`value`, checked to name a validation metric (`val_<metric>`).

    >>> validation_metric("val_loss")
    'val_loss'
    """
    if not value.startswith("val_"):
        raise ValueError(f"must name a validation metric ('val_<metric>'), got {value!r}")
    return value
