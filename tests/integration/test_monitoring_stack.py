"""Monitoring against the real stack: a tiny model trained and registered by the real training
step (which stores its reference profile), traffic from the real collector served through that
model the way the service does, a real prediction log, real Evidently, a real workspace.

One module-scoped set-up (a shrunk CNN, 4 classes) is shared by every check. Traffic: two
in-distribution windows and two windows of the drift scenario of params.yaml, one hour apart.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import mlflow.pytorch
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from flywheel import workflows as steps
from flywheel.cli import app
from flywheel.config import (
    DataPlan,
    EvaluateConfig,
    MonitorConfig,
    Params,
    TrainConfig,
    load_params,
)
from flywheel.data.ground_truth import write_ground_truth
from flywheel.demo.collect import collect_batch
from flywheel.evaluation import load_task
from flywheel.monitoring import (
    NotEnoughDataError,
    ReferenceNotFoundError,
    load_reference,
    monitor,
)
from flywheel.monitoring.dashboards import find_chromium, free_port, screenshot
from flywheel.monitoring.features import FEATURE_COLUMNS, summary_features
from flywheel.monitoring.prediction_log import PredictionLogger, read_predictions
from flywheel.monitoring.reference import REFERENCE_ARTIFACT, TAG_REFERENCE, embedding_columns
from flywheel.monitoring.replay import replay_images
from flywheel.registry import model_uri
from tests.support.plans import TINY_MODEL, tiny_plan
from tests.support.tracking import tracking_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL = "monitoring-tiny"
PLAN = tiny_plan(40, 10, 4)
SCENARIOS = load_params(REPO / "params.yaml").scenarios  # the real traffic scenarios
DRIFT = "handwritten_shadow_rotated"
PARAMS = Params(
    data=PLAN,
    scenarios=SCENARIOS,
    train=TrainConfig(
        experiment="test-monitoring",
        seed=3,
        epochs=4,
        batch_size=32,
        lr=5e-3,
        patience=10,
        model=TINY_MODEL,
    ),
    evaluate=EvaluateConfig(registered_model=MODEL),
    monitor=MonitorConfig(min_window_size=100, embedding_components=4),
)
WINDOW = 300
"""Predictions per traffic window."""
T0 = datetime(2021, 3, 1, 8, 0, tzinfo=UTC)
"""Long past: `flywheel monitor` without arguments (the last 24 h) sees none of it."""
HOURS = {"in_distribution": (0, 1), DRIFT: (2, 3)}
"""Scenario → the hours (after T0) of its windows."""


@dataclass(frozen=True)
class Traffic:
    """What was served: the prediction log, the ground truth written, the windows' hours."""

    log_dir: Path
    truth: pd.DataFrame


def hour(h: int) -> tuple[datetime, datetime]:
    """The window `[T0 + h, T0 + h + 1)`."""
    return T0 + timedelta(hours=h), T0 + timedelta(hours=h + 1)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh SQLite store and state folder, selected through the environment as in deployments."""
    home = tmp_path_factory.mktemp("state")
    with tracking_env(home, home=home):
        yield home


@pytest.fixture(scope="module")
def data_plan() -> DataPlan:
    """What the conftest's `dataset` collects."""
    return PLAN


@pytest.fixture(scope="module")
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


def serve_like_the_service(
    module: torch.nn.Module, uri: str, images: Sequence[Image.Image]
) -> list[tuple[str, float, dict[str, float], list[float], dict[str, float]]]:
    """What `serving/predictions.py` computes per image: label, confidence, probabilities,
    embedding, summary features of the pre-processed pixels."""
    task = load_task(uri)
    batch = task.preprocess(images)  # (N, 1, S, S) in [0, 1]
    features = summary_features(batch[:, 0].numpy()).to_dict(orient="records")
    with torch.inference_mode():
        probabilities, embeddings = task.split_output(module(batch))  # (N, K), (N, D)
    out = []
    for i in range(len(images)):
        best = int(probabilities[i].argmax())
        out.append(
            (
                task.classes[best],
                float(probabilities[i, best]),
                dict(zip(task.classes, probabilities[i].tolist(), strict=True)),
                embeddings[i].tolist(),
                features[i],
            )
        )
    return out


