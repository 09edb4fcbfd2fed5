"""Page service throughput and latency: the service, the service unbatched, the pair in-process.

One tiny trained pair (`tests.support.page_serving.page_store`: a 96 × 96 page
detector and a 16-pixel-high recogniser, trained into a temporary store) is
measured three ways in one run:

* **service**: `flywheel serve` of the two-task plan (`serving.pages`): guard,
  decoding, detector and recogniser each behind its adaptive batcher, page log
  with images — the service as deployed;
* **unbatched**: the same server with `FLYWHEEL_PAGE_BATCHING=off`: each
  request's detector and recogniser passes run on their own;
* **in-process**: `PagePipeline.predict` in a loop, no HTTP, no log (the floor
  of the work); its concurrency column is the pages per call.

Each server gets a warm-up, then at concurrency 1, 8 and 32 at most
`--requests` pages or `--seconds` seconds (whichever ends first), the servers
taking turns. Printed: pages/s, p50/p99 latency, errors, the ratios to the
in-process floor and to the unbatched service, where a request's time goes
(the service's `Server-Timing`: decode, detect and recognise with their queues,
crop, log; HTTP = the client's latency minus those), the floor's own split
(detector, crop, recogniser) and the load average: the machine is shared, read
the ratios.

    PYTHONPATH=src:. .venv/bin/python benchmarks/page_serving.py
    PYTHONPATH=src:. .venv/bin/python benchmarks/page_serving.py --requests 400 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

CONCURRENCY = (1, 8, 32)
PHASES = ("decode", "detect", "crop", "recognize", "log")


@dataclass
class Run:
    """One server (or the floor) at one concurrency."""

    name: str
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    phases: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @property
    def pages_per_s(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

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
                for phase in PHASES:
                    run.phases[phase].append(timing.get(phase, 0.0))
                run.phases["http"].append(elapsed - sum(timing.values()))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - started
    return run


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
    servers = {}
    runs: list[Run] = []
    with ExitStack() as stack:
        for name, extra in (("service", {}), ("unbatched", {"FLYWHEEL_PAGE_BATCHING": "off"})):
            folder = root / name
            folder.mkdir()
            params = write_page_params(folder, max_latency_ms=10_000)
            env = {"MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"], **extra}
            print(f"starting {name} ...", flush=True)
            servers[name] = stack.enter_context(
                start_server(
                    params, env=env, cwd=folder, log_path=folder / "server.log", ready_timeout_s=300
                )
            )
        for url in servers.values():  # warm-up
            asyncio.run(_load(url, bodies, 4, 40, 20, "warm-up"))
        _floor(pipeline, pages, 4, 20, 10)
        for c in CONCURRENCY:
            order = list(servers.items())
            if c % 2:
                order.reverse()
            for name, url in order:
                runs.append(asyncio.run(_load(url, bodies, c, args.requests, args.seconds, name)))
            runs.append(_floor(pipeline, pages, c, args.requests, args.seconds))
    found = [len(b) for b in pipeline.detect(pages)]
    print(f"regions per page (in-process, pages sent): mean {np.mean(found):.2f}, max {max(found)}")
    _report(runs, store)


def _report(runs: list[Run], store: object) -> None:
    by = {(r.name, r.concurrency): r for r in runs}
    print()
    print("| way | c | pages/s | p50 ms | p99 ms | errors | vs in-process | vs unbatched |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        floor = by[("in-process", r.concurrency)]
        unbatched = by.get(("unbatched", r.concurrency))
        ratio_floor = r.pages_per_s / floor.pages_per_s if floor.pages_per_s else float("nan")
        ratio_unbatched = (
            r.pages_per_s / unbatched.pages_per_s
            if unbatched and unbatched.pages_per_s
            else float("nan")
        )
        print(
            f"| {r.name} | {r.concurrency} | {r.pages_per_s:.1f} | {r.percentile(50):.1f} | "
            f"{r.percentile(99):.1f} | {r.errors} | {ratio_floor:.2f} | {ratio_unbatched:.2f} |"
        )
    print()
    print("Where a page's time goes (mean ms per page; service phases from Server-Timing,")
    print("detect/recognize include their batchers' queues; http = client latency - the phases)")
    phases = ("decode", "detect", "crop", "recognize", "log", "http")
    print("| way | c | " + " | ".join(phases) + " |")
    print("|---|---|" + "---|" * len(phases))
    for r in runs:
        cells = [f"{statistics.fmean(r.phases[p]):.2f}" if r.phases.get(p) else "-" for p in phases]
        print(f"| {r.name} | {r.concurrency} | " + " | ".join(cells) + " |")
    print()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  (2 shared cores)")


if __name__ == "__main__":
    main()
