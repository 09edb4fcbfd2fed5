"""The pages of flywheel's servers, rendered offline in headless Chromium: nothing from the network.

The same checks as `test_pages_offline.py` (no request beyond the loopback or
`file:`, visible text, the page's own styles), on real servers on 127.0.0.1:
the Swagger page of the BentoML service (`flywheel serve`, a tiny registered
model; without `serving.offline_docs` it loads Google Tag Manager and five
badges from the web), the MLflow UI over that store and the Evidently UI over a workspace
holding one drift snapshot (`flywheel ui` starts both the same way,
`start_dashboards`). These pages are the libraries' own; a failure here names
what a library fetches, for a bug report or a setting.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.config import MonitorConfig
from flywheel.monitoring.dashboards import Dashboards, start_dashboards
from flywheel.monitoring.drift import Window, run_drift_report
from flywheel.monitoring.features import FEATURE_COLUMNS
from flywheel.monitoring.workspace import save_snapshot
from flywheel.processes import free_port
from serving.offline_docs import DESCRIPTION
from tests.support import browser as browser_support
from tests.support import serving as serving_support
from tests.support.browser import Browser, assert_offline_and_drawn, save_screenshot

pytestmark = pytest.mark.slow

env, server = serving_support.env, serving_support.server
browser, default_font, shots = (
    browser_support.browser,
    browser_support.default_font,
    browser_support.shots,
)


def _window(seed: int, shift: float) -> Window:
    rng = np.random.default_rng(seed)
    rows = pd.DataFrame({c: rng.normal(0.0, 1.0, 300) for c in FEATURE_COLUMNS})
    rows["brightness"] += shift
    rows["prediction"] = rng.choice(["0", "1", "2"], 300)
    rows["confidence"] = rng.beta(8, 2, 300)
    rows["model_version"] = 1.0
    return Window(rows, rng.normal(0.0, 1.0, (300, 8)).astype(np.float32))  # (N, 8)


@pytest.fixture(scope="module")
def dashboards(
    env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Dashboards, str]]:
    """The Evidently UI (one project, one drift snapshot) and the MLflow UI over `env`'s store."""
    workspace = tmp_path_factory.mktemp("workspace")
    snapshot, check = run_drift_report(
        _window(1, 1.0), _window(0, 0.0), MonitorConfig(embedding_components=3)
    )
    project_id, _ = save_snapshot(
        workspace, serving_support.MODEL, snapshot, components=list(check.embedding)
    )
    with start_dashboards(
        workspace,
        env["MLFLOW_TRACKING_URI"],
        host="127.0.0.1",
        evidently_port=free_port(),
        mlflow_port=free_port(),
        log_dir=tmp_path_factory.mktemp("logs"),
    ) as running:
        yield running, str(project_id)


def test_the_swagger_page_of_the_service_renders_offline(
    browser: Browser,
    default_font: str,
    server: serving_support.Server,
    shots: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    page = browser.open(f"{server.url}/")  # BentoML serves Swagger UI at the root

    assert_offline_and_drawn(page, default_font, styled=".swagger-ui .info")
    operations = page.evaluate("document.querySelectorAll('.opblock').length")
    assert operations > 0  # swagger-ui drew the service's operations from its OpenAPI
    text = page.evaluate("document.body.innerText")
    assert DESCRIPTION.splitlines()[-1].split(":")[0] in text  # ours, not BentoML's README
    save_screenshot(page, shots, "swagger", capsys)
    page.close()


def test_the_mlflow_ui_renders_offline(
    browser: Browser,
    default_font: str,
    dashboards: tuple[Dashboards, str],
    shots: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mlflow = next(s for s in dashboards[0].servers if s.name == "mlflow")

    page = browser.open(f"{mlflow.url}/#/models", quiet_s=1.5)

    assert_offline_and_drawn(page, default_font)
    assert serving_support.MODEL in page.evaluate("document.body.innerText")
    save_screenshot(page, shots, "mlflow-models", capsys)
    page.close()


def test_the_evidently_dashboard_renders_offline(
    browser: Browser,
    default_font: str,
    dashboards: tuple[Dashboards, str],
    shots: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    running, project_id = dashboards
    evidently = next(s for s in running.servers if s.name == "evidently")

    page = browser.open(f"{evidently.url}/projects/{project_id}", quiet_s=1.5)

    assert_offline_and_drawn(page, default_font)
    save_screenshot(page, shots, "evidently-dashboard", capsys)
    page.close()
