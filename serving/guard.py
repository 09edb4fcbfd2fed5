"""The request guard: ASGI middleware that refuses malformed POSTs before BentoML parses them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

from serving.errors import RequestError
from serving.multipart import multipart_parts

MAX_FILENAME_CHARS = 128
"""Longer upload file names are a 400 (BentoML names its temporary copy after them)."""


class RequestGuard:
    """ASGI middleware: refuse malformed POSTs before BentoML parses them.

    * 411 for a chunked body (no `Content-Length`), 413 when the length exceeds
      `max_bytes` — read from the header, so an oversized upload is never
      spooled to disk (no framing header at all means an empty body);
    * 415 when a route's body is not of one of its media types (`media_types`;
      an empty body needs none);
    * 400 when a multipart body has fields other than the route's
      (`multipart_fields`): BentoML would try to parse an unknown binary part as
      JSON and answer 500; when it has more than `max_parts` parts (Starlette's
      own limit of 1,000 becomes a 500 through BentoML), or a boundary longer
      than RFC 2046 allows;
    * 400 when the body ends before its `Content-Length` (the client closed the
      connection): the guard reads the whole body of a guarded route (at most
      `max_bytes`), so BentoML never parses a truncated stream;
    * 408 when the body is not complete `body_timeout_s` after the headers (a
      stream cut short on a connection left open, or one byte a minute): without
      it the request would hold its connection until BentoML's traffic timeout
      answered a 504.

    Media types are matched case-insensitively (`image/PNG` is `image/png`).

    Args:
        app: the ASGI app.
        max_bytes: largest request body accepted.
        media_types: route → the media types its body may have.
        multipart_fields: multipart route → the field names it accepts.
        max_parts: the most parts a multipart body may have (`serve.max_images_per_request`).
        body_timeout_s: how long a whole body may take to arrive (`serve.body_timeout_s`).
    """

    def __init__(
        self,
        app: Any,
        max_bytes: int,
        media_types: Mapping[str, tuple[str, ...]],
        multipart_fields: Mapping[str, frozenset[str]],
        max_parts: int = 1000,
        body_timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.media_types = dict(media_types)
        self.multipart_fields = dict(multipart_fields)
        self.max_parts = max_parts
        self.body_timeout_s = body_timeout_s

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        path = str(scope.get("path", ""))
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        media_type = content_type.split(";")[0].strip().lower()
        try:
            length = headers.get(b"content-length")
            if length is None and b"transfer-encoding" not in headers:
                length = b"0"  # no framing header: the body is empty (RFC 9112, 6.3)
            self._check_headers(path, length, media_type)
            if path in self.media_types or path in self.multipart_fields:
                try:
                    async with asyncio.timeout(self.body_timeout_s):
                        body = await _read_body(receive, self.max_bytes)
                except TimeoutError:
                    raise RequestError(
                        f"the request body did not arrive within {self.body_timeout_s:g} s "
                        "(serve.body_timeout_s): send it whole, at once",
                        HTTPStatus.REQUEST_TIMEOUT,
                    ) from None
                if length is not None and len(body) != int(length):
                    raise RequestError(
                        f"the body has {len(body)} bytes, not the {int(length)} of its "
                        "Content-Length"
                    )
                if path in self.multipart_fields:
                    self._check_fields(
                        content_type, body, self.multipart_fields[path], self.max_parts
                    )
                receive = _replay(body)
        except RequestError as err:
            response = JSONResponse({"error": str(err)}, status_code=int(err.status))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check_headers(self, path: str, length: bytes | None, media_type: str) -> None:
        if length is None:
            raise RequestError(
                "a Content-Length header is required (no chunked bodies)",
                HTTPStatus.LENGTH_REQUIRED,
            )
        if not length.isdigit():
            raise RequestError("Content-Length is not a number")
        if int(length) > self.max_bytes:
            raise RequestError(
                f"request body of {int(length)} bytes exceeds the limit of {self.max_bytes} "
                "bytes (serve.max_request_bytes)",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        wanted = self.media_types.get(path)
        if wanted is not None and media_type not in wanted and int(length) > 0:
            raise RequestError(
                f"{path} takes {' or '.join(wanted)}, got {media_type or 'no Content-Type'}",
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            )

    @staticmethod
    def _check_fields(
        content_type: str, body: bytes, allowed: frozenset[str], max_parts: int
    ) -> None:
        parts = multipart_parts(body, content_type, max_parts)
        unknown = {part.name for part in parts} - allowed
        if unknown or not parts:
            raise RequestError(
                f"multipart fields {sorted(unknown) or '(none)'} not accepted; "
                f"send the files as {sorted(allowed)}"
            )
        for part in parts:
            if part.filename is None:  # BentoML would fetch a text value as a URL
                raise RequestError(
                    f"multipart field {part.name!r} must be a file upload (Content-Disposition "
                    "with a filename), not a text value"
                )
            if len(part.filename) > MAX_FILENAME_CHARS or not part.filename.isprintable():
                raise RequestError(
                    f"upload file names must be printable and at most {MAX_FILENAME_CHARS} "
                    f"characters, got {part.filename[:MAX_FILENAME_CHARS]!r}"
                )


async def _read_body(receive: Callable[[], Awaitable[Any]], max_bytes: int) -> bytes:
    """The whole body; a 400 when the client disconnects first, a 413 past `max_bytes`.

    (A chunked body has no Content-Length to check beforehand.)
    """
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            raise RequestError("the connection closed before the whole body was sent")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(
                f"request body exceeds the limit of {max_bytes} bytes (serve.max_request_bytes)",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI `receive` that hands over an already-read body once."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


__all__ = ["MAX_FILENAME_CHARS", "RequestGuard"]
