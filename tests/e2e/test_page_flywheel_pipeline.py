"""The formula-page service's loop (`flywheel` on a page plan) end to end, through kfp.local.

Everything is real, on a tiny page plan in a git + DVC project: the `training`
pipeline puts a detector and a recogniser in production (one command, one run
per task); production pages drawn from a shifted stratum (handwritten,
rotated) are answered by that pair and written by the real `PageLogger`, their
truth saved where the demo's page oracle reads it; then `flywheel pipeline run
flywheel --params <page plan>`, as the demo runs it: monitor both stages
(Evidently, against each version's reference profile) → drifted → curate pages
→ send them to a real Label Studio → the oracle annotates them there, they are
read back → merged into a new `data-pages` version → the drifted stages' models
retrained on it, each judged against its champion and, through the system
gate, with its partner in production. A second run merges nothing again. Later
pages, curated (`flywheel curate`), are labelled and merged by `flywheel label
sync`'s update run, which retrains both models, the recogniser judged with the
detector that run just promoted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import Params, load_params
from flywheel.data.versioning import data_version, ensure_dataset
from tests.support.label_studio import label_studio_executable
from tests.support.pages import tiny_page_plan
from tests.support.project import in_project, make_git_dvc_repo

pytestmark = pytest.mark.slow  # three trainings, a Label Studio server, two loop runs

REPO = Path(__file__).resolve().parents[2]
DETECTOR, RECOGNISER = "flywheel-pages-detection", "flywheel-pages-recognition"
STAGE_MODELS = {"detection": DETECTOR, "recognition": RECOGNISER}
PAGES = 24
"""Pages of drifted traffic: above monitor.min_window_size, all within curate.budget."""


def _plan(port: int) -> dict[str, Any]:
    """plans/pages.yaml with the tiny data plan, seconds of training, the demo's page oracle."""
    plan = yaml.safe_load((REPO / "plans" / "pages.yaml").read_text())
    plan["data"] = {**tiny_page_plan(per_split=2).model_dump(mode="json"), "root": "data-pages"}
    plan["scenarios"] = {"in_distribution": {"mix": "plan"}}  # the tiny plan's strata only
    plan["train"].update(batch_size=8, patience=3)
    plan["evaluate"]["batch_size"] = 16
    for task, section in plan["tasks"].items():
        section["train"].update(epochs=2)
        section["train"]["model"].update(width=8, embedding_dim=16)
        if task == "detection":
            section["train"]["model"]["input_size"] = 96
        section["evaluate"]["gates"] = {  # gates the tiny models pass: the loop is under test
            "min_accuracy": 0.0 if task == "detection" else 1.0,
            "max_slice_regression": None,
            "min_improvement": -1.0,
            "max_system_regression": 1.0,
            "min_slice_support": 1,
        }
    plan["monitor"].update(min_window_size=20)
    plan["curate"].update(budget=PAGES)
    plan["curate"]["cost"]["per_cycle"] = 1000.0
    plan["label"].update(labeler="flywheel.demo.page_oracle:PageStudioOracle")
    plan["label"]["studio"].update(port=port, guide=str(REPO / "docs" / "labeling-guide-pages.md"))
    return plan


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _log_drifted_traffic(params: Params, seed: int) -> list[str]:
    """Pages of one shifted stratum answered by the pair in production, logged; truth saved."""
    from flywheel.demo.page_oracle import page_truth_dir
    from flywheel.demo.pages.traffic import production_pages, save_truth
    from flywheel.monitoring.pages import page_log_root
    from flywheel.registry import version_for_alias
    from flywheel.tracking import configure_tracking
    from tests.support.page_monitoring import PagePair, drifted_plan, log_pages

    configure_tracking()
    shifted = drifted_plan(params.data)
    assert shifted.pages is not None
    shifted = shifted.model_copy(
        update={
            "pages": shifted.pages.model_copy(
                update={
                    "strata": shifted.pages.strata.model_copy(
                        update={"writing": ("handwritten",), "noise": ("rotated",)}
                    )
                }
            )
        }
    )
    pair = PagePair(
        params.data.dataset_dir,
        params.data,
        str(version_for_alias(DETECTOR, "production")),
        str(version_for_alias(RECOGNISER, "production")),
    )
    start = datetime.now(UTC) - timedelta(minutes=10)
    ids = log_pages(
        pair,
        shifted,
        page_log_root(params),
        count=PAGES,
        seed=seed,
        start=start,
        prefix="drift",
        detector=DETECTOR,
        recognizer=RECOGNISER,
    )
    pages = production_pages(shifted, PAGES, seed=seed, prefix="drift")
    save_truth(pages, page_truth_dir(params) / f"drift-{seed}.json")  # a file per phase
    return ids


