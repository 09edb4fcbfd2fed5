"""Test support for the serving tests: a registry of tiny real models, servers of them.

A tiny real classifier (the project's small CNN, seeded weights) is exported
with the training code's own export path (`log_exported_model`: pt2, dynamic
batch), registered, blessed and promoted through `flywheel.registry` (the
`env` fixture). Servers start with `flywheel.demo.server.start_server`
(`flywheel serve` in a subprocess, so the CLI and its environment are tested
too):

* `server` (no admin token): predictions, bad input, the log, metrics;
* `swap_server` (alias polled every second, an admin token): versions
  promoted under load, a version that fails to load, the admin reload.

The fixtures are module-scoped: each test module that binds them
(`env, server = serving_support.env, serving_support.server`) gets its own.
Tests import it as `tests.support.serving` (the repository root is on
`sys.path`, see `pythonpath` in pyproject.toml).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image

from flywheel import registry
from flywheel.demo.server import (
    start_server,
)
from flywheel.registry import Blessing, GateResult
from tests.support.models import log_small_model
from tests.support.tracking import tracking_env

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("0", "1", "2", "3")
SIZE = 16
EMBEDDING = 8
MODEL = "serving-digits"
SWAP_MODEL = "serving-digits-swap"
TOKEN = "test-admin-token"
MAX_IMAGES = 8
MAX_BYTES = 64 * 1024


# ----------------------------------------------------------------- helpers


def log_model(seed: int) -> str:
    """Log a seeded small CNN with the training export path; returns its model URI."""
    return log_small_model(CLASSES, SIZE, seed, embedding_dim=EMBEDDING)


def bless(name: str, version: str, uri: str) -> None:
    gate = GateResult("min_accuracy", 1.0, 0.8, ">=", True)
    blessing = Blessing(
        candidate_uri=uri,
        champion_version=registry.version_for_alias(name, "production"),
        gates=(gate,),
        split="test",
        evaluated_at=registry.utc_now(),
        model_name=name,
        candidate_version=version,
    )
    registry.record_blessing(name, version, blessing)


def register_blessed(name: str, uri: str) -> str:
    """Register `uri` as a new blessed (not promoted) version of `name`; returns it."""
    version = registry.register(uri, name)
    bless(name, version, uri)
    return version


def write_params(folder: Path, name: str, **serve: object) -> Path:
    settings: dict[str, object] = {
        "max_batch_size": 16,
        "max_latency_ms": 2000,
        "max_images_per_request": MAX_IMAGES,
        "max_request_bytes": MAX_BYTES,
        "max_image_pixels": 512 * 512,
        "top_k": 2,
        # relative to params.yaml's folder
        "log": {"dir": "predictions", "flush_every": 1, "flush_interval_s": 0.2},
        **serve,
    }
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"registered_model": name}, "serve": settings}))
    return params


@dataclass
class Server:
    """A running server: its URL, its output, its prediction log."""

    url: str
    log_path: Path
    predictions: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Sent:
    """One request of a load stream, as the client saw it."""

    sent_at: float
    done_at: float
    status: int
    versions: tuple[str, ...]  # model_version of each item (empty unless 200)
    header: str | None  # X-Model-Version


def stream_arrays(url: str, stop: threading.Event, sent: list[Sent], workers: int = 6) -> None:
    """Concurrent /predict_arrays requests until `stop` is set; every answer goes to `sent`."""
    body = {"images": digit_images(2).tolist()}

    def worker() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                started = time.monotonic()
                answer = client.post(f"{url}/predict_arrays", json=body)
                items = answer.json() if answer.status_code == 200 else []
                sent.append(
                    Sent(
                        started,
                        time.monotonic(),
                        answer.status_code,
                        tuple(item["model_version"] for item in items),
                        answer.headers.get("x-model-version"),
                    )
                )

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(worker) for _ in range(workers)]:
            future.result()  # a worker's exception (a dropped connection) fails the test


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, server: Server) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s:\n{server.output()[-4000:]}")
        time.sleep(0.1)


def png_bytes(pixels: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(buffer, format="GIF")
    return buffer.getvalue()


def digit_images(n: int, seed: int = 0) -> np.ndarray:
    """`(n, S, S)` uint8 images with structure (a bright square on a gradient)."""
    rng = np.random.default_rng(seed)
    images = np.tile(np.linspace(0, 120, SIZE, dtype=np.float64), (n, SIZE, 1))
    for i in range(n):
        r, c = rng.integers(0, SIZE - 6, size=2)
        images[i, r : r + 6, c : c + 6] = 255
    noise = rng.normal(0, 10, size=images.shape)
    return np.clip(images + noise, 0, 255).astype(np.uint8)


def metric_total(url: str, name: str, labels: str = "") -> float:
    """The sum of a Prometheus metric's samples (whose label text contains `labels`)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def model_file(name: str, version: str) -> Path:
    """The exported program of a registered version, on the local artifact store."""
    artifacts = MlflowClient().get_model_version_download_uri(name, version)
    return Path(artifacts.removeprefix("file://")) / "data" / "model.pt2"


