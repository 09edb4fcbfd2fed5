"""A tracking server through MLflow's REST API (`/api/2.0/mlflow/...`), with `requests`.

The endpoints and payloads are MLflow's documented, stable model-registry API
(the ones `MlflowClient` itself calls): GET `registered-models/get`,
`model-versions/get`, `model-versions/search`, `model-versions/get-download-uri`;
POST `registered-models/create`, `rename`, `set-tag`, `alias`,
`model-versions/set-tag`; PATCH `registered-models/update`; DELETE
`registered-models/delete`, `delete-tag`, `alias`. GET requests carry their
fields as query parameters, the others as a JSON body; an error answer is
`{"error_code": ..., "message": ...}`.

Credentials and transport as MLflow reads them: `MLFLOW_TRACKING_TOKEN`
(bearer), `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD` (basic),
`MLFLOW_TRACKING_INSECURE_TLS`, `MLFLOW_TRACKING_SERVER_CERT_PATH`,
`MLFLOW_TRACKING_CLIENT_CERT_PATH`, `MLFLOW_HTTP_REQUEST_TIMEOUT` (120 s) and
MLflow's retries (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, 7;
`MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`, 2) on 429 and 5xx answers and broken
connections.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flywheel.registry.access import StoredModel, StoredVersion, StoreError

if TYPE_CHECKING:
    import requests

API = "/api/2.0/mlflow"
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
"""The answers MLflow's client retries."""


class RestAccess:
    """`RegistryAccess` over HTTP(S) to an MLflow tracking server."""

    kind = "rest"

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self._session: requests.Session | None = None
        self.timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 120)

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = _session()
        return self._session

    def _call(self, method: str, endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
        import requests

        url = f"{self.uri}{API}/{endpoint}"
        fields = {k: v for k, v in body.items() if v is not None}
        try:
            if method == "GET":
                answer = self.session.get(url, params=fields, timeout=self.timeout)
            else:
                answer = self.session.request(method, url, json=fields, timeout=self.timeout)
        except requests.RequestException as err:
            raise StoreError(
                f"the tracking server {self.uri} did not answer {method} {endpoint}: {err}; "
                "check that it runs and that MLFLOW_TRACKING_URI names it",
                "TEMPORARILY_UNAVAILABLE",
            ) from None
        try:
            payload = answer.json() if answer.content else {}
        except ValueError:
            payload = None
        if answer.ok and isinstance(payload, dict):
            return payload
        if isinstance(payload, dict) and "error_code" in payload:
            raise StoreError(str(payload.get("message", "")), str(payload["error_code"]))
        raise StoreError(
            f"the tracking server {self.uri} answered {method} {endpoint} with HTTP "
            f"{answer.status_code}: {answer.text[:300]}",
            "INTERNAL_ERROR" if answer.status_code >= 500 else "BAD_REQUEST",
        )

    # reads

    def get_registered_model(self, name: str) -> StoredModel:
        raw = self._call("GET", "registered-models/get", {"name": name})["registered_model"]
        return StoredModel(
            name=raw["name"],
            description=raw.get("description"),
            tags=_pairs(raw.get("tags")),
            aliases={a["alias"]: str(a["version"]) for a in raw.get("aliases", [])},
            creation_timestamp=_int(raw.get("creation_timestamp")),
            last_updated_timestamp=_int(raw.get("last_updated_timestamp")),
        )

    def get_model_version(self, name: str, version: str) -> StoredVersion:
        raw = self._call("GET", "model-versions/get", {"name": name, "version": str(version)})
        return _version(raw["model_version"])

    def search_model_versions(self, name: str) -> list[StoredVersion]:
        escaped = name.replace("'", "\\'")
        out: list[StoredVersion] = []
        token: str | None = None
        while True:
            page = self._call(
                "GET",
                "model-versions/search",
                {"filter": f"name = '{escaped}'", "max_results": 1000, "page_token": token},
            )
            out.extend(_version(raw) for raw in page.get("model_versions", []))
            token = page.get("next_page_token")
            if not token:
                return out

    def download_uri(self, name: str, version: str) -> str:
        raw = self._call(
            "GET", "model-versions/get-download-uri", {"name": name, "version": str(version)}
        )
        return str(raw["artifact_uri"])

    # writes

    def create_registered_model(
        self, name: str, *, description: str | None = None, tags: Mapping[str, str] | None = None
    ) -> None:
        body = {
            "name": name,
            "description": description,
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        }
        self._call("POST", "registered-models/create", body)

    def update_registered_model(self, name: str, *, description: str) -> None:
        self._call("PATCH", "registered-models/update", {"name": name, "description": description})

    def rename_registered_model(self, name: str, new_name: str) -> None:
        self._call("POST", "registered-models/rename", {"name": name, "new_name": new_name})

    def delete_registered_model(self, name: str) -> None:
        self._call("DELETE", "registered-models/delete", {"name": name})

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self._call("POST", "registered-models/set-tag", {"name": name, "key": key, "value": value})

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        self._call("DELETE", "registered-models/delete-tag", {"name": name, "key": key})

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        body = {"name": name, "alias": alias, "version": str(version)}
        self._call("POST", "registered-models/alias", body)

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self._call("DELETE", "registered-models/alias", {"name": name, "alias": alias})

    def update_model_version(self, name: str, version: str, *, description: str) -> None:
        self._call(
            "PATCH",
            "model-versions/update",
            {"name": name, "version": str(version), "description": description},
        )

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._call(
            "POST",
            "model-versions/set-tag",
            {"name": name, "version": str(version), "key": key, "value": value},
        )

    def set_model_version_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():  # the REST API sets one version tag per request
            self.set_model_version_tag(name, version, key, value)


def _session() -> requests.Session:
    """A session with MLflow's credentials, TLS settings and retries."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    env = os.environ
    session = requests.Session()
    if env.get("MLFLOW_TRACKING_TOKEN"):
        session.headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
    elif env.get("MLFLOW_TRACKING_USERNAME") and env.get("MLFLOW_TRACKING_PASSWORD"):
        session.auth = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        session.verify = False
    elif env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        session.verify = env["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    if env.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        session.cert = env["MLFLOW_TRACKING_CLIENT_CERT_PATH"]
    retry = Retry(
        total=int(env.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") or 7),
        backoff_factor=float(env.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR") or 2),
        backoff_jitter=float(env.get("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER") or 1),
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,  # as MLflow: every method, the registry's writes are idempotent
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _pairs(raw: Any) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in raw or []}


def _int(raw: Any) -> int | None:
    return None if raw is None else int(raw)


def _version(raw: Mapping[str, Any]) -> StoredVersion:
    return StoredVersion(
        name=raw["name"],
        version=str(raw["version"]),
        source=str(raw.get("source") or ""),
        run_id=raw.get("run_id") or None,
        tags=_pairs(raw.get("tags")),
        creation_timestamp=_int(raw.get("creation_timestamp")) or 0,
        last_updated_timestamp=_int(raw.get("last_updated_timestamp")),
        status=str(raw.get("status") or "READY"),
        description=raw.get("description"),
    )