def _project_requests(params: Params, connection: Any) -> set[str]:
    """The request ids of the page tasks the Label Studio project holds."""
    from flywheel.labeling.studio import find_project, read_tasks, sdk_client

    client = sdk_client(connection)
    project = find_project(client, params)
    assert project is not None
    return {t["data"]["request_id"] for t in read_tasks(client, project, include="id,data")}


def _second_versions() -> dict[str, Any]:
    """Per stage, the blessing of its model's version 2 (None: there is no version 2)."""
    from flywheel.registry import read_blessing
    from flywheel.registry.errors import VersionNotFoundError
    from flywheel.tracking import configure_tracking

    configure_tracking()
    found: dict[str, Any] = {}
    for stage, model in STAGE_MODELS.items():
        try:
            found[stage] = read_blessing(model, "2")
        except VersionNotFoundError:
            found[stage] = None
    return found


def _merge_records(params: Params) -> list[dict[str, Any]]:
    """The page merges' settled-pages records, oldest first."""
    from flywheel.labeling.page_labeler import page_merged_dir
    from flywheel.storage import glob

    paths = sorted(glob(page_merged_dir(params), "*.json"), key=str)
    return [json.loads(Path(str(p)).read_text()) for p in paths]


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    executable = label_studio_executable()
    if executable is None:
        pytest.skip("Label Studio is not installed: `make label-studio`")
    from flywheel.demo.oracle import ORACLE_EMAIL
    from flywheel.labeling.server import EXECUTABLE_ENV, running_label_studio
    from flywheel.monitoring.dashboards import free_port

    root = tmp_path_factory.mktemp("page-loop")
    repo = make_git_dvc_repo(root / "repo", remote=root / "remote")
    (repo / "params.yaml").write_text(yaml.safe_dump(_plan(free_port()), sort_keys=False))
    with in_project(repo), pytest.MonkeyPatch.context() as patch:
        patch.setenv(EXECUTABLE_ENV, str(executable))
        params = load_params(repo / "params.yaml")
        ensure_dataset(params.data, repo)
        _cli("pipeline", "run", "training")  # the pair in production: version 1 of each
        first = data_version(repo, params.data)
        requests = _log_drifted_traffic(params, 3)
        with running_label_studio(params.label.studio, members=[ORACLE_EMAIL]) as connection:
            started = datetime.now(UTC)
            output = _cli("pipeline", "run", "flywheel", "--no-cache")
            seconds = (datetime.now(UTC) - started).total_seconds()
            second = data_version(repo, params.data)
            sent = _project_requests(params, connection)
            retrained = _second_versions()
            again = _cli("pipeline", "run", "flywheel", "--no-cache")
            after_again = data_version(repo, params.data), _merge_records(params)
            # Later pages, curated, then labelled and merged by `label sync`'s update run:
            # no drift decision there, so both models retrain, the recogniser last.
            later = _log_drifted_traffic(params, 4)
            curated = _cli("curate")
            synced = _cli("label", "sync")
            third = data_version(repo, params.data)
            yield {
                "repo": repo,
                "params": params,
                "sent": sent,
                "retrained": retrained,
                "after_again": after_again,
                "requests": requests,
                "first": first,
                "second": second,
                "output": output,
                "again": again,
                "seconds": seconds,
                "later": later,
                "curated": curated,
                "synced": synced,
                "third": third,
            }


