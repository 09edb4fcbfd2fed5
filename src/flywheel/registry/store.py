"""The registry as MLflow holds it: the aliases flywheel manages, and reads that fail clearly.

Every operation reads through these helpers: `_get_aliases` and `_get_version`
turn MLflow's "does not exist" into `ModelNotFoundError` and
`VersionNotFoundError` (naming what does exist), and `_verify_aliases` reads the
aliases back after a write (compare-after-write, see `flywheel.registry`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

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


_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def role_of(aliases: Sequence[str]) -> str:
    """The most important flywheel alias among `aliases`, or `none`.

    >>> role_of(["candidate", "staging"])
    'staging'
    >>> role_of(["champion"])
    'none'
    """
    return next((r for r in ROLES if r in aliases), NO_ROLE)


def _client() -> MlflowClient:
    return MlflowClient()


def _error_code(err: MlflowException) -> str:
    return str(getattr(err, "error_code", ""))


def _get_aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """alias → version of a registered model."""
    return _aliases_in(_get_model(client, name))


def _aliases_in(model: RegisteredModel) -> dict[str, str]:
    return {alias: str(version) for alias, version in model.aliases.items()}


def _get_model(client: MlflowClient, name: str) -> RegisteredModel:
    """The registered model (aliases, tags), or `ModelNotFoundError` saying what to do."""
    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if _error_code(err) == _NOT_FOUND:
            raise ModelNotFoundError(
                f"no registered model {name!r} in the registry {_registry_uri()}; "
                "register a trained model first (`flywheel evaluate --run-id RUN`)"
            ) from None
        raise


def _get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    """The version, or a clear error naming the versions that exist."""
    if not str(version).isdigit():
        raise VersionNotFoundError(f"{version!r} is not a version number of model {name!r}")
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        if _error_code(err) != _NOT_FOUND:
            raise
        _get_aliases(client, name)  # a missing model gets its own, clearer error
        known = sorted(
            (str(v.version) for v in client.search_model_versions(f"name = '{name}'")), key=int
        )
        raise VersionNotFoundError(
            f"model {name!r} has no version {version!r}; versions: {known or 'none'}"
        ) from None


def _registry_uri() -> str:
    import mlflow

    return mlflow.get_registry_uri()


def _aliases_of(aliases: Mapping[str, str], version: str) -> list[str]:
    return [a for a, v in aliases.items() if v == version]


def _verify_aliases(client: MlflowClient, name: str, expected: Mapping[str, str]) -> None:
    """Compare-after-write: the aliases must read back as written."""
    actual = _get_aliases(client, name)
    wrong = {a: actual.get(a) for a, v in expected.items() if actual.get(a) != v}
    if wrong:
        raise ConcurrentModificationError(
            f"model {name!r}: aliases changed during the transition: expected {dict(expected)}, "
            f"found {wrong}; someone changed them without the registry lock — inspect "
            "`flywheel models` and repeat the operation"
        )
