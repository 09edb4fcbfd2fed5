"""The page loop with its state in object storage: a tiny trained pair answers pages, the real
`PageLogger` puts them into a bucket of an S3-compatible server (moto on 127.0.0.1), and
`monitor_pages`, `curate_pages` (its tasks and picture) and the page merge read them back;
`flywheel monitor --trigger` of the page plan decides on both stages and submits the curation
pipeline to a recording stand-in of the KFP REST API.

The plan names no local log: as on a cluster, `state.url` is `s3://...` and the page log,
the Evidently workspace, the reports, the queue, the spend and the trigger decisions all
live under it.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import Params, parse_params
from flywheel.monitoring.pages import CROP_STAGE, PAGE_STAGE, monitor_pages, page_log_root
from flywheel.storage import Location, read_bytes
from tests.support.kfp_api import kfp_stand_in
from tests.support.object_store import ObjectStore, object_store
from tests.support.page_monitoring import (
    PagePair,
    drifted_plan,
    log_pages,
    monitor_params,
    page_pair,
)
from tests.support.tracking import tracking_env

__all__ = ["object_store"]  # the fixture, found by pytest under its name

pytestmark = pytest.mark.slow  # trains two tiny models, answers 60 pages

IN = datetime(2026, 12, 1, 8, tzinfo=UTC)
DRIFT = datetime(2026, 12, 1, 10, tzinfo=UTC)
PAGES = 60


@dataclass
class Stored:
    root: Path
    pair: PagePair
    params: Params
    log: Location
    store: ObjectStore


@pytest.fixture(scope="module")
def stored(object_store: ObjectStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    root = tmp_path_factory.mktemp("page-object-store")
    with (
        pytest.MonkeyPatch.context() as patch,
        tracking_env(root / "mlflow", home=root / "home", experiment="page-object-store"),
    ):
        object_store.apply(patch)
        pair = page_pair(root, epochs=(20, 8))
        params = monitor_params(
            root,
            state=object_store.prefix("pages-state"),
            plan=pair.plan,
            features={"method": "wasserstein", "threshold": 0.3},
            embedding={"method": "wasserstein", "threshold": 0.3},
        )
        log = page_log_root(params)
        log_pages(pair, pair.plan, log, count=PAGES, seed=1, start=IN, prefix="in")
        drifted = drifted_plan(pair.plan)
        log_pages(pair, drifted, log, count=PAGES, seed=2, start=DRIFT, prefix="drift")
        yield Stored(root, pair, params, log, object_store)


def test_the_page_log_is_in_the_bucket_as_whole_objects(stored: Stored) -> None:
    assert isinstance(stored.log, str)
    assert stored.log.startswith(f"{stored.params.state.url}/predictions/pages=")
    keys = stored.store.keys(stored.log)
    parts = [k for k in keys if "/part-" in k]
    assert parts
    assert all(k.endswith(".jsonl") for k in parts)
    assert sum(k.endswith(".png") for k in keys) > 2 * PAGES  # every page and its crops
    assert not list(stored.root.rglob("part-*"))  # nothing logged locally


def test_both_stages_are_monitored_from_the_bucket(stored: Stored) -> None:
    result = monitor_pages(stored.params, since=IN, until=IN + timedelta(hours=1))
    assert result.pages == PAGES
    assert set(result.results) == {PAGE_STAGE, CROP_STAGE}
    assert result.results[PAGE_STAGE].window_size == PAGES
    assert result.results[CROP_STAGE].window_size > PAGES
    for stage in result.results.values():  # the reports and snapshots live in the bucket too
        assert str(stage.report_path).startswith(f"{stored.params.state.url}/monitoring/")
        assert "<html" in read_bytes(str(stage.report_path)).decode("utf-8", "replace").lower()


def test_curation_names_the_pages_in_the_bucket_and_the_merge_reads_them(
    stored: Stored, tmp_path: Path
) -> None:
    from flywheel.curation.pages import curate_pages
    from flywheel.labeling.merge import production_image_id
    from flywheel.labeling.page_annotations import parse_page_tasks
    from flywheel.labeling.page_merge import merge_page_labels
    from flywheel.labeling.pages import region_results

    raw = stored.params.model_dump(mode="json")
    raw["curate"] = {"budget": 4, "cost": {"per_cycle": 100.0}}
    params = parse_params(raw)
    result = curate_pages(params)
    assert len(result.selected) == 4
    state = str(params.state.url)
    assert str(result.queue_file).startswith(f"{state}/")
    tasks = json.loads(read_bytes(str(result.queue_file)))
    for task in tasks:  # as the digits tasks: the image is named by its s3:// URL
        assert task["data"]["image"] == task["data"]["image_path"]
        assert task["data"]["image_path"].startswith(f"{stored.log}/date=2026-12-01/hour=")
        page = Image.open(io.BytesIO(read_bytes(task["data"]["image_path"])))
        assert page.size == (task["data"]["width"], task["data"]["height"])
    picture = read_bytes(str(result.picture_file))
    assert Image.open(io.BytesIO(picture)).size[0] > 0

    for n, task in enumerate(tasks):  # a person draws two boxes on each page
        width, height = task["data"]["width"], task["data"]["height"]
        drawn = [
            item
            for k, box in enumerate([(4, 4, 40, 30), (4, 60, 40, 90)])
            for item in region_results(
                f"r{k}", box, "1+1", width, height, box_name="label", to_name="image"
            )
        ]
        task["id"] = n + 1
        task["annotations"] = [{"id": 1, "completed_by": 1, "result": drawn}]
    assert params.data.pages is not None
    read = parse_page_tasks(
        tasks, box_name="label", vocabulary=params.data.pages.vocabulary, source="test"
    )
    assert len(read.labels) == len(tasks)
    dataset = tmp_path / "pages"
    shutil.copytree(stored.pair.dataset, dataset)
    truth = {
        label.key[0]: {"level": "elementary", "writing": "printed", "noise": "clean"}
        for label in read.labels
    }
    merged = merge_page_labels(
        params,
        read.labels,
        dataset,
        truth=truth,
        validate=False,
        commit=False,
        work_dir=tmp_path / "staged",
    )
    assert merged.skipped == {}  # every page read from the bucket, a grey PNG of the plan
    assert len(merged.added) == len(tasks)
    staged = merged.staged
    assert staged is not None
    by_id = {production_image_id(t["data"]["request_id"], 0): t for t in tasks}
    for row in merged.added.itertuples():  # the bytes served, copied into the dataset
        served = read_bytes(by_id[str(row.image_id)]["data"]["image_path"])
        assert (staged / str(row.path)).read_bytes() == served


def _monitor_trigger(
    stored: Stored, tmp_path: Path, api_url: str, start: datetime, *extra: str
) -> dict[str, Any]:
    raw = stored.params.model_dump(mode="json")
    raw["monitor"]["trigger"] = {
        "cooldown_hours": 12,
        "max_runs_per_day": 2,
        "min_window_size": 20,  # pages, for the detector
        "budget": 50.0,
        "experiment": "drift-triggered",
    }
    # each stage's own minimum: pages for the detector, crops for the recogniser (whose
    # drift alone never counts here)
    raw["tasks"]["detection"]["monitor"] = {"trigger": {"min_window_size": 20}}
    raw["tasks"]["recognition"]["monitor"] = {"trigger": {"min_window_size": 100_000}}
    raw["curate"] = {"cost": {"per_cycle": 40.0}}
    params = tmp_path / "pages.yaml"
    params.write_text(yaml.safe_dump(raw))
    window = ["--since", start.isoformat(), "--until", (start + timedelta(hours=1)).isoformat()]
    args = ["monitor", "--trigger", "--host", api_url, "--namespace", "team", "--json"]
    out = ["--out", str(tmp_path / "compiled"), "--params", str(params)]
    result = CliRunner().invoke(app, [*args, *window, *out, *extra])
    assert result.exit_code == 0, result.output  # a verdict is not a failure
    document: dict[str, Any] = json.loads(result.stdout) if result.stdout.strip() else {}
    return document


def test_monitor_trigger_of_the_page_plan_decides_on_both_stages(
    stored: Stored, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flywheel.workflows.trigger import read_decisions

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no KFP context of the person
    for name in ("FLYWHEEL_KFP_TOKEN", "KF_PIPELINES_SA_TOKEN_PATH", "KF_PIPELINES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    with kfp_stand_in() as api:
        calm = _monitor_trigger(stored, tmp_path, api.url, IN, "--force")
        assert api.calls("POST", "/runs") == []  # in distribution: nothing submitted
        first = _monitor_trigger(stored, tmp_path, api.url, DRIFT, "--force")
        (run,) = api.calls("POST", "/runs")  # the detector drifted on 60 pages: one run
        second = _monitor_trigger(stored, tmp_path, api.url, DRIFT, "--force")
        assert len(api.calls("POST", "/runs")) == 1  # drift again, within the cooldown
        again = _monitor_trigger(stored, tmp_path, api.url, DRIFT)  # checked before
        assert len(api.calls("POST", "/runs")) == 1

    decision = calm["trigger"]
    stages = {s["stage"]: s for s in decision["stages"]}
    assert not stages[PAGE_STAGE]["drift"]
    if stages[CROP_STAGE]["drift"]:  # the recogniser's drift is below its own minimum
        assert decision["action"] == "held"
        assert decision["reasons"] == [
            f"{CROP_STAGE}: window of {stages[CROP_STAGE]['window_size']} crops < "
            "min_window_size 100000"
        ]
    else:
        assert decision["action"] == "none"

    fired = first["trigger"]
    assert fired["action"] == "fired", fired
    assert fired["drift"] is True
    assert fired["window_size"] == PAGES
    assert any(s.startswith(f"{PAGE_STAGE}: ") for s in fired["drift_signals"])
    assert {s["stage"]: s["window_size"] for s in fired["stages"]}[PAGE_STAGE] == PAGES
    assert 0 < fired["budget_left"] <= 50.0  # less what the curation above spent
    assert run.body["display_name"].startswith("curation-drift-")
    assert run.body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "curation"
    assert second["trigger"]["action"] == "held"
    assert second["trigger"]["reasons"][0].startswith("cooldown: last fired")
    assert "trigger" not in again  # every stage's window decided before: no decision

    recorded = read_decisions(str(stored.params.state.url))
    assert [d.action for d in recorded][-3:] == [decision["action"], "fired", "held"]
    assert recorded[-2].run_id is not None
    assert stored.store.keys(f"{stored.params.state.url}/monitoring/triggers")
