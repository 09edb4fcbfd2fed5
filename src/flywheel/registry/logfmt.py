"""The registry's records as people read them in the MLflow UI: one `key=value` line each.

The transition log on a registered model (`flywheel.transitions`) and the
history on each version (`flywheel.history`) are tags, because a tag write is
the registry's unit of crash safety. MLflow shows a tag's value as it is, so
they are written in logfmt (the `key=value` lines of Heroku's and Grafana
Loki's logs), not JSON:

    at=2026-12-07T10:00:00+00:00 action=promote production=3 replaces=2 by=ann reason='new data'

A value is quoted as a POSIX shell word (`shlex.quote`) when it needs it, so
`shlex` reads every line back exactly; empty values are left out, and a
newline in a value is written as a space (one record, one line). Values
written as JSON lists by earlier versions are still read.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping


def dump_line(record: Mapping[str, object]) -> str:
    """One record as a logfmt line; `None` and empty values are left out.

    >>> dump_line({"at": "2026-12-07T10:00", "action": "promote", "production": "3",
    ...            "replaces": None, "by": "ann", "reason": "better\\non the hold-out"})
    "at=2026-12-07T10:00 action=promote production=3 by=ann reason='better on the hold-out'"
    """
    words = []
    for key, value in record.items():
        text = "" if value is None else " ".join(str(value).splitlines())
        if text:
            words.append(f"{key}={shlex.quote(text)}")
    return " ".join(words)


def dumps(records: Iterable[Mapping[str, object]]) -> str:
    """Records as logfmt lines, in order."""
    return "\n".join(dump_line(record) for record in records)


def loads(text: str | None) -> list[dict[str, str]]:
    """The records of `dumps(...)` (or of a JSON list of objects); unreadable text reads as none.

    >>> loads(dumps([{"action": "promote", "reason": "a 'quoted' = reason", "note": ""}]))
    [{'action': 'promote', 'reason': "a 'quoted' = reason"}]
    >>> loads('[{"action": "rollback", "by": "ops"}]')
    [{'action': 'rollback', 'by': 'ops'}]
    >>> loads("action='unterminated")
    []
    """
    if not text or not text.strip():
        return []
    if text.lstrip().startswith("["):
        return _json_records(text)
    records = []
    try:
        for line in text.splitlines():
            words = shlex.split(line)
            if words:
                records.append(dict(word.partition("=")[::2] for word in words))
    except ValueError:  # hand-edited beyond reading
        return []
    return records


def _json_records(text: str) -> list[dict[str, str]]:
    """A JSON list of objects, as earlier versions wrote it (values as text)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        return []
    if not isinstance(raw, list):
        return []
    return [
        {str(k): str(v) for k, v in entry.items() if v is not None and v != ""}
        for entry in raw
        if isinstance(entry, dict)
    ]
