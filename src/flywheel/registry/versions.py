"""Registered versions: register a trained model, look versions up, list them with their lineage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel.registry.access import StoredVersion
from flywheel.registry.blessing import TAG_BLESSED, TAG_EVAL_ACCURACY
from flywheel.registry.descriptions import registered_description
from flywheel.registry.errors import ModelNotFoundError, RegistryError
from flywheel.registry.history import (
    Transition,
    _read_history,
    _record,
    _take_alias,
    resolve_user,
    utc_now,
)
from flywheel.registry.lock import LockStrategy, registry_lock
from flywheel.registry.store import (
    ALIAS_CANDIDATE,
    NO_ROLE,
    ROLES,
    _client,
    _get_aliases,
    _get_model,
    _get_version,
)
from flywheel.tracking import LINEAGE_TAGS, TAG_DATA_VERSION, TAG_GIT_COMMIT


@dataclass(frozen=True)
class VersionSummary:
    """One version for listings (`flywheel models`).

    Attributes:
        version: the version number.
        aliases: the aliases pointing at it.
        created_at: UTC ISO time of registration.
        run_id: the training run (None if registered from a path).
        source: where its files live.
        blessed: the latest verdict (None: never evaluated).
        eval_accuracy: overall accuracy of the latest evaluation.
        git_commit: lineage: the code.
        data_version: lineage: the DVC data version.
        last_transition: the latest recorded transition.
        lineage: all lineage tags present.
    """

    version: str
    aliases: tuple[str, ...]
    created_at: str
    run_id: str | None
    source: str
    blessed: bool | None
    eval_accuracy: float | None
    git_commit: str | None
    data_version: str | None
    last_transition: Transition | None
    lineage: Mapping[str, str] = field(default_factory=dict)


def register(
    model_uri: str,
    name: str,
    *,
    tags: Mapping[str, str] | None = None,
    reason: str = "registered after training",
    who: str | None = None,
    lock: LockStrategy = "auto",
    model_description: str | None = None,
) -> str:
    """Register a logged model as a new version and point `candidate` at it.

    `candidate` only moves forward: if a concurrent registration created a
    later version and took the alias first, it keeps it. The version's
    description says its data and run (`flywheel.registry.descriptions`); the
    registered model gets `model_description` while it has none (a description
    someone wrote in the MLflow UI is kept).

    Args:
        model_uri: the logged model, e.g. `runs:/<run id>/model` or `models:/<model id>`.
        name: the registered model (created if missing).
        tags: version tags, typically the training run's lineage tags
            (`flywheel.tracking.lineage_tags`).
        reason: why, for the history.
        who: who, for the history (default: `resolve_user()`).
        lock: the `registry_lock` strategy.
        model_description: what the registered model is (Markdown), for its page.

    Returns:
        The new version number.
    """
    import mlflow

    by = resolve_user(who)
    registered = mlflow.register_model(
        model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()}
    )
    version = str(registered.version)
    client = _client()
    client.update_model_version(
        name,
        version,
        description=registered_description(dict(tags or {}), registered.run_id or None),
    )
    if model_description and not _get_model(client, name).description:
        client.update_registered_model(name, description=model_description)
    with registry_lock(name, strategy=lock):
        aliases = _get_aliases(client, name)
        replaced = aliases.get(ALIAS_CANDIDATE)
        at = utc_now()
        if replaced is not None and int(replaced) > int(version):
            # A concurrent registration got a later version and already took the alias.
            _record(
                client,
                name,
                version,
                Transition(
                    at,
                    "register",
                    NO_ROLE,
                    NO_ROLE,
                    by,
                    f"{reason} ({model_uri}); version {replaced} is the newer candidate",
                ),
            )
            return version
        _take_alias(
            client,
            name,
            ALIAS_CANDIDATE,
            version,
            aliases,
            at=at,
            by=by,
            reason=f"version {version} is the new candidate",
        )
        _record(
            client,
            name,
            version,
            Transition(at, "register", NO_ROLE, ALIAS_CANDIDATE, by, f"{reason} ({model_uri})"),
        )
    return version


def list_versions(name: str) -> list[VersionSummary]:
    """Every version of a registered model, newest first, with aliases, verdict and lineage.

    Raises:
        ModelNotFoundError: no such model.
    """
    client = _client()
    aliases = _get_aliases(client, name)
    versions = client.search_model_versions(name)
    out = []
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = dict(mv.tags or {})
        blessed_tag = tags.get(TAG_BLESSED)
        accuracy = tags.get(TAG_EVAL_ACCURACY)
        history = _read_history(tags)
        out.append(
            VersionSummary(
                version=str(mv.version),
                aliases=tuple(a for a in ROLES if aliases.get(a) == str(mv.version))
                + tuple(
                    sorted(a for a, v in aliases.items() if v == str(mv.version) and a not in ROLES)
                ),
                created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
                run_id=mv.run_id or None,
                source=str(mv.source),
                blessed=None if blessed_tag is None else blessed_tag == "true",
                eval_accuracy=None if accuracy is None else float(accuracy),
                git_commit=tags.get(TAG_GIT_COMMIT),
                data_version=tags.get(TAG_DATA_VERSION),
                last_transition=history[-1] if history else None,
                lineage={k: tags[k] for k in LINEAGE_TAGS if k in tags},
            )
        )
    return out


def model_uri(name: str, version: str) -> str:
    """The URI MLflow loads a registered version from.

    >>> model_uri("digits", "3")
    'models:/digits/3'
    """
    return f"models:/{name}/{version}"


def artifact_problem(name: str, version: str) -> str | None:
    """What stops a registered version's model files from loading, or None if they look whole.

    Reads the version's MLmodel and lists the files of its model data (nothing
    is downloaded from a remote store): an unreadable MLmodel, no model data,
    or an empty file is named. On a local artifact store a zip archive (a pt2
    program) is also read through its directory, which finds a truncated one; a
    remote file whose bytes are corrupt is found only when it is loaded
    (`flywheel serve` says so in `/readyz`). Files on this machine are read
    directly; MLflow (its artifact repositories) is imported only for files
    elsewhere (`s3://`, `mlflow-artifacts:`, …).
    """
    try:
        location = _client().download_uri(name, str(version))
    except RegistryError as err:
        return f"its MLmodel cannot be read: {_first_line(err)}"
    folder = _local_folder(location)
    if folder is None:
        return _remote_artifact_problem(name, version)
    return _local_artifact_problem(folder, location)


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [repr(err)])[0]


def _local_folder(location: str) -> Path | None:
    """The folder of a `file:` URI or an absolute path; None for anything remote."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if not parsed.scheme and location.startswith("/"):
        return Path(location)
    return None


