"""The `label-studio` labeller against a real Label Studio server on 127.0.0.1.

One server for the module, started by the product's `start_label_studio` from
the installation `make label-studio` makes (`FLYWHEEL_LABEL_STUDIO` overrides),
with three annotators. Annotations are submitted over HTTP with each person's
own access token, as their browser does; the labeller reads them back through
the API and the pipeline's steps merge them into a new data version.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flywheel.config import DataPlan, Params, Strata
from flywheel.data.ground_truth import read_ground_truth
from flywheel.labeling import labeler_for
from flywheel.labeling.server import (
    Connection,
    LabelStudioError,
    LabelStudioServer,
    find_executable,
    start_label_studio,
    write_connection,
)
from flywheel.labeling.studio import read_tasks, sdk_client
from flywheel.monitoring.dashboards import free_port
from tests.support.labeling import serve_collected_batch
from tests.support.project import make_git_dvc_repo

pytestmark = pytest.mark.slow  # a Label Studio server (its first start migrates: minutes)

PLAN = DataPlan(
    seed=11,
    classes=("0", "1", "2", "3"),
    image_size=16,
    strata=Strata(style=("handwritten", "printed"), noise=("clean", "shadow")),
    per_stratum={"train": 8, "val": 4, "test": 4},
    generator="flywheel.demo.collect:collect_dataset",
)
ANNOTATORS = ("ann1@example.com", "ann2@example.com", "ann3@example.com")
GUIDE = Path(__file__).parents[2] / "docs" / "labeling-guide.md"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """Label Studio with three annotators; images under its document root are served."""
    try:
        executable = find_executable(Path(__file__).parents[2])
    except LabelStudioError as err:
        pytest.skip(str(err))
    root = tmp_path_factory.mktemp("label-studio")
    params = Params(data=PLAN, label={"studio": {"document_root": root / "served"}})  # type: ignore[arg-type]
    started = start_label_studio(
        params.label.studio,
        data_dir=root / "data",
        port=free_port(),
        executable=executable,
        connection_file=root / "connection.json",
        members=ANNOTATORS,
    )
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def setup(
    server: LabelStudioServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Params, Path, Path]:
    """A project: its params (the `label-studio` labeller), a DVC repo, 30 served images."""
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "state"))
    write_connection(server.connection)  # where `flywheel label server` leaves it
    root = Path(server.connection.document_root or "")
    log = root / tmp_path.name / "log"  # inside the server's LOCAL_FILES_DOCUMENT_ROOT
    repo = make_git_dvc_repo(tmp_path / "repo", remote=tmp_path / "remote")
    from flywheel.data.versioning import ensure_dataset

    ensure_dataset(PLAN, repo)
    params = Params(
        data=PLAN,
        serve={"log": {"dir": log}},  # type: ignore[arg-type]
        curate={"budget": 6},  # type: ignore[arg-type]
        label={  # type: ignore[arg-type]
            "dir": tmp_path / "labeling",
            "labeler": "label-studio",
            "studio": {"project": f"flywheel {tmp_path.name}", "guide": GUIDE},
        },
    )
    serve_collected_batch(
        PLAN, 30, log, tmp_path / "state" / "ground_truth", seed=3, work_dir=tmp_path
    )
    return params, repo, tmp_path


def _call(connection: Connection, token: str, method: str, path: str, body: Any = None) -> Any:
    """One HTTP call as the person owning `token` (access JWT from their refresh token)."""
    refresh = urllib.request.Request(
        f"{connection.url}/api/token/refresh",
        method="POST",
        data=json.dumps({"refresh": token}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(refresh, timeout=60) as response:
        access = json.loads(response.read())["access"]
    request = urllib.request.Request(
        f"{connection.url}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {access}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        raw = response.read()
    return (
        raw
        if not raw or response.headers.get_content_type() != "application/json"
        else (json.loads(raw))
    )


def _submit(connection: Connection, annotator: str, task: int, label: str | None) -> None:
    """Submit (or, with no label, skip) a task as `annotator` does in the browser."""
    result = [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
    ]
    _call(
        connection,
        connection.members[annotator],
        "POST",
        f"/api/tasks/{task}/annotations",
        {
            "result": [] if label is None else result,
            "was_cancelled": label is None,
            "lead_time": 4.2,
        },
    )


def test_a_project_from_the_plan_with_pre_annotated_tasks_it_serves(
    server: LabelStudioServer, setup: tuple[Params, Path, Path]
) -> None:
    """Curate → the labeller creates the project and imports the tasks with their predictions."""
    from flywheel import workflows

    params, _, tmp_path = setup
    assert workflows.curate_samples(params, queue_out=tmp_path / "queue") == 6
    assert workflows.label_samples(params, tmp_path / "queue", labels_out=tmp_path / "l1") == 0
    # A second run sends nothing twice, nor does the curation pipeline's send step.
    assert workflows.label_samples(params, tmp_path / "queue", labels_out=tmp_path / "l2") == 0
    assert labeler_for(params.label).send(params, tmp_path / "queue").endswith(": 0 tasks sent")

    connection = server.connection
    client = sdk_client(connection)
    (project,) = [
        p for p in client.projects.list(page_size=100) if p.title == params.label.studio.project
    ]
    for name in PLAN.classes:
        assert f'<Choice value="{name}"/>' in (project.label_config or "")
    assert "<h1>Labelling guide</h1>" in (project.expert_instruction or "")
    assert project.show_instruction
    tasks = read_tasks(client, int(project.id or 0), include="id,data,predictions")
    assert len(tasks) == 6
    batch = pd.read_json(next((tmp_path / "queue").glob("*-margin-*.json")))
    assert sorted(t["data"]["request_id"] for t in tasks) == sorted(
        d["request_id"] for d in batch["data"]
    )
    for task in tasks:
        (prediction,) = task["predictions"]
        assert 0 < prediction["score"] <= 1
        assert prediction["model_version"]
        assert prediction["result"][0]["value"]["choices"][0] in PLAN.classes
        png = _call(connection, connection.token, "GET", task["data"]["image"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"  # the image, served from local-files storage


def test_annotations_read_back_resolved_and_merged(
    server: LabelStudioServer, setup: tuple[Params, Path, Path]
) -> None:
    """Agreement, a 2:1 majority, a tie, a skip and an unsubmitted draft → labels → new version."""
    from flywheel import workflows
    from flywheel.data.versioning import data_version

    params, repo, tmp_path = setup
    connection = server.connection
    first = data_version(repo, PLAN)
    workflows.curate_samples(params, queue_out=tmp_path / "queue")
    labeler_for(params.label).label(params, tmp_path / "queue", export_dir=tmp_path / "l0")
    client = sdk_client(connection)
    (project,) = [
        p for p in client.projects.list(page_size=100) if p.title == params.label.studio.project
    ]
    tasks = sorted(read_tasks(client, int(project.id or 0)), key=lambda t: t["id"])
    ids = [int(t["id"]) for t in tasks]
    a, b, c = ANNOTATORS
    _submit(connection, a, ids[0], "1")
    _submit(connection, b, ids[0], "1")  # agreement
    _submit(connection, a, ids[1], "2")
    _submit(connection, b, ids[1], "3")
    _submit(connection, c, ids[1], "2")  # 2:1 majority
    _submit(connection, a, ids[2], "0")
    _submit(connection, b, ids[2], "3")  # a tie: held back, not merged
    _submit(connection, a, ids[3], None)  # skipped
    _call(  # a draft: started, never submitted
        connection,
        connection.members[c],
        "POST",
        f"/api/tasks/{ids[4]}/drafts",
        {
            "result": [
                {
                    "from_name": "label",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": ["1"]},
                }
            ],
            "lead_time": 1.0,
        },
    )
    _submit(connection, c, ids[5], "0")  # one annotator

    # What `flywheel label sync` counts, recording nothing: the decided tasks only.
    key_of = {int(t["id"]): (t["data"]["request_id"], int(t["data"]["index"])) for t in tasks}
    completed = labeler_for(params.label).completed(params, tmp_path / "queue")
    assert completed == {key_of[ids[0]], key_of[ids[1]], key_of[ids[5]]}
    assert read_ground_truth(tmp_path / "state" / "ground_truth", origins=["label-studio"]).empty

    labelled = workflows.label_samples(params, tmp_path / "queue", labels_out=tmp_path / "l1")
    labels = pd.read_parquet(tmp_path / "l1" / "labels.parquet")
    by_task = dict(zip(labels["task_id"].astype(int), labels["label"], strict=True))
    assert labelled == 3
    assert by_task == {ids[0]: "1", ids[1]: "2", ids[5]: "0"}
    recorded = read_ground_truth(tmp_path / "state" / "ground_truth", origins=["label-studio"])
    assert len(recorded) == 3
    snapshot = json.loads(next((tmp_path / "l1").glob("label-studio-project-*.json")).read_text())
    assert len(snapshot) == 6  # what was read back, kept beside the labels

    version = workflows.update_dataset(params, repo, tmp_path / "l1")
    assert version == data_version(repo, PLAN) != first

    # The tie is broken by a third annotator on a later run; nothing else is recorded again.
    _submit(connection, c, ids[2], "3")
    assert workflows.label_samples(params, tmp_path / "queue", labels_out=tmp_path / "l2") == 4
    recorded = read_ground_truth(tmp_path / "state" / "ground_truth", origins=["label-studio"])
    assert len(recorded) == 4


def test_the_demo_oracle_annotates_through_the_api(
    server: LabelStudioServer, setup: tuple[Params, Path, Path]
) -> None:
    """The oracle is a member who submits the simulator's truth; the labels are that truth."""
    from flywheel import workflows

    params, _, tmp_path = setup
    params = params.model_copy(
        update={
            "label": params.label.model_copy(
                update={"labeler": "flywheel.demo.oracle:LabelStudioOracle"}
            )
        }
    )
    workflows.curate_samples(params, queue_out=tmp_path / "queue")
    assert workflows.label_samples(params, tmp_path / "queue", labels_out=tmp_path / "l1") == 6
    labels = pd.read_parquet(tmp_path / "l1" / "labels.parquet")
    truth = read_ground_truth(tmp_path / "state" / "ground_truth", origins=["simulator"])
    expected = truth.set_index(["request_id", "index"])["label"]
    for row in labels.itertuples():
        assert expected[(row.request_id, row.index)] == row.label
    oracle = read_ground_truth(tmp_path / "state" / "ground_truth", origins=["oracle"])
    assert len(oracle) == 6
    client = sdk_client(server.connection)
    (project,) = [
        p for p in client.projects.list(page_size=100) if p.title == params.label.studio.project
    ]
    for task in read_tasks(client, int(project.id or 0)):
        (annotation,) = task["annotations"]
        assert annotation["completed_by"] != 1  # the oracle's account, not the owner's


def test_the_demo_reuses_a_running_server_and_adds_the_oracle(
    server: LabelStudioServer, setup: tuple[Params, Path, Path]
) -> None:
    """`make demo` after `flywheel label server`: no second server; the oracle is a member."""
    from flywheel.demo.loop import label_studio_for
    from flywheel.demo.oracle import ORACLE_EMAIL
    from flywheel.labeling.server import healthy, read_connection

    params, _, _ = setup
    params = params.model_copy(
        update={
            "label": params.label.model_copy(
                update={"labeler": "flywheel.demo.oracle:LabelStudioOracle"}
            )
        }
    )
    said: list[str] = []
    with label_studio_for(params, said.append) as ready:
        ready()
    assert len(said) == 1
    assert server.connection.url in said[0]
    assert healthy(server.connection.url)  # reused, so not stopped
    connection = read_connection()
    assert connection is not None
    assert ORACLE_EMAIL in connection.members
