"""Requests as a hostile client sends them: raw bytes over a socket, where an HTTP client
would correct them (a wrong Content-Length, a flood of headers, a stream cut short).

Used by the fuzz's explicit cases (`tests.load.fuzz`) and the hostile-input tests
(`tests/integration/test_serving_hostile.py`).
"""

from __future__ import annotations

import contextlib
import socket

CLOSED = 0
"""The status `status_of` gives an answer the server closed without sending (a half-closed
stream the server dropped)."""


def send_raw(url: str, request: bytes, *, wait_s: float = 30.0, shut: bool = False) -> bytes:
    """Send `request` to the server at `url` as it is; its whole answer (until it closes).

    Args:
        url: `http://host:port`.
        request: the bytes to send: request line, headers, body.
        wait_s: how long to wait for each read.
        shut: close the sending side after `request` (a client that stops mid-stream);
            read until the server closes instead of until the answer's Content-Length.
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # the server may refuse (and close) before all is sent
        if shut:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if not shut and _complete(b"".join(chunks)):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def _complete(answer: bytes) -> bool:
    """An answer whose headers and Content-Length bytes of body have arrived."""
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    lengths = [
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    ]
    return bool(lengths) and len(body) >= lengths[0]


def status_of(answer: bytes) -> int:
    """The status of a raw answer; `CLOSED` when the server sent nothing.

    Raises:
        ValueError: the answer is not HTTP/1.1.
    """
    if not answer:
        return CLOSED
    if not answer.startswith(b"HTTP/1.1 "):
        raise ValueError(f"not an HTTP/1.1 answer: {answer[:200]!r}")
    return int(answer.split(b" ", 2)[1])


def post_request(path: str, content_type: str, body: bytes, length: int | None = None) -> bytes:
    """A POST with `body`, announcing `length` bytes (default: the body's own length)."""
    size = len(body) if length is None else length
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode() + body


def multipart_body(
    boundary: str, parts: int, payload: bytes = b"x", field: str = "images", part_headers: int = 0
) -> bytes:
    """A multipart body of `parts` file parts with `payload` each, closed by its final boundary.

    Args:
        boundary: the boundary (the Content-Type's).
        parts: how many parts.
        payload: each part's content.
        field: each part's field name.
        part_headers: extra headers in each part (a header flood inside the body).
    """
    flood = "".join(f"X-Part-{i}: v\r\n" for i in range(part_headers))
    one = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n{flood}\r\n"
        ).encode()
        + payload
        + b"\r\n"
    )
    return one * parts + f"--{boundary}--\r\n".encode()


__all__ = ["CLOSED", "multipart_body", "post_request", "send_raw", "status_of"]
