"""MLflow set-up and lineage: where runs go, and what every run records about its origin.

The tracking URI comes from `MLFLOW_TRACKING_URI` (a server on the cluster);
without it, runs go to the embedded default, a SQLite file under the state
folder (`.flywheel/mlflow/mlflow.db`) with artifacts beside it. For any local
store the artifact location is set explicitly on the experiment, because
otherwise MLflow writes artifacts to `./mlruns` of whatever directory the
process happens to run in.

Lineage tags tie a run to the code (git commit and whether the tree was dirty),
the data (the DVC data version), the configuration (a hash of the params), the
pipeline run that launched it and the device it ran on.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from flywheel.env import disable_telemetry, state_dir

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
PIPELINE_RUN_ID_ENV = "FLYWHEEL_PIPELINE_RUN_ID"
GIT_COMMIT_ENV = "FLYWHEEL_GIT_COMMIT"
"""Set in container images, which carry the code but not the `.git` folder."""

TAG_GIT_COMMIT = "flywheel.git_commit"
TAG_GIT_DIRTY = "flywheel.git_dirty"
TAG_DATA_VERSION = "flywheel.data_version"
TAG_PARAMS_HASH = "flywheel.params_hash"
TAG_PIPELINE_RUN_ID = "flywheel.pipeline_run_id"
TAG_DEVICE = "flywheel.device"
LINEAGE_TAGS: tuple[str, ...] = (
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_DATA_VERSION,
    TAG_PARAMS_HASH,
    TAG_PIPELINE_RUN_ID,
    TAG_DEVICE,
)
"""Tags every training run carries (read by evaluation and the registry)."""

UNKNOWN = "unknown"
_PROFILE_URIS = frozenset({"databricks", "databricks-uc", "uc"})
"""Bare words MLflow reads as hosted services, not as local paths."""


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs are recorded.

    Attributes:
        uri: the MLflow tracking URI.
        artifact_root: folder (URI) for new experiments' artifacts; None lets the
            tracking server decide (remote stores).
    """

    uri: str
    artifact_root: str | None


def default_tracking_uri() -> str:
    """The embedded default: `sqlite:///<state dir>/mlflow/mlflow.db` (absolute path)."""
    db = (state_dir() / "mlflow" / "mlflow.db").resolve()
    return f"sqlite:///{db}"


def local_store_dir(uri: str) -> Path | None:
    """The folder of a local store (SQLite file or file store), None for a server.

    >>> local_store_dir("sqlite:////tmp/x/mlflow.db")
    PosixPath('/tmp/x')
    >>> local_store_dir("http://mlflow:5000") is None
    True
    """
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute.db: the path follows the third slash.
        return Path(uri.removeprefix("sqlite:///")).parent
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "" and uri and uri not in _PROFILE_URIS:
        return Path(uri)  # a bare path is a file store
    return None


def resolve_tracking() -> TrackingConfig:
    """The tracking URI (env `MLFLOW_TRACKING_URI` or the default) and its artifact root."""
    uri = os.environ.get(TRACKING_URI_ENV) or default_tracking_uri()
    store = local_store_dir(uri)
    artifact_root = (store / "artifacts").resolve().as_uri() if store is not None else None
    return TrackingConfig(uri=uri, artifact_root=artifact_root)


def configure_tracking() -> TrackingConfig:
    """Point MLflow at the resolved store (creating a local store's folder); telemetry off.

    Called by the entry points that log (training), never at import.
    """
    disable_telemetry()
    import mlflow

    config = resolve_tracking()
    store = local_store_dir(config.uri)
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(config.uri)
    return config


def configure_registry() -> TrackingConfig:
    """For commands that use the registry alone (`flywheel rollback`): telemetry off, no MLflow.

    The registry's access (`flywheel.registry.access`) resolves the same store
    as `configure_tracking` without importing MLflow; it calls
    `configure_tracking` itself if it has to fall back on MLflow's client.
    Where this process has imported MLflow anyway (a test, a notebook), MLflow
    is pointed at the same store: its own default would be `./mlflow.db`.
    """
    disable_telemetry()
    config = resolve_tracking()
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(config.uri)
    return config


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
"""MLflow's experiment kind for training runs, the UI's "model development" marker.
(MLflow 3.17's UI still opens on its GenAI screens while its global GenAI /
Model training switch says so: `flywheel ui` links the Model training view.)"""


