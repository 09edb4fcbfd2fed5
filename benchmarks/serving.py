"""Serving throughput and latency: this service, `mlflow models serve`, the HTTP floor, the model.

One production model, measured in one run, four ways, each server with the
same number of worker processes (`--workers`, default 1):

* **flywheel**: this service (`flywheel serve`: BentoML, validation, adaptive
  batching, prediction log with images, metrics) — the service as deployed;
* **mlflow serve**: `mlflow models serve -m models:/<name>/<version> --env-manager local`
  (JSON only: it takes no image files);
* **HTTP floor**: a bare Starlette app under uvicorn that decodes the same
  payload (JSON into a numpy array, or the multipart upload into a PIL image)
  and answers a constant — no model, no validation, no logging: what HTTP and
  payload decoding alone cost on this machine (`benchmarks/floors/serving.py`,
  beside a bare BentoML service, the "BentoML floor");
* **flywheel on uvicorn**: the service's own code (`Flywheel`: guard, decoding,
  batching, model, prediction log, metrics) behind a plain Starlette app under
  uvicorn, no BentoML server (`benchmarks/floors/serving.py`,
  `build_service_app`; JSON and image bodies): the ceiling of the service's
  request path without BentoML's request handling;
* **in-process**: batched forward passes of the loaded model, no HTTP (the
  concurrency column is the batch size; req/s is images per second).

Payloads: one 32 × 32 grayscale test image per request, as a PNG file — the
request body itself (`image`: `/predict_image`, `Content-Type: image/png`) or a
multipart upload (`multipart`: `/predict_images`, field `images`) — or as a
JSON array `(1, 1, 32, 32)` of floats in [0, 1] (`json`: `{"images": ...}`;
`{"inputs": ...}` for MLflow, which takes no files). For every payload and
concurrency (1, 8, 32, 64) each server gets a warm-up, then at most
`--requests` requests or `--seconds` seconds, whichever ends first; the servers
take turns in rotating order, so a change of background load does not favour one.
The client (aiohttp, one process) runs on the same cores as the servers.

Printed: requests per second, p50/p99 latency, errors (non-200 answers and
failed connections; 503s counted apart), the server's CPU milliseconds per
request (user + system time of its processes over the measured requests: what
a request costs whatever else shares the cores), the service's mean batch size
(from its `/metrics`), and the ratios of this service to the floors
(throughput and p99) and to mlflow serve; then the goals of the serving issue
at concurrency 32 (`serving_goals`) and the load average (the machine is
shared: read the ratios, not the absolute numbers).

Fuzzing and soaking the service are checks, not measurements: the load drivers
`tests/load/fuzz.py` and `tests/load/soak.py` (`make fuzz`, `make soak`). The
set-up (the model, the server's params) is theirs too: `flywheel.demo.sandbox`.

    .venv/bin/python benchmarks/serving.py                 # trains a small CNN into a temp store
    .venv/bin/python benchmarks/serving.py --tracking-uri sqlite:///$PWD/.flywheel/mlflow/mlflow.db
    .venv/bin/python benchmarks/serving.py --requests 1000 --seconds 30 --json results.json
    .venv/bin/python benchmarks/serving.py --swaps 10      # hot swaps under load, c=16 and 32
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from flywheel.demo.payloads import (
    IMAGE,
    JSON,
    MULTIPART,
    ApiRequest,
    api_requests,
    post_status,
    unit_array,
)
from flywheel.demo.sandbox import (
    Sandbox,
    SandboxError,
    add_sandbox_arguments,
    open_sandbox,
    sample_image,
)
from flywheel.serving_api import (
    CONTENT_TYPE_HEADER,
    JSON_MEDIA_TYPE,
    METRICS_PATH,
    PARAMS_ENV,
    READY_PATH,
)

REPO = Path(__file__).resolve().parents[1]
FLYWHEEL, MLFLOW, FLOOR = "flywheel", "mlflow serve", "HTTP floor"
BENTO_FLOOR, IN_PROCESS = "BentoML floor", "in-process"
ON_UVICORN = "flywheel on uvicorn"
SERVERS = (FLYWHEEL, MLFLOW, FLOOR, BENTO_FLOOR, ON_UVICORN)
FLOORS = "benchmarks.floors.serving"
"""The module of the floors (`benchmarks/floors/serving.py`), started from the checkout."""
GOAL_CONCURRENCY = 32

console = Console(width=None if sys.stdout.isatty() else 150)


# ------------------------------------------------------------ measurement


@dataclass
class Cell:
    """One server, one payload, one concurrency: what the client saw."""

    server: str
    payload: str
    concurrency: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    statuses: Counter[str] = field(default_factory=Counter)
    mean_batch: float | None = None
    cpu_seconds: float | None = None
    """CPU time (user + system) the server's processes spent on the measured requests."""

    @property
    def requests(self) -> int:
        """Requests answered or failed."""
        return sum(self.statuses.values())

    @property
    def rps(self) -> float:
        """Requests per second (images per second for in-process)."""
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def cpu_ms(self) -> float | None:
        """Server CPU milliseconds per request: what a request costs, whatever else runs."""
        if self.cpu_seconds is None or not self.requests:
            return None
        return 1000.0 * self.cpu_seconds / self.requests

    @property
    def errors(self) -> int:
        """Anything but a 200."""
        return self.requests - self.statuses.get("200", 0)

    def count(self, predicate: Callable[[int], bool]) -> int:
        """Answers whose HTTP status satisfies `predicate`."""
        return sum(n for s, n in self.statuses.items() if s.isdigit() and predicate(int(s)))


