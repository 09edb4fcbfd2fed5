"""The crop stage's reference with an undertrained detector: in-distribution pages must not
read as drift of the recogniser.

A tiny pair is trained with a detector of few epochs (its boxes are loose, shifted, some
around nothing); in-distribution production pages are answered by the pair and logged. The
crop stage is checked twice on the same window: against the recogniser's own profile (crops
of the true boxes: the old reference) and against the profile of the crops the serving
detector cuts from the reference pages (`flywheel.monitoring.page_reference`). The numbers
of both are printed (`pytest -s`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.monitoring.pages import CROP_STAGE, PAGE_STAGE, monitor_pages
from tests.support.page_monitoring import PagePair, log_pages, monitor_params, page_pair
from tests.support.tracking import tracking_env

pytestmark = pytest.mark.slow  # trains two tiny models, answers 60 pages

IN = datetime(2026, 12, 1, 8, tzinfo=UTC)
PAGES = 60
DETECTOR_EPOCHS = 4


@dataclass
class Logged:
    root: Path
    pair: PagePair
    log: Path


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    root = tmp_path_factory.mktemp("page-crop-reference")
    with tracking_env(root / "mlflow", home=root / "home", experiment="page-crop-reference"):
        pair = page_pair(root, epochs=(DETECTOR_EPOCHS, 8))
        found = Logged(root, pair, root / "page-log")
        log_pages(pair, pair.plan, found.log, count=PAGES, seed=1, start=IN, prefix="in")
        yield found


def _crop_check(logged: Logged, state: str, *, dataset: bool) -> dict[str, object]:
    plan = logged.pair.plan
    if not dataset:  # no dataset to cut crops from: the recogniser's true-box profile
        plan = plan.model_copy(update={"root": logged.root / "no-such-data"})
    params = monitor_params(
        logged.root,
        state=logged.root / state,
        plan=plan,
        features={"method": "wasserstein", "threshold": 0.3},
        embedding={"method": "wasserstein", "threshold": 0.3},
    )
    result = monitor_pages(
        params, since=IN, until=IN + timedelta(hours=1), log_dir=logged.log, save=False
    )
    assert set(result.results) == {PAGE_STAGE, CROP_STAGE}
    check = result.results[CROP_STAGE].check.to_dict()
    check["drift"] = result.results[CROP_STAGE].drift
    return check


def test_in_distribution_crops_do_not_drift_against_the_detected_crop_reference(
    logged: Logged,
) -> None:
    before = _crop_check(logged, "state-true-boxes", dataset=False)
    after = _crop_check(logged, "state-detected", dataset=True)
    print("crop stage, true-box reference:", json.dumps(before, default=str))
    print("crop stage, detected-crop reference:", json.dumps(after, default=str))
    assert (logged.root / "state-detected" / "monitoring" / "references").is_dir()
    # measured (seeded): true-box reference 6 of 7 features and 5 of 5 embedding components
    # drifted; detected-crop reference 1 of 7 and 0 of 5
    assert before["drift"], before  # the symptom: in-distribution crops read as drift
    assert not after["drift"], after
    for share in ("feature_share", "embedding_share"):
        assert after[share] < 0.5 <= before[share]
    assert after["reference_rows"] > 0


def test_reference_pair_keeps_it_for_a_monitor_without_the_dataset(logged: Logged) -> None:
    """`flywheel reference --pair` where the dataset is; then a monitor that has no dataset
    (a CronJob on a cluster) finds the profile in the state store."""
    from mlflow import MlflowClient

    from flywheel.monitoring.page_reference import pair_reference_location
    from tests.support.page_monitoring import DETECTOR, RECOGNIZER

    client = MlflowClient()
    client.set_registered_model_alias(DETECTOR, "production", logged.pair.detector_version)
    client.set_registered_model_alias(RECOGNIZER, "production", logged.pair.recognizer_version)
    state = logged.root / "state-cli"
    params = monitor_params(logged.root, state=state, plan=logged.pair.plan)
    path = logged.root / "pages.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    result = CliRunner().invoke(app, ["reference", "--pair", "--params", str(path)])
    assert result.exit_code == 0, result.output
    kept = pair_reference_location(
        state,
        (RECOGNIZER, logged.pair.recognizer_version),
        (DETECTOR, logged.pair.detector_version),
    )
    assert Path(str(kept)).is_file()
    assert "crop-stage reference" in result.output

    elsewhere = logged.pair.plan.model_copy(update={"root": logged.root / "no-such-data"})
    without = monitor_params(
        logged.root,
        state=state,
        plan=elsewhere,
        features={"method": "wasserstein", "threshold": 0.3},
        embedding={"method": "wasserstein", "threshold": 0.3},
    )
    checked = monitor_pages(
        without, since=IN, until=IN + timedelta(hours=1), log_dir=logged.log, save=False
    )
    assert not checked.results[CROP_STAGE].drift  # the kept detected-crop reference
    assert checked.results[CROP_STAGE].check.reference_rows > 0