def ensure_experiment(name: str, config: TrackingConfig) -> str:
    """The id of experiment `name`, created (with the local artifact root) if missing.

    The experiment is marked as model development (`EXPERIMENT_KIND_TAG`), also
    when it already exists unmarked (made by an older flywheel or by hand).
    """
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = f"{config.artifact_root}/{name}" if config.artifact_root else None
        experiment_id = str(mlflow.create_experiment(name, artifact_location=location))
        mlflow.MlflowClient().set_experiment_tag(
            experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT
        )
        return experiment_id
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT
        )
    return str(experiment.experiment_id)


def git_state(repo: str | Path = ".") -> tuple[str, str]:
    """`(commit, dirty)` of the git work tree holding `repo`, as tag strings.

    `dirty` is "true" when tracked files differ from the commit. Not counted:
    untracked files (data and local state are git-ignored), and DVC's pointer
    files (`*.dvc`, `dvc.lock`): a new data version rewrites `data.dvc`, which
    the run records as its data version, not as a change of the code.
    Outside a git tree the commit is `FLYWHEEL_GIT_COMMIT` if set (container
    images) and dirty is "unknown"; without either both are "unknown".
    """
    try:
        commit = _git(repo, "rev-parse", "HEAD")
        changes = _git(
            repo,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(top,exclude,glob)**/*.dvc",
            ":(top,exclude)dvc.lock",
        )
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get(GIT_COMMIT_ENV, UNKNOWN), UNKNOWN
    return commit, "true" if changes else "false"


def _git(repo: str | Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


def source_tags(commit: str) -> dict[str, str]:
    """MLflow's own source fields of a run (its UI shows these, not flywheel's tags).

    The source is the pipeline run that launched the step, else the `flywheel`
    command (MLflow would otherwise record the KFP executor's `executor_main.py`).

    Args:
        commit: the git commit of the code (`git_state`); "unknown" records none.
    """
    pipeline_run = os.environ.get(PIPELINE_RUN_ID_ENV, "")
    if pipeline_run:
        name, kind = f"pipeline run {pipeline_run}", "JOB"
    else:
        program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
        command = [arg for arg in sys.argv[1:2] if not arg.startswith("-")]
        name = " ".join([program, *command]) if program == "flywheel" else program
        kind = "LOCAL"
    tags = {"mlflow.source.name": name, "mlflow.source.type": kind}
    if commit != UNKNOWN:
        tags["mlflow.source.git.commit"] = commit
    return tags


def run_name(model: str, data_version: str | None, run_id: str) -> str:
    """What a training run is, for MLflow's run lists and legends.

    >>> run_name("cnn", "3f2a9c1d0e7b.dir", "b41c9e0f22aa4c6d")
    'cnn · data 3f2a9c1d · b41c9e'
    >>> run_name("cnn", None, "b41c9e0f22aa4c6d")
    'cnn · data unknown · b41c9e'
    """
    short = data_version.removesuffix(".dir")[:8] if data_version else UNKNOWN
    return f"{model} · data {short} · {run_id[:6]}"


def hash_params(params: Mapping[str, Any]) -> str:
    """A short, stable hash of a JSON-able configuration (key order does not matter).

    >>> hash_params({"a": 1, "b": [1, 2]}) == hash_params({"b": [1, 2], "a": 1})
    True
    >>> len(hash_params({}))
    16
    """
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested configuration → `{"a.b.c": "value"}` for `mlflow.log_params`.

    Lists are written as JSON so they stay one readable value.

    >>> flatten_params({"train": {"lr": 0.1, "model": {"name": "cnn"}}, "classes": ["0", "1"]})
    {'train.lr': '0.1', 'train.model.name': 'cnn', 'classes': '["0", "1"]'}
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(list(value), default=str)
        else:
            flat[name] = str(value)
    return flat


def lineage_tags(
    *,
    data_version: str | None,
    params_hash: str,
    device: str,
    repo: str | Path = ".",
) -> dict[str, str]:
    """The lineage tags of a run (names in `LINEAGE_TAGS`).

    Args:
        data_version: the DVC data version (`flywheel.data.versioning.data_version`);
            None records "unknown".
        params_hash: `hash_params` of the configuration that produced the run.
        device: what the run trained on, e.g. "cpu" or "cuda:NVIDIA H100 ×2".
        repo: a path inside the git work tree of the code.
    """
    commit, dirty = git_state(repo)
    return {
        TAG_GIT_COMMIT: commit,
        TAG_GIT_DIRTY: dirty,
        TAG_DATA_VERSION: data_version or UNKNOWN,
        TAG_PARAMS_HASH: params_hash,
        TAG_PIPELINE_RUN_ID: os.environ.get(PIPELINE_RUN_ID_ENV, "") or UNKNOWN,
        TAG_DEVICE: device,
    }
