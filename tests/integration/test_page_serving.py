"""The page service against a real server: pages read as `PagePipeline` reads them, bad input
refused with a 4xx, the page log, and the recogniser swapped under load with no failed request.

A tiny detector and recogniser are trained on drawn pages, registered, blessed and
promoted (`tests.support.page_serving`); `flywheel serve` serves the two-task plan.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from flywheel import registry
from flywheel.demo.server import start_server
from flywheel.evaluation.pair import load_pair_model
from flywheel.monitoring.page_log import read_pages
from flywheel.page_api import (
    DETECTOR_VERSION_HEADER,
    READ_PAGE_PATH,
    READ_PAGE_UPLOAD_PATH,
    RECOGNIZER_VERSION_HEADER,
)
from flywheel.serving_api import ADMIN_RELOAD_PATH, READY_PATH, admin_headers
from flywheel.storage import read_bytes
from flywheel.tasks.page_pipeline import PagePipeline
from tests.support.object_store import ObjectStore, object_store
from tests.support.page_serving import (
    DETECTOR,
    RECOGNIZER,
    PageStore,
    encoded,
    page_files,
    page_store,
    write_page_params,
)
from tests.support.serving import TOKEN, Server
from tests.support.tracking import tracking_env

pytestmark = pytest.mark.slow  # trains two tiny models and starts a real server

PNG = {"Content-Type": "image/png"}
__all__ = ["object_store"]  # the fixture, found by pytest under its name


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PageStore, str]]:
    root = tmp_path_factory.mktemp("page-serving")
    with tracking_env(root / "mlflow", home=root / "state", experiment="page-serving") as uri:
        yield page_store(root), uri


@pytest.fixture(scope="module")
def server(
    store: tuple[PageStore, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("serve-pages")
    params = write_page_params(folder, poll_interval_s=3600.0)  # swaps by /admin/reload only
    log_path = folder / "server.log"
    env = {"MLFLOW_TRACKING_URI": store[1], "FLYWHEEL_ADMIN_TOKEN": TOKEN}
    with start_server(params, env=env, cwd=folder, log_path=log_path, ready_timeout_s=240) as url:
        yield Server(url, log_path, folder / "page-log")


@pytest.fixture(scope="module")
def pipeline(store: tuple[PageStore, str]) -> PagePipeline:
    """The production pair loaded in-process, as the pair evaluation loads it."""
    s = store[0]
    return PagePipeline(
        load_pair_model(registry.model_uri(DETECTOR, s.detector_version), "detection"),
        load_pair_model(registry.model_uri(RECOGNIZER, s.recognizer_version), "recognition"),
    )


def test_pages_are_answered_as_the_page_pipeline_reads_them(
    server: Server, store: tuple[PageStore, str], pipeline: PagePipeline
) -> None:
    s = store[0]
    files = page_files(s.pages, "test") + page_files(s.pages, "train")[:4]
    regions_seen = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for path in files:
            body = encoded(path)
            answer = client.post(READ_PAGE_PATH, content=body, headers=PNG)
            assert answer.status_code == 200, answer.text
            got = answer.json()
            with Image.open(path) as image:
                image.load()
                expected = pipeline.predict([image.convert("L")])[0]
            assert [r["box"] for r in got["regions"]] == [list(r.box) for r in expected]
            assert [r["latex"] for r in got["regions"]] == [r.latex for r in expected]
            np.testing.assert_allclose(
                [r["score"] for r in got["regions"]], [r.score for r in expected], atol=1e-4
            )
            np.testing.assert_allclose(
                [r["confidence"] for r in got["regions"]],
                [r.confidence for r in expected],
                atol=1e-4,
            )
            assert [r["index"] for r in got["regions"]] == list(range(len(expected)))
            assert (got["width"], got["height"]) == image.size
            assert got["detector"] == {"name": DETECTOR, "version": s.detector_version}
            assert got["recognizer"] == {"name": RECOGNIZER, "version": s.recognizer_version}
            assert answer.headers[DETECTOR_VERSION_HEADER] == s.detector_version
            assert answer.headers[RECOGNIZER_VERSION_HEADER] == s.recognizer_version
            assert "detect;dur=" in answer.headers["server-timing"]
            regions_seen.append(len(expected))
            upload = client.post(
                READ_PAGE_UPLOAD_PATH, files={"page": ("page.png", body, "image/png")}
            )
            assert upload.status_code == 200, upload.text
            assert upload.json()["regions"] == got["regions"]
    assert max(regions_seen) >= 2, regions_seen  # pages with several expressions
    assert sum(1 for n in regions_seen if n) >= len(files) // 2


def test_a_jpeg_page_and_a_blank_page(server: Server, store: tuple[PageStore, str]) -> None:
    path = page_files(store[0].pages, "test")[0]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        jpeg = client.post(
            READ_PAGE_PATH, content=encoded(path, "JPEG"), headers={"Content-Type": "image/jpeg"}
        )
        assert jpeg.status_code == 200, jpeg.text
        assert jpeg.json()["regions"]
        buffer = io.BytesIO()
        Image.new("L", (96, 96), 255).save(buffer, format="PNG")
        blank = client.post(READ_PAGE_PATH, content=buffer.getvalue(), headers=PNG)
    assert blank.status_code == 200
    assert blank.json()["regions"] == []  # nothing found is an answer, not an error


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 255).save(buffer, format="PNG")
    return buffer.getvalue()


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (32, 32), 255).save(buffer, format="GIF")
    return buffer.getvalue()


def _bad_requests(page: bytes) -> list[tuple[str, dict[str, object], int]]:
    """(what, httpx request arguments, expected status)."""
    return [
        ("empty body", {"url": READ_PAGE_PATH, "content": b"", "headers": PNG}, 400),
        ("not an image", {"url": READ_PAGE_PATH, "content": b"hello", "headers": PNG}, 400),
        (
            "truncated png",
            {"url": READ_PAGE_PATH, "content": page[: len(page) // 2], "headers": PNG},
            400,
        ),
        (
            "gif",
            {"url": READ_PAGE_PATH, "content": _gif(), "headers": {"Content-Type": "image/gif"}},
            415,
        ),
        ("gif as png", {"url": READ_PAGE_PATH, "content": _gif(), "headers": PNG}, 415),
        (
            "wrong media type",
            {"url": READ_PAGE_PATH, "content": page, "headers": {"Content-Type": "text/plain"}},
            415,
        ),
        ("body too large", {"url": READ_PAGE_PATH, "content": b"x" * 300_000, "headers": PNG}, 413),
        (
            "too many pixels",
            {"url": READ_PAGE_PATH, "content": _png((1024, 1024)), "headers": PNG},
            413,
        ),
        (
            "wrong field",
            {"url": READ_PAGE_UPLOAD_PATH, "files": {"image": ("p.png", page, "image/png")}},
            400,
        ),
        (
            "two pages",
            {
                "url": READ_PAGE_UPLOAD_PATH,
                "files": [
                    ("page", ("a.png", page, "image/png")),
                    ("page", ("b.png", page, "image/png")),
                ],
            },
            400,
        ),
        (
            "text field",
            {"url": READ_PAGE_UPLOAD_PATH, "data": {"page": "x"}, "files": {"x": ("", b"", "")}},
            400,
        ),
        (
            "upload not an image",
            {"url": READ_PAGE_UPLOAD_PATH, "files": {"page": ("p.png", b"nope", "image/png")}},
            400,
        ),
    ]


def test_each_bad_input_is_a_4xx_with_an_error(
    server: Server, store: tuple[PageStore, str]
) -> None:
    page = encoded(page_files(store[0].pages, "test")[0])
    failures = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for what, request, status in _bad_requests(page):
            answer = client.post(**request)  # type: ignore[arg-type]
            if answer.status_code != status or "error" not in answer.json():
                failures.append((what, answer.status_code, answer.text[:200]))
    assert failures == [], failures


def test_readyz_and_the_page_log(server: Server, store: tuple[PageStore, str]) -> None:
    s = store[0]
    ready = httpx.get(f"{server.url}{READY_PATH}", timeout=10).json()
    assert ready["ready"] is True
    assert ready["detector"]["model_version"] == s.detector_version
    assert ready["recognizer"]["model_name"] == RECOGNIZER
    assert ready["recognizer"]["model_version"] == s.recognizer_version
    deadline = time.monotonic() + 30
    while True:
        pages, regions = read_pages(server.predictions)
        if len(pages) >= 10 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(pages) >= 10
    assert set(pages["detector_version"]) == {s.detector_version}
    assert pages["n_regions"].sum() == len(regions) > 0
    assert all(Path(p).is_file() for p in pages["image_path"])
    assert all(Path(p).is_file() for p in regions["crop_path"])
    assert all(len(e) > 0 for e in regions["embedding"])
    assert all(len(e) > 0 for e in pages["detector_embedding"])
    assert {"mean"} <= set(pages.iloc[0]["page_features"]) or pages.iloc[0]["page_features"]


def test_the_recognizer_swaps_under_load_and_the_detector_keeps_serving(
    server: Server, store: tuple[PageStore, str]
) -> None:
    s = store[0]
    bodies = [encoded(p) for p in page_files(s.pages, "test")]
    statuses: list[tuple[int, str | None, str | None, float]] = []
    swapped_at: list[float] = []
    lock = threading.Lock()
    count = iter(range(200))
    swapped = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for i in count:
                if i == 60:  # a third of the way: move production, ask for a reload
                    registry.promote(RECOGNIZER, s.second_recognizer, reason="swap test")
                    reload = client.post(ADMIN_RELOAD_PATH, headers=admin_headers(TOKEN))
                    assert reload.status_code == 200, reload.text
                    assert reload.json()["recognizer"]["model_version"] == s.second_recognizer
                    assert reload.json()["detector"]["changed"] is False
                    swapped_at.append(time.monotonic())
                    swapped.set()
                if i >= 140:  # the last 60 wait for the reload's answer: however slow it was
                    assert swapped.wait(timeout=120), "the reload did not answer in 120 s"
                started = time.monotonic()
                answer = client.post(READ_PAGE_PATH, content=bodies[i % len(bodies)], headers=PNG)
                versions = (
                    (answer.json()["detector"]["version"], answer.json()["recognizer"]["version"])
                    if answer.status_code == 200
                    else (None, None)
                )
                with lock:
                    statuses.append((answer.status_code, *versions, started))

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(client_loop) for _ in range(8)]:
            future.result()
    assert len(statuses) == 200
    assert [x for x in statuses if x[0] != 200] == []
    assert {x[1] for x in statuses} == {s.detector_version}
    # sent once the reload had answered (it returns when the new version serves); pages
    # 61-139 went on during the reload
    after = [x[2] for x in statuses if x[3] > swapped_at[0]]
    assert len(after) >= 60
    assert set(after) == {s.second_recognizer}
    assert {x[2] for x in statuses} == {s.recognizer_version, s.second_recognizer}
    ready = httpx.get(f"{server.url}{READY_PATH}", timeout=10).json()
    assert ready["recognizer"]["model_version"] == s.second_recognizer
    assert "SWAPPED" in server.output()


def test_the_page_log_goes_to_the_bucket_of_the_state_url(
    store: tuple[PageStore, str],
    object_store: ObjectStore,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A page pod: `FLYWHEEL_STATE_URL` on a bucket (moto), no `serve.log.dir`: the pages, their
    crops and the JSON-lines parts are put into the bucket, and nothing is logged locally."""
    s = store[0]
    folder = tmp_path_factory.mktemp("serve-pages-s3")
    params = write_page_params(folder, log={"flush_every": 1, "flush_interval_s": 0.2})
    state = object_store.prefix("page-serving")
    root = f"{state}/predictions/pages={DETECTOR}+{RECOGNIZER}"
    env = {"MLFLOW_TRACKING_URI": store[1], **object_store.env, "FLYWHEEL_STATE_URL": state}
    files = page_files(s.pages, "test")[:3]
    log_path = folder / "server.log"
    with start_server(params, env=env, cwd=folder, log_path=log_path, ready_timeout_s=240) as url:
        for path in files:
            answer = httpx.post(f"{url}{READ_PAGE_PATH}", content=encoded(path), headers=PNG)
            assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 30
        while sum("/part-" in k for k in object_store.keys(root)) < len(files):
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
    object_store.apply(monkeypatch)
    pages, regions = read_pages(root)
    assert len(pages) == len(files)
    assert set(pages["detector_version"]) == {s.detector_version}
    for url in [*pages["image_path"], *regions["crop_path"]]:
        assert url.startswith(f"{root}/date=")
        assert read_bytes(url).startswith(b"\x89PNG")
    assert not list(folder.rglob("part-*"))  # nothing logged locally
