"""A real server whose `production` model files are corrupt when it starts.

`serve.on_unloadable_production: previous` (the default): it serves the
`previous` version and says so in `/readyz`'s body, `/metrics`, the log and the
version every answer names; `not_ready`: it stays not ready, with the reason in
`/readyz` and in every refused prediction. The model file is then repaired and
`/admin/reload` makes either server serve `production`. The alias is polled once
an hour, so only the reload makes them check again. The watcher's other cases
(missing files, a missing alias, no fallback, a version that fails later) run
in-process in `test_serving_fallback.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flywheel import registry
from flywheel.demo.server import (
    free_port,
    reload_model,
    start_server,
    stop_process_group,
    wait_until_ready,
)
from flywheel.serving_api import MODEL_VERSION_HEADER, READY_PATH
from tests.support.serving import (
    TOKEN,
    Damage,
    Server,
    digit_images,
    flywheel_serve,
    log_model,
    metric_total,
    register_blessed,
    server_environment,
    wait_for,
    write_params,
)
from tests.support.tracking import tracking_env

pytestmark = pytest.mark.slow  # real servers: ~15 s to start each

FALLBACK_MODEL = "fallback-served"
STRICT_MODEL = "fallback-strict"
HOUR = 3600.0
DAMAGED: dict[str, Damage] = {}
"""The corrupted model file of each model (`env`)."""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two models, each with version 2 in production (its model file corrupt) and 1 previous.

    `DAMAGED` holds their corrupted files, to repair.
    """
    with tracking_env(
        tmp_path_factory.mktemp("mlflow"),
        home=tmp_path_factory.mktemp("state"),
        experiment="serving-fallback-server",
    ) as uri:
        for name in (FALLBACK_MODEL, STRICT_MODEL):
            for seed in (1, 2):  # a logged model per version: versions of one share its files
                version = register_blessed(name, log_model(seed))
                registry.promote(name, version, reason="fallback test")
            DAMAGED[name] = Damage(name, "2")
            DAMAGED[name].corrupt()
        yield {"MLFLOW_TRACKING_URI": uri}


def _predict(url: str) -> httpx.Response:
    return httpx.post(
        f"{url}/predict_arrays", json={"images": digit_images(2).tolist()}, timeout=30
    )


def test_it_serves_previous_and_says_so_until_production_is_repaired(
    env: dict[str, str], tmp_path: Path
) -> None:
    params = write_params(tmp_path, FALLBACK_MODEL, poll_interval_s=HOUR)
    log_path = tmp_path / "server.log"
    server_env = server_environment(env, FLYWHEEL_ADMIN_TOKEN=TOKEN)
    with start_server(params, env=server_env, cwd=tmp_path, log_path=log_path) as url:
        server = Server(url, log_path, tmp_path / "predictions")
        ready = httpx.get(f"{url}{READY_PATH}", timeout=10)
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["state"] == "fallback"
        assert (body["model_version"], body["alias"], body["alias_version"]) == (
            "1",
            "production",
            "2",
        )
        assert f"cannot load models:/{FALLBACK_MODEL}@production: version 2" in body["reason"]
        assert "serving version 1 instead (alias 'previous')" in body["reason"]
        assert metric_total(url, "flywheel_model_fallback", FALLBACK_MODEL) == 1.0
        assert metric_total(url, "flywheel_model_version", FALLBACK_MODEL) == 1.0
        assert "FALLBACK (poll)" in server.output()
        answer = _predict(url)
        assert answer.status_code == 200, answer.text
        assert [item["model_version"] for item in answer.json()] == ["1", "1"]
        assert answer.headers[MODEL_VERSION_HEADER] == "1"

        spec = httpx.get(f"{url}/docs.json", timeout=10).json()
        responses = spec["paths"][READY_PATH]["get"]["responses"]
        assert {"200", "503"} <= set(responses)
        assert "Readiness" in spec["components"]["schemas"]

        DAMAGED[FALLBACK_MODEL].repair()
        result = reload_model(url, TOKEN)
        assert (result["previous_version"], result["model_version"]) == ("1", "2")
        body = httpx.get(f"{url}{READY_PATH}", timeout=10).json()
        assert (body["state"], body["model_version"], body["reason"]) == ("serving", "2", None)
        assert metric_total(url, "flywheel_model_fallback", FALLBACK_MODEL) == 0.0
        answer = _predict(url)
        assert answer.headers[MODEL_VERSION_HEADER] == "2"
        assert {item["model_version"] for item in answer.json()} == {"2"}


def test_with_not_ready_it_stays_not_ready_with_the_reason(
    env: dict[str, str], tmp_path: Path
) -> None:
    params = write_params(
        tmp_path,
        STRICT_MODEL,
        on_unloadable_production="not_ready",
        poll_interval_s=HOUR,
        load_retry_s=HOUR,
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    process = flywheel_serve(params, port, env, log_path, FLYWHEEL_ADMIN_TOKEN=TOKEN)
    server = Server(url, log_path, tmp_path / "predictions")
    try:
        wait_until_ready(url, 120, process=process, output=server.output, path="/livez")
        wait_for(lambda: "NOT READY" in server.output(), 60, "the first load", server)
        ready = httpx.get(f"{url}{READY_PATH}", timeout=10)
        assert ready.status_code == 503
        body = ready.json()
        assert (body["ready"], body["state"], body["model_version"]) == (False, "not_ready", None)
        assert body["alias_version"] == "2"
        reason = f"cannot load models:/{STRICT_MODEL}@production: version 2"
        assert body["reason"].startswith(reason)
        assert httpx.head(f"{url}{READY_PATH}", timeout=10).status_code == 503  # BentoML's probe
        refused = _predict(url)
        assert refused.status_code == 503
        assert reason in refused.json()["error"]
        assert metric_total(url, "flywheel_model_version", STRICT_MODEL) == 0.0

        DAMAGED[STRICT_MODEL].repair()
        assert reload_model(url, TOKEN)["model_version"] == "2"
        body = httpx.get(f"{url}{READY_PATH}", timeout=10).json()
        assert (body["ready"], body["state"], body["model_version"]) == (True, "serving", "2")
        assert _predict(url).headers[MODEL_VERSION_HEADER] == "2"
    finally:
        stop_process_group(process)
