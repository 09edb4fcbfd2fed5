"""Ten hot swaps in a row under load, at concurrency 16 and 32: not one request fails.

A real server (one worker, the alias polled once an hour, so only
`/admin/reload` swaps) serves a registered model with two blessed versions;
the alias alternates between them (`production` set with MLflow's client) and each move is
followed by `/admin/reload`, while a closed loop of clients posts PNG bodies
(`benchmarks.serving_swaps`, the driver of `benchmarks/serving.py --swaps`).
Every request must be answered 200, every reload must swap in the version the
alias points to, and the answers after it must name that version.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.serving_swaps import alternate, run_swaps, second_version
from flywheel import registry
from flywheel.demo.payloads import IMAGE, api_requests
from flywheel.demo.server import start_server
from tests.support.serving import (
    TOKEN,
    Server,
    digit_images,
    log_model,
    register_blessed,
    write_params,
)
from tests.support.tracking import tracking_env

pytestmark = pytest.mark.slow  # a real server, 2 × 10 swaps under load: 50-80 s of swapping

MODEL = "serving-digits-swaps"
SWAPS = 10


@pytest.fixture(scope="module")
def swaps_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str]]:
    """A store of its own: one small CNN registered twice (versions 1 and 2, both blessed),
    version 1 in production; a server of it with admin enabled."""
    store, state = tmp_path_factory.mktemp("mlflow"), tmp_path_factory.mktemp("state")
    with tracking_env(store, home=state, experiment="serving-swaps") as uri:
        first = register_blessed(MODEL, log_model(seed=1))
        registry.promote(MODEL, first, reason="swaps test")
        other = second_version(MODEL)
        folder = tmp_path_factory.mktemp("swaps")
        params = write_params(folder, MODEL, poll_interval_s=3600.0, max_latency_ms=1000)
        log_path = folder / "server.log"
        server_env = {"MLFLOW_TRACKING_URI": uri, "FLYWHEEL_ADMIN_TOKEN": TOKEN}
        with start_server(params, env=server_env, cwd=folder, log_path=log_path) as url:
            yield Server(url, log_path, folder / "predictions"), first, other


@pytest.mark.parametrize("concurrency", [16, 32])
def test_ten_swaps_under_load_fail_no_request(
    swaps_server: tuple[Server, str, str], concurrency: int
) -> None:
    server, first, other = swaps_server
    request = api_requests(digit_images(1)[0])[IMAGE]
    run = run_swaps(
        server.url,
        request,
        token=TOKEN,
        concurrency=concurrency,
        change_alias=alternate(MODEL, first, other),
        swaps=SWAPS,
        settle_s=0.5,
    )
    assert len(run.swaps) == SWAPS
    assert run.failures() == [], server.output()[-3000:]
    assert {swap.expected for swap in run.swaps} == {first, other}  # it went back and forth
    assert all(run.answers_during(swap) for swap in run.swaps), "no load while swapping"
    assert server.output().count("heap frozen") == 1  # once, before the first version served
