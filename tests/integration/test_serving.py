"""The BentoML service against real servers on 127.0.0.1 and a real MLflow SQLite registry.

A tiny real classifier (the project's small CNN, seeded weights) is exported
with the training code's own export path (`log_exported_model`: pt2, dynamic
batch), registered, blessed and promoted through `flywheel.registry`. Servers
start with `flywheel.demo.server.start_server` (`flywheel serve` in a
subprocess, so the CLI and its environment are tested too):

* the main server (no admin token): predictions, bad input, the log, metrics;
* the swap server (alias polled every second, an admin token): versions
  promoted under load, a version that fails to load, the admin reload;
* a server for a model without a `production` alias: not ready until one is
  promoted; its prediction log is flushed only at shutdown.
"""

from __future__ import annotations

import io
import json
import os
import socket
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
from urllib3 import encode_multipart_formdata

from benchmarks.serving import IMAGE_BODIES_OPERATION, run_fuzz, run_soak
from flywheel import registry
from flywheel.demo.server import (
    PredictionError,
    ServerStartError,
    free_port,
    predict_file,
    reload_model,
    start_server,
    stop_process_group,
    wait_until_ready,
)
from flywheel.monitoring.features import FEATURE_COLUMNS, summary_features
from flywheel.monitoring.prediction_log import read_predictions
from flywheel.registry import Blessing, GateResult
from flywheel.tasks.classification import ClassificationTask
from tests.support.models import log_small_model
from tests.support.tracking import tracking_env

pytestmark = pytest.mark.slow  # real servers: ~10 s to start each

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


def _log_model(seed: int) -> str:
    """Log a seeded small CNN with the training export path; returns its model URI."""
    return log_small_model(CLASSES, SIZE, seed, embedding_dim=EMBEDDING)


def _bless(name: str, version: str, uri: str) -> None:
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


def _register_blessed(name: str, uri: str) -> str:
    """Register `uri` as a new blessed (not promoted) version of `name`; returns it."""
    version = registry.register(uri, name)
    _bless(name, version, uri)
    return version


def _write_params(folder: Path, name: str, **serve: object) -> Path:
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


def _stream(url: str, stop: threading.Event, sent: list[Sent], workers: int = 6) -> None:
    """Concurrent /predict_arrays requests until `stop` is set; every answer goes to `sent`."""
    body = {"images": _images(2).tolist()}

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


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str, server: Server) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s:\n{server.output()[-4000:]}")
        time.sleep(0.1)


