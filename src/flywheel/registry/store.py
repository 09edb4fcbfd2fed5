"""The registry as MLflow holds it: the aliases flywheel manages, and reads that fail clearly.

Every operation reaches the registry through `flywheel.registry.access` (MLflow's
REST API, its tables, or its client: whichever is fast for the store) and reads
through these helpers: `_get_aliases` and `_get_version`
turn MLflow's "does not exist" into `ModelNotFoundError` and
`VersionNotFoundError` (naming what does exist), and `_verify_aliases` reads the
aliases back after a write (compare-after-write, see `flywheel.registry`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from flywheel.registry.access import (
    ALREADY_EXISTS,
    NOT_FOUND,
    RegistryAccess,
    StoredModel,
    StoredVersion,
    StoreError,
    open_access,
    registry_uri,
)
from flywheel.registry.errors import (
    ConcurrentModificationError,
    ModelNotFoundError,
    VersionNotFoundError,
)

ALIAS_CANDIDATE = "candidate"


ALIAS_STAGING = "staging"


ALIAS_PRODUCTION = "production"


ALIAS_PREVIOUS = "previous"


ROLES: tuple[str, ...] = (ALIAS_PRODUCTION, ALIAS_STAGING, ALIAS_CANDIDATE, ALIAS_PREVIOUS)
"""The aliases flywheel manages, most important first (a version's `role` is the first it holds)."""


NO_ROLE = "none"


_NOT_FOUND = NOT_FOUND


_EXISTS = (ALREADY_EXISTS, "ALREADY_EXISTS")


def role_of(aliases: Sequence[str]) -> str:
    """The most important flywheel alias among `aliases`, or `none`.

    >>> role_of(["candidate", "staging"])
    'staging'
    >>> role_of(["champion"])
    'none'
    """
    return next((r for r in ROLES if r in aliases), NO_ROLE)


def _client() -> RegistryAccess:
    """The registry's access for the configured URI (`flywheel.registry.access.open_access`)."""
    return open_access()


def _error_code(err: StoreError) -> str:
    return str(getattr(err, "error_code", ""))


def _get_aliases(client: RegistryAccess, name: str) -> dict[str, str]:
    """alias → version of a registered model."""
    return _aliases_in(_get_model(client, name))


def _aliases_in(model: StoredModel) -> dict[str, str]:
    return {alias: str(version) for alias, version in model.aliases.items()}


def _get_model(client: RegistryAccess, name: str) -> StoredModel:
    """The registered model (aliases, tags), or `ModelNotFoundError` saying what to do."""
    try:
        return client.get_registered_model(name)
    except StoreError as err:
        if _error_code(err) == _NOT_FOUND:
            raise ModelNotFoundError(
                f"no registered model {name!r} in the registry {_registry_uri()}; "
                "register a trained model first (`flywheel evaluate --run-id RUN`)"
            ) from None
        raise


def _get_version(client: RegistryAccess, name: str, version: str) -> StoredVersion:
    """The version, or a clear error naming the versions that exist."""
    if not str(version).isdigit():
        raise VersionNotFoundError(f"{version!r} is not a version number of model {name!r}")
    try:
        return client.get_model_version(name, str(version))
    except StoreError as err:
        if _error_code(err) != _NOT_FOUND:
            raise
        _get_aliases(client, name)  # a missing model gets its own, clearer error
        known = sorted((v.version for v in client.search_model_versions(name)), key=int)
        raise VersionNotFoundError(
            f"model {name!r} has no version {version!r}; versions: {known or 'none'}"
        ) from None


def _registry_uri() -> str:
    return registry_uri()


def _aliases_of(aliases: Mapping[str, str], version: str) -> list[str]:
    return [a for a, v in aliases.items() if v == version]


def _verify_aliases(
    client: RegistryAccess,
    name: str,
    expected: Mapping[str, str],
    *,
    absent: Mapping[str, str] | None = None,
) -> None:
    """Compare-after-write: the aliases must read back as written.

    Args:
        expected: alias → the version it must point at.
        absent: alias → a version it must no longer point at (it was deleted).
    """
    actual = _get_aliases(client, name)
    wrong = {a: actual.get(a) for a, v in expected.items() if actual.get(a) != v}
    wrong |= {a: v for a, v in (absent or {}).items() if actual.get(a) == v}
    if wrong:
        raise ConcurrentModificationError(
            f"model {name!r}: aliases changed during the transition: expected {dict(expected)}, "
            f"found {wrong}; someone changed them without the registry lock — inspect "
            "`flywheel models` and repeat the operation"
        )
