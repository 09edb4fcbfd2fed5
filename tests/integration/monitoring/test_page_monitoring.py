"""Page monitoring and curation on real components: a tiny trained pair, a real page log.

The pair is trained and registered with `train_and_register` (reference profiles
on both runs); production pages of the plan (in distribution) and of the plan
with its writing and noise shifted (handwriting, shadows, highlighter,
rotation) are answered by the pair and written by the real `PageLogger`, an
hour apart; `monitor_pages` checks each window per stage with Evidently, and
`curate_pages` buys a batch of the whole log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flywheel.monitoring.pages import CROP_STAGE, PAGE_STAGE, PageMonitorResult, monitor_pages
from tests.support.page_monitoring import (
    DETECTOR,
    RECOGNIZER,
    PagePair,
    drifted_plan,
    log_pages,
    monitor_params,
    page_pair,
)
from tests.support.tracking import tracking_env

pytestmark = pytest.mark.slow  # trains two tiny models, answers 120 pages

IN = datetime(2026, 12, 1, 8, tzinfo=UTC)
DRIFT = datetime(2026, 12, 1, 10, tzinfo=UTC)
PAGES = 60


class Logged:
    def __init__(self, root: Path, pair: PagePair) -> None:
        self.root, self.pair, self.log = root, pair, root / "page-log"


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    root = tmp_path_factory.mktemp("page-monitoring")
    with tracking_env(root / "mlflow", home=root / "home", experiment="page-monitoring"):
        pair = page_pair(root, epochs=(20, 8))
        found = Logged(root, pair)
        log_pages(pair, pair.plan, found.log, count=PAGES, seed=1, start=IN, prefix="in")
        drifted = drifted_plan(pair.plan)
        log_pages(pair, drifted, found.log, count=PAGES, seed=2, start=DRIFT, prefix="drift")
        yield found


def window(logged: Logged, start: datetime, **kwargs: object) -> PageMonitorResult:
    params = monitor_params(
        logged.root,
        features={"method": "wasserstein", "threshold": 0.3},
        embedding={"method": "wasserstein", "threshold": 0.3},
    )
    return monitor_pages(
        params, since=start, until=start + timedelta(hours=1), log_dir=logged.log, **kwargs
    )


def test_both_models_carry_a_reference_profile_of_what_they_read(logged: Logged) -> None:
    from flywheel.monitoring.reference import embedding_columns, load_reference

    pages = load_reference(DETECTOR, logged.pair.detector_version)
    crops = load_reference(RECOGNIZER, logged.pair.recognizer_version)
    assert sorted(pages["split"].unique()) == ["train", "val"]
    assert len(pages) == 2 * (30 + 12)  # a row per page of the two strata
    assert {"regions", "detection_score", "confidence"} <= set(pages.columns)
    assert pages["regions"].min() >= 0
    assert pages["detection_score"].dropna().between(0.5, 1).all()
    assert len(crops) > len(pages)  # a row per crop
    assert len(embedding_columns(pages)) == len(embedding_columns(crops)) == 16
    assert crops["confidence"].between(0, 1).all()


def test_in_distribution_pages_do_not_drift_and_shifted_pages_do_in_each_stage(
    logged: Logged,
) -> None:
    calm = window(logged, IN)
    shifted = window(logged, DRIFT)
    print({s: r.check.to_dict() for s, r in calm.results.items()})  # the numbers, when it fails
    assert set(calm.results) == set(shifted.results) == {PAGE_STAGE, CROP_STAGE}
    assert not calm.results[PAGE_STAGE].drift, calm.results[PAGE_STAGE].check.signals
    assert shifted.results[PAGE_STAGE].drift
    assert shifted.results[CROP_STAGE].drift
    assert "features" in shifted.results[PAGE_STAGE].check.reasons
    assert shifted.exit_code == 1
    page = shifted.results[PAGE_STAGE]
    assert page.model_name == DETECTOR
    assert page.window_size == PAGES
    assert "detection_score" in page.check.extra  # the regions' mean detection score
    crops = shifted.results[CROP_STAGE]
    assert crops.model_name == RECOGNIZER
    assert crops.window_size > 0
    # the crop stage of in-distribution pages: the scores stay well below the shifted ones
    calm_crops = calm.results[CROP_STAGE].check
    assert calm_crops.feature_share < crops.check.feature_share or not calm_crops.drift
    assert calm_crops.confidence.score < crops.check.confidence.score


def test_reports_and_snapshots_are_written_per_stage_and_a_window_is_checked_once(
    logged: Logged,
) -> None:
    from flywheel.monitoring.monitor import workspace_dir
    from flywheel.monitoring.workspace import monitored_windows

    first = window(logged, DRIFT, force=True)
    for stage, result in first.results.items():
        assert result.report_path is not None
        html = Path(str(result.report_path)).read_text()
        assert result.model_name in html
        assert "DRIFT" in html
        assert "thresholds" in html
        assert ("detection score" in html) == (stage == PAGE_STAGE)
    params = monitor_params(logged.root)
    for name in (DETECTOR, RECOGNIZER):
        windows = monitored_windows(workspace_dir(params), name)
        assert windows
        assert all(w.metadata["model_name"] == name for w in windows)
    again = window(logged, DRIFT)
    assert not again.results
    assert set(again.already) == {PAGE_STAGE, CROP_STAGE}
    assert again.already[PAGE_STAGE].drift
    assert again.exit_code == 1


def test_an_empty_window_says_what_to_do(logged: Logged) -> None:
    from flywheel.monitoring import NotEnoughDataError

    with pytest.raises(NotEnoughDataError, match="send pages to the page service"):
        window(logged, datetime(2026, 11, 1, tzinfo=UTC))


def test_a_version_without_a_profile_is_named_with_the_command_to_make_one(
    logged: Logged,
) -> None:
    from flywheel.config import parse_params

    raw = monitor_params(logged.root).model_dump(mode="json")
    raw["tasks"]["recognition"]["evaluate"]["registered_model"] = "no-such-model"
    params = parse_params(raw)
    result = monitor_pages(
        params, since=IN, until=IN + timedelta(hours=1), log_dir=logged.log, save=False
    )
    assert set(result.results) == {PAGE_STAGE}
    assert "no-such-model" in result.skipped[CROP_STAGE]


def test_curation_buys_the_most_uncertain_diverse_pages_within_the_budget(logged: Logged) -> None:
    from flywheel.config import parse_params
    from flywheel.curation.pages import curate_pages, score_pages
    from flywheel.labeling.page_annotations import parse_page_tasks
    from flywheel.labeling.pages import page_cost
    from flywheel.monitoring.page_log import read_pages

    raw = monitor_params(logged.root).model_dump(mode="json")
    raw["curate"] = {"budget": 8, "cost": {"per_cycle": 12.0}}
    params = parse_params(raw)
    result = curate_pages(params, log_root=logged.log)
    selected = result.selected
    assert 0 < len(selected) <= 8
    spend = page_cost(selected["n_regions"].tolist(), params).spend
    assert result.spend == pytest.approx(spend)
    assert spend <= 12.0 + 1e-9
    assert selected["price"].sum() == pytest.approx(spend)
    assert selected["score"].is_monotonic_decreasing  # the batch is ranked, best first
    pages, regions = read_pages(logged.log)
    scored = score_pages(pages, regions)
    least = scored.loc[scored["score"].idxmin(), "request_id"]
    assert least not in set(selected["request_id"])  # the surest page is not bought
    assert selected["score"].iloc[0] == pytest.approx(scored["score"].max())
    assert {rid.split("-")[0] for rid in selected["request_id"]} == {"in", "drift"}  # diverse
    assert result.picture_file is not None
    assert Path(str(result.picture_file)).stat().st_size
    tasks = json.loads(Path(str(result.queue_file)).read_text())
    assert [t["data"]["request_id"] for t in tasks] == selected["request_id"].tolist()
    for task in tasks:  # a person accepting the pre-annotation as it is
        task["id"] = len(task["data"]["request_id"])
        task["annotations"] = [
            {"id": 1, "completed_by": 1, "result": task["predictions"][0]["result"]}
        ]
    read = parse_page_tasks(
        tasks, box_name="label", vocabulary=params.data.pages.vocabulary, source="test"
    )
    assert len(read.labels) + len(read.held) == len(tasks)
    boxes = {r.request_id: r for r in regions.itertuples()}
    for label in read.labels:
        logged_boxes = sorted(
            tuple(r.box) for r in regions[regions["request_id"] == label.key[0]].itertuples()
        )
        assert sorted(tuple(r.box) for r in label.regions) == logged_boxes
    assert boxes
    again = curate_pages(params, log_root=logged.log)  # queued pages are not bought twice
    assert not set(again.selected["request_id"]) & set(selected["request_id"])
