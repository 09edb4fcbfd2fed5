"""The BentoML service against a real server on 127.0.0.1 and a real MLflow SQLite registry.

A tiny real classifier (the project's small CNN, seeded weights) is exported
with the training code's own export path (`log_exported_model`: pt2, dynamic
batch), registered, blessed and promoted through `flywheel.registry`. One
server is started with `flywheel serve` as a subprocess (so the CLI and its
environment are tested too); a second one starts against a registered model
that has no `production` alias and must stay not-ready until one is promoted.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from flywheel import registry
from flywheel.config import ModelConfig
from flywheel.features import FEATURE_COLUMNS, summary_features
from flywheel.prediction_log import read_predictions
from flywheel.registry import Blessing, GateResult
from flywheel.tasks.classification import ClassificationTask
from flywheel.tracking import configure_tracking, ensure_experiment
from flywheel.training import log_exported_model

pytestmark = pytest.mark.slow  # real servers: ~10 s to start each

CLASSES = ("0", "1", "2", "3")
SIZE = 16
EMBEDDING = 8
MODEL = "serving-digits"
MAX_IMAGES = 8
MAX_BYTES = 64 * 1024
READY_TIMEOUT_S = 90.0


# ----------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_model(seed: int) -> str:
    """Log a seeded small CNN with the training export path; returns its model URI."""
    torch.manual_seed(seed)
    task = ClassificationTask(CLASSES, SIZE)
    model = task.build_model(
        ModelConfig(width=4, stages=2, embedding_dim=EMBEDDING, dropout=0.0)
    ).eval()
    example = torch.rand(2, 1, SIZE, SIZE)  # (2, 1, S, S)
    with mlflow.start_run():
        uri, _ = log_exported_model(task, model, model.state_dict(), example, EMBEDDING)
    return uri


def _bless(name: str, version: str, uri: str, champion: str | None) -> None:
    gate = GateResult("min_accuracy", 1.0, 0.8, ">=", True)
    blessing = Blessing(
        candidate_uri=uri,
        champion_version=champion,
        gates=(gate,),
        split="test",
        evaluated_at=registry.utc_now(),
        model_name=name,
        candidate_version=version,
    )
    registry.record_blessing(name, version, blessing)


@dataclass
class Server:
    """A running `flywheel serve` subprocess."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    predictions: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def _start(tmp: Path, env: dict[str, str], name: str, retry_s: float = 10.0) -> Server:
    predictions = tmp / "predictions"
    params = tmp / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "evaluate": {"registered_model": name},
                "serve": {
                    "max_batch_size": 16,
                    "max_latency_ms": 2000,
                    "max_images_per_request": MAX_IMAGES,
                    "max_request_bytes": MAX_BYTES,
                    "max_image_pixels": 512 * 512,
                    "top_k": 2,
                    "load_retry_s": retry_s,
                    # relative to params.yaml's folder
                    "log": {"dir": "predictions", "flush_every": 1, "flush_interval_s": 0.2},
                },
            }
        )
    )
    port = _free_port()
    log_path = tmp / "server.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flywheel.cli",
                "serve",
                "--params",
                str(params),
                "--port",
                str(port),
            ],
            cwd=tmp,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: the server and its workers
        )
    return Server(f"http://127.0.0.1:{port}", process, log_path, predictions)


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


def _wait(server: Server, path: str, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"server exited ({server.process.returncode}):\n{server.output()}")
        try:
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"{path} not 200 within {timeout} s:\n{server.output()}")


