"""Run the model server on this machine for a while and talk to it.

The demo, the traffic simulator, the loop demo, the benchmarks and the tests
all need the same few steps: start `flywheel serve` on 127.0.0.1 on a free
port, wait until `/readyz` says the production model is loaded, send images,
and stop the server (and its worker processes) whatever happens. This module
does that over HTTP only: it never imports BentoML or the service.

    with start_server(Path("params.yaml")) as url:
        item = predict_file(url, Path("digit.png"))
        print(item["label"], item["confidence"], item["model_version"])
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any

import httpx

from flywheel.processes import PORT_IN_USE, free_port, port_is_free, stop_process_group
from flywheel.serving_api import (
    ADMIN_RELOAD_PATH,
    IMAGES_FIELD,
    PREDICT_IMAGES_PATH,
    READY_PATH,
    REQUEST_ID_HEADER,
    admin_headers,
    image_media_type,
)

READY_TIMEOUT_S = 120.0
"""How long `start_server` waits for `/readyz` (start-up imports MLflow and loads the model)."""
STOP_TIMEOUT_S = 20.0
"""How long a stopping server may take to flush its prediction log before it is killed."""
LOG_TAIL_LINES = 40
"""Lines of the server's output quoted when it fails to start."""
START_ATTEMPTS = 3
"""Starts tried when the server dies because a port it picked was taken meanwhile."""
_PORT_TAKEN = ("Address already in use", PORT_IN_USE)
"""In a server's output when a port was taken: BentoML's words, or `flywheel serve`'s own."""


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; the message ends with its log's tail."""


