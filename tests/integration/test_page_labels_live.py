"""Formula pages labelled in a real Label Studio on 127.0.0.1, merged into a new page data version.

One server for the module (the product's `start_label_studio`, three
annotators). Production pages are drawn from the page plan's production pool
with their hidden truth; the pair's (wrong) answer is the pre-annotation;
annotations are submitted over HTTP with each person's own token, as their
browser does; `read_page_labels` reads them back and `update_page_dataset`
merges them into a new DVC version of `data-pages` that the page data gate passes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flywheel.config import MergeConfig, Params
from flywheel.data.pages import crop_box, load_boxes, load_crops, load_page_manifest
from flywheel.data.versioning import data_version
from flywheel.demo.page_oracle import annotate_pages_as_oracle, truth_results
from flywheel.demo.pages.traffic import ProductionPage, production_pages
from flywheel.labeling.merge import production_image_id
from flywheel.labeling.page_annotations import parse_page_tasks
from flywheel.labeling.page_merge import update_page_dataset
from flywheel.labeling.page_studio import publish_pages, read_page_labels
from flywheel.labeling.pages import PagePrediction, PredictedRegion, page_task, region_results
from flywheel.labeling.server import (
    Connection,
    LabelStudioError,
    LabelStudioServer,
    find_executable,
    start_label_studio,
)
from flywheel.labeling.strata import StratumError
from flywheel.labeling.studio import read_tasks, sdk_client
from flywheel.monitoring.dashboards import free_port
from tests.support.pages import tiny_page_plan
from tests.support.project import make_git_dvc_repo

pytestmark = pytest.mark.slow  # a Label Studio server

ANNOTATORS = ("ann1@example.com", "ann2@example.com", "ann3@example.com")
GUIDE = Path(__file__).parents[2] / "docs" / "labeling-guide-pages.md"
PLAN = tiny_page_plan()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    try:
        executable = find_executable(Path(__file__).parents[2])
    except LabelStudioError as err:
        pytest.skip(str(err))
    root = tmp_path_factory.mktemp("label-studio-pages")
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


def _params(tmp_path: Path) -> Params:
    return Params(
        data=PLAN,
        label={  # type: ignore[arg-type]
            "dir": tmp_path / "labeling",
            "studio": {"project": f"pages {tmp_path.name}", "guide": GUIDE},
        },
    )


def _serve(
    server: LabelStudioServer, tmp_path: Path, count: int, seed: int
) -> tuple[list[ProductionPage], list[dict[str, Any]]]:
    """Production pages stored under the server's document root, as page tasks whose
    pre-annotation is the pair's answer: the true boxes shifted, the last text misread."""
    folder = Path(server.connection.document_root or "") / tmp_path.name
    folder.mkdir(parents=True, exist_ok=True)
    pages = production_pages(PLAN, count, seed=seed, prefix=f"{tmp_path.name[-12:]}-{seed}")
    tasks = []
    for page in pages:
        path = folder / f"{page.request_id}.png"
        path.write_bytes(page.png)
        guessed = [
            PredictedRegion(
                (r.x + 2, r.y, r.x + r.w + 2, r.y + r.h), 0.8, r.latex if k else "1", 0.6
            )
            for k, r in enumerate(page.regions)
        ]
        prediction = PagePrediction(
            page.request_id, 0, 192, 192, tuple(guessed), "4", "9", image_path=str(path)
        )
        tasks.append(page_task(prediction, batch_id=f"batch-{seed}"))
    return pages, tasks


