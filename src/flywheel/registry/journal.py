"""Transitions that survive `kill -9`: the intent is written before the first alias write.

A promote or rollback is several writes (two aliases, a record on each version
it touches, the model's transition log), and MLflow has no transaction across
them. So a transition first writes its whole plan, an `Intent` (who, why, from,
to, every alias and every record it will write), as the registered model's tag
`flywheel.pending`: a registry-level record that a tracking server and a local
store both hold. Then it writes, and deletes the tag last.

Whoever takes the registry lock next (`registry_lock`, any registry command:
promote, rollback, register, evaluate, `models`, `registry unlock`) finds a
pending intent only if its writer died holding the lock, and finishes it by
replaying the plan. Every write of the plan is idempotent (aliases are set to
the planned version, a record carrying the intent's id is appended once), so a
replay killed in turn is replayed again; the transition is never undone,
because its checks (blessing, champion) passed before the intent was written.

The model's log (`flywheel.transitions` on the registered model, one logfmt
line per entry: `flywheel.registry.logfmt`) holds every finished transition
and every `registry unlock`, newest last, and says which were finished after a
crash and by whom.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from flywheel.registry import logfmt
from flywheel.registry.access import RegistryAccess
from flywheel.registry.errors import RegistryError
from flywheel.registry.faults import fault_point
from flywheel.registry.history import HISTORY_LIMIT, Transition, _record, utc_now
from flywheel.registry.store import _get_model, _verify_aliases

TAG_PENDING = "flywheel.pending"
"""The registered model's tag holding the transition in progress (an `Intent`, JSON)."""


TAG_LOG = "flywheel.transitions"
"""The registered model's log of finished transitions and unlocks (logfmt lines, oldest first)."""


MODEL_TAG_CHARS = 5000
"""The longest registered-model tag value every MLflow backend keeps: the column is
VARCHAR(5000) (SQLite ignores the bound, PostgreSQL and MySQL refuse longer values)."""


REASON_CHARS = 500
"""The longest reason a transition accepts (it is written in the intent several times)."""


TRANSITIONS = ("promote", "rollback")
"""The actions that move `production` (an `unlock` is logged but moves nothing)."""


