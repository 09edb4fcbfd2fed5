"""The service's life: versions swapped in under load, readiness, start-up, packaging.

The swap server (`tests.support.serving.swap_server`: the alias polled every
second, an admin token): a version promoted under load, a version that fails to
load, the admin reload. Then a server for a model without a `production`
alias (not ready until one is promoted; its prediction log flushed only at
shutdown), `start_server`'s errors, the model loaded without training code, and
`bentoml build`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from flywheel import registry
from flywheel.demo.server import (
    PredictionError,
    ServerStartError,
    free_port,
    reload_model,
    start_server,
    stop_process_group,
    wait_until_ready,
)
from flywheel.monitoring.prediction_log import read_predictions
from tests.support import serving as serving_support
from tests.support.serving import (
    MODEL,
    REPO,
    SWAP_MODEL,
    TOKEN,
    Sent,
    Server,
    bless,
    digit_images,
    flywheel_serve,
    log_model,
    metric_total,
    register_blessed,
    server_environment,
    stream_arrays,
    wait_for,
    write_params,
)

pytestmark = pytest.mark.slow  # real servers: ~10 s to start each
# The module-scoped fixtures of tests.support.serving used here (each module gets its own).
env, swap_server = serving_support.env, serving_support.swap_server


# ---------------------------------------------------------------- hot swap


def test_a_promoted_version_is_swapped_in_under_load_without_errors(swap_server: Server) -> None:
    """Polling: promote v2 while requests stream; none fails, answers move from 1 to 2."""
    assert registry.version_for_alias(SWAP_MODEL, "production") == "1"
    stop, sent = threading.Event(), list[Sent]()
    streaming = threading.Thread(target=stream_arrays, args=(swap_server.url, stop, sent))
    streaming.start()
    try:
        wait_for(lambda: len(sent) >= 30, 30, "30 answers from version 1", swap_server)
        registry.promote(SWAP_MODEL, "2", reason="swap under load")
        wait_for(lambda: "SWAPPED (poll)" in swap_server.output(), 30, "the swap", swap_server)
        # on a busy machine the first answer of version 2 can come a second after the swap
        wait_for(lambda: any(s.versions[:1] == ("2",) for s in sent), 30, "v2", swap_server)
        time.sleep(1.0)  # and version 2 for a while
    finally:
        stop.set()
        streaming.join(60)
    assert sent, "no requests were sent"
    assert [s for s in sent if s.status != 200] == [], "requests failed during the swap"
    for s in sent:
        assert len(set(s.versions)) == 1, "one request, one model"
        assert s.header == s.versions[0]
    first_v2 = min(s.done_at for s in sent if s.versions[0] == "2")
    assert any(s.versions[0] == "1" for s in sent)
    late = [s for s in sent if s.sent_at > first_v2]
    assert late, "no requests after the swap"
    assert all(s.versions[0] == "2" for s in late), "a request after the swap got version 1"
    assert metric_total(swap_server.url, "flywheel_model_version", SWAP_MODEL) == 2.0
    wait_for(  # version 1 answered its last request and was collected
        lambda: "version 1 collected" in swap_server.output(), 30, "the collection", swap_server
    )
    assert swap_server.output().count("heap frozen") == 1, "the heap is frozen once, at start"


def test_a_version_that_fails_to_load_keeps_the_old_one_serving(
    env: dict[str, str], swap_server: Server
) -> None:
    serving = registry.version_for_alias(SWAP_MODEL, "production")
    broken = register_blessed(SWAP_MODEL, log_model(seed=4))
    artifacts = MlflowClient().get_model_version_download_uri(SWAP_MODEL, broken)
    (Path(artifacts.removeprefix("file://")) / "data" / "model.pt2").write_bytes(b"not a model")
    failed = 'outcome="failed"'
    failures = metric_total(swap_server.url, "flywheel_model_loads_total", failed)
    registry.promote(SWAP_MODEL, broken, reason="a version whose artifact is damaged")
    try:
        wait_for(
            lambda: (
                f"FALLBACK (poll): cannot load models:/{SWAP_MODEL}@production: version {broken}"
                in swap_server.output()
            ),
            30,
            "the failed load",
            swap_server,
        )
        assert f"serving version {serving} instead (alias 'previous')" in swap_server.output()
        assert metric_total(swap_server.url, "flywheel_model_loads_total", failed) > failures
        assert metric_total(swap_server.url, "flywheel_model_fallback", SWAP_MODEL) == 1.0
        ready = httpx.get(f"{swap_server.url}/readyz", timeout=10)
        assert ready.status_code == 200
        assert ready.json()["state"] == "fallback"
        assert ready.json()["model_version"] == serving
        assert ready.json()["alias_version"] == broken
        answer = httpx.post(
            f"{swap_server.url}/predict_arrays",
            json={"images": digit_images(1).tolist()},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["model_version"] == serving

        reload = httpx.post(
            f"{swap_server.url}/admin/reload",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        assert reload.status_code == 502, reload.text
        assert f"version {broken}" in reload.json()["error"]
        assert reload.json()["model_version"] == serving
    finally:
        registry.rollback(SWAP_MODEL, reason="undo the damaged version")
    assert registry.version_for_alias(SWAP_MODEL, "production") == serving


def test_admin_reload_needs_the_token_and_swaps_at_once(
    env: dict[str, str], swap_server: Server
) -> None:
    url = f"{swap_server.url}/admin/reload"
    missing = httpx.post(url, timeout=30)
    assert missing.status_code == 401, missing.text
    assert missing.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(PredictionError) as wrong:
        reload_model(swap_server.url, "not-the-token")
    assert wrong.value.status == 403

    new = register_blessed(SWAP_MODEL, env["second"])
    registry.promote(SWAP_MODEL, new, reason="admin reload")
    result = reload_model(swap_server.url, TOKEN)  # the poller may have been first: same result
    assert result["model_version"] == new
    assert result["model_name"] == SWAP_MODEL
    answer = httpx.post(
        f"{swap_server.url}/predict_arrays", json={"images": digit_images(1).tolist()}, timeout=30
    )
    assert answer.json()[0]["model_version"] == new


# ------------------------------------------------------------ other servers


def test_not_ready_without_a_production_alias_until_one_is_promoted(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Also the flush policy: with no size or time trigger, the log is written at shutdown."""
    name = f"{MODEL}-unpromoted"
    log = {"dir": "predictions", "flush_every": 100_000, "flush_interval_s": 3600.0}
    params = write_params(tmp_path, name, load_retry_s=1.0, log=log)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    process = flywheel_serve(params, port, env, log_path)
    waiting = Server(url, log_path, tmp_path / "predictions")
    try:
        wait_until_ready(url, 90, process=process, output=waiting.output, path="/livez")
        wait_for(lambda: "NOT READY" in waiting.output(), 60, "the first load", waiting)
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 503
        answer = httpx.post(
            f"{url}/predict_arrays", json={"images": digit_images(1).tolist()}, timeout=30
        )
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert "no 'production' alias" in answer.json()["error"]
        assert "no 'production' alias" in waiting.output()

        bless(name, "1", registry.model_uri(name, "1"))
        registry.promote(name, "1", reason="serving test: first model")
        wait_until_ready(url, 30, process=process, output=waiting.output)
        answer = httpx.post(
            f"{url}/predict_arrays",
            json={"images": digit_images(3).tolist()},
            headers={"X-Request-ID": "flushed-at-shutdown"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["model_version"] == "1"
        assert f"READY: serving models:/{name}/1" in waiting.output()
        time.sleep(0.5)
        assert "flushed-at-shutdown" not in set(read_predictions(waiting.predictions)["request_id"])
    finally:
        stop_process_group(process)
    logged = read_predictions(waiting.predictions)
    assert (logged["request_id"] == "flushed-at-shutdown").sum() == 3, waiting.output()[-3000:]


def test_start_server_reports_a_server_that_exits(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("serve: {max_batch_size: many}\n")
    with (
        pytest.raises(ServerStartError, match="exited with status 2") as caught,
        start_server(params, cwd=tmp_path, ready_timeout_s=60),
    ):
        pytest.fail("the server should not have become ready")
    assert "max_batch_size" in str(caught.value)  # the server's own error, from its log


def test_start_server_names_a_port_another_process_holds(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A taken port is not retried (only a port lost in the race after choosing it is)."""
    params = write_params(tmp_path, MODEL)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        started = time.monotonic()
        with (
            pytest.raises(ServerStartError, match=f"port {taken} on 127.0.0.1 is in use") as caught,
            start_server(
                params, port=taken, env=server_environment(env), cwd=tmp_path, ready_timeout_s=60
            ),
        ):
            pytest.fail("the server should not have become ready")
    # the server's own words, quoted: flywheel serve names the holder (this test process)
    assert f"held by pid {os.getpid()}" in str(caught.value)
    assert time.monotonic() - started < 45  # one attempt, not START_ATTEMPTS


def test_kill_9_of_the_server_takes_its_workers_and_a_restart_gets_the_port(
    env: dict[str, str], tmp_path: Path
) -> None:
    """`kill -9 <pid of flywheel serve>`: no worker is left serving or holding the port."""
    import psutil

    params = write_params(tmp_path, MODEL)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "killed.log"
    process = flywheel_serve(params, port, env, log_path)
    try:
        wait_until_ready(url, 120, process=process, output=log_path.read_text)
        workers = psutil.Process(process.pid).children(recursive=True)
        assert workers, "the server has no worker processes"
        process.kill()  # SIGKILL: no shutdown hook runs in the server process
        process.wait()
        _, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"workers outlived the killed server: {alive}"
    finally:
        stop_process_group(process)

    with start_server(
        params, port=port, env=server_environment(env), cwd=tmp_path, ready_timeout_s=120
    ) as again:
        answer = httpx.post(
            f"{again}/predict_arrays", json={"images": digit_images(1).tolist()}, timeout=30
        )
        assert answer.status_code == 200, answer.text


def test_the_service_loads_the_model_without_training_code(env: dict[str, str]) -> None:
    """Serving depends on the exported model only (STYLE.md): no training or evaluation modules."""
    script = (
        "import sys, json\n"
        "from serving.hot_swap import load_registered_model\n"
        f"model = load_registered_model({MODEL!r}, 'production')\n"
        "print(json.dumps({'version': model.version, 'modules': sorted(sys.modules)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **server_environment(env)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["version"] == "1"
    forbidden = ("flywheel.modeling", "flywheel.evaluation", "flywheel.workflows", "optuna")
    loaded = [
        m for m in result["modules"] if any(m == f or m.startswith(f"{f}.") for f in forbidden)
    ]
    assert not loaded, loaded  # any module of those packages, not just the ones named


def test_bentoml_build_packs_the_service_offline(tmp_path: Path) -> None:
    """`bentoml build` with every proxy pointing nowhere: it needs no network."""
    nowhere = "http://127.0.0.1:9"
    build_env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "HTTP_PROXY": nowhere,
        "HTTPS_PROXY": nowhere,
        "ALL_PROXY": nowhere,
        "NO_PROXY": "",
        "PIP_NO_INDEX": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", "serving/bentofile.yaml", "."],
        cwd=REPO,
        env=build_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (manifest,) = (tmp_path / "bentoml" / "bentos" / "flywheel").glob("*/bento.yaml")
    bento = manifest.parent
    assert yaml.safe_load(manifest.read_text())["service"] == "serving.service:FlywheelService"
    for source in (
        "serving/service.py",
        "serving/batching.py",
        "src/flywheel/registry/__init__.py",
    ):
        assert (bento / "src" / source).is_file(), source
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "torch==2.13.0+cpu" in requirements
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    for training_only in ("dvc==", "great-expectations==", "evidently==", "kfp=="):
        assert training_only not in requirements.lower()
    openapi = (bento / "apis" / "openapi.yaml").read_text()
    for route in ("/predict_images", "/predict_arrays", "/admin/reload"):
        assert route in openapi
