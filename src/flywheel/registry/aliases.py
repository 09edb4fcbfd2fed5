"""Serving's aliases: `promote` a blessed version to `production`, `rollback` to `previous`.

`promote` refuses a version that is not blessed, or blessed against a champion
that is no longer `production`; `rollback` swaps `production` and `previous`, so
a second rollback undoes the first (see `flywheel.registry`).

Both are crash-safe transitions (`flywheel.registry.journal`): the plan is
written before the first alias write and finished by the next command if the
process dies. Both refuse to undo a transition that another process made while
they waited for the lock (`TransitionOvertakenError`), unless forced: the
operator decided on a registry that is no longer there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flywheel.registry.access import StoredVersion
from flywheel.registry.blessing import Verdict, _load_record, _verdict_from_tags
from flywheel.registry.errors import (
    AliasNotFoundError,
    PromotionRefusedError,
    StaleBlessingError,
    TransitionOvertakenError,
)
from flywheel.registry.history import Transition, resolve_user, utc_now
from flywheel.registry.journal import (
    Intent,
    LogEntry,
    check_reason,
    last_transition,
    new_txid,
    run_transition,
    this_process,
)
from flywheel.registry.lock import LockStrategy, registry_lock
from flywheel.registry.store import (
    ALIAS_CANDIDATE,
    ALIAS_PREVIOUS,
    ALIAS_PRODUCTION,
    ALIAS_STAGING,
    _aliases_in,
    _aliases_of,
    _client,
    _get_model,
    _get_version,
    role_of,
)


@dataclass(frozen=True)
class AliasChange:
    """What `promote` or `rollback` did.

    Attributes:
        model_name: the registered model.
        production: the version in production afterwards.
        previous: the version kept as `previous` afterwards (None if none).
        changed: False when this call changed nothing itself (the version already
            was production, or it only finished the same transition left half-done).
        transition: the record written on the version now in production.
        finished: a transition a killed process left half-done, finished by this
            call before anything else (None if there was none).
    """

    model_name: str
    production: str
    previous: str | None
    changed: bool
    transition: Transition | None = None
    finished: Intent | None = None


def promote(
    name: str,
    version: str,
    *,
    reason: str,
    who: str | None = None,
    lock: LockStrategy = "auto",
    lock_timeout: float = 60.0,
    force: bool = False,
) -> AliasChange:
    """Move `production` to a blessed version; the replaced version becomes `previous`.

    Idempotent: promoting the version already in production changes nothing; a
    promote of the same version that was killed half-way is finished (`finished`).

    Args:
        name: the registered model.
        version: the version to serve.
        reason: why (recorded).
        who: who (recorded; default `resolve_user()`).
        lock: the `registry_lock` strategy.
        lock_timeout: seconds to wait for a concurrent transition.
        force: promote even if another transition moved `production` while this
            one waited for the lock (the blessing must still be against the new
            production).

    Raises:
        ModelNotFoundError, VersionNotFoundError: no such model or version.
        PromotionRefusedError: never evaluated, or not blessed (`failed_gates` names the gates).
        StaleBlessingError: blessed against a champion that is no longer production.
        TransitionOvertakenError: another transition moved production while this one waited.
        RegistryLockTimeout: another transition held the lock too long.
        ConcurrentModificationError: the aliases changed under us without the lock.
    """
    check_reason(reason, "a promotion")
    by = resolve_user(who)
    version = str(version)
    client = _client()
    seen = last_transition(_get_model(client, name).tags)
    with registry_lock(name, strategy=lock, timeout=lock_timeout) as finished:
        candidate = _get_version(client, name, version)
        model = _get_model(client, name)
        aliases = _aliases_in(model)
        current = aliases.get(ALIAS_PRODUCTION)
        if current == version:
            return AliasChange(
                name, version, aliases.get(ALIAS_PREVIOUS), changed=False, finished=finished
            )
        _refuse_if_overtaken(name, "promote", seen, model.tags, force, finished)
        blessing = _promotable_verdict(name, version, candidate, current)
        old_previous = aliases.get(ALIAS_PREVIOUS)
        txid, at = new_txid(), utc_now()
        transition = Transition(
            at,
            "promote",
            role_of(_aliases_of(aliases, version)),
            ALIAS_PRODUCTION,
            by,
            f"{reason} (replaces {current or 'nothing'})",
            blessing.summary,
            txid,
        )
        records = [(version, transition)]
        if current is not None:
            records.append(
                (
                    current,
                    Transition(
                        at,
                        "demote",
                        ALIAS_PRODUCTION,
                        ALIAS_PREVIOUS,
                        by,
                        f"replaced by version {version} (promoted by {by}: {reason})",
                        txid=txid,
                    ),
                )
            )
        if old_previous is not None and old_previous not in (version, current):
            before = _aliases_of(aliases, old_previous)
            after = [a for a in before if a != ALIAS_PREVIOUS]
            records.append(
                (
                    old_previous,
                    Transition(
                        at,
                        "retire",
                        role_of(before),
                        role_of(after),
                        by,
                        f"version {current} is the new previous version "
                        f"(version {version} promoted by {by})",
                        txid=txid,
                    ),
                )
            )
        run_transition(
            client,
            name,
            Intent(
                txid,
                "promote",
                version,
                current,
                by,
                reason,
                at,
                this_process(by),
                _new_aliases(version, current),
                tuple(records),
                _dropped_stages(aliases, version),
            ),
        )
    return AliasChange(
        name, version, current, changed=True, transition=transition, finished=finished
    )


def _new_aliases(production: str, previous: str | None) -> dict[str, str]:
    """The aliases a transition writes, `previous` first.

    `previous` first: a crash in between leaves both aliases on the old
    production version, never a version that fell out of both (and the intent
    finishes the transition anyway).
    """
    if previous is None:
        return {ALIAS_PRODUCTION: production}
    return {ALIAS_PREVIOUS: previous, ALIAS_PRODUCTION: production}


def _dropped_stages(aliases: Mapping[str, str], production: str) -> dict[str, str]:
    """The stage aliases the new production version gives up: it holds one stage alias.

    >>> _dropped_stages({"candidate": "3", "staging": "3", "production": "2"}, "3")
    {'staging': '3', 'candidate': '3'}
    """
    return {a: production for a in (ALIAS_STAGING, ALIAS_CANDIDATE) if aliases.get(a) == production}


def _refuse_if_overtaken(
    name: str,
    action: str,
    seen: LogEntry | None,
    tags: Mapping[str, str],
    force: bool,
    finished: Intent | None = None,
) -> None:
    """Refuse when a transition finished between this command's first read and the lock.

    Such a transition was made while this command waited, or was one a killed
    process left half-done that this command finished (`finished`): going on
    would undo it, which the operator did not see or decide.
    """
    latest = last_transition(tags)
    if force or latest is None or latest == seen:
        return
    if finished is not None and latest.txid == finished.txid:
        how = (
            f"this {action} first finished an interrupted {finished.action} (its process, "
            f"{finished.process}, died half-way): {latest.describe()}"
        )
    else:
        how = (
            f"while this {action} waited for the registry lock, another transition was made: "
            f"{latest.describe()}"
        )
    raise TransitionOvertakenError(
        f"model {name!r}: {how}; production is now version {latest.production}. Look at "
        f"`flywheel models`, then run the {action} again, or add --force to go on anyway",
        overtaken_by=latest.txid,
    )


def _promotable_verdict(
    name: str, version: str, stored: StoredVersion, current: str | None
) -> Verdict:
    """The version's verdict if it allows replacing `current` in production; raises otherwise.

    The verdict is in the version's short tags; a refusal reads the full record
    (`flywheel.registry.blessing.record_path`) to name every failed gate with its numbers.
    """
    verdict = _verdict_from_tags(stored.tags)
    if verdict is None:
        raise PromotionRefusedError(
            f"model {name!r} version {version} was never evaluated: run `flywheel evaluate "
            f"--version {version}` first; only a blessed version can reach production"
        )
    if not verdict.blessed:
        full = _load_record(stored.run_id, name, version) if stored.run_id else None
        if full is None:
            raise PromotionRefusedError(
                f"model {name!r} version {version} is not blessed: {verdict.summary}"
            )
        failed = [g for g in full.gates if not g.passed]
        lines = "\n".join(
            f"  - {g.summary()}" + (f": {g.detail}" if g.detail else "") for g in failed
        )
        raise PromotionRefusedError(
            f"model {name!r} version {version} is not blessed; failed gates "
            f"({len(failed)} of {len(full.gates)}):\n{lines}",
            failed_gates=[g.name for g in failed],
        )
    if verdict.champion_version != current:
        raise StaleBlessingError(
            f"model {name!r} version {version} was blessed against champion "
            f"{verdict.champion_version or 'none (first model)'}, but production is now "
            f"{current or 'unset'}: evaluate it again against the current production model",
        )
    return verdict


def rollback(
    name: str,
    *,
    reason: str,
    who: str | None = None,
    lock: LockStrategy = "auto",
    lock_timeout: float = 60.0,
    force: bool = False,
) -> AliasChange:
    """Swap `production` and `previous`: serve the version production replaced.

    The rolled-back version becomes `previous`, so a second rollback undoes the
    first (see the module docstring). A rollback killed half-way is finished by
    the next one, which then stops (`finished`): it does not roll back twice.

    Args:
        force: roll back even if another transition moved production while
            this one waited for the lock (that transition is what gets undone).

    Raises:
        ModelNotFoundError: no such model.
        AliasNotFoundError: no `production` or no `previous` version.
        PromotionRefusedError: `previous` is not blessed (set by hand?).
        TransitionOvertakenError: another transition moved production while this one waited.
        RegistryLockTimeout, ConcurrentModificationError: as for `promote`.
    """
    check_reason(reason, "a rollback")
    by = resolve_user(who)
    client = _client()
    seen = last_transition(_get_model(client, name).tags)
    with registry_lock(name, strategy=lock, timeout=lock_timeout) as finished:
        if finished is not None and finished.action == "rollback":
            return AliasChange(
                name, finished.production, finished.replaces, changed=False, finished=finished
            )
        model = _get_model(client, name)
        aliases = _aliases_in(model)
        current = aliases.get(ALIAS_PRODUCTION)
        if current is None:
            raise AliasNotFoundError(
                f"model {name!r} has no 'production' version: nothing to roll back"
            )
        target = aliases.get(ALIAS_PREVIOUS)
        if target is None:
            raise AliasNotFoundError(
                f"model {name!r} has no 'previous' version to roll back to (production is "
                f"version {current}); promote a blessed version instead"
            )
        if target == current:
            raise AliasNotFoundError(
                f"model {name!r}: 'previous' and 'production' are both version {current} "
                "(set by hand?); promote a blessed version instead"
            )
        _refuse_if_overtaken(name, "rollback", seen, model.tags, force, finished)
        blessing = _verdict_from_tags(_get_version(client, name, target).tags)
        if blessing is None or not blessing.blessed:
            raise PromotionRefusedError(
                f"model {name!r}: previous version {target} is not blessed "
                f"({blessing.summary if blessing else 'never evaluated'}); refusing to serve it",
            )
        txid, at = new_txid(), utc_now()
        transition = Transition(
            at,
            "rollback",
            ALIAS_PREVIOUS,
            ALIAS_PRODUCTION,
            by,
            f"{reason} (rolled back from {current})",
            blessing.summary,
            txid,
        )
        demoted = Transition(
            at,
            "rollback",
            ALIAS_PRODUCTION,
            ALIAS_PREVIOUS,
            by,
            f"rolled back to version {target} by {by}: {reason}",
            txid=txid,
        )
        run_transition(
            client,
            name,
            Intent(
                txid,
                "rollback",
                target,
                current,
                by,
                reason,
                at,
                this_process(by),
                _new_aliases(target, current),
                ((target, transition), (current, demoted)),
                _dropped_stages(aliases, target),
            ),
        )
    return AliasChange(
        name, target, current, changed=True, transition=transition, finished=finished
    )