def _png(pixels: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _images(n: int, seed: int = 0) -> np.ndarray:
    """`(n, S, S)` uint8 images with structure (a bright square on a gradient)."""
    rng = np.random.default_rng(seed)
    images = np.tile(np.linspace(0, 120, SIZE, dtype=np.float64), (n, SIZE, 1))
    for i in range(n):
        r, c = rng.integers(0, SIZE - 6, size=2)
        images[i, r : r + 6, c : c + 6] = 255
    noise = rng.normal(0, 10, size=images.shape)
    return np.clip(images + noise, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A SQLite MLflow store with two versions: v1 production, v2 registered only."""
    store = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{store}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("FLYWHEEL_HOME", str(tmp_path_factory.mktemp("state")))
        config = configure_tracking()
        mlflow.set_experiment(experiment_id=ensure_experiment("serving-tests", config))
        first = _log_model(seed=1)
        version = registry.register(first, MODEL)
        _bless(MODEL, version, first, None)
        registry.promote(MODEL, version, reason="serving test")
        # A model with versions but no production alias, for the not-ready test.
        registry.register(_log_model(seed=2), f"{MODEL}-unpromoted")
        yield {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def server(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = _start(tmp_path_factory.mktemp("serve"), env, MODEL)
    try:
        _wait(running, "/readyz")
        yield running
    finally:
        _stop(running)


@pytest.fixture(scope="module")
def reference(env: dict[str, str]) -> torch.nn.Module:
    """The production version, loaded in-process the way evaluation loads it."""
    version = registry.version_for_alias(MODEL, "production")
    assert version == "1"
    return mlflow.pytorch.load_model(registry.model_uri(MODEL, version))


def _expected(reference: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    task = ClassificationTask(CLASSES, SIZE)
    with torch.inference_mode():
        output = reference(task.preprocess(list(images)))  # (N, K + D)
    probabilities, _ = task.split_output(output)
    return probabilities  # (N, K)


# ------------------------------------------------------------------- tests


def test_predictions_match_the_registered_version(
    server: Server, reference: torch.nn.Module
) -> None:
    images = _images(5)
    expected = _expected(reference, images)  # (5, K)

    by_array = httpx.post(
        f"{server.url}/predict_arrays",
        json={"images": images.tolist()},
        headers={"X-Request-ID": "req-arrays-1"},
        timeout=30,
    )
    assert by_array.status_code == 200, by_array.text
    assert by_array.headers["x-request-id"] == "req-arrays-1"
    files = [("images", (f"{i}.png", _png(img), "image/png")) for i, img in enumerate(images)]
    by_file = httpx.post(f"{server.url}/predict_images", files=files, timeout=30)
    assert by_file.status_code == 200, by_file.text

    for body in (by_array.json(), by_file.json()):
        assert [item["index"] for item in body] == list(range(5))
        for item, probs in zip(body, expected, strict=True):
            assert item["model_name"] == MODEL
            assert item["model_version"] == "1"
            assert item["label"] == CLASSES[int(probs.argmax())]
            assert item["confidence"] == pytest.approx(float(probs.max()), abs=1e-6)
            assert len(item["top_k"]) == 2
            assert item["top_k"][0]["label"] == item["label"]
            assert item["top_k"][0]["probability"] >= item["top_k"][1]["probability"]
    assert {item["request_id"] for item in by_array.json()} == {"req-arrays-1"}
    assert len({item["request_id"] for item in by_file.json()}) == 1

    # (N, 1, S, S) in [0, 1] is the same input as (N, S, S) in 0..255.
    unit = httpx.post(
        f"{server.url}/predict_arrays",
        json={"images": (images[:, None] / 255.0).tolist()},
        timeout=30,
    )
    assert unit.status_code == 200, unit.text
    assert [i["label"] for i in unit.json()] == [i["label"] for i in by_array.json()]

    # An RGB JPEG of another size goes through the training transform (gray, resize).
    rgb = np.stack([np.kron(images[0], np.ones((2, 2), np.uint8))] * 3, axis=-1)  # (2S, 2S, 3)
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG", quality=95)
    answer = httpx.post(
        f"{server.url}/predict_images",
        files=[("images", ("a.jpg", jpeg.getvalue(), "image/jpeg"))],
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("kind", "payload", "status", "message"),
    [
        ("json", {"images": []}, 400, "empty"),
        ("json", {"images": [1, 2, 3]}, 400, "shape"),
        ("json", {"images": np.zeros((2, SIZE, SIZE + 1)).tolist()}, 400, "shape"),
        ("json", {"images": np.zeros((2, 3, SIZE, SIZE)).tolist()}, 400, "shape"),
        ("json", {"images": np.zeros((4 * SIZE, SIZE)).tolist()}, 400, "shape"),
        ("json", {"images": [[["a"] * SIZE] * SIZE]}, 400, ""),
        ("json", {"images": np.full((1, SIZE, SIZE), 300).tolist()}, 400, "[0, 255]"),
        ("json", {"images": np.full((1, SIZE, SIZE), -1).tolist()}, 400, "[0, 1]"),
        ("json", {"images": np.full((1, SIZE, SIZE), 2).tolist(), "scale": "unit"}, 400, "[0, 1]"),
        ("json", {"images": np.zeros((MAX_IMAGES + 1, SIZE, SIZE)).tolist()}, 400, "limit"),
        ("json", {"pictures": np.zeros((1, SIZE, SIZE)).tolist()}, 400, ""),
        ("raw", b"{not json", 400, ""),
        ("files", [("images", ("x.png", b"hello, not an image", "image/png"))], 400, "x.png"),
        ("files", [("images", ("t.png", "TRUNCATED", "image/png"))], 400, "t.png"),
        ("files", [("images", ("g.gif", "GIF", "image/gif"))], 415, "GIF"),
        ("files", [("images", ("big.png", "HUGE", "image/png"))], 413, "pixels"),
        ("files", [("other", ("a.png", "OK", "image/png"))], 400, ""),
        ("files", [("images", (f"{i}.png", "OK", "image/png")) for i in range(9)], 400, "limit"),
        ("body", b"x" * (MAX_BYTES + 1), 413, "exceeds"),
        ("text", b"1, 2, 3", 415, "application/json"),
        ("json-to-files", {"images": [[[0]]]}, 415, "multipart/form-data"),
    ],
    ids=[
        "empty-batch",
        "one-dimensional",
        "wrong-width",
        "three-channels",
        "no-batch-dim",
        "strings",
        "over-255",
        "negative",
        "over-unit-scale",
        "too-many-arrays",
        "wrong-field",
        "not-json",
        "not-an-image",
        "truncated-png",
        "gif",
        "too-many-pixels",
        "wrong-upload-field",
        "too-many-files",
        "body-too-large",
        "text-to-arrays",
        "json-to-images",
    ],
)
def test_bad_input_is_a_clear_4xx(
    server: Server, kind: str, payload: object, status: int, message: str
) -> None:
    ok = _png(_images(1)[0])
    contents = {
        "OK": ok,
        "TRUNCATED": ok[: len(ok) // 2],
        "GIF": _gif(),
        "HUGE": _png(np.zeros((600, 600), np.uint8)),
    }
    if kind == "json":
        answer = httpx.post(f"{server.url}/predict_arrays", json=payload, timeout=30)
    elif kind == "raw":
        answer = httpx.post(
            f"{server.url}/predict_arrays",
            content=payload,  # type: ignore[arg-type]
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
    elif kind == "files":
        files = [
            (field, (name, contents.get(body, body) if isinstance(body, str) else body, ctype))
            for field, (name, body, ctype) in payload  # type: ignore[attr-defined]
        ]
        answer = httpx.post(f"{server.url}/predict_images", files=files, timeout=30)
    elif kind == "text":
        answer = httpx.post(
            f"{server.url}/predict_arrays",
            content=payload,  # type: ignore[arg-type]
            headers={"Content-Type": "text/plain"},
            timeout=30,
        )
    elif kind == "json-to-files":
        answer = httpx.post(f"{server.url}/predict_images", json=payload, timeout=30)
    else:
        answer = httpx.post(
            f"{server.url}/predict_arrays",
            content=payload,  # type: ignore[arg-type]
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
    assert answer.status_code == status, answer.text
    assert message in answer.text


def test_a_request_without_content_length_is_refused(server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        yield json.dumps({"images": _images(1).tolist()}).encode()

    answer = httpx.post(
        f"{server.url}/predict_arrays",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 411, answer.text


def test_every_prediction_is_logged_with_features_embedding_and_image(server: Server) -> None:
    images = _images(3, seed=5)
    answer = httpx.post(
        f"{server.url}/predict_arrays",
        json={"images": images.tolist()},
        headers={"X-Request-ID": "logged-1"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = read_predictions(server.predictions)
        rows = log[log["request_id"] == "logged-1"]
        if len(rows) == 3:
            break
        time.sleep(0.2)
    assert len(rows) == 3, server.output()
    served = answer.json()
    assert rows["index"].tolist() == [0, 1, 2]
    assert rows["label"].tolist() == [item["label"] for item in served]
    np.testing.assert_allclose(rows["confidence"], [item["confidence"] for item in served])
    assert set(rows["model_version"]) == {"1"}
    assert set(rows["model_name"]) == {MODEL}
    assert all(len(e) == EMBEDDING for e in rows["embedding"])
    assert all(sorted(p) == sorted(CLASSES) for p in rows["probabilities"])
    expected = summary_features(images).to_numpy()
    np.testing.assert_allclose(rows[list(FEATURE_COLUMNS)].to_numpy(), expected, atol=1e-9)
    for path, image in zip(rows["image_path"], images, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    # Hive-style hourly partitions.
    assert all("/date=" in p and "/hour=" in p for p in rows["image_path"])


def test_metrics_count_predictions_and_show_the_version(server: Server) -> None:
    httpx.post(
        f"{server.url}/predict_arrays", json={"images": _images(2).tolist()}, timeout=30
    ).raise_for_status()
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert "flywheel_predictions_total{" in text
    assert "flywheel_prediction_confidence_bucket" in text
    version_lines = [
        line for line in text.splitlines() if line.startswith("flywheel_model_version{")
    ]
    assert version_lines, text
    assert all(f'model_name="{MODEL}"' in line for line in version_lines)
    assert any(line.endswith(" 1.0") for line in version_lines)
    assert "flywheel_rejected_requests_total" in text
    assert httpx.get(f"{server.url}/livez", timeout=10).status_code == 200


def test_not_ready_without_a_production_alias_until_one_is_promoted(
    env: dict[str, str], tmp_path: Path
) -> None:
    name = f"{MODEL}-unpromoted"
    waiting = _start(tmp_path, env, name, retry_s=1.0)
    try:
        _wait(waiting, "/livez")
        deadline = time.monotonic() + 60  # the first attempt imports MLflow: seconds
        while "NOT READY" not in waiting.output() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert httpx.get(f"{waiting.url}/readyz", timeout=5).status_code == 503
        answer = httpx.post(
            f"{waiting.url}/predict_arrays", json={"images": _images(1).tolist()}, timeout=30
        )
        assert answer.status_code == 503
        assert "no 'production' alias" in answer.json()["error"]
        assert "NOT READY" in waiting.output()
        assert "no 'production' alias" in waiting.output()

        _bless(name, "1", registry.model_uri(name, "1"), None)
        registry.promote(name, "1", reason="serving test: first model")
        _wait(waiting, "/readyz", timeout=30)
        answer = httpx.post(
            f"{waiting.url}/predict_arrays", json={"images": _images(1).tolist()}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["model_version"] == "1"
        assert f"READY: serving models:/{name}/1" in waiting.output()
    finally:
        _stop(waiting)


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(buffer, format="GIF")
    return buffer.getvalue()


def test_the_service_loads_the_model_without_training_code(env: dict[str, str]) -> None:
    """Serving depends on the exported model only (STYLE.md): no training or evaluation modules."""
    script = (
        "import sys, json\n"
        "from serving.service import load_registered_model\n"
        f"model = load_registered_model({MODEL!r}, 'production')\n"
        "print(json.dumps({'version': model.version, 'modules': sorted(sys.modules)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["version"] == "1"
    forbidden = {"flywheel.training", "flywheel.evaluation", "flywheel.tuning", "optuna"}
    assert not forbidden & set(result["modules"])
