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
from tests.support.browser import (
    Browser,
    assert_offline_and_drawn,
    close_mlflow_assistant,
    save_screenshot,
)

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


def test_the_openapi_spec_is_the_products_own_and_its_examples_work(
    server: serving_support.Server,
) -> None:
    """Title and versions, words for users, the bearer scheme, every answer, a working example."""
    import httpx

    from flywheel import __version__
    from serving.openapi import BEARER, TITLE

    spec = httpx.get(f"{server.url}/docs.json", timeout=30).json()

    assert spec["info"]["title"] == TITLE
    assert (
        spec["info"]["version"] == f"{__version__} · {serving_support.MODEL}@production (version 1)"
    )
    assert "contact" not in spec["info"]  # BentoML's team is not whom to write to
    assert spec["components"]["securitySchemes"][BEARER] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"][BEARER]["description"],
    }
    paths = spec["paths"]
    assert paths["/admin/reload"]["post"]["security"] == [{BEARER: []}]
    for path in ("/predict_image", "/predict_images", "/predict_arrays"):
        assert {"400", "413", "415", "503"} <= set(paths[path]["post"]["responses"]), path
    assert {"401", "403", "502"} <= set(paths["/admin/reload"]["post"]["responses"])
    for operations in paths.values():
        for operation in operations.values():
            assert operation.get("summary"), operation
            assert "module doc" not in operation.get("description", "")  # notes for maintainers
            assert "`serving." not in operation.get("description", "")

    arrays = paths["/predict_arrays"]["post"]["requestBody"]["content"]["application/json"]
    answer = httpx.post(f"{server.url}/predict_arrays", json=arrays["example"], timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()[0]["model_version"] == "1"
    admin = paths["/admin/reload"]["post"]["requestBody"]["content"]["application/json"]
    refused = httpx.post(f"{server.url}/admin/reload", json=admin["example"], timeout=30)
    assert refused.status_code == 403  # documented: this server has no admin token
    assert "FLYWHEEL_ADMIN_TOKEN" in refused.json()["error"]


def test_flywheel_serve_prints_its_urls_once_ready(server: serving_support.Server) -> None:
    """The API, Swagger, /metrics and /readyz, each a URL that answers, printed once."""
    import time

    import httpx

    from flywheel.serving_api import ready_message

    expected = ready_message(server.url)
    deadline = time.monotonic() + 20  # the log line may follow the first 200 of /readyz
    while expected not in server.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    output = server.log_path.read_text()
    assert expected in output, output[-2000:]
    assert output.count("ready at ") == 1
    assert output.index("READY: serving") < output.index(expected)
    for line in expected.splitlines()[2:]:  # Swagger, metrics, readiness
        assert httpx.get(line.split()[-1], timeout=30).status_code == 200, line


def test_the_mlflow_ui_renders_offline(
    browser: Browser,
    default_font: str,
    dashboards: tuple[Dashboards, str],
    shots: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mlflow = next(s for s in dashboards[0].servers if s.name == "mlflow")

    page = browser.open(f"{mlflow.url}/#/models", quiet_s=1.5)
    close_mlflow_assistant(page)  # MLflow opens it on a browser's first page (see there)

    assert_offline_and_drawn(page, default_font)
    assert serving_support.MODEL in page.evaluate("document.body.innerText")
    save_screenshot(page, shots, "mlflow-models", capsys)
    page.close()
    page = browser.open(f"{mlflow.url}/#/models", quiet_s=1.5)
    assert not close_mlflow_assistant(page)  # closed once, it stays closed
    page.close()


_SCROLL_DOWN = """document.querySelectorAll('*').forEach(e => {
    if (e.scrollHeight > e.clientHeight + 50) e.scrollTop = e.scrollHeight;
})"""
"""Scroll every scrolling box to its end (the MLflow UI scrolls a panel, not the window)."""


def _judged_model(name: str, uri: str) -> None:
    """A model as the loop leaves it: v1 promoted, then v2 judged better against it and promoted."""
    from flywheel import registry
    from flywheel.config import Params
    from flywheel.workflows import model_description

    def judged(version: str, champion: str | None, accuracy: float) -> None:
        gates = [registry.GateResult("min_accuracy", accuracy, 0.8, ">=", True)]
        gates += [
            registry.GateResult(f"slice_regression[style={s}]", 0.0, 0.05, "<=", True) for s in "ab"
        ]
        metrics = {"accuracy": accuracy, "macro_f1": accuracy - 0.01, "ece": 0.03}
        if champion:
            metrics["champion_accuracy"] = 0.839
        blessing = registry.Blessing(
            uri,
            champion,
            tuple(gates),
            "test",
            registry.utc_now(),
            name,
            version,
            metrics,
            notes=("slice style=c: 3 images, not gated",) * 40,  # the kB a tag used to carry
        )
        registry.record_blessing(name, version, blessing)

    lineage = {"flywheel.data_version": "3f2a9c1d.dir", "flywheel.git_commit": "0123456789ab"}
    described = model_description(Params())
    first = registry.register(uri, name, tags=lineage, model_description=described)
    judged(first, None, 0.839)
    registry.promote(name, first, reason="first model", who="alice")
    second = registry.register(uri, name, tags=lineage)
    judged(second, first, 0.929)
    registry.promote(name, second, reason="0.929 on the production hold-out", who="bob")


def test_the_registry_pages_read_as_a_person_sees_them(
    browser: Browser,
    default_font: str,
    env: dict[str, str],
    dashboards: tuple[Dashboards, str],
    shots: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The model's page says what it is; a version's says its verdict; tags are short lines."""
    from mlflow import MlflowClient

    mlflow = next(s for s in dashboards[0].servers if s.name == "mlflow")
    name = "flywheel-digits-pages"
    _judged_model(name, env["second"])
    for version in MlflowClient().search_model_versions(f"name = '{name}'"):
        long = {k: len(v) for k, v in version.tags.items() if len(v) > 250}
        assert set(long) <= {"flywheel.history"}, long  # the crash-safe record, not for reading
    aliases = {a: str(v) for a, v in MlflowClient().get_registered_model(name).aliases.items()}
    assert aliases == {"production": "2", "previous": "1"}  # production holds one alias

    page = browser.open(f"{mlflow.url}/#/models/{name}", quiet_s=1.5)
    close_mlflow_assistant(page)
    assert_offline_and_drawn(page, default_font)
    text = page.evaluate("document.body.innerText")
    assert (
        "network for the `classification` task" in text
        or "network for the classification task" in text
    )
    # the model's transition log, a line a transition: no JSON to decipher
    assert "action=promote production=2 replaces=1 by=bob reason='0.929 on the" in text
    assert '"txid"' not in text
    save_screenshot(page, shots, "mlflow-registered-model", capsys)
    page.evaluate(_SCROLL_DOWN)
    save_screenshot(page, shots, "mlflow-registered-model-versions", capsys)
    page.close()

    page = browser.open(f"{mlflow.url}/#/models/{name}/versions/2", quiet_s=1.5)
    close_mlflow_assistant(page)
    assert_offline_and_drawn(page, default_font)
    text = page.evaluate("document.body.innerText")
    assert "Blessed against version 1 (production when judged): 3 of 3 gates passed" in text
    assert "0.9290" in text
    assert "0.8390" in text
    assert "flywheel.gates" in text
    assert '"candidate_uri":' not in text  # the blessing's JSON is an artifact now
    save_screenshot(page, shots, "mlflow-version-2", capsys)
    page.evaluate(_SCROLL_DOWN)
    save_screenshot(page, shots, "mlflow-version-2-tags", capsys)
    page.close()

    page = browser.open(f"{mlflow.url}/#/models/{name}/versions/1", quiet_s=1.5)
    close_mlflow_assistant(page)
    text = page.evaluate("document.body.innerText")
    assert "replaced by version 2 (promoted by bob: 0.929 on the production hold-out)" in text
    save_screenshot(page, shots, "mlflow-version-1", capsys)
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