class Damage:
    """Damage a version's model file (corrupt: overwritten; missing: deleted), then repair it."""

    def __init__(self, name: str, version: str) -> None:
        self.path = model_file(name, version)
        self.original = self.path.read_bytes()

    def corrupt(self) -> None:
        self.path.write_bytes(b"not a model")

    def remove(self) -> None:
        self.path.unlink()

    def repair(self) -> None:
        self.path.write_bytes(self.original)


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A SQLite MLflow store: MODEL and SWAP_MODEL with v1 in production (the same seeded
    network), SWAP_MODEL v2 (another network) blessed, and a model without production."""
    store = tmp_path_factory.mktemp("mlflow")
    state = tmp_path_factory.mktemp("state")
    with tracking_env(store, home=state, experiment="serving-tests") as uri:
        first, second = log_model(seed=1), log_model(seed=2)
        for name in (MODEL, SWAP_MODEL):
            registry.promote(name, register_blessed(name, first), reason="serving test")
        register_blessed(SWAP_MODEL, second)
        registry.register(second, f"{MODEL}-unpromoted")  # versions, no production alias
        yield {
            "MLFLOW_TRACKING_URI": uri,
            "FLYWHEEL_HOME": os.environ["FLYWHEEL_HOME"],
            "second": second,  # not an environment variable: the URI new versions reuse
        }


@pytest.fixture(scope="module")
def server(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("serve")
    params = write_params(folder, MODEL)
    log_path = folder / "server.log"
    with start_server(params, env=server_environment(env), cwd=folder, log_path=log_path) as url:
        yield Server(url, log_path, folder / "predictions")


def server_environment(env: dict[str, str], **extra: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"], **extra}


def flywheel_serve(
    params: Path, port: int, env: dict[str, str], log_path: Path, **extra: str
) -> subprocess.Popen[bytes]:
    """`flywheel serve` as a person starts it (its own session), its output to `log_path`.

    For a server that is not meant to become ready (`start_server` waits until it is).
    """
    command = [sys.executable, "-m", "flywheel.cli", "serve", "--params", str(params)]
    with log_path.open("wb") as out:
        return subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=params.parent,
            env={**os.environ, **server_environment(env, **extra)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def swap_server(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Polls the alias every second; admin reload enabled."""
    folder = tmp_path_factory.mktemp("swap")
    params = write_params(folder, SWAP_MODEL, poll_interval_s=1.0)
    log_path = folder / "server.log"
    server_env = server_environment(env, FLYWHEEL_ADMIN_TOKEN=TOKEN)
    with start_server(params, env=server_env, cwd=folder, log_path=log_path) as url:
        yield Server(url, log_path, folder / "predictions")


@pytest.fixture(scope="module")
def reference(env: dict[str, str]) -> torch.nn.Module:
    """The production version, loaded in-process the way evaluation loads it."""
    version = registry.version_for_alias(MODEL, "production")
    assert version == "1"
    return mlflow.pytorch.load_model(registry.model_uri(MODEL, version))
