"""Dashboards: the Evidently UI over the workspace and the MLflow UI, and a screenshot of them.

`start_dashboards` launches both servers on 127.0.0.1 (ports from `ui:` in
params.yaml) as child processes in their own process groups, so that Ctrl-C
in the terminal reaches `flywheel ui` alone, which then stops both cleanly.

`screenshot` renders a page in headless Chromium (Debian's `chromium`
package; `make screenshot` installs it) and writes a PNG, so anyone can see
that the dashboard renders with data without opening a browser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.monitoring.reference import MonitoringError
from flywheel.processes import free_port as free_port  # where the callers look for it
from flywheel.processes import stop_process_group
from flywheel.storage import Location, is_url, make_dirs

CHROMIUM_NAMES: tuple[str, ...] = ("chromium", "chromium-browser", "google-chrome", "chrome")
"""Executables tried, in order, when no Chromium is named."""
READY_PATHS = {"evidently": "/api/version", "mlflow": "/health"}


class DashboardError(MonitoringError):
    """A dashboard server did not start, or a screenshot could not be taken."""


def evidently_ui_command(workspace: Location, host: str, port: int) -> list[str]:
    """The Evidently UI over a workspace (this environment's Evidently).

    A local folder gets the stock `evidently ui`, which sees new snapshots
    through inotify; a URL (`s3://...`) gets `flywheel.monitoring.evidently_ui`,
    the same app reloading the workspace on a timer (inotify sees no bucket).
    """
    local = ["evidently.cli", "ui"]
    module = ["flywheel.monitoring.evidently_ui"] if is_url(workspace) else local
    return [
        sys.executable,
        "-m",
        *module,
        "--workspace",
        str(workspace),
        "--host",
        host,
        "--port",
        str(port),
    ]


def mlflow_ui_command(tracking_uri: str, host: str, port: int) -> list[str]:
    """The MLflow UI on a store; one worker (2 cores are plenty, and 4 took 30 s to start)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--workers",
        "1",
        "--host",
        host,
        "--port",
        str(port),
    ]


@dataclass
class Server:
    """A started server process and the URL it answers on."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM its process group, then SIGKILL what is left after `timeout` seconds."""
        stop_process_group(self.process, timeout)


def start_server(
    name: str, argv: Sequence[str], url: str, log: Path, env: dict[str, str] | None = None
) -> Server:
    """Start a server in its own process group, its output going to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches `flywheel ui`, which stops it
        )
    return Server(name, url, process, log)


def wait_until_ready(server: Server, path: str, timeout: float = 60.0) -> None:
    """Poll `server.url + path` until it answers 200.

    Raises:
        DashboardError: the process exited, or `timeout` passed (names the log).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            tail = server.log.read_text(errors="replace")[-2000:]
            raise DashboardError(
                f"{server.name} exited with status {server.process.returncode} "
                f"(log {server.log}):\n{tail}"
            )
        try:
            with urllib.request.urlopen(server.url + path, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise DashboardError(f"{server.name} did not answer on {server.url}{path} in {timeout:.0f} s")


@dataclass
class Dashboards:
    """The running UIs (stop them with `stop`, or use as a context manager)."""

    servers: list[Server] = field(default_factory=list)

    def __enter__(self) -> Dashboards:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every server."""
        for server in self.servers:
            server.stop()

    def dead(self) -> list[Server]:
        """Servers whose process has exited."""
        return [s for s in self.servers if not s.alive()]


def start_dashboards(
    workspace: Location,
    tracking_uri: str,
    *,
    host: str,
    evidently_port: int,
    mlflow_port: int | None,
    log_dir: Path,
    timeout: float = 90.0,
) -> Dashboards:
    """Start the Evidently UI (and the MLflow UI unless `mlflow_port` is None); wait for both.

    Args:
        workspace: the Evidently workspace (created if missing).
        tracking_uri: the MLflow store the MLflow UI shows.
        host: the address both bind (keep 127.0.0.1: neither has authentication).
        evidently_port: the Evidently UI's port.
        mlflow_port: the MLflow UI's port; None starts no MLflow UI.
        log_dir: where each server's output goes (`<name>.log`).
        timeout: seconds each may take to answer.

    Raises:
        DashboardError: a server exited or did not answer; both are stopped.
    """
    make_dirs(workspace)
    telemetry = {"DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    # A viewer needs no MLflow job runner (it starts eight worker processes on its own).
    mlflow_env = {**telemetry, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    dashboards = Dashboards()
    try:
        dashboards.servers.append(
            start_server(
                "evidently",
                evidently_ui_command(workspace, host, evidently_port),
                f"http://{host}:{evidently_port}",
                log_dir / "evidently-ui.log",
                telemetry,
            )
        )
        if mlflow_port is not None:
            dashboards.servers.append(
                start_server(
                    "mlflow",
                    mlflow_ui_command(tracking_uri, host, mlflow_port),
                    f"http://{host}:{mlflow_port}",
                    log_dir / "mlflow-ui.log",
                    mlflow_env,
                )
            )
        for server in dashboards.servers:
            wait_until_ready(server, READY_PATHS[server.name], timeout)
    except BaseException:
        dashboards.stop()
        raise
    return dashboards


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium to use: `explicit`, `$CHROMIUM`, else the first `CHROMIUM_NAMES` on PATH."""
    for name in (explicit, os.environ.get("CHROMIUM"), *CHROMIUM_NAMES):
        if name and (found := shutil.which(name)):
            return found
    return None


def screenshot(
    url: str,
    out: Path,
    *,
    chromium: str | None = None,
    width: int = 1400,
    height: int = 2200,
    settle_ms: int = 15_000,
    timeout: float = 120.0,
) -> Path:
    """Render `url` in headless Chromium and save a PNG of the page.

    Args:
        url: the page (the Evidently dashboard is `<ui>/projects/<project id>`).
        out: the PNG to write.
        chromium: the browser executable (default `find_chromium()`).
        width: viewport width, pixels.
        height: viewport height, pixels (the screenshot's height).
        settle_ms: virtual time the page gets to fetch its data and draw (Chromium
            advances it as fast as the page allows).
        timeout: wall-clock limit (per pass).

    The page is rendered twice, the first time only to warm up: on a UI just
    started, the first render often drew the line panels' axes but not their
    lines (the bars were drawn), while every later one drew them.

    Raises:
        DashboardError: no Chromium, or it failed or wrote no image.
    """
    browser = find_chromium(chromium)
    if browser is None:
        raise DashboardError(
            "no Chromium found (tried $CHROMIUM and "
            f"{', '.join(CHROMIUM_NAMES)}): install Debian's package with "
            "`sudo apt-get install -y chromium` (or run `make screenshot`)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="flywheel-chromium-") as profile:
        for target in (Path(profile) / "warm-up.png", out.resolve()):
            argv = [
                browser,
                "--headless",
                "--no-sandbox",  # containers and root lack the sandbox's namespaces; ours
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--virtual-time-budget={settle_ms}",
                f"--screenshot={target}",
                url,
            ]
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise DashboardError(f"chromium did not finish within {timeout:.0f} s") from None
    if done.returncode != 0 or not out.is_file():
        raise DashboardError(
            f"chromium failed (status {done.returncode}) on {url}: {done.stderr[-1500:]}"
        )
    return out
