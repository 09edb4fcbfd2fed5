"""Headless Chromium driven over the Chrome DevTools Protocol: what a page fetches and shows.

`Browser` starts the Chromium that `flywheel.monitoring.dashboards.find_chromium`
finds, with its own profile, a DevTools port it picks itself and every host
but 127.0.0.1/localhost unresolvable (an offline laptop: a CDN request fails at
once instead of waiting for DNS). `Browser.open(url)` loads a page in a fresh
tab, records every request the page makes (`Page.requests`), waits until the
network is quiet, and lets a test evaluate JavaScript in it and save a
screenshot. Rendering through CDP rather than `chromium --screenshot`
(`dashboards.screenshot`) is what lets a test see the requests and the computed
styles of the same load it photographs.

For test modules (bound as `browser = browser_support.browser`, as the serving
fixtures are): the module-scoped fixtures `browser`, `default_font` (what an
unstyled page looks like) and `shots` (the screenshots' folder), and the checks
`assert_offline_and_drawn` and `save_screenshot`.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import pytest
import websocket

from flywheel.monitoring.dashboards import find_chromium

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
LOCAL_SCHEMES = frozenset({"file", "data", "blob", "about", "chrome", "devtools"})


class BrowserError(RuntimeError):
    """Chromium could not be started, or a DevTools command failed."""


def is_external(url: str) -> bool:
    """True for a request that leaves the machine (not file:, data:, 127.0.0.1, localhost).

    >>> is_external("https://unpkg.com/x.js"), is_external("file:///tmp/a.html")
    (True, False)
    >>> is_external("http://127.0.0.1:8080/docs"), is_external("data:image/png;base64,AA")
    (False, False)
    """
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return False
    return (parts.hostname or "") not in LOCAL_HOSTS


@dataclass
class Page:
    """One loaded tab: its DevTools connection and the requests its load made."""

    socket: websocket.WebSocket
    url: str
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _by_id: dict[str, str] = field(default_factory=dict)

    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Run one DevTools command; its result (events that arrive meanwhile are recorded)."""
        call = next(self._ids)
        self.socket.send(json.dumps({"id": call, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self._receive(deadline - time.monotonic())
            if message is None or message.get("id") != call:
                continue
            if "error" in message:
                raise BrowserError(f"{method}: {message['error']}")
            result: dict[str, Any] = message.get("result", {})
            return result
        raise BrowserError(f"{method}: no answer within {timeout:.0f} s")

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        self.socket.settimeout(max(timeout, 0.01))
        try:
            message: dict[str, Any] = json.loads(self.socket.recv())
        except websocket.WebSocketTimeoutException:
            return None
        method = message.get("method")
        params = message.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            self.requests.append(url)
            self._by_id[params["requestId"]] = url
        elif method == "Network.loadingFailed":
            self.failed.append(self._by_id.get(params["requestId"], "?"))
        return message

    def wait_quiet(self, quiet_s: float = 0.75, timeout: float = 30.0) -> None:
        """Wait for the load event, then until no request has started for `quiet_s`."""
        deadline = time.monotonic() + timeout
        loaded = False
        while not loaded and time.monotonic() < deadline:
            message = self._receive(deadline - time.monotonic())
            loaded = message is not None and message.get("method") == "Page.loadEventFired"
        if not loaded:
            raise BrowserError(f"{self.url}: no load event within {timeout:.0f} s")
        seen = -1
        while len(self.requests) != seen and time.monotonic() < deadline:
            seen = len(self.requests)
            quiet_until = time.monotonic() + quiet_s
            while time.monotonic() < quiet_until:
                self._receive(quiet_until - time.monotonic())

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, out: Path, *, full_page: bool = False) -> Path:
        """Save a PNG of what the viewport shows (or of the whole page) to `out`."""
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=full_page)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(shot["data"]))
        return out

    def close(self) -> None:
        """Close the tab's DevTools connection."""
        self.socket.close()

    def external_requests(self) -> list[str]:
        """The requests of this load that left the machine."""
        return [url for url in self.requests if is_external(url)]


