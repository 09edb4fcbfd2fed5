"""The dashboards `flywheel ui` serves (a point per monitoring run on every panel, the version
switch, the MLflow UI beside it, a headless Chromium screenshot), then the KFP monitor
component, run last on a window the workspace already holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from flywheel import workflows as steps
from flywheel.monitoring.dashboards import find_chromium, screenshot
from flywheel.monitoring.workspace import open_workspace
from tests.support.monitoring_stack import MODEL, PARAMS, PLAN, Dashboard

pytestmark = pytest.mark.slow


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
        else:  # every label has a share in every window, 0 where absent
            assert all(len(s["values"]) == runs for s in series), title
    features = _series(dashboard, plotted["Share of drifted summary features"]["values"])
    share = features[0]["values"]
    assert max(share[:2]) < PARAMS.monitor.drift_share <= min(share[2:4])
    served = _series(dashboard, plotted["Model version serving"]["values"])[0]["values"]
    assert served == [float(v) for v in dashboard.versions]
    assert dashboard.versions[-1] != dashboard.versions[0]


def test_thresholds_the_latest_status_and_a_fixed_label_order(dashboard: Dashboard) -> None:
    model = httpx.get(
        f"{dashboard.evidently_url}/api/v2/dashboards/{dashboard.project_id}", timeout=30
    ).json()
    panels = {p["title"]: p for p in model["panels"]}
    runs = len(dashboard.versions)

    status = panels["Latest window"]
    assert status["plot_params"] == {"plot_type": "counter", "aggregation": "last"}
    assert f"version {dashboard.versions[-1]}: no drift" in status["subtitle"]
    verdicts = [v for v in status["values"] if v["metric"].endswith(":DriftVerdict")]
    assert _series(dashboard, verdicts)[0]["values"] == [0.0, 0.0, 1.0, 1.0, 0.0]

    drifted = panels["Share of drifted summary features"]["values"]
    _, line = _series(dashboard, drifted)
    assert line["metric_type"].endswith(":SignalThreshold")
    assert line["values"] == [PARAMS.monitor.drift_share] * runs
    embedding = _series(dashboard, panels["Embedding drift"]["values"])
    assert embedding[1]["values"] == [PARAMS.monitor.embedding_drift_share] * runs
    for title in ("Summary feature drift scores (1/2)", "Summary feature drift scores (2/2)"):
        scores = panels[title]["values"]
        assert len(scores) <= 7  # the UI's palette: each line its own colour
        assert scores[-1]["metric_labels"] == {"signal": "feature"}
        line = _series(dashboard, scores)[-1]
        assert line["values"] == [PARAMS.monitor.features.threshold] * runs

    labels = panels["Prediction distribution"]["values"]
    assert [v["legend"] for v in labels] == list(PLAN.classes)
    series = _series(dashboard, labels)
    assert [s["params"]["label"] for s in series] == list(PLAN.classes)  # colours in this order
    assert all(sum(s["values"][i] for s in series) == pytest.approx(1.0) for i in range(runs))


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
    """The latest prediction is version 2's in-distribution hour, a window the dashboard's
    fixture monitored: the step hands on that verdict and report and adds no snapshot."""
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
    assert metrics == {
        "already_monitored": 1.0,
        "drift": 0.0,
        "model_version": float(dashboard.versions[-1]),
    }
    report = Path(task.outputs["report"].path).read_text()
    assert "illumination_gradient" in report  # the Evidently report of the window
    assert f"{MODEL} version {dashboard.versions[-1]}: no drift" in report
    assert len(open_workspace(dashboard.workspace).list_runs(dashboard.project_id)) == 5
