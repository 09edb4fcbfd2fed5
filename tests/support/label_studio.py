"""A real Label Studio server on 127.0.0.1, and the exports it writes after people annotate.

Label Studio (`label-studio==1.23.2`) conflicts with the project's lock
(pandas 3, Django 5.2), so it lives in a venv of its own:

    make label-studio    # .label-studio/venv, pinned by requirements/label-studio.txt

`FLYWHEEL_LABEL_STUDIO` names another `label-studio` executable (else
`.label-studio/venv`'s, else the one on PATH). The server keeps its SQLite
database in a folder of the test's; the first start runs the migrations
(about a minute idle, several on a busy machine) unless `make label-studio`'s
migrated template is there to copy. Annotators are users of the same organisation, added by
`label_studio_admin.py` run with Label Studio's Python; everything else goes
through the HTTP API, as people's browsers do.

`write_exports` is how the checked-in files under `tests/fixtures/label_studio/`
were made, against a running server: `python -m tests.support.label_studio URL
LABEL_STUDIO_EXECUTABLE DATA_DIR OUT_DIR OWNER_EMAIL`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel.labeling.server import seed_database
from flywheel.monitoring.dashboards import free_port
from tests.support.processes import stop, subprocess_env, wait_until_up

OWNER = "owner@example.com"
ANNOTATORS = ("ann1@example.com", "ann2@example.com", "ann3@example.com")
CLASSES = ("grün blatt", "Élan", "7")
"""Class names with a space and non-ASCII letters, as Label Studio keeps them."""

PLAN_CONFIG = "plan"
STOCK_CONFIG = "stock"


def label_studio_executable() -> Path | None:
    """`FLYWHEEL_LABEL_STUDIO`, else `make label-studio`'s, else PATH's; None when none exists."""
    from flywheel.labeling.server import LabelStudioError, find_executable

    try:
        return find_executable(Path(__file__).parents[2])
    except LabelStudioError:
        return None


@dataclass
class LabelStudio:
    """A running server: its URL and each user's API token (legacy tokens enabled)."""

    url: str
    tokens: dict[str, str]

    def call(self, user: str, method: str, path: str, body: Any = None) -> Any:
        """One API call as `user`; the parsed JSON answer (or the raw text when not JSON)."""
        request = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Token {self.tokens[user]}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            raw = response.read()
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode()


