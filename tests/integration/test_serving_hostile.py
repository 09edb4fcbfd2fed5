"""Hostile input against a real server: decompression bombs, parser edge cases, slow headers.

Each request is sent as a hostile client would (raw bytes over a socket where
an HTTP client would correct it); the server's memory is read from `/proc`
(every process of the server: those whose working directory is its folder).
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from flywheel.demo.server import start_server
from tests.load.raw_http import CLOSED, multipart_body, post_request, send_raw, status_of
from tests.support import serving as serving_support
from tests.support.serving import MODEL, Server, png_bytes, server_environment, write_params

pytestmark = pytest.mark.slow  # a real server
env = serving_support.env

MAX_IMAGE_PIXELS = 1024 * 1024
MAX_REQUEST_PIXELS = 3 * 1024 * 1024
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 40
MIB = 1024 * 1024
MULTIPART_XYZ = "multipart/form-data; boundary=xyz"


@pytest.fixture(scope="module")
def server(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("hostile")
    params = write_params(
        folder,
        MODEL,
        max_request_bytes=2 * MIB,
        max_image_pixels=MAX_IMAGE_PIXELS,
        max_request_pixels=MAX_REQUEST_PIXELS,
        max_header_bytes=MAX_HEADER_BYTES,
        max_headers=MAX_HEADERS,
        header_timeout_s=HEADER_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
    )
    log_path = folder / "server.log"
    with start_server(params, env=server_environment(env), cwd=folder, log_path=log_path) as url:
        yield Server(url, log_path, folder / "predictions")


# ----------------------------------------------------------------- helpers


def _server_memory(folder: Path) -> tuple[int, int]:
    """(RSS, peak RSS) in bytes, summed over the processes running in `folder`."""
    rss = peak = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(proc, "cwd").resolve() != folder.resolve():
                continue
            status = Path(proc, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        peak += int(fields.get("VmHWM", "0 kB").split()[0]) * 1024
    assert rss > 0, f"no server process runs in {folder}"
    return rss, peak


def _blank_png(width: int, height: int, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _raw(server: Server, request: bytes, *, wait_s: float = 30.0, shut: bool = False) -> bytes:
    """Send `request` over a socket as it is; the server's whole answer (until it closes)."""
    return send_raw(server.url, request, wait_s=wait_s, shut=shut)


def _status(answer: bytes) -> int:
    status = status_of(answer)
    assert status != CLOSED, "the server closed the connection without answering"
    return status


def _healthy(server: Server) -> None:
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    assert "Traceback" not in server.output(), server.output()[-3000:]
    assert '" 500' not in server.output()
    assert " 500 " not in server.output()


# ------------------------------------------------------------------- tests


def test_a_decompression_bomb_is_refused_from_its_header(server: Server) -> None:
    bomb = _blank_png(4096, 4096, "RGBA")  # ~65 kB that decodes to 64 MiB
    assert len(bomb) < 100_000
    folder = server.log_path.parent
    httpx.post(
        f"{server.url}/predict_image",
        content=png_bytes(np.zeros((16, 16), np.uint8)),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )  # warm
    rss_before, peak_before = _server_memory(folder)
    for _ in range(3):
        answer = httpx.post(
            f"{server.url}/predict_image",
            content=bomb,
            headers={"Content-Type": "image/png"},
            timeout=30,
        )
        assert answer.status_code == 413, answer.text
        assert "4096 x 4096" in answer.text
        assert "serve.max_image_pixels" in answer.text
    rss_after, peak_after = _server_memory(folder)
    assert rss_after - rss_before < 24 * MIB, (rss_before, rss_after)
    assert peak_after - peak_before < 24 * MIB, (peak_before, peak_after)
    _healthy(server)


def test_images_over_the_request_pixel_limit_are_refused_before_decoding(server: Server) -> None:
    side = 1024  # each within the per-image limit, four over the per-request one
    files = [
        ("images", (f"{i}.png", _blank_png(side, side, "RGBA"), "image/png")) for i in range(4)
    ]
    answer = httpx.post(f"{server.url}/predict_images", files=files, timeout=60)
    assert answer.status_code == 413, answer.text
    assert "serve.max_request_pixels" in answer.text

    # the worst request the limits allow is answered, in bounded memory
    folder = server.log_path.parent
    _, peak_before = _server_memory(folder)
    answer = httpx.post(f"{server.url}/predict_images", files=files[:3], timeout=60)
    assert answer.status_code == 200, answer.text
    _, peak_after = _server_memory(folder)
    # one 1024 x 1024 RGBA image decoded at a time: 4 MiB, a few copies while converted
    assert peak_after - peak_before < 48 * MIB, (peak_before, peak_after)
    _healthy(server)


