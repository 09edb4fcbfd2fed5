"""A database store (`sqlite:///`, `postgresql://`) through SQLAlchemy Core on MLflow's own tables.

Writes the rows MLflow's `SqlAlchemyStore` writes, with its checks first (the
model or version must exist, names and tag keys as MLflow validates them) and
its timestamps (milliseconds; an alias or tag write leaves the model's
`last_updated_time` alone, as MLflow does; a description change or a rename
sets it). One operation is one transaction.

Guarded by the schema: `open_sql_access` returns None (MLflow's client is
used instead, with a one-line note) unless the store's `alembic_version` is
the head of the installed MLflow's migrations, read from its package files
(`mlflow_schema_head`), so a store of another MLflow version never gets a
write its schema does not expect. Only the default workspace exists without
MLflow's workspaces (which `flywheel.registry.access` leaves to MLflow).
"""

from __future__ import annotations

import importlib.util
import logging
import posixpath
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from flywheel.registry.access import (
    ALREADY_EXISTS,
    INVALID_PARAMETER,
    NOT_FOUND,
    StoredModel,
    StoredVersion,
    StoreError,
)

WORKSPACE = "default"
"""MLflow's `DEFAULT_WORKSPACE_NAME`: every row's workspace when workspaces are off."""


DELETED = "Deleted_Internal"
"""MLflow's `STAGE_DELETED_INTERNAL`: a version deleted but kept; invisible to reads."""


MAX_TAG_KEY = 250
MAX_TAG_VALUE = 100_000
MAX_ALIAS = 255

_log = logging.getLogger("flywheel.registry")
_noted: set[str] = set()

_meta = sa.MetaData()
_models = sa.Table(
    "registered_models",
    _meta,
    sa.Column("workspace", sa.String(63), primary_key=True),
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("creation_time", sa.BigInteger),
    sa.Column("last_updated_time", sa.BigInteger),
    sa.Column("description", sa.String(5000)),
)
_versions = sa.Table(
    "model_versions",
    _meta,
    sa.Column("workspace", sa.String(63), primary_key=True),
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("creation_time", sa.BigInteger),
    sa.Column("last_updated_time", sa.BigInteger),
    sa.Column("current_stage", sa.String(20)),
    sa.Column("source", sa.String(500)),
    sa.Column("storage_location", sa.String(500)),
    sa.Column("run_id", sa.String(32)),
    sa.Column("status", sa.String(20)),
    sa.Column("description", sa.String(5000)),
)
_model_tags = sa.Table(
    "registered_model_tags",
    _meta,
    sa.Column("workspace", sa.String(63), primary_key=True),
    sa.Column("key", sa.String(250), primary_key=True),
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("value", sa.String(5000)),
)
_version_tags = sa.Table(
    "model_version_tags",
    _meta,
    sa.Column("workspace", sa.String(63), primary_key=True),
    sa.Column("key", sa.String(250), primary_key=True),
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("value", sa.Text),
)
_aliases = sa.Table(
    "registered_model_aliases",
    _meta,
    sa.Column("workspace", sa.String(63), primary_key=True),
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("alias", sa.String(256), primary_key=True),
    sa.Column("version", sa.Integer),
)
_alembic = sa.Table("alembic_version", _meta, sa.Column("version_num", sa.String(32)))


def mlflow_schema_head() -> str | None:
    """The head revision of the installed MLflow's database migrations, without importing MLflow.

    Read from `mlflow/store/db_migrations/versions/*.py` (each names its
    `revision` and `down_revision`); None if MLflow is not installed or its
    migrations do not have exactly one head.
    """
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "store/db_migrations/versions"
    return _head_of(str(folder))


@cache
def _head_of(folder: str) -> str | None:
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in Path(folder).glob("*.py"):
        text = script.read_text(encoding="utf-8")
        found = re.search(r"^revision\s*=\s*['\"](\w+)['\"]", text, re.MULTILINE)
        down = re.search(r"^down_revision\s*=\s*(.+)$", text, re.MULTILINE)
        if found is None:
            continue
        revisions.add(found.group(1))
        if down is not None:
            parents.update(re.findall(r"['\"](\w+)['\"]", down.group(1)))
    heads = revisions - parents
    return next(iter(heads)) if len(heads) == 1 else None


