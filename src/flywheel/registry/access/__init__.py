"""The registry's reads and writes, without importing MLflow where that is not needed.

An operator runs `flywheel rollback` during an incident, and `import mlflow`
alone takes 2-2.5 s (its `__init__` imports pandas, FastAPI, its GenAI
package…), plus a second to build its SQL store. The registry's transitions
need a dozen registry calls, so they go through this small access layer, one
interface (`RegistryAccess`) with three implementations, chosen by the
registry URI (`open_access`):

* `http://`, `https://` (a tracking server): `rest.RestAccess`, MLflow's
  documented REST API (`/api/2.0/mlflow/registered-models/...`,
  `/model-versions/...`) through `requests`, with MLflow's credentials
  (`MLFLOW_TRACKING_TOKEN`, `MLFLOW_TRACKING_USERNAME`/`PASSWORD`, TLS
  settings) and retries;
* `sqlite:///`, `postgresql://` (a database store): `sql.SqlAccess`,
  SQLAlchemy Core on MLflow's own tables, writing the rows MLflow's
  `SqlAlchemyStore` writes. Guarded: only when the store's `alembic_version` is
  the head revision of the installed MLflow's migrations (read from its
  package files, without importing it), so a store of another schema never
  sees a write MLflow would not make; otherwise MLflow's client, with a
  one-line note;
* anything else (a file store, Databricks, a custom auth plugin, workspaces,
  `FLYWHEEL_REGISTRY_ACCESS=mlflow`): `client.ClientAccess`, MLflow's own
  `MlflowClient`.

Every registry function goes through the chosen access, in every process (a
training run's `register` too), so the whole registry suite exercises it;
training, evaluation and serving keep MLflow's client for everything else
(runs, logged models, artifacts).

`tests/integration/registry/test_access.py` performs every write through each
fast implementation and reads it back through a real `MlflowClient` (and the
reverse), on SQLite, PostgreSQL and a real `mlflow server`.

Errors are `StoreError` (a `RegistryError`) carrying MLflow's error code
(`RESOURCE_DOES_NOT_EXIST`, `RESOURCE_ALREADY_EXISTS`, …) whichever
implementation raised it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from flywheel.registry.errors import RegistryError

NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
INVALID_PARAMETER = "INVALID_PARAMETER_VALUE"

_log = logging.getLogger("flywheel.registry")


class StoreError(RegistryError):
    """The registry store refused or failed a request.

    Attributes:
        error_code: MLflow's error code (`RESOURCE_DOES_NOT_EXIST`, …).
    """

    def __init__(self, message: str, error_code: str = "INTERNAL_ERROR") -> None:
        super().__init__(message)
        self.error_code = error_code


@dataclass(frozen=True)
class StoredModel:
    """A registered model as the store holds it.

    Attributes:
        name: its name.
        description: its description (a lock model's holder, see `flywheel.registry.lock`).
        tags: key → value.
        aliases: alias → version.
        creation_timestamp: milliseconds since the epoch.
        last_updated_timestamp: milliseconds since the epoch (None if never updated).
    """

    name: str
    description: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    creation_timestamp: int | None = None
    last_updated_timestamp: int | None = None


@dataclass(frozen=True)
class StoredVersion:
    """A registered version as the store holds it.

    Attributes:
        name: the registered model.
        version: its number, as text.
        source: where it was registered from.
        run_id: the run that logged it (None if none).
        tags: key → value.
        creation_timestamp: milliseconds since the epoch.
        last_updated_timestamp: milliseconds since the epoch.
        status: MLflow's status (`READY`, …).
        description: its description (what people read on its page in the MLflow UI).
    """

    name: str
    version: str
    source: str = ""
    run_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    creation_timestamp: int = 0
    last_updated_timestamp: int | None = None
    status: str = "READY"
    description: str | None = None


class RegistryAccess(Protocol):
    """The registry calls flywheel makes; every implementation writes what MLflow writes."""

    kind: str
    """`sql`, `rest` or `mlflow` (which implementation)."""

    uri: str
    """The registry URI, for messages."""

    def get_registered_model(self, name: str) -> StoredModel: ...

    def get_model_version(self, name: str, version: str) -> StoredVersion: ...

    def search_model_versions(self, name: str) -> list[StoredVersion]:
        """Every version of a model (all pages), in no particular order."""
        ...

    def download_uri(self, name: str, version: str) -> str:
        """Where the version's files are (MLflow's `get_model_version_download_uri`)."""
        ...

    def create_registered_model(
        self, name: str, *, description: str | None = None, tags: Mapping[str, str] | None = None
    ) -> None: ...

    def update_registered_model(self, name: str, *, description: str) -> None: ...

    def rename_registered_model(self, name: str, new_name: str) -> None: ...

    def delete_registered_model(self, name: str) -> None: ...

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None: ...

    def delete_registered_model_tag(self, name: str, key: str) -> None: ...

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None: ...

    def delete_registered_model_alias(self, name: str, alias: str) -> None: ...

    def update_model_version(self, name: str, version: str, *, description: str) -> None:
        """Set a version's description (MLflow's `update_model_version`)."""
        ...

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None: ...

    def set_model_version_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """Several tags of one version: one transaction where the store has them, else in order."""
        ...


FALLBACK_ENV = ("MLFLOW_TRACKING_AUTH", "MLFLOW_WORKSPACE", "MLFLOW_ENABLE_WORKSPACES")
"""Settings only MLflow's own client honours (an auth plugin, workspaces): MLflow's client then."""


FAST_ENV = "FLYWHEEL_REGISTRY_ACCESS"
"""`mlflow` forces MLflow's client everywhere (a way out if the fast layer ever misbehaves)."""


