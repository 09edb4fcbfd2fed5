"""`kill -9` at every step of a promote and a rollback, then the next command puts it right.

Each case runs `flywheel promote|rollback` as a real process (forked from a
warm one: `tests/support/forked_cli.py`) that SIGKILLs itself at one step
(`flywheel.registry.faults`: between two writes), then lets the next command
finish it (a rerun of the same command, or `flywheel models`)
and checks the invariants: `production` set to the transition's target,
`previous` the version it replaced (never the same), nothing pending, the
transition once in the model's log and once in the history of every version it
touched, and a further command changes nothing. First on the local store (an OS
file lock), then on a real `mlflow server` (a lease in the registry, left
behind by the killed holder and broken at once because its PID is gone).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flywheel import registry
from flywheel.cli import app
from flywheel.registry.faults import FAULT_ENV
from flywheel.registry.history import STATUS_LABELS
from tests.support.forked_cli import run_forked
from tests.support.processes import subprocess_env
from tests.support.registry_store import Store, mlflow_server, server_versions, use_registry
from tests.support.registry_store import aliases as _aliases
from tests.support.registry_store import bless as _bless
from tests.support.registry_store import register_versions as _register

pytestmark = pytest.mark.slow  # a real process per case

PROMOTE_STEPS = (
    "locked",  # the lock is held, nothing written
    "intent",
    "alias:previous",
    "alias:production",
    "unalias:staging",  # production set; staging dropped, candidate not yet (one stage alias)
    "record:promote:production:partial",
    "record:promote:production",
    "record:demote:previous:partial",
    "record:demote:previous",
    "record:retire:none:partial",
    "record:retire:none",
    "log",  # everything written but the pending intent's removal
)
ROLLBACK_STEPS = (
    "locked",
    "intent",
    "alias:previous",
    "alias:production",
    "record:rollback:production:partial",
    "record:rollback:production",
    "record:rollback:previous:partial",
    "record:rollback:previous",
    "log",
)


def _three_versions(name: str, versions: list[str]) -> tuple[str, str, str]:
    """q then p promoted (production p, previous q); v blessed against p, ready to promote."""
    q, p, v = versions
    _bless(name, q, champion=None)
    registry.promote(name, q, reason="first")
    _bless(name, p, champion=q)
    registry.promote(name, p, reason="second")
    _bless(name, v, champion=p)
    return q, p, v


def _killed_at(step: str, uri: str, cwd: Path, *args: str) -> None:
    """Run `flywheel ARGS` as a process that SIGKILLs itself at `step`; it must die there."""
    log = cwd / f"killed-at-{step.replace(':', '-')}.log"
    env = subprocess_env({"MLFLOW_TRACKING_URI": uri, "FLYWHEEL_USER": "killed", FAULT_ENV: step})
    code = run_forked(list(args), env, cwd, log)
    assert code == -signal.SIGKILL, (step, code, log.read_text())


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def _check_converged(
    name: str, action: str, production: str, previous: str, touched: dict[str, set[tuple[str, str]]]
) -> None:
    """The invariants after the next command: aliases, nothing pending, every record once."""
    aliases = _aliases(name)
    assert (aliases["production"], aliases["previous"]) == (production, previous)
    assert aliases["previous"] != aliases["production"]
    # one stage alias per version: production gave up staging and candidate
    assert production not in (aliases.get("staging"), aliases.get("candidate")), aliases
    tags = MlflowClient().get_registered_model(name).tags
    assert registry.TAG_PENDING not in tags
    latest = [e for e in registry.read_log(tags) if e.action in ("promote", "rollback")][-1]
    assert (latest.action, latest.production, latest.replaces) == (action, production, previous)
    assert [e.txid for e in registry.read_log(tags)].count(latest.txid) == 1
    for version, expected in touched.items():
        records = [
            (t.action, t.to_role)
            for t in registry.read_history(name, version)
            if t.txid == latest.txid
        ]
        assert sorted(records) == sorted(expected), (version, records)
        # its page opens on the role this transition left it in, once (never stacked)
        role = next(iter(expected))[1]
        description = MlflowClient().get_model_version(name, version).description or ""
        assert description.startswith(f"{STATUS_LABELS[role]} since {latest.at}"), description
        assert sum(description.count(f"{label} since ") for label in STATUS_LABELS.values()) == 1
    assert registry.recover(name) is None  # a further command finds nothing to finish
    assert _aliases(name) == aliases


def _promote_case(name: str, versions: list[str], step: str, uri: str, cwd: Path, i: int) -> None:
    q, p, v = _three_versions(name, versions)
    _killed_at(step, uri, cwd, "promote", v, "--model", name, "--reason", "ship it")
    if step == "locked" or i % 2 == 0:  # the rerun finishes it and says so
        out = _cli("promote", v, "--model", name, "--reason", "ship it")
        if step != "locked":
            assert "finished an interrupted promote" in out
            assert "the interrupted promote is finished" in out
    else:  # any registry command finishes it: here `flywheel models`
        assert "finished an interrupted promote" in _cli("models", "--model", name)
        assert "nothing changed" in _cli("promote", v, "--model", name, "--reason", "again")
    touched = {
        v: {("promote", "production")},
        p: {("demote", "previous")},
        q: {("retire", "none")},
    }
    _check_converged(name, "promote", v, p, touched)


def _rollback_case(name: str, versions: list[str], step: str, uri: str, cwd: Path, i: int) -> None:
    q, p, _ = _three_versions(name, versions)
    _killed_at(step, uri, cwd, "rollback", "--model", name, "--reason", "bad model")
    if step == "locked" or i % 2 == 0:
        out = _cli("rollback", "--model", name, "--reason", "bad model")
        if step != "locked":
            assert "finished an interrupted rollback" in out
            assert "nothing else changed" in out  # the rerun does not roll back twice
    else:
        assert "finished an interrupted rollback" in _cli("models", "--model", name)
    touched = {q: {("rollback", "production")}, p: {("rollback", "previous")}}
    _check_converged(name, "rollback", q, p, touched)


@pytest.mark.parametrize(("i", "step"), list(enumerate(PROMOTE_STEPS)))
def test_promote_killed_at_each_step_is_finished(
    uses_store: Store, tmp_path: Path, i: int, step: str
) -> None:
    name = f"crash-promote-{i}"
    _promote_case(name, _register(uses_store, name, 3), step, uses_store.uri, tmp_path, i)


@pytest.mark.parametrize(("i", "step"), list(enumerate(ROLLBACK_STEPS)))
def test_rollback_killed_at_each_step_is_finished(
    uses_store: Store, tmp_path: Path, i: int, step: str
) -> None:
    name = f"crash-rollback-{i}"
    _rollback_case(name, _register(uses_store, name, 3), step, uses_store.uri, tmp_path, i)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


SERVER_CASES = [  # every step runs on the local store above; here, one of each kind
    ("promote", 0, "locked"),  # the killed holder's lock model stays behind
    ("promote", 3, "alias:production"),  # between two alias writes
    ("promote", 4, "record:promote:production:partial"),  # half of a version's history
    ("rollback", 8, "log"),  # all written but the pending intent's removal
]


@pytest.mark.parametrize(("action", "i", "step"), SERVER_CASES)
def test_killed_transition_on_a_tracking_server_is_finished_without_waiting_for_the_lease(
    server: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    action: str,
    i: int,
    step: str,
) -> None:
    use_registry(monkeypatch, server)
    name = f"server-{action}-{i}"
    versions = server_versions(name, 3)
    case = _promote_case if action == "promote" else _rollback_case
    with caplog.at_level("WARNING", logger="flywheel.registry"):
        case(name, versions, step, server, tmp_path, i)
    # The dead holder's lock was broken at once (its PID is gone), never waited for.
    assert not [r for r in caplog.records if "waiting for the registry lock" in r.getMessage()]
    names = {m.name for m in MlflowClient().search_registered_models()}
    assert not any(n.startswith(name + registry.LOCK_SUFFIX) for n in names)


def test_another_transition_after_a_kill_finishes_it_then_asks_before_undoing_it(
    uses_store: Store, tmp_path: Path
) -> None:
    """A rollback run after a killed promote: the promote is finished first and named; the
    rollback, which would undo what the operator has not seen yet, waits for a rerun."""
    name = "crash-then-rollback"
    q, p, v = _three_versions(name, _register(uses_store, name, 3))
    _killed_at(
        "alias:previous",
        uses_store.uri,
        tmp_path,
        "promote",
        v,
        "--model",
        name,
        "--reason",
        "ship",
    )

    result = CliRunner().invoke(
        app, ["rollback", "--model", name, "--reason", "bad"], env={"COLUMNS": "200"}
    )

    assert result.exit_code == 1, result.output
    assert "this rollback first finished an interrupted promote" in result.output
    assert f"production is now version {v}" in result.output
    touched = {v: {("promote", "production")}, p: {("demote", "previous")}, q: {("retire", "none")}}
    _check_converged(name, "promote", v, p, touched)

    assert f"production → version {p}" in _cli("rollback", "--model", name, "--reason", "bad")
    assert (_aliases(name)["production"], _aliases(name)["previous"]) == (p, v)
