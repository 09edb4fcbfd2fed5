"""A PNG of a Label Studio task page: the image and the model's pre-annotation (headless Chromium).

Starts Label Studio (`make label-studio`'s installation, `FLYWHEEL_LABEL_STUDIO`
overrides) in a temporary state folder, publishes one task the way the
`label-studio` labeller does (the project from the data plan, the image through
local-files storage, the model's answer as a prediction with its score), then
signs in as the owner in headless Chromium, by filling in the login form as a
person would, opens the task in the labelling view and saves the page.
Chromium is driven over its DevTools protocol (`websocket-client`): the CLI's
`--screenshot` cannot sign in.

    .venv/bin/python benchmarks/screenshot_label_studio.py --out /tmp/label-studio-task.png

Without Chromium or Label Studio it prints why and exits 0 (`make bench`);
`make screenshot-label-studio` installs Debian's `chromium` first.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from flywheel.config import DataPlan, Params, Strata
from flywheel.env import disable_telemetry
from flywheel.labeling.queue import task_key
from flywheel.labeling.server import LabelStudioError, find_executable, start_label_studio
from flywheel.labeling.studio import (
    find_or_create_project,
    publish_tasks,
    read_tasks,
    sdk_client,
)
from flywheel.monitoring.dashboards import find_chromium, free_port

GUIDE = Path(__file__).parents[1] / "docs" / "labeling-guide.md"
PLAN = DataPlan(
    classes=("0", "1", "7"),
    image_size=16,
    strata=Strata(style=("handwritten",), noise=("clean",)),
    per_stratum={"train": 1, "val": 1, "test": 1},
)


class DevTools:
    """One page of a headless Chromium, driven over the DevTools protocol."""

    def __init__(self, chromium: str, profile: Path, width: int, height: int) -> None:
        import websocket

        port = free_port()
        self.process = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--remote-debugging-port={port}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    page = next(t for t in json.load(r) if t["type"] == "page")
                break
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    raise RuntimeError("chromium's DevTools did not answer in 60 s") from None
                time.sleep(0.5)
        self.socket = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=120, suppress_origin=True
        )
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command; its result (events before it are dropped)."""
        number = next(self.ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        """A JavaScript expression's value in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float) -> None:
        """Poll until `expression` is truthy in the page."""
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for: {expression}")
            time.sleep(0.5)

    def close(self) -> None:
        """Close the connection and end the browser."""
        self.socket.close()
        self.process.terminate()
        self.process.wait(30)


def publish_one_task(params: Params, root: Path, connection: Any) -> tuple[int, int]:
    """A hand-drawn-looking 7, served as the labeller serves the curated images."""
    image = Image.new("L", (16, 16), 255)
    ImageDraw.Draw(image).line([(3, 3), (12, 3), (6, 13)], fill=0, width=2)
    path = root / "predictions" / "images" / "req-7-0.png"
    path.parent.mkdir(parents=True)
    image.resize((16, 16)).save(path)
    client = sdk_client(connection)
    project = find_or_create_project(client, params)
    task = {
        "data": {"image": "", "image_path": str(path), "request_id": "req-7", "index": 0},
        "predictions": [
            {
                "model_version": "3",
                "score": 0.83,
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": ["7"]},
                    }
                ],
            }
        ],
    }
    publish_tasks(client, project, [task], set(), connection)
    (published,) = [t for t in read_tasks(client, project) if task_key(t) == ("req-7", 0)]
    return project, int(published["id"])


def shoot_task(
    browser: DevTools, connection: Any, project: int, task: int, out: Path, settle: float
) -> None:
    """Sign in as the owner, open the task in the project's data manager, save a PNG to `out`.

    Waits for the task's image (served by local-files storage) before the shot.
    """
    browser.call("Page.enable")
    browser.call("Page.navigate", url=f"{connection.url}/user/login/")
    browser.wait_for("document.querySelector('input[name=email]') !== null", 120)
    email, password = json.dumps(connection.admin), json.dumps(connection.password)
    browser.evaluate(
        "(() => { const f = document.querySelector('form');"
        f" f.querySelector('input[name=email]').value = {email};"
        f" f.querySelector('input[name=password]').value = {password};"
        " f.submit(); return true; })()"
    )
    browser.wait_for("!location.pathname.startsWith('/user/login')", 120)
    browser.call("Page.navigate", url=f"{connection.url}/projects/{project}/data?task={task}")
    browser.wait_for(
        "Array.from(document.images).some(i => i.complete && i.naturalWidth > 0"
        " && i.src.includes('local-files'))",
        180,
    )
    time.sleep(settle)
    shot = browser.call("Page.captureScreenshot", format="png")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))


def main() -> int:
    """Start Label Studio, publish a task, screenshot its labelling page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/label-studio-task.png"))
    parser.add_argument("--settle", type=float, default=4.0, help="seconds after the image shows")
    args = parser.parse_args()
    disable_telemetry()
    chromium = find_chromium()
    if chromium is None:
        print("no Chromium: `make screenshot-label-studio` installs Debian's chromium")
        return 0
    try:
        find_executable()
    except LabelStudioError as err:
        print(err)
        return 0
    with tempfile.TemporaryDirectory(prefix="flywheel-ls-shot-") as tmp:
        root = Path(tmp)
        params = Params(
            data=PLAN,
            label={"studio": {"document_root": root, "guide": GUIDE, "project": "flywheel"}},  # type: ignore[arg-type]
        )
        server = start_label_studio(
            params.label.studio,
            data_dir=root / "ls-data",
            port=free_port(),
            connection_file=root / "connection.json",
        )
        browser = None
        try:
            connection = server.connection
            project, task = publish_one_task(params, root, connection)
            browser = DevTools(chromium, root / "profile", 1400, 900)
            shoot_task(browser, connection, project, task, args.out, args.settle)
        finally:
            if browser is not None:
                browser.close()
            server.stop()
    print(f"task {task} of project {project}: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
