"""The registry's fast access writes exactly what MLflow writes, and reads what MLflow reads.

On three real stores: a SQLite file and a PostgreSQL database (`SqlAccess`,
SQLAlchemy Core on MLflow's tables) and a real `mlflow server` (`RestAccess`,
its REST API). Every write the registry makes is done twice, on twin models:
once through the fast access, once through a real `MlflowClient`; both are
then read back through `MlflowClient` (and, on the databases, as raw rows) and
must be the same. The reverse: what MLflow wrote, the fast access reads as
MLflow's own client (`ClientAccess`) does, timestamps included. Refusals carry
MLflow's error codes. A store of another schema is left to MLflow's client.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from flywheel.registry.access import (
    RegistryAccess,
    StoreError,
    forget_opened,
    open_access,
)
from flywheel.registry.access.client import ClientAccess
from flywheel.registry.access.rest import RestAccess
from flywheel.registry.access.sql import mlflow_schema_head, open_sql_access
from tests.support.postgres import postgres_server
from tests.support.processes import subprocess_env
from tests.support.registry_store import mlflow_server

TABLES = ("registered_models", "model_versions", "registered_model_tags", "model_version_tags")
TABLES += ("registered_model_aliases",)


@dataclass(frozen=True)
class Backend:
    """One real store, reached both ways."""

    kind: str
    uri: str
    fast: RegistryAccess
    client: MlflowClient


def _database(uri: str) -> Backend:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_registered_models()  # MLflow creates its tables
    fast = open_sql_access(uri)
    assert fast is not None, "the store MLflow just created must be served by the fast access"
    return Backend("sql", uri, fast, client)


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "rest"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    root = tmp_path_factory.mktemp(f"access-{request.param}")
    if request.param == "sqlite":
        yield _database(f"sqlite:///{root}/mlflow.db")
    elif request.param == "postgresql":
        with postgres_server() as postgres:
            yield _database(postgres.createdb("registry"))
    else:
        with mlflow_server(root) as url:
            yield Backend("rest", url, RestAccess(url), MlflowClient(url, url))


_counter = iter(range(10_000))


def _twins(backend: Backend, stem: str) -> tuple[str, str]:
    n = next(_counter)
    return f"{stem}-fast-{n}", f"{stem}-mlflow-{n}"


def _both(
    backend: Backend, fast_name: str, mlflow_name: str, op: str, *args: Any, **kw: Any
) -> None:
    """The same registry call on the twin through each path."""
    getattr(backend.fast, op)(fast_name, *args)
    getattr(_as_access(backend.client), op)(mlflow_name, *args)


def _as_access(client: MlflowClient) -> ClientAccess:
    access = ClientAccess.__new__(ClientAccess)
    access.uri, access.client = "test", client
    return access


def _snapshot(client: MlflowClient, name: str) -> dict[str, Any]:
    """Everything MLflow's client says about a model, timestamps as relations (names vary)."""
    model = client.get_registered_model(name)
    versions = sorted(
        client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)
    )
    return {
        "description": model.description,
        "tags": dict(model.tags),
        "aliases": {alias: str(version) for alias, version in model.aliases.items()},
        "versions": [
            (
                v.version,
                dict(v.tags),
                sorted(v.aliases),
                v.current_stage,
                v.status,
                v.source,
                v.run_id,
                v.description,
                v.last_updated_timestamp == model.last_updated_timestamp,
            )
            for v in versions
        ],
    }


def _rows(backend: Backend, name: str) -> dict[str, list[tuple[Any, ...]]]:
    """The raw rows of a model in MLflow's tables, without its name and times."""
    engine = sa.create_engine(backend.uri)
    out: dict[str, list[tuple[Any, ...]]] = {}
    try:
        with engine.connect() as c:
            for table in TABLES:
                t = sa.Table(table, sa.MetaData(), autoload_with=c)
                keep = [col for col in t.c if col.name not in ("name",) and "time" not in col.name]
                rows = c.execute(sa.select(*keep).where(t.c.name == name)).all()
                out[table] = sorted(tuple(row) for row in rows)
    finally:
        engine.dispose()
    return out


def _versions(backend: Backend, name: str, n: int) -> None:
    for i in range(n):
        backend.client.create_model_version(name, f"s3://flywheel-tests/model/{i}")