@pytest.fixture(scope="module")
def traffic(version: str, state: Path, tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    """Two in-distribution and two drifted windows from the real collector, replayed through
    the model as the service serves it, into the real prediction log; the simulator's truth
    for 2 in 3 images."""
    log_dir = state / "predictions"
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


# ------------------------------------------------------------------ reference


def test_training_stores_a_reference_profile_serving_would_reproduce(
    version: str, dataset: Path
) -> None:
    profile = load_reference(MODEL, version)

    per_split = profile["split"].value_counts().to_dict()
    strata = len(PLAN.strata.names())
    assert per_split == {"train": 40 * strata, "val": 10 * strata}
    assert len(embedding_columns(profile)) == PARAMS.train.model.embedding_dim
    assert profile[list(FEATURE_COLUMNS)].notna().all().all()
    run_id = MlflowClient().get_model_version(MODEL, version).run_id
    assert MlflowClient().get_run(str(run_id)).data.tags[TAG_REFERENCE] == REFERENCE_ARTIFACT

    # A few images, re-read from disk and passed through the service's computation, land on
    # the stored rows: the reference is what serving would have logged for them.
    uri = model_uri(MODEL, version)
    rows = profile[profile["split"] == "val"].head(5)
    manifest = pd.read_csv(dataset / "manifest.csv", dtype=str).set_index("image_id")
    images = [Image.open(dataset / manifest.at[i, "path"]) for i in rows["image_id"]]
    served = serve_like_the_service(mlflow.pytorch.load_model(uri), uri, images)
    for (_, row), (label, confidence, _, embedding, features) in zip(
        rows.iterrows(), served, strict=True
    ):
        assert row["prediction"] == label
        assert row["confidence"] == pytest.approx(confidence, abs=1e-6)
        assert row[embedding_columns(profile)].to_numpy(float) == pytest.approx(embedding, abs=1e-5)
        assert row[list(FEATURE_COLUMNS)].to_numpy(float) == pytest.approx(
            [features[f] for f in FEATURE_COLUMNS], abs=1e-9
        )


def test_a_version_without_a_profile_says_how_to_make_one(version: str) -> None:
    client = MlflowClient()
    source = client.get_model_version(MODEL, version)
    with mlflow.start_run(
        experiment_id=client.get_run(str(source.run_id)).info.experiment_id
    ) as run:
        pass
    bare = client.create_model_version(MODEL, str(source.source), run_id=run.info.run_id)

    with pytest.raises(
        ReferenceNotFoundError, match=f"flywheel reference --version {bare.version}"
    ):
        load_reference(MODEL, bare.version)
    client.delete_model_version(MODEL, bare.version)


# ----------------------------------------------------------------- monitoring


@pytest.mark.parametrize("h", HOURS["in_distribution"])
def test_an_in_distribution_window_is_not_drift(traffic: Traffic, version: str, h: int) -> None:
    since, until = hour(h)

    result = monitor(PARAMS, since=since, until=until, log_dir=traffic.log_dir)

    assert not result.drift, result.check
    assert result.exit_code == 0
    assert result.model_version == version
    assert result.window_size == WINDOW
    assert result.check.feature_share < PARAMS.monitor.drift_share


@pytest.mark.parametrize("h", HOURS[DRIFT])
def test_the_drift_scenario_is_flagged(traffic: Traffic, h: int) -> None:
    since, until = hour(h)

    result = monitor(PARAMS, since=since, until=until, log_dir=traffic.log_dir)

    assert result.drift, result.check
    assert result.exit_code == 1
    assert "features" in result.check.reasons
    assert result.check.feature_share >= PARAMS.monitor.drift_share
    # Shadows and rotation show where they should: uneven lighting, edges.
    assert result.check.features["illumination_gradient"].drifted
    assert result.report_path is not None
    assert result.report_path.stat().st_size > 10_000


def test_accuracy_comes_from_the_ground_truth_of_the_window(traffic: Traffic) -> None:
    since, until = hour(HOURS[DRIFT][0])
    logged = read_predictions(traffic.log_dir, since, until)
    joined = logged.merge(traffic.truth, on=["request_id", "index"], suffixes=("", "_true"))
    expected = float((joined["label"] == joined["label_true"]).mean())

    result = monitor(PARAMS, since=since, until=until, log_dir=traffic.log_dir, save=False)

    assert result.labelled == len(joined) == WINDOW * 2 // 3
    assert result.check.accuracy == pytest.approx(expected)
    assert result.check.reference_accuracy is not None


def test_without_ground_truth_no_accuracy_is_claimed(traffic: Traffic, tmp_path: Path) -> None:
    since, until = hour(HOURS["in_distribution"][0])

    result = monitor(
        PARAMS,
        since=since,
        until=until,
        log_dir=traffic.log_dir,
        ground_truth_dir=tmp_path,
        save=False,
    )

    assert result.labelled == 0
    assert result.check.accuracy is None
    assert "accuracy" not in result.scalars()


def test_a_configured_window_start_replaces_the_last_hours(traffic: Traffic) -> None:
    """`monitor.since`, as the demo sets it per pipeline run: the window starts there."""
    since, _ = hour(HOURS[DRIFT][-1])  # the last hour of traffic, to now
    fixed = PARAMS.model_copy(update={"monitor": MonitorConfig(since=since.replace(tzinfo=None))})

    result = monitor(fixed, log_dir=traffic.log_dir, save=False)

    assert result.window_start >= since
    assert result.window_size == WINDOW
    assert result.drift


def test_a_window_below_the_minimum_size_gets_no_decision(traffic: Traffic) -> None:
    since, until = hour(HOURS[DRIFT][0])
    strict = PARAMS.model_copy(update={"monitor": MonitorConfig(min_window_size=WINDOW + 1)})

    with pytest.raises(NotEnoughDataError, match=f"{WINDOW} predictions.*min_window_size"):
        monitor(strict, since=since, until=until, log_dir=traffic.log_dir, save=False)


def test_sampling_reaches_the_decision_of_the_full_window(traffic: Traffic) -> None:
    """Both drift hours (600 rows), all of them vs a random half, as `monitor.sample_rows` does
    for large windows."""
    since, until = hour(HOURS[DRIFT][0])[0], hour(HOURS[DRIFT][1])[1]
    config = PARAMS.monitor.model_copy(update={"sample_rows": WINDOW})
    sampled = PARAMS.model_copy(update={"monitor": config})
    full_config = PARAMS.monitor.model_copy(update={"sample_rows": None})

    full = monitor(
        PARAMS.model_copy(update={"monitor": full_config}),
        since=since,
        until=until,
        log_dir=traffic.log_dir,
        save=False,
    )
    fast = monitor(sampled, since=since, until=until, log_dir=traffic.log_dir, save=False)

    assert (full.check.rows, fast.check.rows) == (2 * WINDOW, WINDOW)
    assert any("sampled" in note for note in fast.check.notes)
    assert full.drift
    assert fast.drift
    for name, test in full.check.features.items():
        assert fast.check.features[name].score == pytest.approx(test.score, abs=0.1), name


# ------------------------------------------------------------------------ CLI


def _params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    return path


@pytest.mark.parametrize(("h", "status"), [(HOURS["in_distribution"][1], 0), (HOURS[DRIFT][1], 1)])
def test_cli_exit_status_and_json(traffic: Traffic, tmp_path: Path, h: int, status: int) -> None:
    since, until = hour(h)

    result = CliRunner().invoke(
        app,
        [
            "monitor",
            "--since",
            since.isoformat(),
            "--until",
            until.isoformat(),
            "--json",
            "--params",
            str(_params_file(tmp_path)),
        ],
    )

    assert result.exit_code == status, result.output
    out = json.loads(result.stdout)
    assert out["drift"] is bool(status)
    assert out["window_size"] == WINDOW
    assert set(out["features"]) == set(FEATURE_COLUMNS)
    assert Path(out["report_path"]).is_file()


def test_cli_exits_2_with_the_reason_when_the_window_is_empty(
    traffic: Traffic, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "monitor",
            "--since",
            "2020-01-01",
            "--until",
            "2020-01-02",
            "--params",
            str(_params_file(tmp_path)),
        ],
    )

    assert result.exit_code == 2
    assert "no predictions" in result.output


