"""What the registry tests (tests/integration/registry/) share: the store and its helpers.

The store holds rule-based pt2 classifiers (built in that package's conftest)
that read a tiny hand-made dataset exactly, each broken on chosen strata, so
every accuracy (overall and per slice) is known in advance. Here: the shape of
that dataset, the evaluation config with its gates, the store's handle, and
the registry-only helpers (several versions of one model, hand-made blessings,
the aliases as a plain mapping), and a real `mlflow server` for the tests that
need a tracking server (its registry lock is a lease, not an OS lock).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flywheel import registry
from flywheel.config import EvaluateConfig, GatesConfig
from flywheel.registry import Blessing, GateResult
from tests.support.processes import BIN, free_port, stop, subprocess_env, wait_until_up

CLASSES = ("0", "1", "2")
LEVELS = (40, 128, 215)  # pixel value of each class
SIZE = 8
STYLES = ("handwritten", "printed")
NOISES = ("clean", "shadow")
PER_STRATUM = 24  # test images per style × noise stratum (8 per class)
CONFIG = EvaluateConfig(
    registered_model="unused",
    slice_columns=("style", "noise"),
    batch_size=32,
    calibration_bins=10,
    gates=GatesConfig(
        min_accuracy=0.7,
        min_slice_accuracy=None,
        max_slice_regression=0.05,
        min_improvement=0.0,
        min_slice_support=20,
    ),
)


@dataclass(frozen=True)
class Store:
    """A SQLite MLflow store in a temp folder, with the logged test models."""

    uri: str
    dataset: Path
    models: dict[str, str]  # model kind → runs:/ URI


def bless(name: str, version: str, champion: str | None, passed: bool = True) -> None:
    """Record a hand-made blessing (registry tests do not need real evaluations)."""
    gates = (
        GateResult("min_accuracy", 0.9 if passed else 0.5, 0.8, ">=", passed),
        GateResult("slice_regression[style=printed]", 0.0, 0.05, "<=", True),
    )
    blessing = Blessing(
        candidate_uri=registry.model_uri(name, version),
        champion_version=champion,
        gates=gates,
        split="test",
        evaluated_at=registry.utc_now(),
        metrics={"accuracy": 0.9 if passed else 0.5},
    )
    registry.record_blessing(name, version, blessing)


def register_versions(store: Store, name: str, n: int) -> list[str]:
    """Register the store's "first" model `n` times under `name`: `n` new versions."""
    return [registry.register(store.models["first"], name) for _ in range(n)]


def aliases(name: str) -> dict[str, str]:
    """The registered model's aliases, alias → version."""
    return {a: str(v) for a, v in MlflowClient().get_registered_model(name).aliases.items()}


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (SQLite backend under `root`), stopped after the block.

    Yields:
        Its URL, for `MLFLOW_TRACKING_URI`.
    """
    port = free_port()
    log = root / "mlflow-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{root}/server.db",
                "--default-artifact-root",
                (root / "server-artifacts").as_uri(),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=root,
            env=subprocess_env({}),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(process, f"{url}/health", log, timeout=180)
        yield url
    finally:
        stop(process)


def server_versions(name: str, n: int) -> list[str]:
    """`n` versions of a new model on a tracking server, without runs (the registry needs none).

    The first becomes `candidate` as `registry.register` would do; the others have no alias.
    """
    client = MlflowClient()
    client.create_registered_model(name)
    versions = [
        # a source nothing serves (`use_registry` points S3 at a closed port)
        str(client.create_model_version(name, f"s3://flywheel-tests/{name}/{i}").version)
        for i in range(n)
    ]
    client.set_registered_model_alias(name, "candidate", versions[-1])
    return versions


def use_registry(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    """Point this process's MLflow at `uri` for one test (undone by the monkeypatch)."""
    import mlflow.tracking._tracking_service.utils as tracking_utils

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FLYWHEEL_USER", "tester")
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    # `server_versions` sources are s3:// URLs nothing serves: reading one (`flywheel models`
    # checks the files of aliased versions) must fail at once, not after AWS's retries.
    for key, value in {
        "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9",  # the discard port: refused
        "AWS_ACCESS_KEY_ID": "none",
        "AWS_SECRET_ACCESS_KEY": "none",
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(key, value)
