"""Who changed a version's aliases, when and why: the transitions recorded on each version.

The latest transition is written as one line in the `flywheel.transition` tag
(what the MLflow UI shows whole), and every transition, one logfmt line each
(`flywheel.registry.logfmt`), in `flywheel.history` (the newest `HISTORY_LIMIT`
kept): the record that crash-safe transitions (`flywheel.registry.journal`)
replay once by their id.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from flywheel.registry import logfmt
from flywheel.registry.access import RegistryAccess
from flywheel.registry.store import (
    NO_ROLE,
    _aliases_of,
    _client,
    _get_version,
    _verify_aliases,
    role_of,
)

TAG_HISTORY = "flywheel.history"
"""Every transition of the version, one logfmt line each (oldest first)."""


TAG_TRANSITION = "flywheel.transition"
"""The latest transition in one line (`Transition.line`)."""


LINE_CHARS = 250
"""The longest `flywheel.transition` value (the MLflow UI shows it whole)."""


HISTORY_LIMIT = 200
"""Transitions kept in `flywheel.history` per version (the oldest are dropped)."""


USER_ENV = "FLYWHEEL_USER"


@dataclass(frozen=True)
class Transition:
    """One change of a version's aliases, as recorded in its history.

    Attributes:
        at: UTC ISO time.
        action: register | bless | reject | supersede | promote | demote | retire | rollback.
        from_role: the alias the version held before (`none` if none of `ROLES`).
        to_role: the alias it holds after.
        by: who asked for it.
        reason: why.
        gates: blessing summary at the time (empty if not applicable).
        txid: the registry transition (`flywheel.registry.journal`) that wrote it, so a
            transition finished after a crash records each entry once (empty for others).
    """

    at: str
    action: str
    from_role: str
    to_role: str
    by: str
    reason: str
    gates: str = ""
    txid: str = ""

    def line(self) -> str:
        """One line for the version's page, cut to `LINE_CHARS`.

        >>> Transition("2026-12-07T10:00:00+00:00", "demote", "production", "previous", "bob",
        ...            "replaced by version 3").line()
        'demote production → previous by bob at 2026-12-07T10:00:00+00:00: replaced by version 3'
        """
        text = (
            f"{self.action} {self.from_role} → {self.to_role} by {self.by} at {self.at}: "
            f"{self.reason}"
        )
        return text if len(text) <= LINE_CHARS else text[: LINE_CHARS - 1] + "…"

    def compact(self) -> dict[str, str]:
        """Short keys for the history tag (`txid` as `id`; empty values are not written)."""
        out = {
            "at": self.at,
            "action": self.action,
            "from": self.from_role,
            "to": self.to_role,
            "by": self.by,
            "reason": self.reason,
            "gates": self.gates,
        }
        if self.txid:
            out["id"] = self.txid
        return out

    @classmethod
    def from_compact(cls, raw: Mapping[str, str]) -> Transition:
        """Read one `compact()` entry."""
        return cls(
            at=raw.get("at", ""),
            action=raw.get("action", ""),
            from_role=raw.get("from", NO_ROLE),
            to_role=raw.get("to", NO_ROLE),
            by=raw.get("by", ""),
            reason=raw.get("reason", ""),
            gates=raw.get("gates", ""),
            txid=raw.get("id", ""),
        )


def resolve_user(who: str | None = None) -> str:
    """Who is acting: `who`, else `FLYWHEEL_USER`, else the login name, else `unknown`."""
    if who:
        return who
    if os.environ.get(USER_ENV):
        return os.environ[USER_ENV]
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def utc_now() -> str:
    """The current UTC time, ISO 8601 with seconds (`2026-11-23T09:30:00+00:00`)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _read_history(tags: Mapping[str, str]) -> list[Transition]:
    # hand-edited beyond reading: the next transition starts a fresh history
    return [Transition.from_compact(e) for e in logfmt.loads(tags.get(TAG_HISTORY))]