def test_cli_with_no_arguments_reads_the_last_window_hours(
    traffic: Traffic, tmp_path: Path
) -> None:
    """What the cluster's CronJob runs: `flywheel monitor`, state under $FLYWHEEL_HOME."""
    result = CliRunner().invoke(app, ["monitor", "--params", str(_params_file(tmp_path))])

    assert result.exit_code == 2  # the test traffic is from 2021: older than 24 h
    assert "no predictions" in result.output
    assert str(traffic.log_dir) in result.output.replace("\n", "")


def test_cli_reference_profiles_a_registered_version_after_the_fact(
    version: str, dataset: Path, tmp_path: Path
) -> None:
    before = load_reference(MODEL, version)

    result = CliRunner().invoke(
        app,
        [
            "reference",
            "--version",
            version,
            "--dataset",
            str(dataset),
            "--params",
            str(_params_file(tmp_path)),
        ],
    )

    assert result.exit_code == 0, result.output
    assert f"reference profile of {len(before)} images" in result.output
    pd.testing.assert_frame_equal(load_reference(MODEL, version), before)  # deterministic


# ----------------------------------------------------------------- dashboards


@dataclass(frozen=True)
class Dashboard:
    """A workspace with one snapshot per traffic hour, and the UIs serving it."""

    workspace: Path
    project_id: str
    versions: list[str]
    evidently_url: str
    mlflow_url: str