@dataclass(frozen=True)
class Intent:
    """A transition's whole plan, written before its first write.

    Attributes:
        txid: unique id; every record of the transition carries it.
        action: `promote` or `rollback`.
        production: the version `production` points at afterwards.
        replaces: the version it pointed at before (None: none).
        by: who asked for it.
        reason: why.
        at: when it started (UTC ISO).
        process: the process that started it (`user@host pid N`), for messages.
        aliases: alias → version, in the order they are written.
        removed: alias → version: aliases deleted where they still point at that version
            (the new production version's `staging` and `candidate`: a version holds one
            stage alias).
        records: (version, transition) to append to each version's history.
    """

    txid: str
    action: str
    production: str
    replaces: str | None
    by: str
    reason: str
    at: str
    process: str
    aliases: Mapping[str, str] = field(default_factory=dict)
    records: tuple[tuple[str, Transition], ...] = ()
    removed: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """`promote of version 3 by alice at 2026-…` (replacing 2): why`."""
        return (
            f"{self.action} of version {self.production} by {self.by} at {self.at} "
            f"(replacing {self.replaces or 'nothing'}): {self.reason}"
        )

    def to_json(self) -> str:
        """Compact JSON for the `flywheel.pending` tag (`from_json` reads it back)."""
        return json.dumps(
            {
                "id": self.txid,
                "action": self.action,
                "production": self.production,
                "replaces": self.replaces,
                "by": self.by,
                "reason": self.reason,
                "at": self.at,
                "process": self.process,
                "aliases": dict(self.aliases),
                "removed": dict(self.removed),
                "records": [{"version": v, **t.compact()} for v, t in self.records],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Intent:
        """Parse `to_json`'s output.

        Raises:
            ValueError: not an intent.
        """
        try:
            raw = json.loads(text)
            return cls(
                txid=str(raw["id"]),
                action=str(raw["action"]),
                production=str(raw["production"]),
                replaces=None if raw["replaces"] is None else str(raw["replaces"]),
                by=str(raw["by"]),
                reason=str(raw["reason"]),
                at=str(raw["at"]),
                process=str(raw.get("process", "?")),
                aliases={str(k): str(v) for k, v in raw["aliases"].items()},
                records=tuple(
                    (str(r["version"]), Transition.from_compact(r)) for r in raw["records"]
                ),
                removed={str(k): str(v) for k, v in raw.get("removed", {}).items()},
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
            raise ValueError(f"not a transition intent: {err!r}") from None


@dataclass(frozen=True)
class LogEntry:
    """One entry of the model's transition log.

    Attributes:
        txid: the transition's id (an unlock's own id).
        action: `promote`, `rollback` or `unlock`.
        at: when it started (UTC ISO).
        by: who asked for it.
        reason: why.
        production: the version in production afterwards (None for an unlock).
        replaces: the version it replaced.
        note: how it ended when not by its own process (finished after a crash),
            or, for an unlock, whose lock was broken.
    """

    txid: str
    action: str
    at: str
    by: str
    reason: str
    production: str | None = None
    replaces: str | None = None
    note: str = ""

    def record(self) -> dict[str, str | None]:
        """The entry as the log writes it: when and what first, its id last."""
        return {
            "at": self.at,
            "action": self.action,
            "production": self.production,
            "replaces": self.replaces,
            "by": self.by,
            "reason": self.reason,
            "note": self.note,
            "id": self.txid,
        }

    @classmethod
    def from_record(cls, raw: Mapping[str, str]) -> LogEntry:
        """Read one `record()` (or an earlier version's JSON entry, whose id is `txid`)."""
        return cls(
            txid=raw.get("id") or raw.get("txid", ""),
            action=raw["action"],
            at=raw["at"],
            by=raw["by"],
            reason=raw["reason"],
            production=raw.get("production"),
            replaces=raw.get("replaces"),
            note=raw.get("note", ""),
        )

    def describe(self) -> str:
        """One line for messages."""
        if self.action not in TRANSITIONS:
            return f"{self.action} by {self.by} at {self.at}: {self.reason}" + (
                f" ({self.note})" if self.note else ""
            )
        return (
            f"{self.action} of version {self.production} by {self.by} at {self.at} "
            f"(replacing {self.replaces or 'nothing'}): {self.reason}"
        ) + (f"; {self.note}" if self.note else "")


def new_txid() -> str:
    """A fresh transition id."""
    return uuid.uuid4().hex[:16]


def this_process(user: str) -> str:
    """`user@host pid N`: who holds a lock or runs a transition, for messages."""
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def read_log(tags: Mapping[str, str]) -> list[LogEntry]:
    """The model's log from its tags, oldest first (a hand-broken log reads as empty)."""
    return [
        LogEntry.from_record(e)
        for e in logfmt.loads(tags.get(TAG_LOG))
        if {"action", "at", "by", "reason"} <= set(e) and ({"id", "txid"} & set(e))
    ]


def last_transition(tags: Mapping[str, str]) -> LogEntry | None:
    """The latest finished promote or rollback in the model's log."""
    return next((e for e in reversed(read_log(tags)) if e.action in TRANSITIONS), None)


def pending_intent(name: str, tags: Mapping[str, str]) -> Intent | None:
    """The transition in progress (or left half-done by a dead process), None if none.

    Raises:
        RegistryError: the tag is there but unreadable (edited by hand).
    """
    raw = tags.get(TAG_PENDING)
    if not raw:
        return None
    try:
        return Intent.from_json(raw)
    except ValueError as err:
        raise RegistryError(
            f"model {name!r}: the tag {TAG_PENDING} holds no readable transition ({err}); "
            f"inspect it in the MLflow UI and delete it to go on"
        ) from None


def check_reason(reason: str, what: str) -> None:
    """A transition's reason must be given, and short enough for the intent.

    Raises:
        RegistryError: empty, or longer than `REASON_CHARS`.
    """
    if not reason.strip():
        raise RegistryError(f"{what} needs a reason (it is recorded)")
    if len(reason) > REASON_CHARS:
        raise RegistryError(
            f"the reason of {what} has {len(reason)} characters, at most {REASON_CHARS} fit "
            "in the registry: give a short reason and a link to the long story"
        )


def append_log(client: RegistryAccess, name: str, entry: LogEntry) -> None:
    """Append `entry` to the model's log, once (an entry whose id is there is not added again).

    The log keeps the newest entries that fit in one registered-model tag
    (`MODEL_TAG_CHARS`); every version's own history keeps its transitions in full.
    """
    entries = read_log(_get_model(client, name).tags)
    if any(e.txid == entry.txid for e in entries):
        return
    kept = [e.record() for e in [*entries, entry]][-HISTORY_LIMIT:]
    text = logfmt.dumps(kept)
    while len(text) > MODEL_TAG_CHARS and len(kept) > 1:
        kept = kept[1:]
        text = logfmt.dumps(kept)
    client.set_registered_model_tag(name, TAG_LOG, text)


def run_transition(client: RegistryAccess, name: str, intent: Intent) -> None:
    """Write the intent, then its plan, then clear it: the transition, crash-safe.

    Must run under the registry lock, after the transition's checks.

    Raises:
        RegistryError: the plan does not fit in a registered-model tag.
    """
    plan = intent.to_json()
    if len(plan) > MODEL_TAG_CHARS:
        raise RegistryError(
            f"model {name!r}: the {intent.action} plan needs {len(plan)} characters, more than "
            f"a registry tag holds ({MODEL_TAG_CHARS}); shorten the reason"
        )
    client.set_registered_model_tag(name, TAG_PENDING, plan)
    fault_point("intent")
    _complete(client, name, intent, note="")


def finish_pending(client: RegistryAccess, name: str, finisher: str) -> Intent | None:
    """Finish the transition a dead process left half-done, if any; returns its intent.

    Must run under the registry lock: then a pending intent cannot belong to a
    live process (it would hold the lock).

    Args:
        finisher: who finishes it (`this_process`), for the log.
    """
    intent = pending_intent(name, _get_model(client, name).tags)
    if intent is None:
        return None
    _complete(
        client,
        name,
        intent,
        note=f"finished by {finisher} at {utc_now()} after {intent.process} died half-way",
    )
    return intent


def _complete(client: RegistryAccess, name: str, intent: Intent, *, note: str) -> None:
    """Replay the plan (every step idempotent), log it, clear the intent."""
    for alias, version in intent.aliases.items():
        client.set_registered_model_alias(name, alias, version)
        fault_point(f"alias:{alias}")
    for alias, version in intent.removed.items():
        if _get_model(client, name).aliases.get(alias) == version:
            client.delete_registered_model_alias(name, alias)
        fault_point(f"unalias:{alias}")
    _verify_aliases(client, name, intent.aliases, absent=intent.removed)
    for version, transition in intent.records:
        _record(client, name, version, transition)
        fault_point(f"record:{transition.action}:{transition.to_role}")
    append_log(
        client,
        name,
        LogEntry(
            intent.txid,
            intent.action,
            intent.at,
            intent.by,
            intent.reason,
            intent.production,
            intent.replaces,
            note,
        ),
    )
    fault_point("log")
    client.delete_registered_model_tag(name, TAG_PENDING)