def _drifted(output: str) -> list[str]:
    (line,) = [ln for ln in output.splitlines() if "page service: " in ln]
    verdict = line.split("page service: ", 1)[1].strip()
    assert verdict.startswith("DRIFT in "), line
    return [s.strip() for s in verdict.removeprefix("DRIFT in ").split(",")]


def test_the_pages_went_to_label_studio_and_the_oracles_labels_were_merged(
    loop: dict[str, Any],
) -> None:
    from flywheel.data.pages import load_boxes, load_page_manifest
    from flywheel.demo.page_oracle import read_page_truth
    from flywheel.labeling.merge import production_image_id

    print(f"flywheel run: {loop['seconds']:.0f} s\n{loop['output']}\n{loop['again']}")
    params: Params = loop["params"]
    sent = loop["sent"]  # after the first run
    assert sent <= set(loop["requests"])
    assert sent  # the batch reached Label Studio

    assert loop["second"] != loop["first"]  # a new data-pages version is recorded
    dataset = loop["repo"] / params.data.dataset_dir
    manifest = load_page_manifest(dataset)
    merged = {rid for rid in sent if production_image_id(rid, 0) in set(manifest["image_id"])}
    assert merged  # some pages joined the dataset (others may be skipped, counted)
    truth = read_page_truth(params)
    boxes = load_boxes(dataset)
    for rid in merged:
        regions = boxes[production_image_id(rid, 0)]  # in reading order
        assert sorted((r.xyxy(), r.latex) for r in regions) == sorted(
            (r.xyxy(), r.latex) for r in truth[rid]["regions"]
        )
    added = manifest[manifest["image_id"].isin([production_image_id(r, 0) for r in merged])]
    assert "test" not in set(added["split"])  # the test split stays frozen


def test_each_drifted_stage_got_a_new_version_judged_with_its_partner(
    loop: dict[str, Any],
) -> None:
    stages = _drifted(loop["output"])
    assert stages
    for stage in stages:
        blessing = loop["retrained"][stage]  # after the first run
        assert blessing is not None, stage
        assert blessing.champion_version == "1"
        gate = blessing.gate("system_end_to_end")
        partner = STAGE_MODELS["recognition" if stage == "detection" else "detection"]
        assert f"with {partner} version" in gate.detail
    for stage in set(STAGE_MODELS) - set(stages):
        assert loop["retrained"][stage] is None  # not retrained


def test_a_second_run_merges_nothing_again(loop: dict[str, Any]) -> None:
    version, records = loop["after_again"]
    assert version == loop["second"]
    assert len(records) == 1  # the first run's merge settled the pages; none since
    assert {r for r, _ in records[0]["keys"]} == loop["sent"]
    assert "nothing to curate" in loop["again"]  # every logged page was queued once
    assert "0 of 0 outstanding tasks complete" in loop["again"]


def test_label_sync_merges_later_pages_and_retrains_both_the_recogniser_with_the_new_detector(
    loop: dict[str, Any],
) -> None:
    from flywheel.registry import read_blessing, version_for_alias
    from flywheel.tracking import configure_tracking

    print(loop["curated"], loop["synced"])
    params: Params = loop["params"]
    assert "label sync FIRED" in loop["synced"]
    assert loop["third"] != loop["second"]
    records = _merge_records(params)
    assert len(records) == 2
    settled = {r for r, _ in records[-1]["keys"]}
    assert settled == set(loop["later"])  # the later pages only: nothing merged twice
    configure_tracking()
    detector = version_for_alias(DETECTOR, "production")
    recogniser = read_blessing(RECOGNISER, "2")
    assert recogniser is not None
    assert recogniser.champion_version == "1"
    assert f"with {DETECTOR} version {detector}" in recogniser.gate("system_end_to_end").detail
    assert detector == "3"  # promoted by the same run, before the recogniser was judged
