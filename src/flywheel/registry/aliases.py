"""Serving's aliases: `promote` a blessed version to `production`, `rollback` to `previous`.

`promote` refuses a version that is not blessed, or blessed against a champion
that is no longer `production`; `rollback` swaps `production` and `previous`, so
a second rollback undoes the first (see `flywheel.registry`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mlflow import MlflowClient

from flywheel.registry.blessing import Blessing, _blessing_from_tags
from flywheel.registry.errors import (
    AliasNotFoundError,
    PromotionRefusedError,
    RegistryError,
    StaleBlessingError,
)
from flywheel.registry.history import (
    Transition,
    _record,
    _record_alias_lost,
    resolve_user,
    utc_now,
)
from flywheel.registry.lock import LockStrategy, registry_lock
from flywheel.registry.store import (
    ALIAS_PREVIOUS,
    ALIAS_PRODUCTION,
    _aliases_of,
    _client,
    _get_aliases,
    _get_version,
    _verify_aliases,
    role_of,
)


@dataclass(frozen=True)
class AliasChange:
    """What `promote` or `rollback` did.

    Attributes:
        model_name: the registered model.
        production: the version in production afterwards.
        previous: the version kept as `previous` afterwards (None if none).
        changed: False when nothing had to change (the version already was production).
        transition: the record written on the version now in production.
    """

    model_name: str
    production: str
    previous: str | None
    changed: bool
    transition: Transition | None = None


def promote(
    name: str,
    version: str,
    *,
    reason: str,
    who: str | None = None,
    lock: LockStrategy = "auto",
    lock_timeout: float = 60.0,
) -> AliasChange:
    """Move `production` to a blessed version; the replaced version becomes `previous`.

    Idempotent: promoting the version already in production changes nothing.

    Args:
        name: the registered model.
        version: the version to serve.
        reason: why (recorded).
        who: who (recorded; default `resolve_user()`).
        lock: the `registry_lock` strategy.
        lock_timeout: seconds to wait for a concurrent transition.

    Raises:
        ModelNotFoundError, VersionNotFoundError: no such model or version.
        PromotionRefusedError: never evaluated, or not blessed (`failed_gates` names the gates).
        StaleBlessingError: blessed against a champion that is no longer production.
        RegistryLockTimeout: another transition held the lock too long.
        ConcurrentModificationError: the aliases changed under us without the lock.
    """
    if not reason.strip():
        raise RegistryError("a promotion needs a reason (it is recorded on the version)")
    by = resolve_user(who)
    version = str(version)
    client = _client()
    with registry_lock(name, strategy=lock, timeout=lock_timeout):
        candidate = _get_version(client, name, version)
        aliases = _get_aliases(client, name)
        current = aliases.get(ALIAS_PRODUCTION)
        if current == version:
            return AliasChange(name, version, aliases.get(ALIAS_PREVIOUS), changed=False)
        blessing = _promotable_blessing(name, version, candidate.tags, current)
        old_previous = aliases.get(ALIAS_PREVIOUS)
        _set_production(client, name, version, current)

        at = utc_now()
        before = _aliases_of(aliases, version)
        transition = Transition(
            at,
            "promote",
            role_of(before),
            ALIAS_PRODUCTION,
            by,
            f"{reason} (replaces {current or 'nothing'})",
            blessing.summary(),
        )
        _record(client, name, version, transition)
        if current is not None:
            _record(
                client,
                name,
                current,
                Transition(
                    at,
                    "demote",
                    ALIAS_PRODUCTION,
                    ALIAS_PREVIOUS,
                    by,
                    f"{reason} (replaced by {version})",
                ),
            )
        if old_previous is not None and old_previous not in (version, current):
            _record_alias_lost(
                client,
                name,
                old_previous,
                aliases,
                ALIAS_PREVIOUS,
                Transition(at, "retire", "", "", by, f"{current} is the new previous version"),
            )
    return AliasChange(name, version, current, changed=True, transition=transition)


def _promotable_blessing(
    name: str, version: str, tags: Mapping[str, str], current: str | None
) -> Blessing:
    """The version's blessing if it allows replacing `current` in production; raises otherwise."""
    blessing = _blessing_from_tags(tags)
    if blessing is None:
        raise PromotionRefusedError(
            f"model {name!r} version {version} was never evaluated: run `flywheel evaluate "
            f"--version {version}` first; only a blessed version can reach production"
        )
    if not blessing.blessed:
        failed = [g for g in blessing.gates if not g.passed]
        lines = "\n".join(
            f"  - {g.summary()}" + (f": {g.detail}" if g.detail else "") for g in failed
        )
        raise PromotionRefusedError(
            f"model {name!r} version {version} is not blessed; failed gates "
            f"({len(failed)} of {len(blessing.gates)}):\n{lines}",
            failed_gates=[g.name for g in failed],
        )
    if blessing.champion_version != current:
        raise StaleBlessingError(
            f"model {name!r} version {version} was blessed against champion "
            f"{blessing.champion_version or 'none (first model)'}, but production is now "
            f"{current or 'unset'}: evaluate it again against the current production model",
        )
    return blessing


def rollback(
    name: str,
    *,
    reason: str,
    who: str | None = None,
    lock: LockStrategy = "auto",
    lock_timeout: float = 60.0,
) -> AliasChange:
    """Swap `production` and `previous`: serve the version production replaced.

    The rolled-back version becomes `previous`, so a second rollback undoes the
    first (see the module docstring).

    Raises:
        ModelNotFoundError: no such model.
        AliasNotFoundError: no `production` or no `previous` version.
        PromotionRefusedError: `previous` is not blessed (set by hand?).
        RegistryLockTimeout, ConcurrentModificationError: as for `promote`.
    """
    if not reason.strip():
        raise RegistryError("a rollback needs a reason (it is recorded on the versions)")
    by = resolve_user(who)
    client = _client()
    with registry_lock(name, strategy=lock, timeout=lock_timeout):
        aliases = _get_aliases(client, name)
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
        blessing = _blessing_from_tags(_get_version(client, name, target).tags)
        if blessing is None or not blessing.blessed:
            raise PromotionRefusedError(
                f"model {name!r}: previous version {target} is not blessed "
                f"({blessing.summary() if blessing else 'never evaluated'}); refusing to serve it",
                failed_gates=blessing.failed_gates if blessing else (),
            )
        _set_production(client, name, target, current)
        at = utc_now()
        transition = Transition(
            at,
            "rollback",
            ALIAS_PREVIOUS,
            ALIAS_PRODUCTION,
            by,
            f"{reason} (rolled back from {current})",
            blessing.summary(),
        )
        _record(client, name, target, transition)
        _record(
            client,
            name,
            current,
            Transition(
                at,
                "rollback",
                ALIAS_PRODUCTION,
                ALIAS_PREVIOUS,
                by,
                f"{reason} (production back to {target})",
            ),
        )
    return AliasChange(name, target, current, changed=True, transition=transition)


def _set_production(client: MlflowClient, name: str, version: str, current: str | None) -> None:
    """Point `production` at `version` and `previous` at `current` (unless None), then check.

    `previous` first: a crash in between leaves both aliases on the old
    production version, never a version that fell out of both.

    Raises:
        ConcurrentModificationError: the aliases do not read back as written.
    """
    expected = {ALIAS_PRODUCTION: version}
    if current is not None:
        client.set_registered_model_alias(name, ALIAS_PREVIOUS, current)
        expected[ALIAS_PREVIOUS] = current
    client.set_registered_model_alias(name, ALIAS_PRODUCTION, version)
    _verify_aliases(client, name, expected)