def _png(pixels: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(buffer, format="GIF")
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


def _metric(url: str, name: str, labels: str = "") -> float:
    """The sum of a Prometheus metric's samples (whose label text contains `labels`)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A SQLite MLflow store: MODEL and SWAP_MODEL with v1 in production (the same seeded
    network), SWAP_MODEL v2 (another network) blessed, and a model without production."""
    store = tmp_path_factory.mktemp("mlflow")
    state = tmp_path_factory.mktemp("state")
    with tracking_env(store, home=state, experiment="serving-tests") as uri:
        first, second = _log_model(seed=1), _log_model(seed=2)
        for name in (MODEL, SWAP_MODEL):
            registry.promote(name, _register_blessed(name, first), reason="serving test")
        _register_blessed(SWAP_MODEL, second)
        registry.register(second, f"{MODEL}-unpromoted")  # versions, no production alias
        yield {
            "MLFLOW_TRACKING_URI": uri,
            "FLYWHEEL_HOME": os.environ["FLYWHEEL_HOME"],
            "second": second,  # not an environment variable: the URI new versions reuse
        }


@pytest.fixture(scope="module")
def server(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("serve")
    params = _write_params(folder, MODEL)
    log_path = folder / "server.log"
    with start_server(params, env=_server_env(env), cwd=folder, log_path=log_path) as url:
        yield Server(url, log_path, folder / "predictions")


def _server_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"], **extra}


@pytest.fixture(scope="module")
def swap_server(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Polls the alias every second; admin reload enabled."""
    folder = tmp_path_factory.mktemp("swap")
    params = _write_params(folder, SWAP_MODEL, poll_interval_s=1.0)
    log_path = folder / "server.log"
    server_env = _server_env(env, FLYWHEEL_ADMIN_TOKEN=TOKEN)
    with start_server(params, env=server_env, cwd=folder, log_path=log_path) as url:
        yield Server(url, log_path, folder / "predictions")


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
    assert by_array.headers["x-model-version"] == "1"
    files = [("images", (f"{i}.png", _png(img), "image/png")) for i, img in enumerate(images)]
    by_file = httpx.post(f"{server.url}/predict_images", files=files, timeout=30)
    assert by_file.status_code == 200, by_file.text
    by_body = []  # /predict_image: one PNG as the whole body per request
    for i, img in enumerate(images):
        answer = httpx.post(
            f"{server.url}/predict_image",
            content=_png(img),
            headers={"Content-Type": "image/png", "X-Request-ID": f"req-body-{i}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == f"req-body-{i}"
        assert answer.headers["x-model-version"] == "1"
        (item,) = answer.json()
        assert item["index"] == 0
        by_body.append({**item, "index": i})

    for body in (by_array.json(), by_file.json(), by_body):
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


def test_concurrent_requests_share_forward_passes(server: Server) -> None:
    """Adaptive batching: under concurrency some passes carry several requests."""
    images_before = _metric(server.url, "flywheel_batch_size_sum")
    passes_before = _metric(server.url, "flywheel_batch_size_count")
    stop, sent = threading.Event(), list[Sent]()
    threading.Timer(2.0, stop.set).start()
    _stream(server.url, stop, sent, workers=8)
    assert {s.status for s in sent} == {200}
    images = _metric(server.url, "flywheel_batch_size_sum") - images_before
    passes = _metric(server.url, "flywheel_batch_size_count") - passes_before
    assert images == 2 * len(sent)  # every image went through exactly one pass
    assert passes < len(sent), "no two requests ever shared a forward pass"


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
        ("files", [("images", ("x" * 200 + ".png", "OK", "image/png"))], 400, "file names"),
        ("multipart", [("images", "http://127.0.0.1:9/x.png")], 400, "file upload"),
        ("body", b"x" * (MAX_BYTES + 1), 413, "exceeds"),
        ("text", b"1, 2, 3", 415, "application/json"),
        ("json-to-files", {"images": [[[0]]]}, 415, "multipart/form-data"),
        ("image", ("image/png", b""), 400, "body is empty"),
        ("image", ("image/png", b"hello, not an image"), 400, "not a PNG or JPEG"),
        ("image", ("image/png", "TRUNCATED"), 400, "cannot decode"),
        ("image", ("image/png", "GIF"), 415, "GIF"),
        ("image", ("image/jpeg", "HUGE"), 413, "pixels"),
        ("image", ("image/png", b"x" * (MAX_BYTES + 1)), 413, "exceeds"),
        ("image", ("image/gif", "GIF"), 415, "image/png or image/jpeg"),
        ("image", ("application/json", b'{"images": [[[0]]]}'), 415, "image/png or image/jpeg"),
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
        "long-file-name",
        "url-not-file",
        "body-too-large",
        "text-to-arrays",
        "json-to-images",
        "body-empty",
        "body-not-an-image",
        "body-truncated-png",
        "body-gif-as-png",
        "body-too-many-pixels",
        "body-too-large",
        "body-gif-type",
        "body-json-type",
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
    elif kind == "multipart":
        body, content_type = encode_multipart_formdata(payload)  # type: ignore[arg-type]
        answer = httpx.post(
            f"{server.url}/predict_images",
            content=body,
            headers={"Content-Type": content_type},
            timeout=30,
        )
    elif kind == "text":
        answer = httpx.post(
            f"{server.url}/predict_arrays",
            content=payload,  # type: ignore[arg-type]
            headers={"Content-Type": "text/plain"},
            timeout=30,
        )
    elif kind == "json-to-files":
        answer = httpx.post(f"{server.url}/predict_images", json=payload, timeout=30)
    elif kind == "image":
        media_type, body = payload  # type: ignore[misc]
        answer = httpx.post(
            f"{server.url}/predict_image",
            content=contents.get(body, body) if isinstance(body, str) else body,
            headers={"Content-Type": media_type},
            timeout=30,
        )
    else:
        answer = httpx.post(
            f"{server.url}/predict_arrays",
            content=payload,  # type: ignore[arg-type]
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
    assert answer.status_code == status, answer.text
    assert message in answer.text


def test_a_chunked_request_without_content_length_is_refused(server: Server) -> None:
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
    assert "flywheel_batch_size_bucket" in text
    version_lines = [
        line for line in text.splitlines() if line.startswith("flywheel_model_version{")
    ]
    assert version_lines, text
    assert all(f'model_name="{MODEL}"' in line for line in version_lines)
    assert any(line.endswith(" 1.0") for line in version_lines)
    assert 'flywheel_model_loads_total{outcome="loaded"}' in text
    assert "flywheel_rejected_requests_total" in text
    assert httpx.get(f"{server.url}/livez", timeout=10).status_code == 200


def test_fuzzing_the_openapi_spec_finds_no_server_error(server: Server, tmp_path: Path) -> None:
    """A short schemathesis run (`benchmarks/serving.py fuzz` runs 1,000+ requests)."""
    result = run_fuzz(server.url, tmp_path, max_examples=25, seed=1, corrupted_images=150)
    assert result.exit_code == 0
    assert result.server_errors == 0, result.statuses
    bodies = result.statuses[IMAGE_BODIES_OPERATION]
    assert sum(bodies.values()) == 13 + 150
    assert bodies[200] >= 13, bodies  # the valid images of every mode, and lucky corruptions
    assert bodies[400] > 0, bodies
    assert result.requests >= 100
    assert {
        "POST /predict_arrays",
        "POST /predict_images",
        "POST /predict_image",
        "POST /admin/reload",
    } <= set(result.statuses)


def test_a_short_soak_answers_everything(server: Server) -> None:
    """Steady load with a bad upload in every ten (`benchmarks/serving.py soak` runs minutes)."""
    result = run_soak(
        server.url,
        _images(1)[0],
        seconds=8.0,
        concurrency=4,
        sample_every=2.0,
        memory=lambda: 1,  # several servers run under this process: memory is the script's job
    )
    assert result.errors == 0, result.unexpected
    assert result.requests > 100


def test_admin_reload_is_disabled_without_a_token(server: Server) -> None:
    answer = httpx.post(
        f"{server.url}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert answer.status_code == 403, answer.text
    assert "FLYWHEEL_ADMIN_TOKEN" in answer.json()["error"]


# ---------------------------------------------------------------- hot swap


def test_a_promoted_version_is_swapped_in_under_load_without_errors(swap_server: Server) -> None:
    """Polling: promote v2 while requests stream; none fails, answers move from 1 to 2."""
    assert registry.version_for_alias(SWAP_MODEL, "production") == "1"
    stop, sent = threading.Event(), list[Sent]()
    streaming = threading.Thread(target=_stream, args=(swap_server.url, stop, sent))
    streaming.start()
    try:
        _wait_for(lambda: len(sent) >= 30, 30, "30 answers from version 1", swap_server)
        registry.promote(SWAP_MODEL, "2", reason="swap under load")
        _wait_for(lambda: "SWAPPED (poll)" in swap_server.output(), 30, "the swap", swap_server)
        time.sleep(1.0)  # and version 2 for a while
    finally:
        stop.set()
        streaming.join(60)
    assert sent, "no requests were sent"
    assert [s for s in sent if s.status != 200] == [], "requests failed during the swap"
    for s in sent:
        assert len(set(s.versions)) == 1, "one request, one model"
        assert s.header == s.versions[0]
    first_v2 = min(s.done_at for s in sent if s.versions[0] == "2")
    assert any(s.versions[0] == "1" for s in sent)
    late = [s for s in sent if s.sent_at > first_v2]
    assert late, "no requests after the swap"
    assert all(s.versions[0] == "2" for s in late), "a request after the swap got version 1"
    assert _metric(swap_server.url, "flywheel_model_version", SWAP_MODEL) == 2.0
    _wait_for(  # version 1 answered its last request: collected, heap frozen again
        lambda: swap_server.output().count("heap frozen") >= 2, 30, "the heap", swap_server
    )


def test_a_version_that_fails_to_load_keeps_the_old_one_serving(
    env: dict[str, str], swap_server: Server
) -> None:
    serving = registry.version_for_alias(SWAP_MODEL, "production")
    broken = _register_blessed(SWAP_MODEL, _log_model(seed=4))
    artifacts = MlflowClient().get_model_version_download_uri(SWAP_MODEL, broken)
    (Path(artifacts.removeprefix("file://")) / "data" / "model.pt2").write_bytes(b"not a model")
    failed = 'outcome="failed"'
    failures = _metric(swap_server.url, "flywheel_model_loads_total", failed)
    registry.promote(SWAP_MODEL, broken, reason="a version whose artifact is damaged")
    try:
        _wait_for(
            lambda: (
                f"LOAD FAILED (poll): models:/{SWAP_MODEL}@production: version {broken}"
                in swap_server.output()
            ),
            30,
            "the failed load",
            swap_server,
        )
        assert f"still serving version {serving}" in swap_server.output()
        assert _metric(swap_server.url, "flywheel_model_loads_total", failed) > failures
        assert httpx.get(f"{swap_server.url}/readyz", timeout=10).status_code == 200
        answer = httpx.post(
            f"{swap_server.url}/predict_arrays", json={"images": _images(1).tolist()}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["model_version"] == serving

        reload = httpx.post(
            f"{swap_server.url}/admin/reload",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        assert reload.status_code == 502, reload.text
        assert f"version {broken}" in reload.json()["error"]
        assert reload.json()["model_version"] == serving
    finally:
        registry.rollback(SWAP_MODEL, reason="undo the damaged version")
    assert registry.version_for_alias(SWAP_MODEL, "production") == serving


def test_admin_reload_needs_the_token_and_swaps_at_once(
    env: dict[str, str], swap_server: Server
) -> None:
    url = f"{swap_server.url}/admin/reload"
    missing = httpx.post(url, timeout=30)
    assert missing.status_code == 401, missing.text
    assert missing.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(PredictionError) as wrong:
        reload_model(swap_server.url, "not-the-token")
    assert wrong.value.status == 403

    new = _register_blessed(SWAP_MODEL, env["second"])
    registry.promote(SWAP_MODEL, new, reason="admin reload")
    result = reload_model(swap_server.url, TOKEN)  # the poller may have been first: same result
    assert result["model_version"] == new
    assert result["model_name"] == SWAP_MODEL
    answer = httpx.post(
        f"{swap_server.url}/predict_arrays", json={"images": _images(1).tolist()}, timeout=30
    )
    assert answer.json()[0]["model_version"] == new


# ------------------------------------------------------------ other servers


def test_not_ready_without_a_production_alias_until_one_is_promoted(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Also the flush policy: with no size or time trigger, the log is written at shutdown."""
    name = f"{MODEL}-unpromoted"
    log = {"dir": "predictions", "flush_every": 100_000, "flush_interval_s": 3600.0}
    params = _write_params(tmp_path, name, load_retry_s=1.0, log=log)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "flywheel.cli", "serve", "--params", str(params)]
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=tmp_path,
            env={**os.environ, **_server_env(env)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    waiting = Server(url, log_path, tmp_path / "predictions")
    try:
        wait_until_ready(url, 90, process=process, output=waiting.output, path="/livez")
        _wait_for(lambda: "NOT READY" in waiting.output(), 60, "the first load", waiting)
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 503
        answer = httpx.post(
            f"{url}/predict_arrays", json={"images": _images(1).tolist()}, timeout=30
        )
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert "no 'production' alias" in answer.json()["error"]
        assert "no 'production' alias" in waiting.output()

        _bless(name, "1", registry.model_uri(name, "1"))
        registry.promote(name, "1", reason="serving test: first model")
        wait_until_ready(url, 30, process=process, output=waiting.output)
        answer = httpx.post(
            f"{url}/predict_arrays",
            json={"images": _images(3).tolist()},
            headers={"X-Request-ID": "flushed-at-shutdown"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["model_version"] == "1"
        assert f"READY: serving models:/{name}/1" in waiting.output()
        time.sleep(0.5)
        assert "flushed-at-shutdown" not in set(read_predictions(waiting.predictions)["request_id"])
    finally:
        stop_process_group(process)
    logged = read_predictions(waiting.predictions)
    assert (logged["request_id"] == "flushed-at-shutdown").sum() == 3, waiting.output()[-3000:]


def test_start_server_reports_a_server_that_exits(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("serve: {max_batch_size: many}\n")
    with (
        pytest.raises(ServerStartError, match="exited with status 2") as caught,
        start_server(params, cwd=tmp_path, ready_timeout_s=60),
    ):
        pytest.fail("the server should not have become ready")
    assert "max_batch_size" in str(caught.value)  # the server's own error, from its log


def test_start_server_names_a_port_another_process_holds(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A taken port is not retried (only a port lost in the race after choosing it is)."""
    params = _write_params(tmp_path, MODEL)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        started = time.monotonic()
        with (
            pytest.raises(ServerStartError, match=f"port {taken} on 127.0.0.1 is in use") as caught,
            start_server(
                params, port=taken, env=_server_env(env), cwd=tmp_path, ready_timeout_s=60
            ),
        ):
            pytest.fail("the server should not have become ready")
    assert "Address already in use" in str(caught.value)  # the server's own words, quoted
    assert time.monotonic() - started < 45  # one attempt, not START_ATTEMPTS


def test_predict_file_names_the_refusal(server: Server, tmp_path: Path) -> None:
    good = tmp_path / "digit.png"
    good.write_bytes(_png(_images(1)[0]))
    item = predict_file(server.url, good, request_id="client-1")
    assert item["request_id"] == "client-1"
    assert item["model_version"] == "1"
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(PredictionError, match=r"notes\.png") as caught:
        predict_file(server.url, bad)
    assert caught.value.status == 400


def test_the_service_loads_the_model_without_training_code(env: dict[str, str]) -> None:
    """Serving depends on the exported model only (STYLE.md): no training or evaluation modules."""
    script = (
        "import sys, json\n"
        "from serving.hot_swap import load_registered_model\n"
        f"model = load_registered_model({MODEL!r}, 'production')\n"
        "print(json.dumps({'version': model.version, 'modules': sorted(sys.modules)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **_server_env(env)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["version"] == "1"
    forbidden = {
        "flywheel.modeling.training",
        "flywheel.evaluation",
        "flywheel.modeling.tuning",
        "optuna",
    }
    assert not forbidden & set(result["modules"])


def test_bentoml_build_packs_the_service_offline(tmp_path: Path) -> None:
    """`bentoml build` with every proxy pointing nowhere: it needs no network."""
    nowhere = "http://127.0.0.1:9"
    build_env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "HTTP_PROXY": nowhere,
        "HTTPS_PROXY": nowhere,
        "ALL_PROXY": nowhere,
        "NO_PROXY": "",
        "PIP_NO_INDEX": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", "serving/bentofile.yaml", "."],
        cwd=REPO,
        env=build_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (manifest,) = (tmp_path / "bentoml" / "bentos" / "flywheel").glob("*/bento.yaml")
    bento = manifest.parent
    assert yaml.safe_load(manifest.read_text())["service"] == "serving.service:FlywheelService"
    for source in (
        "serving/service.py",
        "serving/batching.py",
        "src/flywheel/registry/__init__.py",
    ):
        assert (bento / "src" / source).is_file(), source
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "torch==2.13.0+cpu" in requirements
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    for training_only in ("dvc==", "great-expectations==", "evidently==", "kfp=="):
        assert training_only not in requirements.lower()
    openapi = (bento / "apis" / "openapi.yaml").read_text()
    for route in ("/predict_images", "/predict_arrays", "/admin/reload"):
        assert route in openapi