def open_sql_access(uri: str) -> SqlAccess | None:
    """The fast access to a database store, or None (with a note) where MLflow's client must serve.

    None, silently, for a SQLite file that does not exist yet (MLflow's client
    creates it); with a one-line note for a store whose schema is not the
    installed MLflow's, or that cannot be opened here.
    """
    if uri.startswith("sqlite:") and not _sqlite_file_exists(uri):
        return None
    head = mlflow_schema_head()
    try:
        engine = _engine(uri)
        with engine.connect() as connection:
            found = connection.execute(sa.select(_alembic.c.version_num)).scalars().all()
    except Exception as err:  # no alembic table, a driver missing, a server down: MLflow decides
        _note(uri, f"its schema could not be read ({(str(err).splitlines() or [repr(err)])[0]})")
        return None
    if head is None or found != [head]:
        _note(
            uri,
            f"its schema is revision {', '.join(found) or 'none'}, the installed MLflow's is "
            f"{head or 'unknown'}",
        )
        return None
    return SqlAccess(uri, engine)


def _note(uri: str, why: str) -> None:
    if uri not in _noted:
        _noted.add(uri)
        _log.warning("registry %s: %s; using MLflow's client (slower start)", _safe(uri), why)


def _safe(uri: str) -> str:
    """The URI without a password, for messages."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", uri)


def _sqlite_file_exists(uri: str) -> bool:
    path = uri.split("///", 1)[1] if "///" in uri else ""
    path = path.split("?", 1)[0]
    return path not in ("", ":memory:") and Path(path).is_file()


@cache
def _engine(uri: str) -> Engine:
    engine = sa.create_engine(uri)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            # As MLflow's sessions: cascades on, and wait for a writer instead of failing.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA busy_timeout = 20000")
            cursor.close()

    return engine


def _now() -> int:
    return int(time.time() * 1000)


class SqlAccess:
    """`RegistryAccess` on MLflow's tables (see the module docstring)."""

    kind = "sql"

    def __init__(self, uri: str, engine: Engine) -> None:
        self.uri = uri
        self.engine = engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection

    # reads

    def get_registered_model(self, name: str) -> StoredModel:
        _check_name(name)
        with self.engine.connect() as c:
            row = _model_row(c, name)
            tags = c.execute(
                sa.select(_model_tags.c.key, _model_tags.c.value).where(
                    _model_tags.c.workspace == WORKSPACE, _model_tags.c.name == name
                )
            ).all()
            aliases = c.execute(
                sa.select(_aliases.c.alias, _aliases.c.version).where(
                    _aliases.c.workspace == WORKSPACE, _aliases.c.name == name
                )
            ).all()
        return StoredModel(
            name=row.name,
            description=row.description,
            tags={key: value for key, value in tags},
            aliases={alias: str(version) for alias, version in aliases},
            creation_timestamp=row.creation_time,
            last_updated_timestamp=row.last_updated_time,
        )

    def get_model_version(self, name: str, version: str) -> StoredVersion:
        number = _check_version(name, version)
        with self.engine.connect() as c:
            row = _version_row(c, name, number)
            tags = _tags_of(c, name, [number])
        return _stored_version(row, tags.get(number, {}))

    def search_model_versions(self, name: str) -> list[StoredVersion]:
        _check_name(name)
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(_versions).where(
                    _versions.c.workspace == WORKSPACE,
                    _versions.c.name == name,
                    _versions.c.current_stage != DELETED,
                )
            ).all()
            tags = _tags_of(c, name, None)
        return [_stored_version(row, tags.get(row.version, {})) for row in rows]

    def download_uri(self, name: str, version: str) -> str:
        number = _check_version(name, version)
        with self.engine.connect() as c:
            row = _version_row(c, name, number)
        return str(row.storage_location or row.source)

    # writes

    def create_registered_model(
        self, name: str, *, description: str | None = None, tags: Mapping[str, str] | None = None
    ) -> None:
        _check_name(name)
        for key, value in (tags or {}).items():
            _check_tag(key, value)
        now = _now()
        try:
            with self._write() as c:
                c.execute(
                    _models.insert().values(
                        workspace=WORKSPACE,
                        name=name,
                        creation_time=now,
                        last_updated_time=now,
                        description=description,
                    )
                )
                if tags:
                    c.execute(
                        _model_tags.insert(),
                        [
                            {"workspace": WORKSPACE, "name": name, "key": k, "value": v}
                            for k, v in tags.items()
                        ],
                    )
        except sa.exc.IntegrityError:
            raise StoreError(
                f"Registered Model (name={name}) already exists.", ALREADY_EXISTS
            ) from None

    def update_registered_model(self, name: str, *, description: str) -> None:
        _check_name(name)
        with self._write() as c:
            _model_row(c, name)
            c.execute(
                _models.update()
                .where(_models.c.workspace == WORKSPACE, _models.c.name == name)
                .values(description=description, last_updated_time=_now())
            )

    def rename_registered_model(self, name: str, new_name: str) -> None:
        """Rename a model and its versions; tags and aliases follow by the foreign keys' cascade."""
        _check_name(new_name)
        try:
            with self._write() as c:
                _model_row(c, name)
                now = _now()
                c.execute(
                    _models.update()
                    .where(_models.c.workspace == WORKSPACE, _models.c.name == name)
                    .values(name=new_name, last_updated_time=now)
                )
                c.execute(
                    _versions.update()
                    .where(_versions.c.workspace == WORKSPACE, _versions.c.name == new_name)
                    .values(last_updated_time=now)
                )
        except sa.exc.IntegrityError as err:
            raise StoreError(
                f"Registered Model (name={new_name}) already exists. Error: {err}", ALREADY_EXISTS
            ) from None

    def delete_registered_model(self, name: str) -> None:
        """Delete a model with its versions, tags and aliases (MLflow's ORM cascade)."""
        with self._write() as c:
            _model_row(c, name)
            for table in (_version_tags, _aliases, _versions, _model_tags, _models):
                mine = (table.c.workspace == WORKSPACE, table.c.name == name)
                c.execute(table.delete().where(*mine))

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        _check_name(name)
        _check_tag(key, value)
        with self._write() as c:
            _model_row(c, name)
            self._upsert(c, _model_tags, {"name": name, "key": key}, {"value": value})

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        _check_name(name)
        _check_tag_key(key)
        with self._write() as c:
            _model_row(c, name)
            c.execute(
                _model_tags.delete().where(
                    _model_tags.c.workspace == WORKSPACE,
                    _model_tags.c.name == name,
                    _model_tags.c.key == key,
                )
            )

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        _check_alias(alias, reserved=True)
        number = _check_version(name, version)
        with self._write() as c:
            _version_row(c, name, number)
            self._upsert(c, _aliases, {"name": name, "alias": alias}, {"version": number})

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        _check_name(name)
        _check_alias(alias, reserved=False)
        with self._write() as c:
            _model_row(c, name)
            c.execute(
                _aliases.delete().where(
                    _aliases.c.workspace == WORKSPACE,
                    _aliases.c.name == name,
                    _aliases.c.alias == alias,
                )
            )

    def update_model_version(self, name: str, version: str, *, description: str) -> None:
        """The row MLflow's `update_model_version` writes: the description and its time."""
        number = _check_version(name, version)
        with self._write() as c:
            _version_row(c, name, number)
            c.execute(
                _versions.update()
                .where(
                    _versions.c.workspace == WORKSPACE,
                    _versions.c.name == name,
                    _versions.c.version == number,
                )
                .values(description=description, last_updated_time=_now())
            )

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.set_model_version_tags(name, version, {key: value})

    def set_model_version_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """The rows MLflow's `set_model_version_tag` writes for each tag, in one transaction."""
        number = _check_version(name, version)
        for key, value in tags.items():
            _check_tag(key, value)
        with self._write() as c:
            _version_row(c, name, number)
            for key, value in tags.items():
                row = {"name": name, "version": number, "key": key}
                self._upsert(c, _version_tags, row, {"value": value})

    def _upsert(
        self, c: Connection, table: sa.Table, key: Mapping[str, Any], values: Mapping[str, Any]
    ) -> None:
        """Insert the row, or update it where its primary key exists (MLflow's `session.merge`)."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            pg = pg_insert(table).values(workspace=WORKSPACE, **key, **values)
            c.execute(pg.on_conflict_do_update(index_elements=["workspace", *key], set_=values))
            return
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(table).values(workspace=WORKSPACE, **key, **values)
        c.execute(lite.on_conflict_do_update(index_elements=["workspace", *key], set_=values))


def _model_row(c: Connection, name: str) -> Any:
    row = c.execute(
        sa.select(_models).where(_models.c.workspace == WORKSPACE, _models.c.name == name)
    ).first()
    if row is None:
        raise StoreError(f"Registered Model with name={name} not found", NOT_FOUND)
    return row


def _version_row(c: Connection, name: str, number: int) -> Any:
    row = c.execute(
        sa.select(_versions).where(
            _versions.c.workspace == WORKSPACE,
            _versions.c.name == name,
            _versions.c.version == number,
            _versions.c.current_stage != DELETED,
        )
    ).first()
    if row is None:
        raise StoreError(f"Model Version (name={name}, version={number}) not found", NOT_FOUND)
    return row


def _tags_of(c: Connection, name: str, numbers: list[int] | None) -> dict[int, dict[str, str]]:
    query = sa.select(_version_tags.c.version, _version_tags.c.key, _version_tags.c.value).where(
        _version_tags.c.workspace == WORKSPACE, _version_tags.c.name == name
    )
    if numbers is not None:
        query = query.where(_version_tags.c.version.in_(numbers))
    out: dict[int, dict[str, str]] = {}
    for number, key, value in c.execute(query):
        out.setdefault(number, {})[key] = value
    return out


def _stored_version(row: Any, tags: Mapping[str, str]) -> StoredVersion:
    return StoredVersion(
        name=row.name,
        version=str(row.version),
        source=row.source or "",
        run_id=row.run_id or None,
        tags=dict(tags),
        creation_timestamp=int(row.creation_time or 0),
        last_updated_timestamp=row.last_updated_time,
        status=row.status or "READY",
        description=row.description,
    )


def _invalid(message: str) -> StoreError:
    return StoreError(message, INVALID_PARAMETER)


def _check_name(name: str) -> None:
    """MLflow's `_validate_model_name`."""
    if not name or not name.strip():
        raise _invalid("Missing value for required parameter 'name'.")
    if "/" in name or ":" in name:
        raise _invalid(f"Invalid model name '{name}'. Names cannot contain '/' or ':'.")
    if _path_not_unique(name):
        raise _invalid(f"Invalid value {name!r} for parameter 'name': it resolves to another path")