def start_label_studio(
    executable: Path, data_dir: Path, log: Path, timeout: float = 900
) -> tuple[subprocess.Popen[bytes], LabelStudio]:
    """Start Label Studio on 127.0.0.1 with its database in `data_dir`; wait for `/health`."""
    port = free_port()
    env = subprocess_env(
        {"LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "DJANGO_DB": "sqlite", "DO_NOT_TRACK": "1"}
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    seed_database(data_dir, executable)  # the migrated template, when `make label-studio` made one
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(executable),
                "start",
                "--internal-host",  # the address it binds (`--host` names its public URL)
                "127.0.0.1",
                "--port",
                str(port),
                "--no-browser",
                "--username",
                OWNER,
                "--password",
                "owner-pass-1",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # `stop` ends its process group, workers included
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(process, f"{url}/health", log, timeout)
        tokens = add_annotators(executable, data_dir, ANNOTATORS)
    except BaseException:
        stop(process)
        raise
    return process, LabelStudio(url, tokens)


def add_annotators(
    executable: Path, data_dir: Path, emails: Sequence[str], owner: str = OWNER
) -> dict[str, str]:
    """Run `label_studio_admin.py` with Label Studio's Python: members and their tokens.

    The owner's token is returned under `OWNER`, whatever the owner's email.
    """
    python = executable.parent / "python"
    done = subprocess.run(
        [str(python), "-I", str(Path(__file__).with_name("label_studio_admin.py")), owner, *emails],
        env=subprocess_env({"LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "DJANGO_DB": "sqlite"}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"label_studio_admin.py failed:\n{done.stderr[-3000:]}")
    tokens: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    tokens[OWNER] = tokens[owner]
    return tokens


def label_config(classes: Sequence[str], kind: str) -> str:
    """The plan's labelling config (`label` on `image`), or the stock template's (`choice`)."""
    from flywheel.labeling import label_config_xml

    if kind == PLAN_CONFIG:
        return label_config_xml(classes, "label", "image")
    return label_config_xml(classes, "choice", "image")


def annotate_project(
    server: LabelStudio,
    title: str,
    kind: str,
    tasks: Sequence[Mapping[str, Any]],
    votes: Mapping[str, Sequence[tuple[str, str | None]]],
) -> int:
    """A project holding `tasks`, annotated by the annotators; returns its id.

    Args:
        server: the running server.
        title: the project's title.
        kind: `plan` (control `label`) or `stock` (control `choice`).
        tasks: Label Studio tasks (`data` with `request_id`, `index`).
        votes: request id → `(annotator, label)` in order; a None label is a skipped
            (cancelled) annotation.
    """
    control = "label" if kind == PLAN_CONFIG else "choice"
    project = server.call(
        OWNER,
        "POST",
        "/api/projects",
        {"title": title, "label_config": label_config(CLASSES, kind)},
    )
    server.call(OWNER, "POST", f"/api/projects/{project['id']}/import", list(tasks))
    listed = server.call(OWNER, "GET", f"/api/tasks?project={project['id']}&page_size=1000")
    for task in listed["tasks"] if isinstance(listed, dict) else listed:
        for annotator, label in votes.get(task["data"]["request_id"], ()):
            result = (
                []
                if label is None
                else [
                    {
                        "from_name": control,
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": [label]},
                    }
                ]
            )
            server.call(
                annotator,
                "POST",
                f"/api/tasks/{task['id']}/annotations",
                {"result": result, "was_cancelled": label is None},
            )
    return int(project["id"])


def export(server: LabelStudio, project: int, export_type: str, target: Path) -> Path:
    """Download the project's export of `export_type` (JSON, JSON_MIN, CSV) to `target`."""
    request = urllib.request.Request(
        f"{server.url}/api/projects/{project}/export?exportType={export_type}"
        "&download_all_tasks=true",
        headers={"Authorization": f"Token {server.tokens[OWNER]}"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        target.write_bytes(response.read())
    return target


def served_tasks(request_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Tasks as `flywheel curate` queues them (the fields labels are keyed by)."""
    return [
        {
            "data": {
                "image": f"/data/local-files/?d={rid}.png",
                "request_id": rid,
                "index": 0,
                "batch_id": "batch-1",
            }
        }
        for rid in request_ids
    ]


AGREE_VOTES: dict[str, list[tuple[str, str | None]]] = {
    "req-0": [(ANNOTATORS[0], "grün blatt"), (ANNOTATORS[1], "grün blatt")],
    "req-1": [(ANNOTATORS[0], "Élan"), (ANNOTATORS[1], "7"), (ANNOTATORS[2], "Élan")],
    "req-2": [(ANNOTATORS[0], None)],  # skipped: cancelled
    # req-3: nobody annotated it
}
"""Project A (the plan's config): agreement, a 2:1 majority, a cancellation, an open task."""

SPLIT_VOTES: dict[str, list[tuple[str, str | None]]] = {
    "req-4": [(ANNOTATORS[0], "7"), (ANNOTATORS[1], "Élan")],  # a tie
    "req-5": [(ANNOTATORS[0], "7")],
}
"""Project B (the stock template's control `choice`): a tie and a single vote."""


def write_exports(server: LabelStudio, out: Path) -> dict[str, Path]:
    """Both projects annotated, and their exports in `out`, named `<project>-<type>.<ext>`."""
    out.mkdir(parents=True, exist_ok=True)
    agree = annotate_project(
        server,
        "flywheel plan config",
        PLAN_CONFIG,
        served_tasks(["req-0", "req-1", "req-2", "req-3"]),
        AGREE_VOTES,
    )
    split = annotate_project(
        server, "stock template", STOCK_CONFIG, served_tasks(["req-4", "req-5"]), SPLIT_VOTES
    )
    files = {}
    for name, project in (("agree", agree), ("split", split)):
        for export_type, file_name in (
            ("JSON", f"{name}-json.json"),
            ("JSON_MIN", f"{name}-json-min.json"),
            ("CSV", f"{name}-csv.csv"),
        ):
            files[file_name] = export(server, project, export_type, out / file_name)
    return files


if __name__ == "__main__":  # regenerate the checked-in exports against a running server
    tokens = add_annotators(Path(sys.argv[2]), Path(sys.argv[3]), ANNOTATORS, sys.argv[5])
    print(write_exports(LabelStudio(sys.argv[1], tokens), Path(sys.argv[4])))
