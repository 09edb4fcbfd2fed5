"""What every configuration section shares: frozen, extra keys refused, one error type."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """`params.yaml` is missing, unreadable or does not match the schema."""


class FrozenConfig(BaseModel):
    """A section of params.yaml: immutable once loaded; an unknown key is an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