_opened: dict[str, RegistryAccess] = {}


def registry_uri() -> str:
    """The registry URI: MLflow's, if this process imported MLflow; else as MLflow would resolve it.

    Without MLflow imported: `MLFLOW_REGISTRY_URI`, else the tracking URI
    (`MLFLOW_TRACKING_URI`, else flywheel's embedded store), which is what
    `flywheel.tracking.configure_tracking` would point MLflow at.
    """
    if "mlflow" in sys.modules:
        import mlflow

        return str(mlflow.get_registry_uri())
    from flywheel.tracking import resolve_tracking

    return os.environ.get("MLFLOW_REGISTRY_URI") or resolve_tracking().uri


def open_access(uri: str | None = None) -> RegistryAccess:
    """The access to the registry at `uri` (default `registry_uri()`), kept per URI per process.

    A database store that MLflow's client had to serve (no database yet, another
    schema) is asked again next time: MLflow may have created or migrated it since.
    """
    uri = uri or registry_uri()
    access = _opened.get(uri)
    if access is None:
        access = _choose(uri)
        if access.kind != "mlflow" or not _is_database(uri):
            _opened[uri] = access
    return access


def _scheme(uri: str) -> str:
    return uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""


def _is_database(uri: str) -> bool:
    return _scheme(uri) in ("sqlite", "postgresql")


def _choose(uri: str) -> RegistryAccess:
    fast = os.environ.get(FAST_ENV, "fast") != "mlflow" and not any(
        os.environ.get(key) for key in FALLBACK_ENV
    )
    if fast and _scheme(uri) in ("http", "https"):
        from flywheel.registry.access.rest import RestAccess

        return RestAccess(uri)
    if fast and _is_database(uri):
        from flywheel.registry.access.sql import open_sql_access

        sql = open_sql_access(uri)
        if sql is not None:
            return sql
    from flywheel.registry.access.client import ClientAccess

    return ClientAccess(uri)


def forget_opened() -> None:
    """Drop the cached accesses (a test that switches stores in one process)."""
    _opened.clear()
