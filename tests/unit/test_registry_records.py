"""The registry's records, without a registry: intents, the model's log, lock holders, reasons."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from flywheel.registry import (
    Intent,
    LockHolder,
    LogEntry,
    RegistryError,
    Transition,
    logfmt,
    read_log,
)
from flywheel.registry.journal import (
    MODEL_TAG_CHARS,
    REASON_CHARS,
    TAG_LOG,
    TAG_PENDING,
    check_reason,
    last_transition,
    pending_intent,
)


def _intent() -> Intent:
    t = Transition(
        "2026-12-06T10:00:00+00:00", "promote", "staging", "production", "ann", "r", "", "tx"
    )
    return Intent(
        "tx",
        "promote",
        "3",
        "2",
        "ann",
        "ship",
        t.at,
        "ann@host pid 1",
        {"previous": "2", "production": "3"},
        (("3", t),),
        {"staging": "3", "candidate": "3"},
    )


def test_an_intent_reads_back_as_written_aliases_in_order() -> None:
    intent = _intent()
    back = Intent.from_json(intent.to_json())
    assert back == intent
    assert list(back.aliases) == ["previous", "production"]  # the write order survives
    assert "promote of version 3 by ann" in back.describe()
    older = json.loads(intent.to_json())
    del older["removed"]  # an intent written by a flywheel before one stage alias per version
    assert Intent.from_json(json.dumps(older)).removed == {}


@pytest.mark.parametrize("raw", ["", "{", '{"id": "x"}', "[]", '{"id":1,"records":3}'])
def test_a_broken_pending_tag_is_a_clear_error(raw: str) -> None:
    if not raw:
        assert pending_intent("m", {TAG_PENDING: raw}) is None
        return
    with pytest.raises(RegistryError, match="holds no readable transition"):
        pending_intent("m", {TAG_PENDING: raw})


@pytest.mark.parametrize(
    ("raw", "actions"),
    [
        (None, []),
        ("not json", []),
        ('[{"txid":"a","action":"promote","at":"t","by":"b","reason":"r"}]', ["promote"]),
        (
            '[{"txid":"a"}, 3, {"txid":"b","action":"unlock","at":"t","by":"b","reason":"r"}]',
            ["unlock"],
        ),
    ],
)
def test_the_log_reads_what_it_can(raw: str | None, actions: list[str]) -> None:
    tags = {} if raw is None else {TAG_LOG: raw}
    assert [e.action for e in read_log(tags)] == actions


def test_the_log_is_read_back_exactly_whatever_people_wrote() -> None:
    """Reasons, names and notes with quotes, `=`, `#`, arrows and newlines survive the log."""
    hostile = [
        LogEntry("a1", "promote", "t1", "d'Artagnan", 'it\'s "better" = 0.93 # really', "2"),
        LogEntry("b2", "rollback", "t2", "ops team", "back → v1\nsee INC-7", "1", "2", "n=1"),
        LogEntry("c3", "unlock", "t3", "ann", "stale", note="broke the lock of x@y pid 3"),
    ]
    text = logfmt.dumps(e.record() for e in hostile)
    assert "{" not in text  # no JSON
    assert len(text.splitlines()) == 3  # a line per entry
    back = read_log({TAG_LOG: text})
    assert [replace(e, reason=" ".join(e.reason.splitlines())) for e in hostile] == back


def test_the_last_transition_skips_unlocks() -> None:
    entries = [
        {
            "txid": "a",
            "action": "rollback",
            "at": "t1",
            "by": "b",
            "reason": "r",
            "production": "1",
        },
        {"txid": "b", "action": "unlock", "at": "t2", "by": "b", "reason": "r"},
    ]
    latest = last_transition({TAG_LOG: json.dumps(entries)})
    assert latest is not None
    assert (latest.txid, latest.production) == ("a", "1")


@pytest.mark.parametrize(
    ("reason", "error"),
    [("why", None), ("  ", "needs a reason"), ("x" * (REASON_CHARS + 1), "at most 500")],
)
def test_reasons_are_given_and_fit(reason: str, error: str | None) -> None:
    if error is None:
        check_reason(reason, "a rollback")
    else:
        with pytest.raises(RegistryError, match=error):
            check_reason(reason, "a rollback")


def test_the_longest_plan_fits_a_model_tag() -> None:
    """A promote's intent with the longest reason (3 records) stays under the column's bound."""
    at, r = "2026-12-06T10:00:00+00:00", "x" * REASON_CHARS
    gates = "blessed: 12/12 gates passed"
    who = "a" * 40
    records = tuple(
        (v, Transition(at, a, "staging", to, who, why, gates, "t" * 16))
        for v, a, to, why in (
            ("123", "promote", "production", f"{r} (replaces 122)"),
            ("122", "demote", "previous", f"replaced by version 123 (promoted by {who}: {r})"),
            (
                "121",
                "retire",
                "none",
                f"version 122 is the new previous version (version 123 promoted by {who})",
            ),
        )
    )
    intent = Intent(
        "t" * 16,
        "promote",
        "123",
        "122",
        "a" * 40,
        r,
        at,
        "a" * 60,
        {"previous": "122", "production": "123"},
        records,
        {"staging": "123", "candidate": "123"},
    )
    assert len(intent.to_json()) <= MODEL_TAG_CHARS


def test_a_holder_of_an_older_flywheel_or_by_hand_reads_as_expired() -> None:
    old = LockHolder.from_json(json.dumps({"owner": "crashed", "expires": 0.0}))
    assert old.is_expired()
    assert not old.is_dead()  # no host, no PID: only the lease decides
    assert old.describe().startswith("crashed since ?")
    assert LockHolder.from_json("garbage").is_expired()


def test_a_holder_on_this_host_is_dead_once_its_process_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        now = time.time()
        from flywheel.registry.holder import _process_start

        holder = LockHolder(
            "o", "ann", socket.gethostname(), child.pid, _process_start(child.pid), now, now + 60
        )
        assert not holder.is_dead()
        assert f"ann@{socket.gethostname()} pid {child.pid}" in holder.describe()
        assert "lease expires" in holder.describe()
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not holder.is_dead() and time.monotonic() < deadline:
            time.sleep(0.05)  # a zombie until reaped: dead already
        assert holder.is_dead()
    finally:
        child.kill()
        child.wait(timeout=10)
    reused = LockHolder("o", "ann", socket.gethostname(), os.getpid(), "1", 0.0, 1e12)
    assert reused.is_dead()  # our PID, another start time: the holder's PID was reused
    elsewhere = LockHolder("o", "ann", "another-host", child.pid, None, 0.0, 1e12)
    assert not elsewhere.is_dead()  # another host's PID means nothing here