def test_every_registry_write_through_the_fast_access_is_what_mlflow_writes(
    backend: Backend,
) -> None:
    a, b = _twins(backend, "writes")
    backend.fast.create_registered_model(a, description="d", tags={"owner": "ann"})
    backend.client.create_registered_model(b, description="d", tags={"owner": "ann"})
    _versions(backend, a, 3)
    _versions(backend, b, 3)
    stamp = backend.client.get_registered_model(a).last_updated_timestamp  # set by new versions
    history = '[{"at":"2026-12-07T05:00:00+00:00","action":"promote","reason":"ünïcode"}]'
    steps: list[tuple[str, tuple[Any, ...]]] = [
        ("set_registered_model_tag", ("flywheel.pending", '{"id":"tx"}')),
        ("set_registered_model_tag", ("flywheel.pending", '{"id":"tx2"}')),  # overwritten
        ("set_registered_model_tag", ("flywheel.transitions", "x" * 4999)),
        ("delete_registered_model_tag", ("owner",)),
        ("delete_registered_model_tag", ("never-set",)),
        ("set_registered_model_alias", ("previous", "1")),
        ("set_registered_model_alias", ("production", "2")),
        ("set_registered_model_alias", ("production", "3")),  # moved
        ("set_registered_model_alias", ("candidate", "3")),
        ("delete_registered_model_alias", ("candidate",)),
        ("set_model_version_tag", ("2", "flywheel.history", history)),
        ("set_model_version_tag", ("2", "flywheel.history", history * 2)),
        ("set_model_version_tags", ("3", {"flywheel.transition.at": "now", "b": "", "c": "3"})),
    ]
    for op, args in steps:
        _both(backend, a, b, op, *args)
        assert _snapshot(backend.client, a) == _snapshot(backend.client, b), op
    # tags and aliases leave the model's last update alone
    assert backend.client.get_registered_model(a).last_updated_timestamp == stamp
    if backend.kind == "sql":
        assert _rows(backend, a) == _rows(backend, b)

    time.sleep(0.01)
    backend.fast.update_registered_model(a, description='{"owner":"lock"}')
    backend.client.update_registered_model(b, description='{"owner":"lock"}')
    assert _snapshot(backend.client, a) == _snapshot(backend.client, b)
    assert backend.client.get_registered_model(a).last_updated_timestamp > stamp

    time.sleep(0.01)
    before = backend.client.get_model_version(a, "2").last_updated_timestamp
    backend.fast.update_model_version(a, "2", description="**Blessed** against version 1")
    backend.client.update_model_version(b, "2", description="**Blessed** against version 1")
    assert _snapshot(backend.client, a) == _snapshot(backend.client, b)
    assert backend.client.get_model_version(a, "2").description == "**Blessed** against version 1"
    assert backend.client.get_model_version(a, "2").last_updated_timestamp > before

    time.sleep(0.01)
    backend.fast.rename_registered_model(a, f"{a}-renamed")
    backend.client.rename_registered_model(b, f"{b}-renamed")
    renamed = _snapshot(backend.client, f"{a}-renamed")
    assert renamed == _snapshot(backend.client, f"{b}-renamed")
    assert renamed["aliases"] == {"previous": "1", "production": "3"}  # tags, aliases follow
    assert all(v[-1] for v in renamed["versions"])  # versions re-stamped with the model
    if backend.kind == "sql":
        assert _rows(backend, f"{a}-renamed") == _rows(backend, f"{b}-renamed")
        assert _rows(backend, a) == {t: [] for t in TABLES}

    backend.fast.delete_registered_model(f"{a}-renamed")
    backend.client.delete_registered_model(f"{b}-renamed")
    for gone in (f"{a}-renamed", f"{b}-renamed"):
        with pytest.raises(Exception, match="not found"):
            backend.client.get_registered_model(gone)
        if backend.kind == "sql":
            assert _rows(backend, gone) == {t: [] for t in TABLES}


def test_the_fast_access_reads_what_mlflow_wrote_as_mlflows_client_reads_it(
    backend: Backend,
) -> None:
    name, _ = _twins(backend, "reads")
    backend.client.create_registered_model(name, tags={"k": "v"}, description="about")
    _versions(backend, name, 2)
    backend.client.set_registered_model_alias(name, "production", "2")
    backend.client.set_model_version_tag(name, "2", "flywheel.blessed", "true")
    backend.client.update_model_version(name, "2", description="data version 3f2a9c1d")
    backend.client.delete_model_version(name, "1")  # deleted versions are invisible
    reference = _as_access(backend.client)

    assert backend.fast.get_registered_model(name) == reference.get_registered_model(name)
    assert backend.fast.get_model_version(name, "2") == reference.get_model_version(name, "2")
    assert backend.fast.search_model_versions(name) == reference.search_model_versions(name)
    assert backend.fast.download_uri(name, "2") == reference.download_uri(name, "2")
    assert [v.version for v in backend.fast.search_model_versions(name)] == ["2"]