class Browser:
    """A headless Chromium with a DevTools port; a context manager that stops it."""

    def __init__(self, *, width: int = 1280, height: int = 900, timeout: float = 30.0) -> None:
        self.width, self.height, self.timeout = width, height, timeout
        self.executable = find_chromium()
        if self.executable is None:
            raise BrowserError(
                "no Chromium found ($CHROMIUM, chromium, chromium-browser, google-chrome): "
                "install it with `make screenshot` or `sudo apt-get install -y chromium`"
            )
        self._profile = tempfile.mkdtemp(prefix="flywheel-cdp-")
        self.process = subprocess.Popen(
            [
                self.executable,
                "--headless",
                "--no-sandbox",  # containers and root lack the sandbox's namespaces
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",  # no update, safe-browsing or field-trial calls
                "--disable-component-update",
                "--disable-sync",
                "--metrics-recording-only",
                # an offline machine: any host but the loopback fails to resolve at once
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
                "--remote-debugging-port=0",  # Chromium picks a free port, DevToolsActivePort
                "--remote-allow-origins=*",
                f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its renderers and helpers in one group, stopped together
        )
        try:
            self.port = self._wait_for_port()
        except BaseException:
            self.close()
            raise

    def _wait_for_port(self) -> int:
        active = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"chromium exited with status {self.process.returncode}")
            lines = active.read_text().splitlines() if active.is_file() else []
            if lines and lines[0].isdigit():
                return int(lines[0])
            time.sleep(0.05)
        raise BrowserError(f"chromium opened no DevTools port within {self.timeout:.0f} s")

    def _json(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:
            return json.load(answer)

    def open(self, url: str, *, dark: bool = False, quiet_s: float = 0.75) -> Page:
        """Load `url` in a new tab and wait until it is loaded and its network quiet.

        Args:
            url: the page (a file: URL or a server on 127.0.0.1).
            dark: ask for the dark colour scheme (`prefers-color-scheme: dark`).
            quiet_s: how long no new request must start before the page counts as done.
        """
        target = self._json("/json/new?about:blank", method="PUT")
        socket = websocket.create_connection(
            target["webSocketDebuggerUrl"], timeout=self.timeout, suppress_origin=True
        )
        page = Page(socket, url)
        page.send("Network.enable")
        page.send("Page.enable")
        page.send("Runtime.enable")
        page.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        if dark:
            page.send(
                "Emulation.setEmulatedMedia",
                features=[{"name": "prefers-color-scheme", "value": "dark"}],
            )
        page.send("Page.navigate", url=url)
        page.wait_quiet(quiet_s, self.timeout)
        return page

    def close(self) -> None:
        """Stop Chromium and remove its profile."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ------------------------------------------------ fixtures and checks for tests


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if find_chromium() is None:
        pytest.skip("no Chromium on this machine: `make screenshot` installs Debian's chromium")
    with Browser() as running:
        yield running


@pytest.fixture(scope="module")
def default_font(browser: Browser) -> str:
    """The font family Chromium gives an unstyled page's body (what "unstyled" looks like)."""
    page = browser.open("data:text/html,<p>unstyled</p>")
    try:
        font: str = page.evaluate("getComputedStyle(document.body).fontFamily")
    finally:
        page.close()
    return font


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("FLYWHEEL_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


def save_screenshot(page: Page, shots: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Save what `page` shows as `shots/<name>.png` and print where (past pytest's capture)."""
    path = page.screenshot(shots / f"{name}.png")
    with capsys.disabled():
        print(f"\nscreenshot of {page.url}: {path}")


MLFLOW_ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'
"""The close button of the MLflow Assistant panel."""


def close_mlflow_assistant(page: Page) -> bool:
    """Close the MLflow Assistant panel as a person does, if it is open; whether it was.

    MLflow 3.17's UI opens the panel by itself on the first page a browser loads
    from a server on localhost (mlflow/mlflow#24056; no server setting turns it
    off) and keeps it open or closed as the person left it (localStorage). A
    person closes it once; each test's browser is a fresh profile, so it is
    closed here before looking at a page.
    """
    selector = json.dumps(MLFLOW_ASSISTANT_CLOSE)
    if not page.evaluate(f"document.querySelector({selector}) !== null"):
        return False
    page.evaluate(f"document.querySelector({selector}).click()")
    deadline = time.monotonic() + 10
    while page.evaluate(f"document.querySelector({selector}) !== null"):
        if time.monotonic() > deadline:
            raise BrowserError(f"{page.url}: the MLflow Assistant panel did not close")
        time.sleep(0.1)
    time.sleep(0.5)  # the page reflows into the freed width
    return True


def assert_offline_and_drawn(page: Page, default_font: str, styled: str = "body") -> None:
    """Nothing from the network, nothing missing, text on screen, the page's own styles.

    Args:
        page: the loaded page.
        default_font: the font family of an unstyled page's body (`default_font`).
        styled: a CSS selector of an element the page's stylesheets give their font
            (Swagger UI leaves the body alone and styles `.swagger-ui`).
    """
    assert page.external_requests() == [], f"{page.url} reaches the network"
    assert page.failed == [], f"{page.url}: requests that failed"
    text = page.evaluate("document.body.innerText.trim().length")
    assert text > 100, f"{page.url} is blank ({text} characters of visible text)"
    font = page.evaluate(
        f"(e => e && getComputedStyle(e).fontFamily)(document.querySelector({json.dumps(styled)}))"
    )
    assert font, f"{page.url}: no element {styled}"
    assert font != default_font, f"{page.url} is unstyled ({styled} in the default font {font})"
