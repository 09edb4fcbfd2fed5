"""Processes the tests start: a free port to give a server."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A localhost TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
