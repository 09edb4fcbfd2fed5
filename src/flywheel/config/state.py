"""`state:` — where the state that serving, monitoring and curation share lives."""

from __future__ import annotations

from pydantic import field_validator

from flywheel.config.base import FrozenConfig


class StateConfig(FrozenConfig):
    """The root of the shared state (`flywheel.storage`).

    The prediction log, the Evidently workspace and reports, the labelling
    queue and exports and the ground truth live under it. `FLYWHEEL_STATE_URL`
    overrides `url`; with neither, the local state folder (`.flywheel/`).
    """

    url: str | None = None  # e.g. s3://flywheel/state (endpoint and keys: the AWS_* environment)

    @field_validator("url")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("state.url is blank: give a folder or a URL (s3://bucket/prefix)")
        return value
