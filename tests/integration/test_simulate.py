"""The traffic simulator against a real `flywheel serve` on 127.0.0.1 and a real MLflow registry.

The served model is a seeded tiny CNN (not trained), exported and promoted
as training and the registry do; what is tested is the traffic: request ids,
the truth recorded beside the prediction log, accuracy against that truth,
errors, time bounds, and the CLI.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from flywheel import registry
from flywheel.cli import app
from flywheel.config import (
    DataPlan,
    EvaluateConfig,
    Params,
    Scenario,
    ServeConfig,
    SimulateConfig,
    Strata,
)
from flywheel.data.ground_truth import read_ground_truth
from flywheel.demo.simulate import SimulationError, simulate_traffic
from flywheel.monitoring.prediction_log import read_predictions
from flywheel.registry import Blessing, GateResult
from tests.support.models import log_small_model
from tests.support.processes import free_port as _free_port
from tests.support.tracking import tracking_env

CLASSES = ("0", "1", "2", "3")
SIZE = 16
MODEL = "simulate-digits"
READY_TIMEOUT_S = 90.0


def _params(tmp: Path, port: int) -> Params:
    return Params(
        data=DataPlan(
            classes=CLASSES,
            image_size=SIZE,
            strata=Strata(style=("handwritten", "printed"), noise=("clean", "shadow", "rotated")),
        ),
        scenarios={
            "in_distribution": Scenario(),
            "drift": Scenario(
                mix={"handwritten/shadow": 0.5, "handwritten/rotated": 0.5},
                severity={"shadow": 1.6, "rotated": 1.6},
            ),
        },
        evaluate=EvaluateConfig(registered_model=MODEL),
        serve=ServeConfig(
            port=port,
            max_batch_size=16,
            max_latency_ms=2000,
            max_images_per_request=4,
            log={"dir": tmp / "predictions", "flush_every": 1, "flush_interval_s": 0.2},  # type: ignore[arg-type]
        ),
        simulate=SimulateConfig(requests=12, images_per_request=2, concurrency=3),
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Params, Path]]:
    """A promoted tiny model behind `flywheel serve`; yields the params and the project folder."""
    tmp = tmp_path_factory.mktemp("simulate")
    with tracking_env(tmp, home=tmp / "state", experiment="simulate-tests"):
        uri = log_small_model(CLASSES, SIZE, seed=0)
        version = registry.register(uri, MODEL)
        gate = GateResult("min_accuracy", 1.0, 0.8, ">=", True)
        registry.record_blessing(
            MODEL,
            version,
            Blessing(uri, None, (gate,), "test", registry.utc_now(), MODEL, version),
        )
        registry.promote(MODEL, version, reason="simulator test")

        params = _params(tmp, _free_port())
        params_file = tmp / "params.yaml"
        params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
        log = (tmp / "server.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "flywheel.cli", "serve", "--params", str(params_file)],
            cwd=tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(f"http://127.0.0.1:{params.serve.port}", server, tmp / "server.log")
            yield params, tmp
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
            log.close()


def _wait_ready(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"server exited ({server.returncode}):\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"not ready within {READY_TIMEOUT_S} s:\n{log.read_text(errors='replace')}")


def _logged(log_root: Path, request_ids: set[str], expected: int) -> list[dict[str, object]]:
    """The log rows of these requests, once the server's writer has flushed them all."""
    deadline = time.monotonic() + 10
    while True:
        frame = read_predictions(log_root)
        rows = frame[frame["request_id"].isin(request_ids)]
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows.to_dict(orient="records")
        time.sleep(0.2)


@pytest.mark.slow
def test_traffic_is_answered_logged_and_its_truth_recorded(
    served: tuple[Params, Path],
) -> None:
    params, tmp = served
    gt = tmp / "state" / "ground_truth"

    report = simulate_traffic(params, "in_distribution", seed=1, gt_root=gt, progress=False)

    assert (report.requests, report.images, report.errors, report.not_sent) == (12, 24, {}, 0)
    assert report.versions == {"1": 24}
    assert set(report.latency_ms) == {"p50", "p95", "mean", "max"}
    assert report.truth_file is not None
    truth = read_ground_truth(gt)
    truth = truth[truth["scenario"] == "in_distribution"]
    assert len(truth) == 24
    assert set(truth["origin"]) == {"simulator"}
    assert set(truth["index"]) == {0, 1}
    assert set(truth["label"]) <= set(CLASSES)
    assert set(truth["style"] + "/" + truth["noise"]) <= set(params.data.strata.names())
    assert truth["group"].str.startswith(("sklearn_digits:", "font:")).all()
    # The service logged every image under the same (request_id, index): the join is whole.
    logged = _logged(params.serve.log.dir or tmp, set(truth["request_id"]), 24)
    by_key = {(r["request_id"], r["index"]): r["label"] for r in logged}
    keys = list(zip(truth["request_id"], truth["index"], strict=True))
    assert set(by_key) == set(keys)
    right = sum(by_key[k] == label for k, label in zip(keys, truth["label"], strict=True))
    assert report.accuracy == pytest.approx(right / 24)
    strata = truth["style"] + "/" + truth["noise"]
    for name, accuracy in report.accuracy_by_stratum.items():
        mine = [k for k, s in zip(keys, strata, strict=True) if s == name]
        hits = sum(
            by_key[k] == truth.set_index(["request_id", "index"]).loc[k, "label"] for k in mine
        )
        assert accuracy == pytest.approx(hits / len(mine))
    assert set(report.accuracy_by_stratum) == set(strata)


@pytest.mark.slow
def test_drift_traffic_through_the_cli(served: tuple[Params, Path]) -> None:
    _, tmp = served
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--scenario",
            "drift",
            "--requests",
            "4",
            "--params",
            str(tmp / "params.yaml"),
        ],
    )
    output = " ".join(re.sub(r"[\u2500-\u257f]", " ", result.output).split())  # no box lines
    assert result.exit_code == 0, output
    assert "requests sent 4" in output
    assert "images answered 8" in output
    assert "accuracy vs truth" in output
    assert "answered by version 1 8" in output
    truth = read_ground_truth(tmp / "state" / "ground_truth")
    drifted = truth[truth["scenario"] == "drift"]
    assert len(drifted) == 8
    assert set(drifted["style"]) == {"handwritten"}
    assert set(drifted["noise"]) <= {"shadow", "rotated"}


@pytest.mark.slow
def test_the_time_budget_bounds_a_run(served: tuple[Params, Path]) -> None:
    params, tmp = served
    report = simulate_traffic(
        params,
        "in_distribution",
        requests=50,
        max_seconds=1e-6,
        gt_root=tmp / "gt-bounded",
        progress=False,
    )
    assert report.not_sent == 50 - report.requests
    assert report.requests <= params.simulate.concurrency  # at most the first wave started
    assert report.not_sent >= 47


def test_no_service_is_a_clear_error(tmp_path: Path) -> None:
    params = _params(tmp_path, _free_port())  # nothing listens there
    with pytest.raises(SimulationError, match=r"no service at http://127\.0\.0\.1"):
        simulate_traffic(params, "in_distribution", requests=1, progress=False)


def test_an_unknown_scenario_is_a_clear_error(tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(_params(tmp_path, 1).model_dump(mode="json")))
    result = CliRunner().invoke(
        app, ["simulate", "--scenario", "nope", "--params", str(params_file)]
    )
    assert result.exit_code == 2
    assert "unknown scenario 'nope'" in " ".join(result.output.split())
