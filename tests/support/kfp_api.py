"""A recording stand-in of the Kubeflow Pipelines REST API (v2beta1) on 127.0.0.1.

A real HTTP server, started and stopped by the test, that answers the calls
`kfp.Client` makes to submit a run or a recurring run (healthz, experiments,
runs, recurring runs) the way the KFP API server does, and records each
request as it arrived: method, path, query, headers and JSON body. The test
then asserts on what kfp's own client sent (namespace, Authorization header,
parameters, the pipeline spec).

Like Kubeflow's authenticating proxy, it can require a bearer token: a request
without it gets 401. Like a multi-user install, it can refuse to create an
experiment without a namespace.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"


@dataclass
class Request:
    """One request as the stand-in received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class KfpStandIn:
    """The server's state: what it requires, what it recorded, what it created.

    Attributes:
        url: its base URL (`http://127.0.0.1:<port>`).
        token: the bearer token it requires (None: none).
        multi_user: what healthz reports; a multi-user server refuses experiments
            without a namespace, as the real one does.
        requests: every request received, in order.
        experiments: experiments created, by id.
    """

    url: str = ""
    token: str | None = None
    multi_user: bool = False
    requests: list[Request] = field(default_factory=list)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)

    def calls(self, method: str, path: str) -> list[Request]:
        """The recorded requests of `method` to `API + path`."""
        return [r for r in self.requests if r.method == method and r.path == API + path]

    def answer(self, request: Request) -> tuple[int, dict[str, Any]]:
        """The status and JSON body the KFP API server would answer with."""
        if self.token is not None and request.headers.get("authorization") != (
            f"Bearer {self.token}"
        ):
            return HTTPStatus.UNAUTHORIZED, {"error": "Unauthorized: no valid bearer token"}
        route = (request.method, request.path.removeprefix(API))
        if route == ("GET", "/healthz"):
            return HTTPStatus.OK, {"multi_user": self.multi_user}
        if route == ("GET", "/experiments"):
            return HTTPStatus.OK, {"experiments": list(self.experiments.values())}
        if route == ("POST", "/experiments"):
            return self._create_experiment(request.body)
        if route == ("POST", "/runs"):
            return HTTPStatus.OK, {**request.body, "run_id": f"run-{len(self.requests)}"}
        if route == ("POST", "/recurringruns"):
            created = {**request.body, "recurring_run_id": f"recurring-{len(self.requests)}"}
            return HTTPStatus.OK, created
        return HTTPStatus.NOT_FOUND, {"error": f"no route {request.method} {request.path}"}

    def _create_experiment(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.multi_user and not body.get("namespace"):
            return HTTPStatus.BAD_REQUEST, {"error": "Invalid input: namespace is empty"}
        experiment = {**body, "experiment_id": f"experiment-{len(self.experiments) + 1}"}
        self.experiments[experiment["experiment_id"]] = experiment
        return HTTPStatus.OK, experiment


def _handler(state: KfpStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            request = Request(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=json.loads(raw) if raw else None,
            )
            state.requests.append(request)
            status, answer = state.answer(request)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return None  # quiet: the test reads `requests`

    return Handler


@contextmanager
def kfp_stand_in(*, token: str | None = None, multi_user: bool = False) -> Iterator[KfpStandIn]:
    """Serve a recording KFP API on 127.0.0.1 (a free port) for the block; stop it after."""
    state = KfpStandIn(token=token, multi_user=multi_user)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="kfp-stand-in", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