class PredictionError(RuntimeError):
    """The service answered a prediction request with an error.

    Attributes:
        status: the HTTP status.
        body: the response body (the service's `{"error": ...}` as text).
    """

    def __init__(self, message: str, status: int, body: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@contextmanager
def start_server(
    params: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[str]:
    """Run `flywheel serve` in a subprocess until the block ends; yield its base URL.

    The server runs in its own process group, so stopping it (SIGTERM, then
    SIGKILL after `STOP_TIMEOUT_S`) also stops BentoML's worker processes; on
    SIGTERM the service flushes its prediction log. The server is stopped
    however the block ends.

    Args:
        params: the params.yaml the server reads (model name, alias, batching, log).
        host: the address to bind.
        port: the port (None: a free one).
        env: variables added to this process's environment for the server (e.g.
            `MLFLOW_TRACKING_URI`, `FLYWHEEL_HOME`, `FLYWHEEL_ADMIN_TOKEN`).
        cwd: the server's working directory (where a relative `.flywheel/` state
            folder lies); None: this process's.
        log_path: a file for the server's output (None: only its last
            `LOG_TAIL_LINES` lines are kept, in memory); a start-up failure
            quotes its end either way.
        ready_timeout_s: how long to wait for `/readyz`.

    Yields:
        The base URL, e.g. `http://127.0.0.1:40123`.

    Raises:
        ServerStartError: the server exited, or was not ready in time (it is then
            stopped); the message quotes the end of its output. A server that
            died because a port was taken between choosing and binding it
            (BentoML picks its internal ports the same way) is started again,
            up to `START_ATTEMPTS` times; an explicit `port` that another
            process holds fails at once.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        chosen = free_port(host) if port is None else port
        url = f"http://{host}:{chosen}"
        command = [sys.executable, "-m", "flywheel.cli", "serve", "--params"]
        command += [str(Path(params).resolve()), "--host", host, "--port", str(chosen)]
        with ExitStack() as stack:
            if log_path is not None:
                log_path.parent.mkdir(parents=True, exist_ok=True)
                stdout: IO[bytes] | int = stack.enter_context(log_path.open("wb"))
            else:
                stdout = subprocess.PIPE
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdout=stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one process group: the server and its workers
            )
            output = (
                OutputTail(process.stdout).text
                if log_path is None
                else partial(file_tail, log_path)
            )
            try:
                wait_until_ready(url, ready_timeout_s, process=process, output=output)
            except ServerStartError as err:
                stop_process_group(process, STOP_TIMEOUT_S)
                if not any(words in str(err) for words in _PORT_TAKEN):
                    raise
                if port is not None and not port_is_free(host, port):
                    raise ServerStartError(
                        f"port {port} on {host} is in use by another process: stop it or "
                        f"choose another port{_quote(output)}"
                    ) from None
                if attempt < START_ATTEMPTS:
                    # A port chosen free (ours, or one of BentoML's internal ones) was
                    # taken by another process before the server bound it: start again.
                    continue
                raise
            try:
                yield url
            finally:
                stop_process_group(process, STOP_TIMEOUT_S)
            return


class OutputTail:
    """The last lines a process wrote to a pipe, drained by a daemon thread (no file needed).

    Args:
        stream: the process's stdout (its stderr merged into it).
        lines: how many of the last lines to keep.
    """

    def __init__(self, stream: IO[bytes] | None, lines: int = LOG_TAIL_LINES) -> None:
        self._lines: deque[str] = deque(maxlen=lines)
        if stream is not None:
            threading.Thread(target=self._drain, args=(stream,), daemon=True).start()

    def _drain(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):  # until the process closes its end
            self._lines.append(raw.decode(errors="replace").rstrip())

    def text(self) -> str:
        """The kept lines, oldest first."""
        return "\n".join(list(self._lines))


def file_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file ('' when it does not exist)."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until_ready(
    url: str,
    timeout_s: float,
    *,
    process: subprocess.Popen[bytes] | None = None,
    output: Callable[[], str] | None = None,
    path: str = READY_PATH,
) -> None:
    """Poll `<url><path>` until it answers 200 (any HTTP server: `path` is its readiness probe).

    Args:
        url: the server's base URL.
        timeout_s: how long to wait.
        process: the server process: its exit ends the wait at once.
        output: returns the server's recent output, quoted when it fails.
        path: the readiness probe.

    Raises:
        ServerStartError: `process` exited, or `timeout_s` passed; the message
            names the last answer and quotes `output()`.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    with httpx.Client(timeout=5.0) as client:
        while True:
            if process is not None and process.poll() is not None:
                time.sleep(0.2)  # its last words are still in the pipe
                raise ServerStartError(
                    f"the server at {url} exited with status {process.returncode} "
                    f"before it was ready{_quote(output)}"
                )
            try:
                answer = client.get(f"{url}{path}")
            except httpx.HTTPError as err:
                last = f"{type(err).__name__}: {err}"
            else:
                if answer.status_code == 200:
                    return
                last = f"HTTP {answer.status_code}: {answer.text.strip()[:200]}"
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"the server at {url} was not ready within {timeout_s:.0f} s "
                    f"(last {path}: {last}){_quote(output)}"
                )
            time.sleep(0.25)


def predict_files(
    url: str,
    paths: Sequence[Path],
    *,
    request_id: str | None = None,
    timeout_s: float = 30.0,
    client: httpx.Client | None = None,
) -> list[dict[str, Any]]:
    """Classify image files with one `/predict_images` request; one item per file, in order.

    Args:
        url: the service's base URL.
        paths: PNG or JPEG files.
        request_id: sent as `X-Request-ID` (the service echoes it and logs under it).
        timeout_s: of the request.
        client: an open client to reuse (None: one for this call).

    Raises:
        PredictionError: the service answered with an error status (its message included).
        httpx.HTTPError: the request could not be sent or answered.
    """
    headers = {REQUEST_ID_HEADER: request_id} if request_id else {}
    files = [
        (IMAGES_FIELD, (Path(p).name, Path(p).read_bytes(), image_media_type(p))) for p in paths
    ]
    with ExitStack() as stack:
        http = client or stack.enter_context(httpx.Client())
        answer = http.post(
            f"{url}{PREDICT_IMAGES_PATH}", files=files, headers=headers, timeout=timeout_s
        )
    try:
        items: list[dict[str, Any]] = _checked(answer).json()
    except PredictionError as err:  # the service names images by position: name the files
        names = ", ".join(f"image {i} = {Path(p).name}" for i, p in enumerate(paths))
        raise PredictionError(f"{err} ({names})", err.status, err.body) from None
    return items


def predict_file(url: str, path: Path, **kwargs: Any) -> dict[str, Any]:
    """Classify one image file: the service's item for it (`predict_files`' arguments)."""
    return predict_files(url, [path], **kwargs)[0]


def reload_model(url: str, token: str, *, timeout_s: float = 120.0) -> dict[str, Any]:
    """Ask the service to check its alias now and swap in a new version (`/admin/reload`).

    Returns:
        `model_name`, `previous_version`, `model_version`, `changed`.

    Raises:
        PredictionError: refused (401/403: token) or the new version failed to load (502).
    """
    answer = httpx.post(
        f"{url}{ADMIN_RELOAD_PATH}", headers=admin_headers(token), timeout=timeout_s
    )
    result: dict[str, Any] = _checked(answer).json()
    return result


def serve_command(params: Path) -> str:
    """The command line that serves the production model with these params.

    >>> serve_command(Path("params.yaml"))
    'flywheel serve --params params.yaml'
    """
    return f"flywheel serve --params {params}"


def _checked(answer: httpx.Response) -> httpx.Response:
    """The answer, if it is a 200.

    Raises:
        PredictionError: any other status, with the service's message.
    """
    if answer.status_code != 200:
        raise PredictionError(
            f"{answer.request.url} answered {answer.status_code}: {answer.text.strip()[:500]}",
            answer.status_code,
            answer.text,
        )
    return answer


def _quote(output: Callable[[], str] | None) -> str:
    text = output() if output is not None else ""
    return f"; the end of its output:\n{text}" if text else ""


__all__ = [
    "OutputTail",
    "PredictionError",
    "ServerStartError",
    "file_tail",
    "free_port",
    "predict_file",
    "predict_files",
    "reload_model",
    "serve_command",
    "start_server",
    "stop_process_group",
    "wait_until_ready",
]
