"""Page service throughput and latency: the service, unbatched, composed, the pair in-process.

One tiny trained pair (`tests.support.page_serving.page_store`: a 96 × 96 page
detector and a 16-pixel-high recogniser, trained into a temporary store) is
measured these ways in one run:

* **service**: `flywheel serve` of the two-task plan (`serving.pages`): guard,
  decoding, detector and recogniser each behind its adaptive batcher, page log
  with images — the service as deployed;
* **unbatched**: the same server with `FLYWHEEL_PAGE_BATCHING=off`: each
  request's detector and recogniser passes run on their own;
* **service-wN**: the service with `serve.workers: N` (`--service-workers`,
  default 2): the whole service scaled, each worker both stages;
* **composed-wN**: the service composed of two BentoML services
  (`benchmarks/variants/composed_pages.py`): the recogniser a dependent
  `@bentoml.service` (`bentoml.depends`) in N worker processes of its own
  (`--recognizer-workers`, default 1 and 2), sent each page (uint8) and its
  boxes pickled over a Unix socket; the page service keeps the guard,
  decoding, the detector, the answer and the log;
* **in-process**: `PagePipeline.predict` in a loop, no HTTP, no log (the floor
  of the work); its concurrency column is the pages per call.

Each server gets a warm-up, then at concurrency 1, 8 and 32 at most
`--requests` pages or `--seconds` seconds (whichever ends first), the servers
taking turns. Printed: pages/s, p50/p99 latency, errors, each server's CPU
time per page (all its processes: `psutil`), the ratios to the service, to the
unbatched service and to the in-process floor; where a request's time goes
(the service's `Server-Timing`: decode, detect and recognise with their
queues, crop, log; for the composed service `reader` is the part of recognise
spent inside the recogniser service's handler, the rest of recognise is the
call: pickling, the socket, BentoML's request handling on both sides; HTTP =
the client's latency minus the phases); the floor's own split (detector,
crop, recogniser) and the load average: the machine is shared, read the
ratios. Every server's answers to the pages sent are checked equal to the
service's (boxes, scores, LaTeX, confidences), and the composed servers'
retried recogniser calls are counted.

    PYTHONPATH=src:. .venv/bin/python benchmarks/page_serving.py
    PYTHONPATH=src:. .venv/bin/python benchmarks/page_serving.py --requests 400 --seconds 30
    PYTHONPATH=src:. .venv/bin/python benchmarks/page_serving.py --recognizer-workers 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

CONCURRENCY = (1, 8, 32)
PHASES = ("decode", "detect", "crop", "recognize", "log")
"""The service's `Server-Timing` phases, one after the other (their sum is the server's part)."""
REPO = Path(__file__).resolve().parent.parent
COMPOSED = "benchmarks.variants.composed_pages:ComposedPageService"
RETRY_LOG = "recogniser call retried"  # benchmarks.variants.composed_pages.RETRY_LOG


@dataclass
class Run:
    """One server (or the floor) at one concurrency."""

    name: str
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    cpu_s: float | None = None
    phases: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @property
    def pages_per_s(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_page(self) -> float | None:
        if self.cpu_s is None or not self.latencies_ms:
            return None
        return self.cpu_s * 1000 / len(self.latencies_ms)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def _timing(header: str | None) -> dict[str, float]:
    out = {}
    for part in (header or "").split(","):
        name, _, duration = part.strip().partition(";dur=")
        if duration:
            out[name] = float(duration)
    return out


async def _load(
    url: str, bodies: list[bytes], concurrency: int, requests: int, seconds: float, name: str
) -> Run:
    run = Run(name, concurrency)
    sent = iter(range(requests))
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            for i in sent:
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                try:
                    answer = await client.post(
                        "/read_page",
                        content=bodies[i % len(bodies)],
                        headers={"Content-Type": "image/png"},
                    )
                except httpx.HTTPError:
                    run.errors += 1
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                if answer.status_code != 200:
                    run.errors += 1
                    continue
                run.latencies_ms.append(elapsed)
                timing = _timing(answer.headers.get("server-timing"))
                for phase in (*PHASES, "reader"):
                    if phase in timing or phase in PHASES:
                        run.phases[phase].append(timing.get(phase, 0.0))
                run.phases["http"].append(elapsed - sum(timing.get(p, 0.0) for p in PHASES))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - started
    return run


def _server_cpu(params: Path) -> Callable[[], float]:
    """The CPU seconds (user + system) so far of every live process of the server reading
    `params` (its `FLYWHEEL_PARAMS`: the arbiter and every service's workers)."""
    import psutil

    def total() -> float:
        seconds = 0.0
        for process in psutil.process_iter():
            try:
                if process.environ().get("FLYWHEEL_PARAMS") == str(params):
                    times = process.cpu_times()
                    seconds += times.user + times.system
            except psutil.Error:
                continue
        return seconds

    return total


@contextmanager
def _start_composed(params: Path, workers: int, root: Path, folder: Path) -> Iterator[str]:
    """`bentoml serve` of the composed page service (as `flywheel serve` starts the service)."""
    from flywheel.demo.server import file_tail, wait_until_ready
    from flywheel.processes import free_port, stop_process_group

    port = free_port()
    env = {
        **os.environ,
        "FLYWHEEL_PARAMS": str(params.resolve()),
        "FLYWHEEL_SET": "",
        "FLYWHEEL_RECOGNIZER_WORKERS": str(workers),
        "BENTOML_HOME": str(root / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "FLYWHEEL_HOME": str(root / "state"),
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
    }
    command = [
        *(sys.executable, "-m", "bentoml", "serve", COMPOSED),
        *("--working-dir", str(REPO), "--host", "127.0.0.1", "--port", str(port)),
    ]
    log = folder / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 300.0, process=process, output=lambda: file_tail(log))
        yield url
    finally:
        stop_process_group(process)


def _compare_answers(servers: dict[str, str], bodies: list[bytes]) -> dict[str, int]:
    """How many of `bodies` each server answers differently from the service."""

    def regions(url: str, body: bytes) -> list[dict[str, object]]:
        answer = httpx.post(
            f"{url}/read_page", content=body, headers={"Content-Type": "image/png"}, timeout=60
        )
        answer.raise_for_status()
        out = answer.json()["regions"]
        for region in out:
            region["score"] = round(region["score"], 4)
            region["confidence"] = round(region["confidence"], 4)
        return out

    expected = [regions(servers["service"], body) for body in bodies]
    return {
        name: sum(regions(url, b) != e for b, e in zip(bodies, expected, strict=True))
        for name, url in servers.items()
        if name != "service"
    }


def _floor(
    pipeline: object, pages: list[Image.Image], concurrency: int, requests: int, seconds: float
) -> Run:
    """`PagePipeline.predict` on `concurrency` pages per call; latency is per call."""
    from flywheel.tasks.page_pipeline import PagePipeline

    assert isinstance(pipeline, PagePipeline)
    run = Run("in-process", concurrency)
    done = 0
    deadline = time.monotonic() + seconds
    started = time.perf_counter()
    while done < requests and time.monotonic() < deadline:
        chunk = [pages[(done + j) % len(pages)] for j in range(concurrency)]
        t0 = time.perf_counter()
        boxes = pipeline.detect(chunk)
        t1 = time.perf_counter()
        crops = [c for page, b in zip(chunk, boxes, strict=True) for c in pipeline.crops(page, b)]
        t2 = time.perf_counter()
        if crops:
            pipeline.recognize(crops)
        t3 = time.perf_counter()
        for _ in chunk:  # one latency per page: the call's
            run.latencies_ms.append((t3 - t0) * 1000)
        run.phases["detect"].append((t1 - t0) * 1000 / concurrency)
        run.phases["crop"].append((t2 - t1) * 1000 / concurrency)
        run.phases["recognize"].append((t3 - t2) * 1000 / concurrency)
        done += concurrency
    run.seconds = time.perf_counter() - started
    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="pages per server and concurrency at most"
    )
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="seconds per server and concurrency at most"
    )
    parser.add_argument(
        "--epochs", type=int, nargs=2, default=(12, 25), help="detector, recogniser epochs"
    )
    parser.add_argument(
        "--recognizer-workers",
        type=int,
        nargs="*",
        default=(1, 2),
        help="one composed server per count: the recogniser service's worker processes",
    )
    parser.add_argument(
        "--service-workers",
        type=int,
        nargs="*",
        default=(2,),
        help="one more single service per count, with that many workers (serve.workers)",
    )
    args = parser.parse_args()

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    root = Path(tempfile.mkdtemp(prefix="page-bench-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    os.environ["FLYWHEEL_HOME"] = str(root / "state")

    import mlflow

    from flywheel import registry
    from flywheel.demo.server import start_server
    from flywheel.evaluation.pair import load_pair_model
    from flywheel.tasks.page_pipeline import PagePipeline
    from flywheel.tracking import configure_tracking, ensure_experiment
    from tests.support.page_serving import (
        DETECTOR,
        RECOGNIZER,
        encoded,
        page_files,
        page_store,
        write_page_params,
    )

    mlflow.set_experiment(experiment_id=ensure_experiment("page-bench", configure_tracking()))
    print("training the tiny pair ...", flush=True)
    store = page_store(root, epochs=tuple(args.epochs))  # type: ignore[arg-type]
    files = page_files(store.pages, "test") + page_files(store.pages, "train")
    bodies = [encoded(p) for p in files]
    pages = []
    for path in files:
        with Image.open(path) as image:
            pages.append(image.convert("L"))
    pipeline = PagePipeline(
        load_pair_model(registry.model_uri(DETECTOR, store.detector_version), "detection"),
        load_pair_model(registry.model_uri(RECOGNIZER, store.recognizer_version), "recognition"),
    )
    import torch

    torch.set_num_threads(1)  # as the service's `serve.torch_threads`
    servers: dict[str, str] = {}
    cpu: dict[str, Callable[[], float]] = {}
    runs: list[Run] = []
    plain: list[tuple[str, dict[str, str], dict[str, int]]] = [
        ("service", {}, {}),
        ("unbatched", {"FLYWHEEL_PAGE_BATCHING": "off"}, {}),
        *((f"service-w{n}", {}, {"workers": n}) for n in args.service_workers),
    ]
    composed = [(f"composed-w{n}", n) for n in args.recognizer_workers]
    with ExitStack() as stack:
        for name, extra, serve in plain:
            folder = root / name
            folder.mkdir()
            params = write_page_params(folder, max_latency_ms=10_000, **serve)
            env = {"MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"], **extra}
            print(f"starting {name} ...", flush=True)
            servers[name] = stack.enter_context(
                start_server(
                    params, env=env, cwd=folder, log_path=folder / "server.log", ready_timeout_s=300
                )
            )
            cpu[name] = _server_cpu(params.resolve())
        for name, workers in composed:
            folder = root / name
            folder.mkdir()
            params = write_page_params(folder, max_latency_ms=10_000)
            print(f"starting {name} ...", flush=True)
            servers[name] = stack.enter_context(_start_composed(params, workers, root, folder))
            cpu[name] = _server_cpu(params.resolve())
        for url in servers.values():  # warm-up
            asyncio.run(_load(url, bodies, 4, 40, 20, "warm-up"))
        mismatches = _compare_answers(servers, bodies)
        _floor(pipeline, pages, 4, 20, 10)
        for c in CONCURRENCY:
            order = list(servers.items())
            if c % 2:
                order.reverse()
            for name, url in order:
                before = cpu[name]()
                run = asyncio.run(_load(url, bodies, c, args.requests, args.seconds, name))
                run.cpu_s = cpu[name]() - before
                runs.append(run)
            runs.append(_floor(pipeline, pages, c, args.requests, args.seconds))
    found = [len(b) for b in pipeline.detect(pages)]
    print(f"regions per page (in-process, pages sent): mean {np.mean(found):.2f}, max {max(found)}")
    print(
        f"answers that differ from the service's (boxes, scores, LaTeX, confidences): {mismatches}"
    )
    retried = {
        name: (root / name / "server.log").read_text(errors="replace").count(RETRY_LOG)
        for name, _ in composed
    }
    print(f"recogniser calls sent again after their connection closed under them: {retried}")
    _report(runs, store)


def _report(runs: list[Run], store: object) -> None:
    by = {(r.name, r.concurrency): r for r in runs}

    def ratio(r: Run, baseline: str) -> str:
        base = by.get((baseline, r.concurrency))
        return f"{r.pages_per_s / base.pages_per_s:.2f}" if base and base.pages_per_s else "-"

    def p99_ratio(r: Run) -> str:
        base = by.get(("service", r.concurrency))
        return (
            f"{r.percentile(99) / base.percentile(99):.2f}" if base and base.latencies_ms else "-"
        )

    print()
    print(
        "| way | c | pages/s | p50 ms | p99 ms | errors | CPU ms/page | vs service | "
        "p99 vs service | vs unbatched | vs in-process |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        cpu = r.cpu_ms_per_page
        print(
            f"| {r.name} | {r.concurrency} | {r.pages_per_s:.1f} | {r.percentile(50):.1f} | "
            f"{r.percentile(99):.1f} | {r.errors} | {'-' if cpu is None else f'{cpu:.1f}'} | "
            f"{ratio(r, 'service')} | {p99_ratio(r)} | {ratio(r, 'unbatched')} | "
            f"{ratio(r, 'in-process')} |"
        )
    print()
    print("Where a page's time goes (mean ms per page; service phases from Server-Timing,")
    print("detect/recognize include their batchers' queues; reader: the part of recognize inside")
    print("the composed recogniser service's handler; http = client latency - the phases)")
    phases = ("decode", "detect", "crop", "recognize", "reader", "log", "http")
    print("| way | c | " + " | ".join(phases) + " |")
    print("|---|---|" + "---|" * len(phases))
    for r in runs:
        cells = [f"{statistics.fmean(r.phases[p]):.2f}" if r.phases.get(p) else "-" for p in phases]
        print(f"| {r.name} | {r.concurrency} | " + " | ".join(cells) + " |")
    print()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  (2 shared cores)")


if __name__ == "__main__":
    main()
