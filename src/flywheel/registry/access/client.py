"""MLflow's own client behind `RegistryAccess`: for the stores the fast implementations skip.

File stores, Databricks, an auth plugin, workspaces, a database whose schema
is not the installed MLflow's: MLflow knows them all. Costs `import mlflow`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from flywheel.registry.access import StoredModel, StoredVersion, StoreError

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel


class ClientAccess:
    """`RegistryAccess` through `mlflow.MlflowClient`; MLflow's errors become `StoreError`."""

    kind = "mlflow"

    def __init__(self, uri: str) -> None:
        first = "mlflow" not in sys.modules
        from mlflow import MlflowClient

        if first:  # imported for this access: point MLflow where flywheel resolved the store
            from flywheel.tracking import configure_tracking

            configure_tracking()
        self.uri = uri
        self.client = MlflowClient(registry_uri=uri)

    def get_registered_model(self, name: str) -> StoredModel:
        with _translated():
            model = self.client.get_registered_model(name)
        return _model(model)

    def get_model_version(self, name: str, version: str) -> StoredVersion:
        with _translated():
            return _version(self.client.get_model_version(name, str(version)))

    def search_model_versions(self, name: str) -> list[StoredVersion]:
        out: list[StoredVersion] = []
        token: str | None = None
        with _translated():
            while True:
                page = self.client.search_model_versions(
                    f"name = '{name}'", max_results=1000, page_token=token
                )
                out.extend(_version(mv) for mv in page)
                token = page.token
                if not token:
                    return out

    def download_uri(self, name: str, version: str) -> str:
        with _translated():
            return str(self.client.get_model_version_download_uri(name, str(version)))

    def create_registered_model(
        self, name: str, *, description: str | None = None, tags: Mapping[str, str] | None = None
    ) -> None:
        create = self.client.create_registered_model
        self._call(create, name, description=description, tags=dict(tags or {}))

    def update_registered_model(self, name: str, *, description: str) -> None:
        self._call(self.client.update_registered_model, name, description=description)

    def update_model_version(self, name: str, version: str, *, description: str) -> None:
        self._call(self.client.update_model_version, name, str(version), description=description)

    def rename_registered_model(self, name: str, new_name: str) -> None:
        self._call(self.client.rename_registered_model, name, new_name)

    def delete_registered_model(self, name: str) -> None:
        self._call(self.client.delete_registered_model, name)

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self._call(self.client.set_registered_model_tag, name, key, value)

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        self._call(self.client.delete_registered_model_tag, name, key)

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self._call(self.client.set_registered_model_alias, name, alias, str(version))

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self._call(self.client.delete_registered_model_alias, name, alias)

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._call(self.client.set_model_version_tag, name, str(version), key, value)

    def set_model_version_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.set_model_version_tag(name, version, key, value)

    @staticmethod
    def _call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        with _translated():
            method(*args, **kwargs)


@contextmanager
def _translated() -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        raise StoreError(err.message, str(err.error_code)) from err


def _model(model: RegisteredModel) -> StoredModel:
    return StoredModel(
        name=model.name,
        description=model.description,
        tags=dict(model.tags or {}),
        aliases={alias: str(version) for alias, version in (model.aliases or {}).items()},
        creation_timestamp=model.creation_timestamp,
        last_updated_timestamp=model.last_updated_timestamp,
    )


def _version(mv: ModelVersion) -> StoredVersion:
    return StoredVersion(
        name=mv.name,
        version=str(mv.version),
        source=str(mv.source or ""),
        run_id=mv.run_id or None,
        tags=dict(mv.tags or {}),
        creation_timestamp=int(mv.creation_timestamp or 0),
        last_updated_timestamp=mv.last_updated_timestamp,
        status=str(mv.status),
        description=mv.description,
    )
