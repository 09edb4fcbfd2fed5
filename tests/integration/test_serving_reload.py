"""`/admin/reload` on a server with two workers: one request, and every worker swaps.

The server polls the alias once an hour, so within the test only a reload
request can make a worker swap: the worker that receives `/admin/reload`
checks the alias itself and asks the other one to check too (`ReloadSignal`).
The registry, the models and the helpers are those of `tests.support.serving`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from flywheel import registry
from flywheel.demo.server import reload_model, start_server
from serving.watcher import BROADCAST_TRIGGER
from tests.support.serving import (
    TOKEN,
    Server,
    digit_images,
    env,  # noqa: F401  (the module's registry fixture, shared rather than copied)
    register_blessed,
    server_environment,
    wait_for,
    write_params,
)

pytestmark = pytest.mark.slow  # a real server with two workers: ~15 s to start

MODEL = "serving-digits-broadcast"
WORKERS = 2
REQUESTS = 40
BROADCAST_WITHIN_S = 10.0
"""Generous: a worker looks for a request every 0.25 s, then loads the version (< 1 s here)."""
MAX_REQUESTS = 400
WORKER = re.compile(r"\[entry_service:flywheel:(\d+)\]")
"""BentoML's log prefix: the service and the worker's index."""
REQUESTED = re.compile(r"RELOAD REQUESTED by worker pid (\d+): worker pid (\d+) checks")


@pytest.fixture(scope="module")
def two_workers(
    env: dict[str, str],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """Two workers both serving version 1; the alias polled once an hour; admin enabled."""
    registry.promote(MODEL, register_blessed(MODEL, env["second"]), reason="broadcast test")
    folder = tmp_path_factory.mktemp("broadcast")
    params = write_params(folder, MODEL, workers=WORKERS, poll_interval_s=3600.0)
    log_path = folder / "server.log"
    server_env = server_environment(env, FLYWHEEL_ADMIN_TOKEN=TOKEN)
    with start_server(params, env=server_env, cwd=folder, log_path=log_path) as url:
        server = Server(url, log_path, folder / "predictions")
        # /readyz answered for one worker: wait for the other, or it could load a later version.
        wait_for(
            lambda: server.output().count(f"READY: serving models:/{MODEL}/1") == WORKERS,
            60,
            f"{WORKERS} workers serving version 1",
            server,
        )
        assert server.output().count("ready at ") == 1  # the URLs once per server, not per worker
        yield server


def _workers(lines: str, text: str) -> list[str]:
    """The worker (BentoML's index, from its log prefix) of each log line containing `text`."""
    return [
        m.group(1) for line in lines.splitlines() if text in line and (m := WORKER.search(line))
    ]


def _answers(server: Server) -> tuple[set[str], set[str]]:
    """Requests, each on a new connection (the kernel hands it to whichever worker accepts
    first), until every worker has answered and at least `REQUESTS` were sent.

    Returns:
        The versions the answers named, and the workers that answered (from the access log).
    """
    body = {"images": digit_images(1).tolist()}
    mark = len(server.output())
    versions: set[str] = set()
    for sent in range(1, MAX_REQUESTS + 1):
        answer = httpx.post(f"{server.url}/predict_arrays", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        versions.add(answer.json()[0]["model_version"])
        workers = set(_workers(server.output()[mark:], "path=/predict_arrays"))
        if sent >= REQUESTS and len(workers) == WORKERS:
            break
    return versions, workers


def test_one_admin_reload_swaps_every_worker(two_workers: Server) -> None:
    assert _answers(two_workers) == ({"1"}, {"1", "2"})
    new = register_blessed(MODEL, registry.model_uri(MODEL, "1"))
    registry.promote(MODEL, new, reason="broadcast test: the new version")

    result = reload_model(two_workers.url, TOKEN)
    assert result["model_version"] == new
    assert result["changed"] is True
    assert result["other_workers_signalled"] is True

    # The worker that answered swapped before answering; the other one on its request.
    swapped = f"{MODEL} now serves version {new}"
    admin, broadcast = f"SWAPPED (admin): {swapped}", f"SWAPPED ({BROADCAST_TRIGGER}): {swapped}"
    wait_for(
        lambda: broadcast in two_workers.output(),
        BROADCAST_WITHIN_S,
        "the other worker's swap",
        two_workers,
    )
    output = two_workers.output()
    assert sorted(_workers(output, admin) + _workers(output, broadcast)) == ["1", "2"], output
    (request,) = REQUESTED.findall(output)  # (sender pid, receiver pid): two workers
    assert request[0] != request[1], request
    assert _answers(two_workers) == ({new}, {"1", "2"})


def test_workers_answer_a_reload_request_once(two_workers: Server) -> None:
    """A check made for another worker's request sends none: no worker sets the other off."""
    before = two_workers.output().count("RELOAD REQUESTED")
    result = reload_model(two_workers.url, TOKEN)  # nothing new: a check, no swap
    assert result["changed"] is False
    assert result["other_workers_signalled"] is True
    wait_for(
        lambda: two_workers.output().count("RELOAD REQUESTED") == before + WORKERS - 1,
        BROADCAST_WITHIN_S,
        "the other worker's check",
        two_workers,
    )
    time.sleep(8 * 0.25)  # eight more looks at the request file by each worker
    assert two_workers.output().count("RELOAD REQUESTED") == before + WORKERS - 1
