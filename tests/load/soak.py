"""Soak the service: minutes of steady load, then check the answers and the memory.

`--seconds` (180) of steady closed-loop load (PNG bodies and uploads, JSON
arrays, and a truncated PNG in every ten that must get its 400); fails on any
other answer or when the server processes' resident memory at the end exceeds
that right after the warm-up (the first 20 %) by `--max-growth` (10 %).
Exits 1 when the run fails.

    .venv/bin/python -m tests.load.soak                 # make soak
    .venv/bin/python -m tests.load.soak --seconds 300
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from flywheel.demo.payloads import IMAGE, JSON, MULTIPART, ApiRequest, api_requests, post_status
from flywheel.demo.sandbox import SandboxError, add_sandbox_arguments, open_sandbox, sample_image

REPO = Path(__file__).resolve().parents[2]

console = Console(width=None if sys.stdout.isatty() else 150)


@dataclass
class SoakSample:
    """One point of the soak: when, how much was answered so far, memory."""

    seconds: float
    requests: int
    errors: int
    rss_bytes: int


@dataclass
class SoakResult:
    """The whole soak: samples, latencies, unexpected answers."""

    samples: list[SoakSample]
    latencies_ms: list[float]
    unexpected: Counter[str]

    @property
    def requests(self) -> int:
        """Requests answered (or failed)."""
        return self.samples[-1].requests if self.samples else 0

    @property
    def errors(self) -> int:
        """Answers other than the one expected (200, or 400 for the deliberately bad ones)."""
        return sum(self.unexpected.values())

    def memory_growth(self, warmup_share: float = 0.2) -> float:
        """Resident memory at the end over that right after the warm-up, minus 1.

        Each side is the mean of up to three samples, so one sample taken in the
        middle of a burst of allocation does not decide it.
        """
        settled = [s for s in self.samples if s.seconds >= warmup_share * self.samples[-1].seconds]
        first = settled[:3]
        last = settled[-3:]
        start = statistics.fmean(s.rss_bytes for s in first)
        end = statistics.fmean(s.rss_bytes for s in last)
        return end / start - 1.0


def children_rss() -> int:
    """Resident memory of this process's descendants (the server and its workers), in bytes."""
    import psutil

    total = 0
    for process in psutil.Process().children(recursive=True):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:  # a worker restarting between the listing and the read
            continue
    return total


def run_soak(
    url: str,
    image: np.ndarray,
    *,
    seconds: float,
    concurrency: int,
    sample_every: float,
    memory: Callable[[], int],
) -> SoakResult:
    """Steady closed-loop load for `seconds`: PNG bodies and uploads, JSON arrays, bad uploads.

    Every tenth request is a truncated PNG that must be refused with a 400 (the
    error path must not leak either); the others must be answered 200.
    Resident memory is sampled every `sample_every` seconds with `memory()`.
    """
    from tqdm import tqdm

    requests = {payload: request.at(url) for payload, request in api_requests(image).items()}
    good = [requests[payload] for payload in (IMAGE, MULTIPART, JSON)]
    upload = requests[MULTIPART]
    truncated = ApiRequest(upload.target, upload.body[: len(upload.body) * 2 // 3], upload.headers)
    result = SoakResult([], [], Counter())
    counter = itertools.count()

    async def soak() -> None:
        import aiohttp

        started = time.monotonic()
        deadline = started + seconds
        answered = 0
        bar = tqdm(total=int(seconds), desc="soak", unit="s", file=sys.stderr)

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal answered
            while time.monotonic() < deadline:
                n = next(counter)
                target, expected = (truncated, 400) if n % 10 == 9 else (good[n % 3], 200)
                sent = time.perf_counter()
                status = await post_status(session, target)
                if expected == 200:
                    result.latencies_ms.append((time.perf_counter() - sent) * 1000.0)
                if status != str(expected):
                    result.unexpected[f"{status} (expected {expected})"] += 1
                answered += 1

        async def sampler() -> None:
            while True:
                now = time.monotonic() - started
                result.samples.append(
                    SoakSample(now, answered, sum(result.unexpected.values()), memory())
                )
                bar.n = min(int(now), int(seconds))
                bar.refresh()
                if now >= seconds:
                    return
                await asyncio.sleep(min(sample_every, max(0.0, seconds - now)))

        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            workers = [worker(session) for _ in range(concurrency)]
            await asyncio.gather(sampler(), *workers)
        result.samples.append(
            SoakSample(
                time.monotonic() - started, answered, sum(result.unexpected.values()), memory()
            )
        )
        bar.close()

    asyncio.run(soak())
    return result


def print_soak(result: SoakResult, max_growth: float) -> bool:
    """The samples and the verdict; True when there were no errors and memory held."""
    table = Table(title="soak: answers and resident memory of the server's processes")
    for column in ("s", "requests", "req/s", "errors", "RSS MiB"):
        table.add_column(column, justify="right")
    previous: SoakSample | None = None
    for sample in result.samples:
        rate = ""
        if previous is not None and sample.seconds - previous.seconds >= 1.0:  # not the tail
            rate = (
                f"{(sample.requests - previous.requests) / (sample.seconds - previous.seconds):.0f}"
            )
        table.add_row(
            f"{sample.seconds:.0f}",
            str(sample.requests),
            rate,
            str(sample.errors),
            f"{sample.rss_bytes / 2**20:.1f}",
        )
        previous = sample
    console.print(table)
    growth = result.memory_growth()
    latencies = np.asarray(result.latencies_ms)
    passed = result.errors == 0 and growth < max_growth
    console.print(
        f"{'[green]passed[/green]' if passed else '[red]FAILED[/red]'}: {result.requests} "
        f"requests in {result.samples[-1].seconds:.0f} s "
        f"({result.requests / result.samples[-1].seconds:.0f} req/s), "
        f"{result.errors} errors{f' {dict(result.unexpected)}' if result.unexpected else ''}, "
        f"p50 {np.percentile(latencies, 50):.1f} ms, p99 {np.percentile(latencies, 99):.1f} ms; "
        f"resident memory {growth:+.1%} after the warm-up (limit +{max_growth:.0%})"
    )
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a model, hold it under steady load, watch its memory, report; 1 when it failed."""
    from flywheel.demo.server import start_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sandbox_arguments(parser, REPO / "params.yaml")
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument("--max-growth", type=float, default=0.10)
    args = parser.parse_args(argv)
    try:
        with open_sandbox(args, "flywheel-serving-soak-", say=console.print) as box:
            params = box.serve_params(args.params, args.workers)
            log_path = box.workdir / "flywheel.log"
            with start_server(params, env=box.server_env(), log_path=log_path) as url:
                console.print(
                    f"soak: {args.seconds:.0f} s at concurrency {args.concurrency} against {url}"
                )
                result = run_soak(
                    url,
                    sample_image(args.params),
                    seconds=args.seconds,
                    concurrency=args.concurrency,
                    sample_every=args.sample_every,
                    memory=children_rss,
                )
    except SandboxError as err:
        raise SystemExit(str(err)) from None
    passed = print_soak(result, args.max_growth)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    console.print(f"load average (1, 5, 15 min): {load} on {os.cpu_count()} cores")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
