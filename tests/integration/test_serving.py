"""The BentoML service against a real server on 127.0.0.1 and a real MLflow SQLite registry.

The main server (`tests.support.serving.server`, no admin token): predictions,
bad input, the log, metrics, fuzzing and a short soak. Hot swaps, readiness,
start-up and packaging: `test_serving_lifecycle.py`; every worker of a
two-worker server: `test_serving_reload.py`.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from urllib3 import encode_multipart_formdata

from flywheel.demo.server import PredictionError, predict_file
from flywheel.monitoring.features import FEATURE_COLUMNS, summary_features
from flywheel.monitoring.prediction_log import read_predictions
from flywheel.tasks.classification import ClassificationTask
from tests.load.fuzz import (
    IMAGE_BODIES_OPERATION,
    MULTIPART_EDGES_OPERATION,
    VALID_ARRAYS_OPERATION,
    run_fuzz,
)
from tests.load.fuzz_bodies import ArrayInput, multipart_edge_cases, served_input
from tests.load.soak import run_soak
from tests.support import serving as serving_support
from tests.support.serving import (
    CLASSES,
    EMBEDDING,
    MAX_BYTES,
    MAX_IMAGES,
    MODEL,
    SIZE,
    TOKEN,
    Sent,
    Server,
    digit_images,
    gif_bytes,
    metric_total,
    png_bytes,
    stream_arrays,
)

pytestmark = pytest.mark.slow  # real servers: ~10 s to start each
# The module-scoped fixtures of tests.support.serving used here (each module gets its own).
env, reference, server = serving_support.env, serving_support.reference, serving_support.server


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
    images = digit_images(5)
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
    files = [("images", (f"{i}.png", png_bytes(img), "image/png")) for i, img in enumerate(images)]
    by_file = httpx.post(f"{server.url}/predict_images", files=files, timeout=30)
    assert by_file.status_code == 200, by_file.text
    by_body = []  # /predict_image: one PNG as the whole body per request
    for i, img in enumerate(images):
        answer = httpx.post(
            f"{server.url}/predict_image",
            content=png_bytes(img),
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
    images_before = metric_total(server.url, "flywheel_batch_size_sum")
    passes_before = metric_total(server.url, "flywheel_batch_size_count")
    stop, sent = threading.Event(), list[Sent]()
    threading.Timer(2.0, stop.set).start()
    stream_arrays(server.url, stop, sent, workers=8)
    assert {s.status for s in sent} == {200}
    images = metric_total(server.url, "flywheel_batch_size_sum") - images_before
    passes = metric_total(server.url, "flywheel_batch_size_count") - passes_before
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
        ("files", [("images", ("x.png", b"hello, not an image", "image/png"))], 400, "image 0"),
        ("files", [("images", ("t.png", "TRUNCATED", "image/png"))], 400, "image 0"),
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
    ok = png_bytes(digit_images(1)[0])
    contents = {
        "OK": ok,
        "TRUNCATED": ok[: len(ok) // 2],
        "GIF": gif_bytes(),
        "HUGE": png_bytes(np.zeros((600, 600), np.uint8)),
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
        yield json.dumps({"images": digit_images(1).tolist()}).encode()

    answer = httpx.post(
        f"{server.url}/predict_arrays",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 411, answer.text


def _logged(server: Server, request_ids: list[str], count: int) -> pd.DataFrame:
    """The log's rows of these requests, once all `count` are written (flushed every second)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = read_predictions(server.predictions)
        rows = log[log["request_id"].isin(request_ids)]
        if len(rows) == count:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"{len(rows)} of {count} rows logged:\n{server.output()}")