def _post(connection: Connection, token: str, path: str, body: Any) -> Any:
    """One API call as the person owning `token` (their refresh token → an access JWT)."""
    import urllib.request

    def call(url: str, data: Any, headers: dict[str, str]) -> Any:
        request = urllib.request.Request(
            url, method="POST", data=json.dumps(data).encode(), headers=headers
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    json_type = {"Content-Type": "application/json"}
    access = call(f"{connection.url}/api/token/refresh", {"refresh": token}, json_type)["access"]
    return call(f"{connection.url}{path}", body, {**json_type, "Authorization": f"Bearer {access}"})


def _submit(
    connection: Connection, who: str, task: int, result: list[dict[str, Any]] | None
) -> None:
    """Submit (None: skip) a task as `who` does in the browser."""
    _post(
        connection,
        connection.members[who],
        f"/api/tasks/{task}/annotations",
        {"result": result or [], "was_cancelled": result is None, "lead_time": 12.5},
    )


def _truth(page: ProductionPage, params: Params) -> list[dict[str, Any]]:
    return truth_results(list(page.regions), 192, 192, params)


def test_pages_labelled_through_the_api_are_merged_into_a_new_page_version(
    server: LabelStudioServer, tmp_path: Path
) -> None:
    """Corrected boxes and texts, a skip, two annotators disagreeing → labels → new version."""
    params = _params(tmp_path)
    connection = server.connection
    pages, tasks = _serve(server, tmp_path, 6, seed=1)
    project, sent = publish_pages(connection, params, tasks)
    assert sent == 6
    assert publish_pages(connection, params, tasks) == (project, 0)  # nothing twice

    client = sdk_client(connection)
    (meta,) = [p for p in client.projects.list(page_size=100) if p.id == project]
    assert '<TextArea name="latex" toName="image" perRegion="true"' in (meta.label_config or "")
    assert "Labelling guide: formula pages" in (meta.expert_instruction or "")
    listed = sorted(read_tasks(client, project), key=lambda t: t["id"])
    by_request = {t["data"]["request_id"]: int(t["id"]) for t in listed}
    (prediction,) = listed[0]["predictions"]
    assert prediction["model_version"] == "detector 4 + recognizer 9"
    assert 0 < prediction["score"] <= 1
    assert len(prediction["result"]) == 2 * len(pages[0].regions)

    a, b, c = ANNOTATORS
    ids = [by_request[p.request_id] for p in pages]
    for page, task in zip(pages[:3], ids[:3], strict=True):
        _submit(connection, a, task, _truth(page, params))  # corrected boxes and texts
    _submit(connection, a, ids[3], None)  # skipped
    wrong = region_results(
        "w", pages[4].regions[0].xyxy(), "0=0", 192, 192, box_name="label", to_name="image"
    )
    _submit(connection, a, ids[4], _truth(page=pages[4], params=params))
    _submit(connection, b, ids[4], wrong + _truth(pages[4], params)[2:])  # disagree: a tie
    bad = region_results(
        "v", pages[5].regions[0].xyxy(), "\\alpha", 192, 192, box_name="label", to_name="image"
    )
    _submit(connection, c, ids[5], bad + _truth(pages[5], params)[2:])  # not in the vocabulary

    read = read_page_labels(connection, params, snapshot_dir=tmp_path / "snapshot")
    labelled = {label.key[0]: label for label in read.labels.labels}
    assert set(labelled) == {p.request_id for p in pages[:3]}
    for page in pages[:3]:
        assert [(r.box, r.latex) for r in labelled[page.request_id].regions] == [
            (r.xyxy(), r.latex) for r in page.regions
        ]
    assert len(read.labels.held) == 2
    tie, unknown = sorted(read.labels.held, key=lambda h: f"task {ids[5]}" in h)
    assert f"task {ids[4]}" in tie
    assert "split" in tie
    assert f"task {ids[5]}" in unknown
    assert "alpha" in unknown
    assert read.labels.unlabelled == (str(ids[3]),)
    assert read.labels.skipped == 1
    boxes = sum(len(p.regions) for p in pages[:3])
    assert read.spend.boxes == boxes
    assert read.spend.spend == pytest.approx(boxes * (0.30 + 0.60))
    assert set(read.per_batch) == {"batch-1"}
    # The snapshot is a JSON export: read from the file, it gives the same labels.
    snapshot = json.loads(read.snapshot.read_text()) if read.snapshot else []
    again = parse_page_tasks(snapshot, box_name="label", vocabulary=PLAN.pages.vocabulary)  # type: ignore[union-attr]
    assert {label.key for label in again.labels} == {label.key for label in read.labels.labels}

    # Merge into a new data version of the page plan.
    repo = make_git_dvc_repo(tmp_path / "repo", remote=tmp_path / "remote")
    from flywheel.data.versioning import ensure_dataset

    ensure_dataset(PLAN, repo)
    before = data_version(repo, PLAN)
    truth = {
        p.request_id: {
            "level": p.level,
            "writing": p.writing,
            "noise": p.noise,
            "glyphs": list(p.glyphs),
        }
        for p in pages[:2]
    }  # the third page is real traffic: nobody recorded its stratum or its glyphs
    refusing = params.model_copy(update={"merge": MergeConfig(strata="refuse")})
    with pytest.raises(StratumError, match=rf"1 labelled pages .*{pages[2].request_id}#0"):
        update_page_dataset(
            refusing, read.labels.labels, repo, truth=truth, context_dir=tmp_path / "gx"
        )
    assert data_version(repo, PLAN) == before  # refused whole: nothing written
    update = update_page_dataset(
        params, read.labels.labels, repo, truth=truth, context_dir=tmp_path / "gx"
    )
    assert update.changed
    assert update.merge.strata == {"recorded": 2, "production": 1}
    assert update.version == data_version(repo, PLAN) != before
    assert update.merge.report is not None
    assert update.merge.report.success
    assert len(update.merge.added) == 3
    assert "test" not in update.merge.added_per_split()
    dataset = repo / PLAN.dataset_dir
    manifest = load_page_manifest(dataset).set_index("image_id")
    boxes_by_page = load_boxes(dataset)
    crops = load_crops(dataset).set_index("crop_id")
    unknown = manifest.loc[production_image_id(pages[2].request_id, 0)]
    assert (unknown["level"], unknown["writing"], unknown["noise"]) == ("production",) * 3
    assert unknown["glyphs"] == f"production:{production_image_id(pages[2].request_id, 0)}"
    for page in pages[:3]:
        image_id = production_image_id(page.request_id, 0)
        assert manifest.loc[image_id, "sha256"] == page.sha256
        regions = boxes_by_page[image_id]
        assert [(r.xyxy(), r.latex) for r in regions] == [(r.xyxy(), r.latex) for r in page.regions]
        labels = (dataset / "labels" / f"{image_id}.txt").read_text().splitlines()
        assert len(labels) == len(regions)
        with Image.open(dataset / str(manifest.loc[image_id, "path"])) as opened:
            image = opened.convert("L")
        for r in regions:
            rectangle = crop_box(r.xyxy(), PLAN.pages.crop_padding, 192, 192)  # type: ignore[union-attr]
            assert rectangle is not None
            crop = crops.loc[r.crop_id]
            assert crop["latex"] == r.latex
            assert crop["split"] == manifest.loc[image_id, "split"]
            with Image.open(dataset / str(crop["path"])) as saved:
                assert saved.tobytes() == image.crop(rectangle).tobytes()

    # The same labels again: already in the dataset, no new version.
    again_update = update_page_dataset(
        params, read.labels.labels, repo, truth=truth, context_dir=tmp_path / "gx"
    )
    assert not again_update.changed
    assert len(again_update.merge.skipped["in_dataset"]) == 3


def test_the_demo_oracle_answers_page_tasks_with_the_truth(
    server: LabelStudioServer, tmp_path: Path
) -> None:
    params = _params(tmp_path)
    pages, tasks = _serve(server, tmp_path, 3, seed=2)
    unknown = dict(tasks[0], data={**tasks[0]["data"], "request_id": "never-sent"})
    project, _ = publish_pages(server.connection, params, [*tasks, unknown])
    truth = {p.request_id: {"regions": list(p.regions)} for p in pages}
    assert annotate_pages_as_oracle(server.connection, project, params, truth) == (3, 1)
    assert annotate_pages_as_oracle(server.connection, project, params, truth) == (0, 0)
    read = read_page_labels(server.connection, params)
    assert {label.key[0] for label in read.labels.labels} == {p.request_id for p in pages}
    for label in read.labels.labels:
        page = next(p for p in pages if p.request_id == label.key[0])
        assert [(r.box, r.latex) for r in label.regions] == [
            (r.xyxy(), r.latex) for r in page.regions
        ]
    assert read.labels.skipped == 1
