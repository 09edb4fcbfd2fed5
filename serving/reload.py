"""Who may reload, and how one worker's `/admin/reload` reaches the others.

`/admin/reload` needs `Authorization: Bearer <token>` with the token the
server was started with in `$FLYWHEEL_ADMIN_TOKEN` (without one the endpoint
is disabled: 403); `authorize_admin` checks it.

Several workers (`serve.workers`): each loads, polls and swaps on its own
(`serving.watcher`), and an admin reload reaches all of them. The worker that
receives `/admin/reload` writes a reload request into a folder private to its
server (`ReloadSignal`; the folder is made by the server process before it
starts the workers, `open_reload_channel`), then checks the alias itself;
every other worker's poller looks at that file every `RELOAD_WATCH_S` seconds
and checks the alias at once when it changes (trigger `admin-broadcast` in the
log). Only the admin endpoint writes a request, so workers never set each
other off in a loop. The reload's answer is the receiving worker's own check,
plus `other_workers_signalled`; the others' swaps are in the server log.
"""

from __future__ import annotations

import atexit
import hmac
import os
import shutil
import tempfile
import uuid
from http import HTTPStatus
from pathlib import Path

from flywheel.serving_api import ADMIN_SCHEME, ADMIN_TOKEN_ENV, AUTHORIZATION_HEADER
from serving.errors import RequestError

RELOAD_DIR_ENV = "FLYWHEEL_RELOAD_DIR"
"""The folder the workers of one server share for reload requests. Not a setting: the server
process makes a fresh one and sets this before it starts the workers (`open_reload_channel`)."""
RELOAD_WATCH_S = 0.25
"""How often a worker looks for another worker's reload request (one `stat`)."""


def authorize_admin(expected: str | None, authorization: str | None) -> None:
    """Check an admin call's `Authorization` header against the configured token.

    Args:
        expected: the server's token (`$FLYWHEEL_ADMIN_TOKEN`); None or empty: admin disabled.
        authorization: the request's `Authorization` header, if any.

    Raises:
        RequestError: 403 when admin is disabled or the token is wrong, 401 when
            no bearer token was sent.
    """
    if not expected:
        raise RequestError(
            f"admin endpoints are disabled: start the server with {ADMIN_TOKEN_ENV} set",
            HTTPStatus.FORBIDDEN,
        )
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != ADMIN_SCHEME.lower() or not token.strip():
        raise RequestError(
            f"admin endpoints need '{AUTHORIZATION_HEADER}: {ADMIN_SCHEME} <token>'",
            HTTPStatus.UNAUTHORIZED,
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise RequestError("invalid admin token", HTTPStatus.FORBIDDEN)


class ReloadSignal:
    """Reload requests between the workers of one server: a small file in a folder they share.

    `send` (the worker that received `/admin/reload`) writes a fresh token
    beside the file and moves it into place with `os.replace`, so a reader sees
    the old token or the new one, never half of one. `received` (every worker's
    poller) costs one `stat` while nothing changed and reads the token when
    something did. A worker never answers its own request or one written
    before it started; nothing that answers a request sends one, so workers
    cannot set each other off in a loop.

    Args:
        directory: the folder the workers of this server share (`RELOAD_DIR_ENV`).
    """

    FILE = "reload-request"

    def __init__(self, directory: Path) -> None:
        self.path = directory / self.FILE
        self._stat: tuple[int, int, int] | None = None
        self._seen: str | None = None
        self.received()  # a request from before this worker started is not one for it

    def send(self) -> str:
        """Ask the other workers to check the alias now; returns the request's token.

        Raises:
            OSError: the folder is gone or not writable.
        """
        token = f"{os.getpid()}-{uuid.uuid4().hex}"
        self._seen = token  # before the write: this worker's own poller must not answer it
        temporary = self.path.with_name(f".{self.FILE}-{token}")
        try:
            temporary.write_text(token)
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)
        return token

    def received(self) -> str | None:
        """The token of a request this worker has not seen yet, or None. Never raises.

        A token is `<pid of the sender>-<random hex>`.
        """
        try:
            stat = self.path.stat()
            # The inode changes with every os.replace, the time maybe not (coarse clocks).
            key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if key == self._stat:
                return None
            token = self.path.read_text()
        except OSError:  # none sent yet, or the folder is gone: nothing to do either way
            return None
        self._stat = key
        if token == self._seen:
            return None
        self._seen = token
        return token


def open_reload_channel() -> Path:
    """Make the folder this server's workers share for reload requests (`ReloadSignal`).

    Run once per `bentoml serve`, in the server process, before it starts the
    workers with a copy of its environment: `RELOAD_DIR_ENV` set here reaches
    every worker, restarted ones too. A fresh private folder (mode 0700) in the
    temporary directory, so no two servers share one (not on a shared state
    volume either); removed when the server process exits.
    """
    directory = tempfile.mkdtemp(prefix="flywheel-reload-")
    os.environ[RELOAD_DIR_ENV] = directory
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return Path(directory)


def worker_reload_signal() -> ReloadSignal | None:
    """This worker's end of the channel its server opened; None when there is none."""
    channel = os.environ.get(RELOAD_DIR_ENV)
    return ReloadSignal(Path(channel)) if channel else None


__all__ = [
    "RELOAD_DIR_ENV",
    "RELOAD_WATCH_S",
    "ReloadSignal",
    "authorize_admin",
    "open_reload_channel",
    "worker_reload_signal",
]