def _local_artifact_problem(folder: Path, location: str) -> str | None:
    """`artifact_problem` for model files on this machine: MLmodel, model data, archives."""
    import yaml

    try:
        meta = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))
        flavors = meta["flavors"]
        flavor = flavors.get("pytorch") or {}
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError) as err:
        return f"its MLmodel cannot be read: {_first_line(err)}"
    model_data = str(flavor.get("model_data", "data"))
    data = f"{location.rstrip('/')}/{model_data}"
    root = folder / model_data
    found = root.rglob("*") if root.is_dir() else iter(())
    files = sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in found if p.is_file())
    if not files:
        return f"no model data under {data}"
    empty = [path for path, size in files if not size]
    if empty:
        return f"empty model file {empty[0]}"
    return _local_archive_problem(str(root), [path for path, _ in files])


def _remote_artifact_problem(name: str, version: str) -> str | None:
    """`artifact_problem` through MLflow's artifact repositories (files not on this machine)."""
    from mlflow.artifacts import list_artifacts
    from mlflow.models import get_model_info

    uri = model_uri(name, version)
    try:
        info = get_model_info(uri)
    except Exception as err:
        return f"its MLmodel cannot be read: {_first_line(err)}"
    flavor = info.flavors.get("pytorch") or {}
    base = info.artifact_path or uri  # an MLmodel written by `save_model` names no artifact path
    data = f"{base.rstrip('/')}/{flavor.get('model_data', 'data')}"
    try:
        files = _artifact_files(list_artifacts, data)
    except Exception as err:
        return f"its model data cannot be listed: {_first_line(err)}"
    if not files:
        return f"no model data under {data}"
    empty = [path for path, size in files if not size]
    if empty:
        return f"empty model file {empty[0]}"
    if data.startswith("file:"):
        return _local_archive_problem(data, [path for path, _ in files])
    return None


def _artifact_files(list_artifacts: Any, root: str, prefix: str = "") -> list[tuple[str, int]]:
    """Every file under an artifact URI, as (path relative to it, size)."""
    out: list[tuple[str, int]] = []
    for entry in list_artifacts(artifact_uri=f"{root}/{prefix}" if prefix else root):
        name = entry.path.rsplit("/", 1)[-1]
        relative = f"{prefix}/{name}" if prefix else name
        if entry.is_dir:
            out.extend(_artifact_files(list_artifacts, root, relative))
        else:
            out.append((relative, entry.file_size or 0))
    return out


def _local_archive_problem(data: str, files: list[str]) -> str | None:
    """A zip archive (a pt2 program) under a local `data` folder (or URI) that cannot be read."""
    import zipfile
    from urllib.parse import unquote, urlparse

    folder = Path(unquote(urlparse(data).path)) if data.startswith("file:") else Path(data)
    for relative in files:
        path = folder / relative
        if path.suffix in (".pt2", ".zip"):
            try:
                with zipfile.ZipFile(path) as archive:
                    archive.namelist()
            except (zipfile.BadZipFile, OSError) as err:
                return f"model file {relative} is not a readable archive: {err}"
    return None


def get_version(name: str, version: str) -> StoredVersion:
    """A registered version (run id, source, tags).

    Raises:
        ModelNotFoundError, VersionNotFoundError: no such model or version.
    """
    return _get_version(_client(), name, str(version))


def version_for_alias(name: str, alias: str) -> str | None:
    """The version an alias points at, None if the alias (or the model) does not exist."""
    try:
        return _get_aliases(_client(), name).get(alias)
    except ModelNotFoundError:
        return None


def run_lineage(run_id: str) -> dict[str, str]:
    """The lineage tags (`flywheel.tracking.LINEAGE_TAGS`) a training run carries."""
    from mlflow import MlflowClient

    tags = MlflowClient().get_run(run_id).data.tags
    return {key: tags[key] for key in LINEAGE_TAGS if key in tags}