BAD_CALLS: list[tuple[str, Callable[[RegistryAccess, str], None]]] = [
    ("missing model", lambda a, n: a.set_registered_model_tag(f"{n}-none", "k", "v")),
    ("missing version", lambda a, n: a.set_registered_model_alias(n, "production", "9")),
    ("deleted version", lambda a, n: a.get_model_version(n, "1")),
    ("missing version tag", lambda a, n: a.set_model_version_tag(n, "9", "k", "v")),
    ("existing model", lambda a, n: a.create_registered_model(n)),
    ("reserved alias", lambda a, n: a.set_registered_model_alias(n, "latest", "2")),
    ("version alias", lambda a, n: a.set_registered_model_alias(n, "v2", "2")),
    ("bad alias", lambda a, n: a.set_registered_model_alias(n, "a/b", "2")),
    ("bad tag key", lambda a, n: a.set_registered_model_tag(n, "../k", "v")),
    ("bad model name", lambda a, n: a.get_registered_model("a/b")),
    ("rename onto another", lambda a, n: a.rename_registered_model(n, f"{n}-other")),
    ("delete missing", lambda a, n: a.delete_registered_model(f"{n}-none")),
]


@pytest.mark.parametrize(("what", "call"), BAD_CALLS, ids=[what for what, _ in BAD_CALLS])
def test_a_refused_call_carries_mlflows_error_code_and_changes_nothing(
    backend: Backend, what: str, call: Callable[[RegistryAccess, str], None]
) -> None:
    name, _ = _twins(backend, "refused")
    for model in (name, f"{name}-other"):
        backend.client.create_registered_model(model)
        _versions(backend, model, 2)
    backend.client.delete_model_version(name, "1")
    before = _snapshot(backend.client, name)
    with pytest.raises(StoreError) as fast:
        call(backend.fast, name)
    with pytest.raises(StoreError) as reference:
        call(_as_access(backend.client), name)
    assert fast.value.error_code == reference.value.error_code, (
        str(fast.value),
        str(reference.value),
    )
    assert _snapshot(backend.client, name) == before


def test_the_schema_guard_reads_the_installed_mlflows_head_revision() -> None:
    from mlflow.store.db.utils import _get_latest_schema_revision

    assert mlflow_schema_head() == _get_latest_schema_revision()


def test_a_store_of_another_schema_is_left_to_mlflows_client_with_a_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(tracking_uri=uri, registry_uri=uri).create_registered_model("m")
    engine = sa.create_engine(uri)
    with engine.begin() as c:
        c.execute(sa.text("UPDATE alembic_version SET version_num = 'aaaaaaaaaaaa'"))
    engine.dispose()
    forget_opened()
    with caplog.at_level(logging.WARNING, logger="flywheel.registry"):
        access = open_access(uri)
    assert access.kind == "mlflow"
    assert "its schema is revision aaaaaaaaaaaa" in caplog.text
    assert "using MLflow's client" in caplog.text
    assert access.get_registered_model("m").name == "m"


def test_a_missing_sqlite_store_is_created_by_mlflows_client(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    forget_opened()
    access = open_access(uri)
    assert access.kind == "mlflow"
    with pytest.raises(StoreError) as err:
        access.get_registered_model("m")
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert open_access(uri).kind == "sql"  # asked again: MLflow has created it since


def test_flywheel_rollback_never_imports_mlflow(backend: Backend, tmp_path: Path) -> None:
    """The operator command swaps the aliases without importing MLflow, on every store."""
    name, _ = _twins(backend, "cli")
    backend.client.create_registered_model(name)
    _versions(backend, name, 2)
    for version in ("1", "2"):  # the verdict's short tags, as `record_blessing` writes them
        tags = {"flywheel.gates": "blessed: 1/1 gates passed", "flywheel.champion": "none"}
        for key, value in {**tags, "flywheel.blessed": "true"}.items():
            backend.client.set_model_version_tag(name, version, key, value)
    backend.client.set_registered_model_alias(name, "previous", "1")
    backend.client.set_registered_model_alias(name, "production", "2")
    command = ["-m", "flywheel.cli", "rollback", "-m", name, "-r", "incident"]
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *command],
        env=subprocess_env({"MLFLOW_TRACKING_URI": backend.uri, "FLYWHEEL_USER": "ops"}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert not {m for m in imported if m.split(".")[0] == "mlflow"}, "rollback imported MLflow"
    assert "production → version 1" in done.stdout
    assert _snapshot(backend.client, name)["aliases"] == {
        "production": "1",
        "previous": "2",
    }
    history = backend.client.get_model_version(name, "1").tags["flywheel.history"]
    assert "action=rollback" in history
    assert "by=ops" in history