async def _load(
    target: ApiRequest,
    cell: Cell,
    *,
    warmup: int,
    requests: int,
    seconds: float,
    server: Any = None,
) -> None:
    """Send `warmup` requests, then measure until `requests` are done or `seconds` pass.

    `server` (a `psutil.Process`): whose CPU time (with its children's) the measured
    requests cost, in `cell.cpu_seconds`.
    """
    import aiohttp

    connector = aiohttp.TCPConnector(limit=cell.concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(record: bool) -> None:
            started = time.perf_counter()
            status = await post_status(session, target)
            if record:
                cell.latencies_ms.append((time.perf_counter() - started) * 1000.0)
                cell.statuses[status] += 1

        async def worker(budget: Iterator[int], deadline: float, record: bool) -> None:
            for _ in budget:
                if time.perf_counter() >= deadline:
                    return
                await send(record)

        async def run(total: int, limit_s: float, record: bool) -> float:
            budget = iter(range(total))
            started = time.perf_counter()
            deadline = started + limit_s
            await asyncio.gather(
                *(worker(budget, deadline, record) for _ in range(cell.concurrency))
            )
            return time.perf_counter() - started

        await run(warmup, seconds, record=False)
        cpu_before = _cpu_seconds(server)
        cell.seconds = await run(requests, seconds, record=True)
        if server is not None:
            cell.cpu_seconds = _cpu_seconds(server) - cpu_before


def _cpu_seconds(server: Any) -> float:
    """User + system CPU seconds of a server process and its children (BentoML's workers)."""
    if server is None:
        return 0.0
    import psutil

    total = 0.0
    for process in (server, *server.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.Error:  # a process that ended: its time is lost to both readings
            continue
        total += times.user + times.system
    return total


def server_process(url: str) -> Any:
    """The process serving `url` that this script started (a child of this process), or None."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
            if connection.pid is None:
                continue
            process = psutil.Process(connection.pid)
            while process is not None and process.ppid() != os.getpid():
                process = process.parent()
            if process is not None:
                return process
    return None


def _batch_stats(url: str) -> tuple[float, float]:
    """The service's `flywheel_batch_size` histogram: (sum, count)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}{METRICS_PATH}", timeout=10).text
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "flywheel_batch_size":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
    return total, count


def measure(
    targets: dict[tuple[str, str], ApiRequest],
    concurrencies: Sequence[int],
    *,
    warmup: int,
    requests: int,
    seconds: float,
    flywheel_url: str,
    processes: dict[str, Any] | None = None,
) -> list[Cell]:
    """Every (server, payload) target at every concurrency, servers in rotating order.

    `processes`: server → its `psutil.Process`, whose CPU time per request is measured.
    """
    from tqdm import tqdm

    processes = processes or {}
    cells = []
    payloads = sorted({payload for _, payload in targets})
    steps = [(p, c) for p in payloads for c in concurrencies]
    bar = tqdm(total=len(steps) * len(SERVERS), desc="measuring", unit="cell", file=sys.stderr)
    for turn, (payload, concurrency) in enumerate(steps):
        order = SERVERS[turn % len(SERVERS) :] + SERVERS[: turn % len(SERVERS)]
        for server in order:
            target = targets.get((server, payload))
            if target is None:
                bar.update()
                continue
            bar.set_postfix_str(f"{server}, {payload}, c={concurrency}")
            cell = Cell(server, payload, concurrency)
            before = _batch_stats(flywheel_url) if server == FLYWHEEL else None
            asyncio.run(
                _load(
                    target,
                    cell,
                    warmup=warmup,
                    requests=requests,
                    seconds=seconds,
                    server=processes.get(server),
                )
            )
            if before is not None:
                after = _batch_stats(flywheel_url)
                images = after[0] - before[0]
                passes = after[1] - before[1]
                cell.mean_batch = images / passes if passes else None
            cells.append(cell)
            bar.update()
    bar.close()
    return cells


def measure_in_process(
    uri: str, concurrencies: Sequence[int], size: int, *, requests: int, seconds: float
) -> list[Cell]:
    """Forward passes of the loaded model on `size`² images, batch size = concurrency (no HTTP)."""
    import mlflow.pytorch
    import torch

    module = mlflow.pytorch.load_model(uri, map_location="cpu")
    cells = []
    for batch_size in concurrencies:
        cell = Cell(IN_PROCESS, JSON, batch_size)
        x = torch.rand(batch_size, 1, size, size)  # (B, 1, S, S)
        with torch.inference_mode():
            for _ in range(5):
                module(x)
            passes = max(1, requests // batch_size)
            started = time.perf_counter()
            for _ in range(passes):
                t = time.perf_counter()
                module(x)
                cell.latencies_ms.append((time.perf_counter() - t) * 1000.0)
                if time.perf_counter() - started > seconds:
                    break
            cell.seconds = time.perf_counter() - started
        cell.statuses["200"] = len(cell.latencies_ms) * batch_size  # images
        cells.append(cell)
    return cells


def build_targets(urls: dict[str, str], image: np.ndarray) -> dict[tuple[str, str], ApiRequest]:
    """The request of each (server, payload) for the servers in `urls`; the same bytes wherever
    the API allows (MLflow wants `inputs`, and takes no files)."""
    requests = {
        (server, payload): request
        for server in (FLYWHEEL, FLOOR, BENTO_FLOOR)
        for payload, request in api_requests(image).items()
    }
    for payload, request in api_requests(image).items():
        if payload != MULTIPART:  # a plain route for bodies only
            requests[(ON_UVICORN, payload)] = request
    requests[(MLFLOW, JSON)] = ApiRequest(
        "/invocations",  # MLflow's scoring path
        json.dumps({"inputs": unit_array(image)}).encode(),
        {CONTENT_TYPE_HEADER: JSON_MEDIA_TYPE},
    )
    return {
        (server, payload): request.at(urls[server])
        for (server, payload), request in requests.items()
        if server in urls
    }


@contextmanager
def run_process(
    command: list[str], env: dict[str, str], log: Path, url: str, probe: str
) -> Iterator[str]:
    """A server subprocess (own process group) until the block ends; waits for `probe`."""
    from flywheel.demo.server import file_tail, stop_process_group, wait_until_ready

    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        output = functools.partial(file_tail, log)
        wait_until_ready(url, 180.0, process=process, output=output, path=probe)
        yield url
    finally:
        stop_process_group(process)


# ----------------------------------------------------------------- report


def print_report(cells: list[Cell], workers: int, threads: int) -> dict[str, bool]:
    """The table, the ratios, and the issue's goals at concurrency 32; returns the goals."""
    by = {(c.server, c.payload, c.concurrency): c for c in cells}
    table = Table(
        title=f"serving benchmark: {workers} worker(s) per server, torch threads {threads}"
    )
    for column in ("payload", "conc.", "server", "req/s", "p50 ms", "p99 ms", "errors (503)"):
        table.add_column(column, justify="left" if column in ("payload", "server") else "right")
    for column in ("CPU ms/req", "batch", "× floor", "p99 × floor", "× BentoML floor"):
        table.add_column(column, justify="right")
    for column in ("p99 × BentoML floor", "× mlflow"):
        table.add_column(column, justify="right")
    cells = sorted(cells, key=lambda c: (c.server == IN_PROCESS, c.payload, c.concurrency))
    for c in cells:
        ratios = ["", "", "", "", ""]
        if c.server == FLYWHEEL:
            floor = by.get((FLOOR, c.payload, c.concurrency))
            bento = by.get((BENTO_FLOOR, c.payload, c.concurrency))
            mlflow = by.get((MLFLOW, c.payload, c.concurrency))  # JSON only
            if floor is not None and floor.rps:
                ratios[0] = f"{c.rps / floor.rps:.2f}"
                ratios[1] = f"{c.percentile(99) / floor.percentile(99):.2f}"
            if bento is not None and bento.rps:
                ratios[2] = f"{c.rps / bento.rps:.2f}"
                ratios[3] = f"{c.percentile(99) / bento.percentile(99):.2f}"
            if mlflow is not None and mlflow.rps:
                ratios[4] = f"{c.rps / mlflow.rps:.2f}"
        unit = " img/s" if c.server == IN_PROCESS else ""
        table.add_row(
            c.payload if c.server != IN_PROCESS else "tensor",
            str(c.concurrency),
            c.server,
            f"{c.rps:.0f}{unit}",
            f"{c.percentile(50):.1f}",
            f"{c.percentile(99):.1f}",
            f"{c.errors} ({c.count(lambda s: s == 503)})",
            "" if c.cpu_ms is None else f"{c.cpu_ms:.2f}",
            "" if c.mean_batch is None else f"{c.mean_batch:.1f}",
            *ratios,
        )
    console.print(table)

    goals = serving_goals(by)
    k = GOAL_CONCURRENCY
    for goal, met in goals.items():
        console.print(f"  {'[green]✓[/green]' if met else '[red]✗[/red]'} {goal}")
    for payload in (JSON, IMAGE, MULTIPART):
        bento, floor = by.get((BENTO_FLOOR, payload, k)), by.get((FLOOR, payload, k))
        if bento is not None and floor is not None and floor.rps:
            console.print(
                f"  ceiling: a bare BentoML service ({payload}, c={k}) reaches "
                f"{bento.rps / floor.rps:.2f} × the HTTP floor's throughput, "
                f"p99 {bento.percentile(99) / floor.percentile(99):.2f} × its p99"
            )
        ceiling, ours = by.get((ON_UVICORN, payload, k)), by.get((FLYWHEEL, payload, k))
        if ceiling is not None and ours is not None and ceiling.rps and bento is not None:
            console.print(
                f"  ceiling: the service's own code on plain uvicorn ({payload}, c={k}) reaches "
                f"{ceiling.rps:.0f} req/s, {ceiling.rps / bento.rps:.2f} × the BentoML floor; "
                f"the service in BentoML reaches {ours.rps / ceiling.rps:.2f} × it "
                f"(p99 {ours.percentile(99) / ceiling.percentile(99):.2f} × its p99)"
            )
    return goals


def serving_goals(by: dict[tuple[str, str, int], Cell]) -> dict[str, bool]:
    """The serving goals of issue 16 at concurrency 32, against servers measured in the same run.

    For JSON arrays and image bodies: at least 0.7 × the bare BentoML service's
    throughput with a p99 at most 1.5 × its p99; image bodies at least as fast as
    JSON arrays; JSON at least 2.5 × `mlflow models serve`; no error and no 503.
    """
    goals: dict[str, bool] = {}
    k = GOAL_CONCURRENCY
    for payload in (JSON, IMAGE):
        ours, bento = by.get((FLYWHEEL, payload, k)), by.get((BENTO_FLOOR, payload, k))
        if ours is None or bento is None:
            continue
        goals[f"{payload}: ≥ 0.7 × BentoML floor throughput at c={k}"] = ours.rps >= 0.7 * bento.rps
        goals[f"{payload}: p99 ≤ 1.5 × BentoML floor p99 at c={k}"] = ours.percentile(
            99
        ) <= 1.5 * bento.percentile(99)
    arrays, image = by.get((FLYWHEEL, JSON, k)), by.get((FLYWHEEL, IMAGE, k))
    if arrays is not None and image is not None:
        goals[f"image bodies at least as fast as JSON arrays at c={k}"] = image.rps >= arrays.rps
    mlflow = by.get((MLFLOW, JSON, k))
    if arrays is not None and mlflow is not None:
        goals[f"json: ≥ 2.5 × mlflow serve at c={k}"] = arrays.rps >= 2.5 * mlflow.rps
    ours_at_k = [c for (server, _, conc), c in by.items() if server == FLYWHEEL and conc == k]
    goals[f"no error and no 503 at c={k}"] = all(c.errors == 0 for c in ours_at_k)
    ours_cells = [c for (server, _, _), c in by.items() if server == FLYWHEEL]
    goals["no 503 at any concurrency"] = all(c.count(lambda s: s == 503) == 0 for c in ours_cells)
    return goals


# ------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Start the servers, measure, report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sandbox_arguments(parser, REPO / "params.yaml")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--requests", type=int, default=400, help="Measured per cell.")
    parser.add_argument("--seconds", type=float, default=15.0, help="Time limit per cell.")
    parser.add_argument("--warmup", type=int, default=40, help="Unmeasured per cell.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument(
        "--swaps",
        type=int,
        default=0,
        help="Instead: swap versions this many times under load at each --concurrency "
        "(default 16 32), report reload times and failed requests (benchmarks/serving_swaps.py).",
    )
    args = parser.parse_args(argv)
    if args.swaps and argv_lacks(argv, "--concurrency"):
        args.concurrency = [16, 32]
    try:
        with open_sandbox(args, "flywheel-serving-bench-", say=console.print) as box:
            if args.swaps:
                from serving_swaps import bench_swaps  # beside this script, on its sys.path

                return 0 if bench_swaps(args, box, console.print) else 1
            bench(args, box)
    except SandboxError as err:
        raise SystemExit(str(err)) from None
    return 0


def argv_lacks(argv: Sequence[str] | None, option: str) -> bool:
    """The command line does not give `option` (its default applies)."""
    given = sys.argv[1:] if argv is None else argv
    return not any(arg == option or arg.startswith(f"{option}=") for arg in given)


def bench(args: argparse.Namespace, box: Sandbox) -> None:
    """Start the three servers, measure, measure the model in-process, report."""
    import torch

    from flywheel.config import load_params
    from flywheel.demo.server import free_port, start_server

    load_before = os.getloadavg()
    name, version, workdir = box.model_name, box.version, box.workdir
    image = sample_image(args.params)
    serve_params = box.serve_params(args.params, args.workers)
    env = {
        **os.environ,
        **box.server_env(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "BENTOML_HOME": str(workdir / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_CONFIG_OPTIONS": f"services.bentofloor.workers={args.workers}",
    }
    ports = {server: free_port() for server in (MLFLOW, FLOOR, BENTO_FLOOR, ON_UVICORN)}
    commands = {
        MLFLOW: [
            *(shutil.which("mlflow", path=env["PATH"]) or "mlflow", "models", "serve"),
            *("-m", f"models:/{name}/{version}", "--env-manager", "local"),
            *("--workers", str(args.workers)),
        ],
        FLOOR: [
            *(sys.executable, "-m", "uvicorn", "--factory", f"{FLOORS}:build_floor_app"),
            *("--app-dir", str(REPO), "--workers", str(args.workers)),
            *("--no-access-log", "--log-level", "warning"),
        ],
        BENTO_FLOOR: [
            *(sys.executable, "-m", "bentoml", "serve", f"{FLOORS}:BentoFloor"),
            *("--working-dir", str(REPO)),  # workers: BENTOML_CONFIG_OPTIONS
        ],
        ON_UVICORN: [
            *(sys.executable, "-m", "uvicorn", "--factory", f"{FLOORS}:build_service_app"),
            *("--app-dir", str(REPO), "--workers", str(args.workers)),
            *("--no-access-log", "--log-level", "warning"),
        ],
    }
    envs = {ON_UVICORN: {**env, PARAMS_ENV: str(serve_params)}}  # the service's params
    probes = {MLFLOW: "/ping", FLOOR: READY_PATH, BENTO_FLOOR: READY_PATH, ON_UVICORN: READY_PATH}
    with ExitStack() as stack:
        console.print(f"starting the servers for models:/{name}/{version} ...")
        urls = {
            FLYWHEEL: stack.enter_context(
                start_server(
                    serve_params,
                    env=box.server_env(),
                    log_path=workdir / "flywheel.log",
                    ready_timeout_s=180.0,
                )
            )
        }
        for server, command in commands.items():
            url = f"http://127.0.0.1:{ports[server]}"
            command = [*command, "--host", "127.0.0.1", "--port", str(ports[server])]
            log = workdir / f"{server.replace(' ', '-').lower()}.log"
            urls[server] = stack.enter_context(
                run_process(command, envs.get(server, env), log, url, probes[server])
            )
        cells = measure(
            build_targets(urls, image),
            args.concurrency,
            warmup=args.warmup,
            requests=args.requests,
            seconds=args.seconds,
            flywheel_url=urls[FLYWHEEL],
            processes={server: server_process(url) for server, url in urls.items()},
        )
    threads = load_params(serve_params).serve.torch_threads
    torch.set_num_threads(threads)  # the service's own setting: the same arithmetic
    cells += measure_in_process(
        f"models:/{name}/{version}",
        args.concurrency,
        image.shape[0],
        requests=args.requests * 4,
        seconds=args.seconds,
    )
    goals = print_report(cells, args.workers, threads)
    load_after = os.getloadavg()
    console.print(
        f"load average (1, 5, 15 min) before {_fmt(load_before)}, after {_fmt(load_after)} "
        f"on {os.cpu_count()} cores shared with other work; client and servers on the same cores"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": f"models:/{name}/{version}",
                    "workers": args.workers,
                    "torch_threads": threads,
                    "load_before": load_before,
                    "load_after": load_after,
                    "goals": goals,
                    "cells": [
                        {
                            "server": c.server,
                            "payload": c.payload,
                            "concurrency": c.concurrency,
                            "requests": c.requests,
                            "seconds": c.seconds,
                            "rps": c.rps,
                            "p50_ms": c.percentile(50),
                            "p99_ms": c.percentile(99),
                            "errors": c.errors,
                            "statuses": dict(c.statuses),
                            "mean_batch": c.mean_batch,
                            "cpu_ms_per_request": c.cpu_ms,
                        }
                        for c in cells
                    ],
                },
                indent=2,
            )
        )
        console.print(f"results: {args.json}")


def _fmt(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    sys.exit(main())
