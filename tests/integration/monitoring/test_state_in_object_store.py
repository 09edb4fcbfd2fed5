"""The monitor and the Evidently UI with the shared state in object storage, as on a cluster.

Traffic is logged into the bucket by the writer serving uses (one whole
Parquet object per flush); `flywheel monitor` (the CronJob's command) then runs
as a pod runs it: a subprocess in an empty working directory, with an empty
`FLYWHEEL_HOME`, only the state URL, the `AWS_*` environment and the tracking
URI. It reads the window from the bucket and writes its snapshot and HTML
report there; the Evidently UI over the bucket (`flywheel.monitoring.evidently_ui`)
shows the new snapshot without a restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from flywheel.monitoring.dashboards import evidently_ui_command, free_port, start_server
from flywheel.monitoring.prediction_log import PredictionLogger, predictions_dir
from flywheel.monitoring.replay import replay_images
from tests.integration.monitoring.conftest import _batch
from tests.support.monitoring_stack import DRIFT, HOURS, MODEL, PARAMS, WINDOW, hour
from tests.support.object_store import ObjectStore, object_store
from tests.support.processes import stop, wait_until_up

pytestmark = pytest.mark.slow
__all__ = ["object_store"]  # the fixture, found by pytest under its name

CALM, DRIFTED = HOURS["in_distribution"][0], HOURS[DRIFT][0]


@dataclass(frozen=True)
class BucketState:
    """The state URL the traffic was logged under, and a pod's environment to reach it."""

    url: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def bucket(
    object_store: ObjectStore, version: str, tmp_path_factory: pytest.TempPathFactory
) -> BucketState:
    """One calm and one drifted hour of the real collector's images served by `version`,
    logged into `<state URL>/predictions/model=<MODEL>` of the bucket."""
    url = object_store.prefix("state")
    with pytest.MonkeyPatch.context() as patch:
        object_store.apply(patch)
        patch.setenv("FLYWHEEL_STATE_URL", url)
        root = predictions_dir(PARAMS)
        assert root == f"{url}/predictions/model={MODEL}"
        with PredictionLogger(root, sample_images=0.0) as logger:
            for scenario, h in (("in_distribution", CALM), (DRIFT, DRIFTED)):
                replay_images(
                    MODEL,
                    version,
                    _batch(tmp_path_factory, scenario, seed=10 + h)[1],
                    logger,
                    start=hour(h)[0],
                    interval=timedelta(seconds=10),
                    request_prefix=f"bucket-{h}",
                )
        assert logger.written == 2 * WINDOW
    env = {
        **object_store.env,
        "FLYWHEEL_STATE_URL": url,
        "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
    }
    return BucketState(url, env)


def _monitor_as_a_pod(
    state: BucketState, h: int, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess:
    """`flywheel monitor` in an empty folder with only the pod's environment for state."""
    pod = tmp_path / "pod"
    (pod / "home").mkdir(parents=True)
    params = pod / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    since, until = hour(h)
    env = {**os.environ, **state.env, "FLYWHEEL_HOME": str(pod / "home")}
    command = [sys.executable, "-m", "flywheel.cli", "monitor", "--json", "--params", str(params)]
    window = ["--since", since.isoformat(), "--until", until.isoformat()]
    return subprocess.run(
        command + window + list(extra),
        cwd=pod,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_monitor_reads_the_bucket_and_writes_its_results_there(
    bucket: BucketState, object_store: ObjectStore, tmp_path: Path
) -> None:
    calm = _monitor_as_a_pod(bucket, CALM, tmp_path / "calm")
    drifted = _monitor_as_a_pod(bucket, DRIFTED, tmp_path / "drifted")

    assert calm.returncode == 0, calm.stderr[-3000:]
    assert drifted.returncode == 1, drifted.stderr[-3000:]
    for run in (calm, drifted):
        out = json.loads(run.stdout)
        assert out["window_size"] == WINDOW
        assert out["report_path"].startswith(f"{bucket.url}/monitoring/reports/{MODEL}-v")
    keys = object_store.keys(bucket.url)
    assert sum("/monitoring/reports/" in k and k.endswith(".html") for k in keys) == 2
    assert sum("/evidently/" in k and "/snapshots/" in k for k in keys) == 2
    # Nothing went to the pod's local state folder.
    assert not any((tmp_path / "calm" / "pod" / "home").iterdir())


def test_the_evidently_ui_over_the_bucket_shows_new_snapshots_without_a_restart(
    bucket: BucketState, tmp_path: Path
) -> None:
    assert _monitor_as_a_pod(bucket, CALM, tmp_path / "first").returncode == 0
    port = free_port()
    workspace = f"{bucket.url}/evidently"
    command = [*evidently_ui_command(workspace, "127.0.0.1", port), "--reload-s", "1"]
    assert command[2] == "flywheel.monitoring.evidently_ui"
    url = f"http://127.0.0.1:{port}"
    server = start_server("evidently", command, url, tmp_path / "ui.log", env=bucket.env)
    try:
        wait_until_up(server.process, f"{url}/api/version", server.log, timeout=120)
        [project] = [p for p in httpx.get(f"{url}/api/projects").json() if p["name"] == MODEL]
        before = len(httpx.get(f"{url}/api/projects/{project['id']}/snapshots").json())

        # The window the test above monitored: checked again on purpose, a second snapshot.
        assert _monitor_as_a_pod(bucket, DRIFTED, tmp_path / "second", "--force").returncode == 1

        deadline = time.monotonic() + 30  # the UI re-lists the bucket every second
        while True:
            after = httpx.get(f"{url}/api/projects/{project['id']}/snapshots").json()
            if len(after) > before or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert len(after) == before + 1, server.log.read_text()[-3000:]
    finally:
        stop(server.process)