def _check_version(name: str, version: str | int) -> int:
    _check_name(name)
    try:
        return int(version)
    except ValueError:
        raise _invalid(f"Parameter 'version' must be an integer, got '{version}'.") from None


def _check_tag_key(key: str) -> None:
    """MLflow's `_validate_tag_name` and key length."""
    if key is None or not re.match(r"^[/\w.\- :]*$", key):
        raise _invalid(
            f"Invalid value {key!r} for parameter 'key': names may only contain alphanumerics, "
            "underscores (_), dashes (-), periods (.), spaces ( ), colon(:) and slashes (/)."
        )
    if _path_not_unique(key):
        raise _invalid(f"Invalid value {key!r} for parameter 'key': it resolves to another path")
    if len(key) > MAX_TAG_KEY:
        raise _invalid(f"'key' exceeds the maximum length of {MAX_TAG_KEY} characters")


def _check_tag(key: str, value: str) -> None:
    _check_tag_key(key)
    if value is None:
        raise _invalid("Tag value cannot be None")
    if len(value) > MAX_TAG_VALUE:
        raise _invalid(f"'value' exceeds the maximum length of {MAX_TAG_VALUE} characters")


def _check_alias(alias: str, *, reserved: bool) -> None:
    """MLflow's `_validate_model_alias_name` (and `_reserved` when setting)."""
    if not alias:
        raise _invalid("Registered model alias name cannot be empty.")
    if not re.match(r"^[\w\-]*$", alias):
        raise _invalid(
            f"Invalid alias name: '{alias}'. Names may only contain alphanumerics, "
            "underscores (_), and dashes (-)."
        )
    if len(alias) > MAX_ALIAS:
        raise _invalid(
            f"'Registered model alias name' exceeds the maximum length of {MAX_ALIAS} characters"
        )
    if reserved and alias.lower() == "latest":
        raise _invalid("'latest' alias name (case insensitive) is reserved.")
    if reserved and re.match(r"^[vV]\d+$", alias):
        raise _invalid(f"Version alias name '{alias}' is reserved.")


def _path_not_unique(name: str) -> bool:
    norm = posixpath.normpath(name)
    return norm != str(name) or norm == "." or norm.startswith("..") or norm.startswith("/")
