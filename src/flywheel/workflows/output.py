"""What a workflow step writes: progress lines for people, JSON for the step's outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOG_PREFIX = "[flywheel]"
"""Marks the lines a step prints for people (the local runner echoes them; pod logs show them)."""


def say(message: str) -> None:
    """Print one progress line for people, marked with `LOG_PREFIX`, flushed at once."""
    print(f"{LOG_PREFIX} {message}", flush=True)


def write_json(path: Path, value: Any) -> Path:
    """Write JSON (indented, keys sorted) to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True, allow_nan=False))
    return path