def _record(client: RegistryAccess, name: str, version: str, transition: Transition) -> None:
    """Write `transition` as the version's latest-transition tags and append it to its history.

    A transition with a `txid` already in the history is not appended again (a
    transition finished after a crash replays its records); the history tag is
    written last, so a record killed half-way is written in full by the replay.
    """
    from flywheel.registry.faults import fault_point

    current = _get_version(client, name, version)
    recorded = _read_history(current.tags)
    if transition.txid and any(
        (t.txid, t.action, t.to_role) == (transition.txid, transition.action, transition.to_role)
        for t in recorded
    ):
        return
    history = [t.compact() for t in recorded]
    history = [*history, transition.compact()][-HISTORY_LIMIT:]
    client.set_model_version_tag(name, version, TAG_TRANSITION, transition.line())
    if transition.txid:
        fault_point(f"record:{transition.action}:{transition.to_role}:partial")
        description = with_status(current.description or "", transition)
        if description != (current.description or ""):
            client.update_model_version(name, version, description=description)
    client.set_model_version_tag(name, version, TAG_HISTORY, logfmt.dumps(history))


STATUS_LABELS = {
    "production": "In production",
    "previous": "Previous (the rollback target)",
    "none": "Not served",
}
"""The first words of a version's description after a transition, by the role it holds."""


def with_status(description: str, transition: Transition) -> str:
    """`description` opened by the role a transition left the version in, and why.

    MLflow shows a version's description first on its page and its first
    characters in the versions list, so a demoted version says so there. A
    status an earlier transition wrote is replaced, never stacked.

    >>> t = Transition("2026-12-07T10:00:00+00:00", "demote", "production", "previous", "bob",
    ...                "replaced by version 3")
    >>> print(with_status("Blessed against version 1.", t))  # doctest: +NORMALIZE_WHITESPACE
    Previous (the rollback target) since 2026-12-07T10:00:00+00:00: demote production →
    previous by bob: replaced by version 3
    <BLANKLINE>
    Blessed against version 1.
    >>> with_status(with_status("Blessed.", t), t) == with_status("Blessed.", t)
    True
    """
    label = STATUS_LABELS.get(transition.to_role, transition.to_role)
    status = (
        f"{label} since {transition.at}: {transition.action} {transition.from_role} → "
        f"{transition.to_role} by {transition.by}: {transition.reason}"
    )[:LINE_CHARS]
    head, _, rest = description.partition("\n\n")
    if any(head.startswith(f"{known} since ") for known in STATUS_LABELS.values()):
        description = rest
    return f"{status}\n\n{description}" if description else status


def _record_alias_lost(
    client: RegistryAccess,
    name: str,
    version: str,
    aliases: Mapping[str, str],
    alias: str,
    transition: Transition,
) -> None:
    """Record on `version` that it lost `alias` (its roles before and after filled in)."""
    before = _aliases_of(aliases, version)
    after = [a for a in before if a != alias]
    _record(
        client,
        name,
        version,
        replace(transition, from_role=role_of(before), to_role=role_of(after)),
    )


def read_history(name: str, version: str) -> list[Transition]:
    """Every recorded transition of a version, oldest first."""
    return _read_history(_get_version(_client(), name, version).tags)


def _take_alias(
    client: RegistryAccess,
    name: str,
    alias: str,
    version: str,
    aliases: Mapping[str, str],
    *,
    at: str,
    by: str,
    reason: str,
) -> None:
    """Point `alias` at `version`, check it, and record on the version that held it that it lost it.

    Args:
        aliases: the model's aliases before the change (alias → version).
        at: when, for the history.
        by: who, for the history.
        reason: why the old holder lost the alias, for its history.

    Raises:
        ConcurrentModificationError: the alias does not read back as written.
    """
    replaced = aliases.get(alias)
    client.set_registered_model_alias(name, alias, version)
    _verify_aliases(client, name, {alias: version})
    if replaced is not None and replaced != version:
        _record_alias_lost(
            client, name, replaced, aliases, alias, Transition(at, "supersede", "", "", by, reason)
        )
