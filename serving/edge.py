"""The server's edge: limits on request headers and a timeout for slow ones, in the HTTP parser.

The request guard (`serving.guard`) sees a request only once its headers are
parsed; a client sending a 50 MB header, thousands of headers or one byte a
minute holds the event loop or a connection before any ASGI code runs, and
uvicorn's httptools protocol (what BentoML's workers run) has no limit on
either. `EdgeProtocol` is that protocol with three limits:

* more than `max_header_bytes` of request line and headers: 431, connection closed;
* more than `max_headers` headers: 431, connection closed;
* headers not complete within `header_timeout_s` of the connection opening or
  of a request's first byte (slowloris): 408, connection closed.

BentoML builds each worker's `uvicorn.Config` with `http="auto"` and no way to
pass a protocol, so `install` points uvicorn's `auto` protocol at this class in
the worker process (`serving.service.build_service`, which every worker runs
before it starts uvicorn), with the values of `params.yaml: serve`.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

PROTOCOL_PATH = "serving.edge:EdgeProtocol"
"""What uvicorn's `HTTP_PROTOCOLS["auto"]` names once `install` ran."""


class _TooManyHeaders(Exception):
    """Raised from the parser's header callback: stops parsing the request."""


class _HeadersTooLarge(Exception):
    """Raised from the parser's URL or header callback: stops parsing the request."""


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header size, count and time limits (module doc)."""

    max_header_bytes: ClassVar[int] = 64 * 1024
    max_headers: ClassVar[int] = 100
    header_timeout_s: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = True  # waiting for (the rest of) a request's headers
        self._header_bytes = 0  # bytes of reads that ended inside the headers
        self._parsed_bytes = 0  # request line and headers as parsed (a read that held them whole)
        self._header_count = 0
        self._header_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ the timer

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self._in_headers and not self.transport.is_closing():
            self._refuse(408, f"request headers not complete within {self.header_timeout_s:g} s")

    # -------------------------------------------------------- the protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the header timer: a connection that sends nothing is closed too."""
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel the header timer."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse `data`; 431 when the headers grow past `max_header_bytes` or `max_headers`."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as err:
            cause = err.__context__
            if isinstance(cause, _TooManyHeaders):
                self._refuse(431, f"more than {self.max_headers} request headers")
            elif isinstance(cause, _HeadersTooLarge):
                self._refuse_size()
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._in_headers:  # still no end of headers: all of `data` was headers
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse_size()

    def on_message_begin(self) -> None:
        """A request's first byte: its headers are counted and timed from here."""
        super().on_message_begin()
        self._in_headers = True
        self._header_count = 0
        self._parsed_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        """(Part of) the request target: counted with the headers."""
        self._count_parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header; past `max_headers` the request is refused (431)."""
        self._header_count += 1
        if self._header_count > self.max_headers:
            raise _TooManyHeaders
        self._count_parsed(len(name) + len(value) + 4)  # name: value\r\n
        super().on_header(name, value)

    def _count_parsed(self, size: int) -> None:
        """Headers that arrived whole in one read never leave `_in_headers` in
        `data_received`: they are counted here, as the parser hands them over."""
        self._parsed_bytes += size
        if self._parsed_bytes > self.max_header_bytes:
            raise _HeadersTooLarge

    def on_headers_complete(self) -> None:
        """The headers are in: stop the timer and the count, then hand the request on."""
        self._in_headers = False
        self._header_bytes = 0
        self._parsed_bytes = 0
        self._disarm()
        super().on_headers_complete()

    def _refuse_size(self) -> None:
        self._refuse(431, f"request headers exceed the limit of {self.max_header_bytes} bytes")

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with `message` and close the connection (no request is dispatched)."""
        self._in_headers = False
        self._disarm()
        body = message.encode("ascii", "replace")
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()


def install(max_header_bytes: int, max_headers: int, header_timeout_s: float) -> None:
    """Make `EdgeProtocol`, with these limits, uvicorn's `auto` HTTP protocol in this process."""
    from uvicorn import config

    EdgeProtocol.max_header_bytes = max_header_bytes
    EdgeProtocol.max_headers = max_headers
    EdgeProtocol.header_timeout_s = header_timeout_s
    config.HTTP_PROTOCOLS["auto"] = PROTOCOL_PATH


__all__ = ["PROTOCOL_PATH", "EdgeProtocol", "install"]
