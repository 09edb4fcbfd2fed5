"""The monitoring stack, set up once for the package: its fixtures and their helpers.

`state` (a SQLite store and state folder in the environment) → `dataset` (the
tiny plan, collected) → `version` (trained and registered by the pipeline's
training step, reference profile included) → `traffic` (four hours of the real
collector's images replayed through it into the prediction log, and the ground
truth) → `dashboard` (a fifth hour served by a second version, a snapshot per
hour, `flywheel ui` serving them). What the test modules import is in
tests/support/monitoring_stack.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

from flywheel import workflows as steps
from flywheel.data.ground_truth import write_ground_truth
from flywheel.demo.collect import collect_batch
from flywheel.monitoring import monitor
from flywheel.monitoring.dashboards import free_port
from flywheel.monitoring.prediction_log import PredictionLogger, predictions_dir
from flywheel.monitoring.replay import replay_images
from tests.support.monitoring_stack import (
    HOURS,
    MODEL,
    PARAMS,
    PLAN,
    SCENARIOS,
    WINDOW,
    Dashboard,
    Traffic,
    hour,
)
from tests.support.plans import collect_plan
from tests.support.tracking import tracking_env


@pytest.fixture(scope="package")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh SQLite store and state folder, selected through the environment as in deployments."""
    home = tmp_path_factory.mktemp("state")
    with tracking_env(home, home=home):
        yield home


@pytest.fixture(scope="package")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`PLAN` collected, once for the package (in place of the module-scoped `dataset` of
    tests/conftest.py, which collects a module's `data_plan`)."""
    return collect_plan(PLAN, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="package")
def version(state: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Version 1, trained and registered by the pipeline's training step (reference included)."""
    out = tmp_path_factory.mktemp("train-out")
    candidate = steps.train_candidate(
        PARAMS,
        dataset,
        data_version="test-data",
        model_out=out / "model.json",
        metrics_out=out / "metrics.json",
    )
    return candidate.version


@pytest.fixture(scope="package")
def traffic(version: str, state: Path, tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    """Two in-distribution and two drifted windows from the real collector, replayed through
    the model as the service serves it, into the real prediction log; the simulator's truth
    for 2 in 3 images."""
    log_dir = Path(predictions_dir(PARAMS))  # where the CLI reads it: the model's own log
    truths = []
    with PredictionLogger(log_dir, sample_images=0.0) as logger:
        for scenario, hours in HOURS.items():
            for h in hours:
                manifest, images = _batch(tmp_path_factory, scenario, seed=h)
                ids = replay_images(
                    MODEL,
                    version,
                    images,
                    logger,
                    start=hour(h)[0],
                    interval=timedelta(seconds=10),
                    request_prefix=f"{scenario}-{h}",
                )
                truths += [
                    (rid, 0, label, "simulator")
                    for i, (rid, label) in enumerate(zip(ids, manifest["label"], strict=True))
                    if i % 3
                ]
    truth = pd.DataFrame(truths, columns=["request_id", "index", "label", "origin"])
    write_ground_truth(truth)
    return Traffic(log_dir, truth)


def _batch(
    tmp_path_factory: pytest.TempPathFactory, scenario: str, seed: int
) -> tuple[pd.DataFrame, list[Image.Image]]:
    """A window of the real collector's production images, mixed as the scenario says."""
    out = tmp_path_factory.mktemp(f"batch-{scenario}-{seed}")
    manifest = collect_batch(PLAN, SCENARIOS[scenario], WINDOW, seed=seed, out_dir=out)
    return manifest, [Image.open(out / p).convert("L") for p in manifest["path"]]


@pytest.fixture(scope="package")
def dashboard(
    traffic: Traffic, version: str, state: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dashboard]:
    """Snapshots of the four hours, then a fifth hour served by a newly registered version
    (same run, so same reference): the dashboard shows the switch. Served by `flywheel ui`."""
    workspace = tmp_path_factory.mktemp("evidently")
    params = PARAMS.model_copy(
        update={"monitor": PARAMS.monitor.model_copy(update={"workspace": workspace})}
    )
    client = MlflowClient()
    source = client.get_model_version(MODEL, version)
    second = client.create_model_version(MODEL, str(source.source), run_id=source.run_id).version
    with PredictionLogger(traffic.log_dir, sample_images=0.0) as logger:
        replay_images(
            MODEL,
            second,
            _batch(tmp_path_factory, "in_distribution", seed=4)[1],
            logger,
            start=hour(4)[0],
            interval=timedelta(seconds=10),
            request_prefix="v2",
        )
    results = [
        monitor(params, since=hour(h)[0], until=hour(h)[1], log_dir=traffic.log_dir)
        for h in range(5)
    ]
    # `flywheel ui`, as people start it; Ctrl-C (SIGINT) must stop both servers cleanly.
    config = tmp_path_factory.mktemp("ui") / "params.yaml"
    config.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    ports = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flywheel.cli",
            "ui",
            "--params",
            str(config),
            "--evidently-port",
            str(ports[0]),
            "--mlflow-port",
            str(ports[1]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url, path in zip(urls, ("/api/version", "/health"), strict=True):
            _wait_for(url + path, process)
        yield Dashboard(
            workspace, str(results[0].project_id), [r.model_version for r in results], *urls
        )
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    for url in urls:
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, timeout=2)


def _wait_for(url: str, process: subprocess.Popen[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"flywheel ui exited ({process.returncode}): {process.communicate()[0]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout} s")
