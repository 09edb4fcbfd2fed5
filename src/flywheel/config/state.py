"""`state:` — where the state that serving, monitoring and curation share lives."""

from __future__ import annotations

import re

from pydantic import field_validator

from flywheel.config.base import FrozenConfig

_MANGLED_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/?(?!/)")
"""`s3:/bucket` or `s3:bucket`: a URL missing a slash, which would read as a local folder."""


def check_location(text: str) -> str:
    """`text` if it is a local path or a well-formed URL, else a ValueError saying why.

    >>> check_location("s3:/bucket/state")
    Traceback (most recent call last):
    ...
    ValueError: 's3:/bucket/state' looks like a URL missing a slash: write s3://bucket/...
    """
    if "://" not in text and _MANGLED_URL.match(text) and not text.startswith("file:"):
        scheme = text.split(":", 1)[0]
        raise ValueError(f"{text!r} looks like a URL missing a slash: write {scheme}://bucket/...")
    return text


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
        if value is None:
            return value
        if not value.strip():
            raise ValueError("state.url is blank: give a folder or a URL (s3://bucket/prefix)")
        return check_location(value)