def test_every_prediction_is_logged_with_features_embedding_and_image(server: Server) -> None:
    images = digit_images(3, seed=5)
    answer = httpx.post(
        f"{server.url}/predict_arrays",
        json={"images": images.tolist()},
        headers={"X-Request-ID": "logged-1"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    rows = _logged(server, ["logged-1"], 3)
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


def test_images_without_content_are_flagged_in_the_answer_and_the_log(server: Server) -> None:
    """A blank image and a 1 x 1 one (resized to one grey level) still get a label, but the
    answer and the log flag them `low_information`; a digit is not flagged."""
    digit = digit_images(1, seed=7)[0]
    uploads = {
        "blank.png": png_bytes(np.full((SIZE, SIZE), 255, np.uint8)),
        "tiny.png": png_bytes(np.array([[90]], np.uint8)),
        "digit.png": png_bytes(digit),
    }
    by_file = httpx.post(
        f"{server.url}/predict_images",
        files=[("images", (name, data, "image/png")) for name, data in uploads.items()],
        headers={"X-Request-ID": "low-info-files"},
        timeout=30,
    )
    assert by_file.status_code == 200, by_file.text
    by_array = httpx.post(
        f"{server.url}/predict_arrays",
        json={"images": [np.zeros((SIZE, SIZE), np.uint8).tolist(), digit.tolist()]},
        headers={"X-Request-ID": "low-info-arrays"},
        timeout=30,
    )
    assert by_array.status_code == 200, by_array.text

    expected = {"low-info-files": [True, True, False], "low-info-arrays": [True, False]}
    served = {"low-info-files": by_file.json(), "low-info-arrays": by_array.json()}
    for request_id, items in served.items():
        assert [item["low_information"] for item in items] == expected[request_id]
        assert all(item["label"] in CLASSES for item in items)  # still the model's answer
    rows = _logged(server, list(expected), 5)
    for request_id, flags in expected.items():
        logged = rows[rows["request_id"] == request_id].sort_values("index")
        assert logged["low_information"].tolist() == flags
        assert (logged["dynamic_range"] < 0.02).tolist() == flags


def test_a_reused_request_id_keeps_both_requests_images(server: Server) -> None:
    """The client picks X-Request-ID; a second request under it must not overwrite the first's."""
    first, second = digit_images(1, seed=11), digit_images(1, seed=12)
    for images in (first, second):
        answer = httpx.post(
            f"{server.url}/predict_arrays",
            json={"images": images.tolist()},
            headers={"X-Request-ID": "reused-1"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
    rows = _logged(server, ["reused-1"], 2)
    logged = sorted(rows["image_path"])
    assert len(set(logged)) == 2
    kept = {np.asarray(Image.open(path)).tobytes() for path in logged}
    assert kept == {first[0].tobytes(), second[0].tobytes()}


def test_metrics_count_predictions_and_show_the_version(server: Server) -> None:
    httpx.post(
        f"{server.url}/predict_arrays", json={"images": digit_images(2).tolist()}, timeout=30
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
    """A short schemathesis run (`make fuzz`, `tests/load/fuzz.py`, runs 1,000+ requests)."""
    arrays = served_input(MODEL, "1", MAX_IMAGES)
    assert arrays == ArrayInput(SIZE, 1, 255, MAX_IMAGES)
    result = run_fuzz(
        server.url,
        tmp_path,
        max_examples=25,
        seed=1,
        corrupted_images=150,
        arrays=arrays,
        valid_arrays=40,
        multipart_edges=True,
    )
    assert result.exit_code == 0
    assert result.server_errors == 0, result.statuses
    assert result.failures == []
    assert result.statuses[VALID_ARRAYS_OPERATION] == {200: 40}
    edges = result.statuses[MULTIPART_EDGES_OPERATION]
    assert sum(edges.values()) == len(multipart_edge_cases(b"", MAX_IMAGES))
    assert edges[400] > 0, edges
    assert edges[408] == 1, edges  # the stream left open
    assert edges[431] == 2, edges  # the request header floods
    # the hook: some of schemathesis's own /predict_arrays bodies reach the model
    assert result.statuses["POST /predict_arrays"][200] > 0, result.statuses
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
    """Steady load with a bad upload in every ten (`make soak`, `tests/load/soak.py`: minutes)."""
    result = run_soak(
        server.url,
        digit_images(1)[0],
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


def test_predict_file_names_the_refusal(server: Server, tmp_path: Path) -> None:
    good = tmp_path / "digit.png"
    good.write_bytes(png_bytes(digit_images(1)[0]))
    item = predict_file(server.url, good, request_id="client-1")
    assert item["request_id"] == "client-1"
    assert item["model_version"] == "1"
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(PredictionError, match=r"notes\.png") as caught:
        predict_file(server.url, bad)
    assert caught.value.status == 400