@pytest.fixture(scope="module")
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


def _series(dashboard: Dashboard, values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The data the UI plots for a panel's values (its own API)."""
    filters = [{k: v[k] for k in ("tags", "metadata", "metric", "metric_labels")} for v in values]
    response = httpx.post(
        f"{dashboard.evidently_url}/api/v2/snapshots/{dashboard.project_id}/data_series_batch",
        json={"series_filter": filters},
        timeout=30,
    )
    response.raise_for_status()
    series: list[dict[str, Any]] = response.json()["series"]
    return series


def test_every_dashboard_panel_has_a_point_per_monitoring_run(dashboard: Dashboard) -> None:
    model = httpx.get(
        f"{dashboard.evidently_url}/api/v2/dashboards/{dashboard.project_id}", timeout=30
    ).json()
    plotted = {p["title"]: p for p in model["panels"] if p["values"]}
    assert {
        "Share of drifted summary features",
        "Embedding drift",
        "Mean confidence",
        "Accuracy on labelled traffic",
        "Prediction distribution",
        "Model version serving",
    } <= set(plotted)

    runs = len(dashboard.versions)
    for title, panel in plotted.items():
        series = _series(dashboard, panel["values"])
        assert series, title
        if title == "Accuracy on labelled traffic":  # the fifth hour has no ground truth
            assert [v is not None for v in series[0]["values"]] == [True] * 4, title
        elif title != "Prediction distribution":  # a label may be absent from some windows
            assert all(len(s["values"]) == runs for s in series), title
    features = _series(dashboard, plotted["Share of drifted summary features"]["values"])
    share = features[0]["values"]
    assert max(share[:2]) < PARAMS.monitor.drift_share <= min(share[2:4])
    served = _series(dashboard, plotted["Model version serving"]["values"])[0]["values"]
    assert served == [float(v) for v in dashboard.versions]
    assert dashboard.versions[-1] != dashboard.versions[0]


def test_the_mlflow_ui_runs_beside_it(dashboard: Dashboard) -> None:
    response = httpx.get(f"{dashboard.mlflow_url}/health", timeout=30)

    assert response.status_code == 200


def test_a_headless_chromium_screenshot_shows_the_dashboard(
    dashboard: Dashboard, tmp_path: Path
) -> None:
    if find_chromium() is None:
        pytest.skip(
            "no Chromium on this machine (install Debian's `chromium`, or `make screenshot`)"
        )
    out = screenshot(
        f"{dashboard.evidently_url}/projects/{dashboard.project_id}", tmp_path / "d.png"
    )

    image = np.asarray(Image.open(out).convert("RGB"))  # (H, W, 3)
    assert image.shape[:2] == (2200, 1400)
    # The plotted series are drawn in Evidently's teal; a page without data has none of it.
    teal = (np.abs(image.astype(int) - (0, 180, 180)).sum(axis=2) < 90).mean()
    assert teal > 0.001, f"only {teal:.4%} of the page is series colour"


# ------------------------------------------------------------------ component


def test_the_monitor_component_runs_through_the_kfp_local_runner(
    dashboard: Dashboard, tmp_path: Path
) -> None:
    """The latest prediction is version 2's in-distribution hour: its window, no drift."""
    from kfp import local

    from components.monitor import monitor_drift

    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "outputs")
    )
    params = PARAMS.model_copy(
        update={"monitor": PARAMS.monitor.model_copy(update={"workspace": dashboard.workspace})}
    )

    task = monitor_drift(
        params=steps.params_document(params),
        overrides=["monitor.window_hours=1000000"],  # since 2021: the whole test log
    )

    assert task.outputs["Output"] is False
    metrics = task.outputs["metrics"].metadata
    assert metrics["model_version"] == float(dashboard.versions[-1])
    assert metrics["window_size"] == WINDOW
    assert metrics["drift"] == 0.0
    report = Path(task.outputs["report"].path)
    assert "illumination_gradient" in report.read_text()  # the Evidently report of the window