def test_multipart_edge_cases_are_a_400(server: Server) -> None:
    png = png_bytes(np.zeros((16, 16), np.uint8))
    long_boundary = "b" * 300
    started = time.monotonic()
    answer = _raw(
        server,
        post_request(
            "/predict_images",
            f"multipart/form-data; boundary={long_boundary}",
            multipart_body(long_boundary, 1, png),
        ),
    )
    assert _status(answer) == 400, answer
    assert b"boundary of 300 characters" in answer
    assert time.monotonic() - started < 10

    many = multipart_body("xyz", 1001)
    answer = _raw(server, post_request("/predict_images", MULTIPART_XYZ, many))
    assert _status(answer) == 400, answer
    assert b"serve.max_images_per_request" in answer

    # a stream shorter than its Content-Length, then bytes that are no HTTP at all
    body = multipart_body("xyz", 1, png)
    answer = _raw(
        server,
        post_request("/predict_images", "multipart/form-data; boundary=xyz", body[:40], len(body))
        + b"\xff\xfe\x00garbage",
        wait_s=10,
        shut=True,
    )
    assert not answer or _status(answer) == 400, answer
    answer = _raw(
        server,
        post_request("/predict_arrays", "application/json", b'{"images": [[', 200) + b"\xff" * 20,
        wait_s=10,
        shut=True,
    )
    assert not answer or _status(answer) == 400, answer
    _healthy(server)


def test_a_body_cut_short_on_an_open_connection_is_a_408(server: Server) -> None:
    """Fewer bytes than the Content-Length, and the connection left open: no 504 a minute later."""
    body = multipart_body("xyz", 1, png_bytes(np.zeros((16, 16), np.uint8)))
    for path, content_type, sent in (
        ("/predict_images", MULTIPART_XYZ, body[:40]),
        ("/predict_arrays", "application/json", b'{"images": [[0'),
    ):
        started = time.monotonic()
        stalled = post_request(path, content_type, sent, 1000)  # ...and nothing more, left open
        answer = _raw(server, stalled, wait_s=BODY_TIMEOUT_S * 5)
        elapsed = time.monotonic() - started
        assert _status(answer) == 408, answer
        assert b"serve.body_timeout_s" in answer
        assert BODY_TIMEOUT_S * 0.8 < elapsed < BODY_TIMEOUT_S * 3
    _healthy(server)


def test_header_size_count_and_time_are_limited_at_the_edge(server: Server) -> None:
    # 4 x the limit: what the socket buffers take before the server closes the connection
    huge = b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 * MAX_HEADER_BYTES)
    started = time.monotonic()
    answer = _raw(server, huge)
    assert _status(answer) == 431, answer[:300]
    assert f"{MAX_HEADER_BYTES} bytes".encode() in answer
    assert time.monotonic() - started < 5

    # under the count limit, over the size limit, and whole: one read holds all of it
    whole = (
        b"GET /readyz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(f"X-H{i}: ".encode() + b"v" * 1000 + b"\r\n" for i in range(20))
        + b"\r\n"
    )
    assert len(whole) > MAX_HEADER_BYTES
    answer = _raw(server, whole)
    assert _status(answer) == 431, answer[:300]
    assert f"{MAX_HEADER_BYTES} bytes".encode() in answer

    many = (
        b"GET /readyz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(f"X-H{i}: v\r\n".encode() for i in range(MAX_HEADERS + 10))
        + b"\r\n"
    )
    answer = _raw(server, many)
    assert _status(answer) == 431, answer[:300]

    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=HEADER_TIMEOUT_S * 5) as slow:
        started = time.monotonic()
        slow.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")  # ...and nothing more
        answer = slow.recv(65536)
        elapsed = time.monotonic() - started
        assert _status(answer) == 408, answer
        assert slow.recv(65536) == b""  # closed
    assert HEADER_TIMEOUT_S * 0.8 < elapsed < HEADER_TIMEOUT_S * 3
    _healthy(server)


def test_media_types_are_case_insensitive_and_errors_name_no_server_file(
    server: Server,
) -> None:
    png = png_bytes(np.zeros((16, 16), np.uint8))
    answer = httpx.post(
        f"{server.url}/predict_image",
        content=png,
        headers={"Content-Type": "image/PNG"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    files = [("images", ("broken.png", png[: len(png) // 2], "image/png"))]
    answer = httpx.post(f"{server.url}/predict_images", files=files, timeout=30)
    assert answer.status_code == 400, answer.text
    assert "image 0" in answer.text
    assert "tmp" not in answer.text  # BentoML's temporary copy is tmpXXXX.png
