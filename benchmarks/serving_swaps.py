"""Hot swaps under load: every request answered while versions are swapped in, one after another.

A closed loop of `concurrency` clients posts one request after another to a
running server (aiohttp, one process) while the served version is changed
`swaps` times: the alias is moved (`change_alias`, a registry call in a
thread), then `/admin/reload` makes the server load the new version and swap
it in. Every answer is recorded with its status, the version that computed it
(`X-Model-Version`) and, for a refusal, the start of its error; every swap
with how long the reload call took and the version it swapped in.

What it checks (`SwapRun.failures`): no answer other than a 200, every reload
swapped in the version the alias was moved to, and after each swap the
answers name that version. Used by the swap benchmark (`benchmarks/serving.py
--swaps 10`) and its integration test
(`tests/integration/test_serving_swaps.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import yaml

from flywheel.demo.payloads import ApiRequest
from flywheel.serving_api import ADMIN_RELOAD_PATH, MODEL_VERSION_HEADER, admin_headers

if TYPE_CHECKING:
    from flywheel.demo.sandbox import Sandbox

BENCH_TOKEN = "swap-benchmark-token"
"""The admin token of the benchmark's throwaway server."""
AFTER_SWAP_S = 2.0
"""How long after a swap a failed answer is counted as the swap's (`SwapRun.when_failed`)."""
ERROR_CHARS = 60
"""How much of a refusal's error message is kept to group refusals by cause."""


@dataclass(frozen=True)
class Answer:
    """One request, as the client saw it."""

    sent_at: float  # time.monotonic()
    seconds: float
    status: str  # the HTTP status, or the name of the client error that prevented one
    version: str | None  # X-Model-Version (200 only)
    error: str = ""  # the start of a refusal's `error`


@dataclass(frozen=True)
class Swap:
    """One alias move and the reload that swapped it in."""

    index: int
    expected: str  # the version the alias was moved to
    started_at: float  # time.monotonic() when /admin/reload was sent
    seconds: float  # the /admin/reload call: alias check, load, warm-up, swap
    status: int
    result: dict[str, object]


@dataclass
class SwapRun:
    """All the answers and swaps of one run at one concurrency."""

    concurrency: int
    answers: list[Answer] = field(default_factory=list)
    swaps: list[Swap] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Answer]:
        """Answers other than a 200."""
        return [a for a in self.answers if a.status != "200"]

    def causes(self) -> Counter[str]:
        """The failed answers, grouped by status and the start of their error."""
        return Counter(f"{a.status} {a.error}".strip() for a in self.failed)

    def answers_during(self, swap: Swap) -> list[Answer]:
        """The answers to requests sent while `swap`'s reload call ran."""
        end = swap.started_at + swap.seconds
        return [a for a in self.answers if swap.started_at <= a.sent_at <= end]

    def when_failed(self, after_s: float = AFTER_SWAP_S) -> Counter[str]:
        """The failed answers by when they were sent: during a reload, within `after_s` after
        one (the old version drains and is collected), or elsewhere (the machine's load)."""
        counts: Counter[str] = Counter()
        for answer in self.failed:
            ends = [(s.started_at, s.started_at + s.seconds) for s in self.swaps]
            if any(start <= answer.sent_at <= end for start, end in ends):
                counts["during a reload"] += 1
            elif any(end < answer.sent_at <= end + after_s for _, end in ends):
                counts[f"≤ {after_s:.0f} s after a swap"] += 1
            else:
                counts["away from any swap"] += 1
        return counts

    def failures(self) -> list[str]:
        """What went wrong: failed answers, swaps that did not take, stale answers after one."""
        problems = [f"{n} × {cause}" for cause, n in self.causes().items()]
        for swap in self.swaps:
            served = swap.result.get("model_version")
            if swap.status != 200 or served != swap.expected or not swap.result.get("changed"):
                problems.append(
                    f"swap {swap.index}: /admin/reload answered {swap.status} {swap.result} "
                    f"(expected a change to version {swap.expected})"
                )
                continue
            done = swap.started_at + swap.seconds
            later = [a for a in self.answers if a.sent_at > done and a.status == "200"]
            following = [s for s in self.swaps if s.started_at > done]
            if following:
                later = [a for a in later if a.sent_at < following[0].started_at]
            stale = [a for a in later if a.version != swap.expected]
            if not later:
                problems.append(f"swap {swap.index}: no request was answered after it")
            elif stale:
                problems.append(
                    f"swap {swap.index}: {len(stale)} of {len(later)} later answers named "
                    f"version {stale[0].version}, not {swap.expected}"
                )
        return problems


async def _post(session: object, request: ApiRequest) -> Answer:
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    sent = time.monotonic()
    try:
        async with session.post(
            request.target, data=request.body, headers=request.headers
        ) as answer:
            body = await answer.read()
            version = answer.headers.get(MODEL_VERSION_HEADER)
            status = answer.status
    except (aiohttp.ClientError, TimeoutError) as err:
        return Answer(sent, time.monotonic() - sent, type(err).__name__, None)
    error = "" if status == 200 else body[:400].decode(errors="replace")
    if error.startswith('{"error":'):
        error = error[len('{"error":') :].strip(' "')
    return Answer(sent, time.monotonic() - sent, str(status), version, error[:ERROR_CHARS])


def run_swaps(
    url: str,
    request: ApiRequest,
    *,
    token: str,
    concurrency: int,
    change_alias: Callable[[int], str],
    swaps: int,
    settle_s: float = 1.0,
) -> SwapRun:
    """`swaps` alias moves and reloads while `concurrency` clients post `request` to `url`.

    Args:
        url: the server's base URL.
        request: what every client sends, over and over (its target a path).
        token: the server's admin token.
        concurrency: clients, each one request at a time.
        change_alias: moves the alias for swap `i` (from 1); returns the version it points to
            now. Runs in a thread (registry calls block).
        swaps: how many.
        settle_s: load before the first swap, between swaps and after the last one.
    """
    return asyncio.run(
        _run_swaps(url, request.at(url), token, concurrency, change_alias, swaps, settle_s)
    )


async def _run_swaps(
    url: str,
    request: ApiRequest,
    token: str,
    concurrency: int,
    change_alias: Callable[[int], str],
    swaps: int,
    settle_s: float,
) -> SwapRun:
    import aiohttp

    run = SwapRun(concurrency)
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency + 1)  # the clients and the admin
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            while not stop.is_set():
                run.answers.append(await _post(session, request))

        async def operator() -> None:
            try:
                for index in range(1, swaps + 1):
                    await asyncio.sleep(settle_s)
                    expected = await asyncio.to_thread(change_alias, index)
                    sent = time.monotonic()
                    async with session.post(
                        f"{url}{ADMIN_RELOAD_PATH}", headers=admin_headers(token)
                    ) as answer:
                        result = await answer.json(content_type=None)
                        status = answer.status
                    run.swaps.append(
                        Swap(index, expected, sent, time.monotonic() - sent, status, result)
                    )
                await asyncio.sleep(settle_s)
            finally:
                stop.set()

        await asyncio.gather(operator(), *(client() for _ in range(concurrency)))
    run.seconds = time.monotonic() - started
    return run


def second_version(name: str) -> str:
    """Register the production version's model again as a new blessed version; returns it.

    The swaps alternate between the two (`alternate`).
    """
    from flywheel import registry
    from flywheel.registry import Blessing, GateResult

    production = registry.version_for_alias(name, "production")
    if production is None:
        raise RuntimeError(f"{name!r} has no production version to swap from")
    source = registry.get_version(name, production).source
    version = registry.register(source, name, reason="swap benchmark: the other version")
    registry.record_blessing(
        name,
        version,
        Blessing(
            candidate_uri=source,
            champion_version=production,
            gates=(GateResult("swap_benchmark", 1.0, 0.0, ">=", True),),
            split="test",
            evaluated_at=registry.utc_now(),
            model_name=name,
            candidate_version=version,
        ),
    )
    return version


def alternate(name: str, first: str, second: str) -> Callable[[int], str]:
    """`change_alias` for `run_swaps`: `production` to `second` at odd swaps, `first` at even.

    The alias is set with one MLflow call, not `flywheel promote` (its lock,
    journal and blessing checks take 1-2 s on a busy machine, which would only
    make the run longer): what is measured is the server's reload.
    """
    from mlflow import MlflowClient

    def change(index: int) -> str:
        version = second if index % 2 else first
        MlflowClient().set_registered_model_alias(name, "production", version)
        return version

    return change


LOADED = re.compile(
    r"SWAPPED \(admin\): .* now serves version (\d+) \((?:alias [^,]*, )?loaded in ([\d.]+) s\)"
)
"""The server's log line of a swap: the version and how long loading and warming it took."""


def bench_swaps(args: argparse.Namespace, box: Sandbox, say: Callable[..., object]) -> bool:
    """`--swaps` of `benchmarks/serving.py`: swaps under load at each `--concurrency`.

    One server (the sandbox's model, `--workers`), the alias polled once an
    hour so only `/admin/reload` swaps; a PNG body per request. Prints each
    swap's reload time and the server's load time, and the failed answers by
    cause and by when; then the same load as long without a swap (the
    baseline: what the machine's load alone sheds). Returns True when no
    answer of the swap runs failed and every swap took effect.
    """
    from flywheel.demo.payloads import IMAGE, api_requests
    from flywheel.demo.sandbox import sample_image
    from flywheel.demo.server import start_server

    params = box.serve_params(args.params, args.workers)
    raw = yaml.safe_load(params.read_text())
    raw["serve"]["poll_interval_s"] = 3600.0
    params.write_text(yaml.safe_dump(raw))
    other = second_version(box.model_name)  # box.version serves first
    request = api_requests(sample_image(args.params))[IMAGE]
    log = box.workdir / "flywheel-swaps.log"
    load_before = os.getloadavg()
    runs = []
    env = box.server_env(admin_token=BENCH_TOKEN)
    with start_server(params, env=env, log_path=log, ready_timeout_s=180.0) as url:
        for concurrency in args.concurrency:
            say(f"{args.swaps} swaps at concurrency {concurrency} ...")
            mark = len(log.read_text(errors="replace"))
            run = run_swaps(
                url,
                request,
                token=BENCH_TOKEN,
                concurrency=concurrency,
                change_alias=alternate(box.model_name, box.version, other),
                swaps=args.swaps,
            )
            loads = [float(s) for _, s in LOADED.findall(log.read_text(errors="replace")[mark:])]
            say(f"the same load for {run.seconds:.0f} s without a swap (the baseline) ...")
            baseline = run_swaps(
                url,
                request,
                token=BENCH_TOKEN,
                concurrency=concurrency,
                change_alias=alternate(box.model_name, box.version, other),
                swaps=0,
                settle_s=run.seconds,
            )
            runs.append((run, loads, baseline))
    load_after = os.getloadavg()
    ok = True
    for run, loads, baseline in runs:
        ok &= report_run(run, loads, say)
        say(
            f"  baseline without swaps, same load for {baseline.seconds:.0f} s: "
            f"{len(baseline.answers)} requests, {len(baseline.failed)} failed, "
            f"p99 {_p99_ms(baseline):.0f} ms"
        )
    say(
        f"load average (1, 5, 15 min) before {_fmt(load_before)}, after {_fmt(load_after)} on "
        f"{os.cpu_count()} cores shared with other work; client and server on the same cores"
    )
    return ok


def report_run(run: SwapRun, loads: list[float], say: Callable[..., object]) -> bool:
    """One concurrency's table (a row per swap) and verdict; True when nothing failed."""
    from rich.table import Table

    table = Table(title=f"{len(run.swaps)} swaps under load at concurrency {run.concurrency}")
    for column in ("swap", "to version", "reload s", "server load s", "answers during", "failed"):
        table.add_column(column, justify="right")
    for swap, load in itertools.zip_longest(run.swaps, loads):
        if swap is None:
            continue
        during = run.answers_during(swap)
        table.add_row(
            str(swap.index),
            swap.expected,
            f"{swap.seconds:.2f}",
            "" if load is None else f"{load:.1f}",
            str(len(during)),
            str(sum(a.status != "200" for a in during)),
        )
    say(table)
    problems = run.failures()
    p99 = _p99_ms(run)
    say(
        f"concurrency {run.concurrency}: {len(run.answers)} requests in {run.seconds:.1f} s, "
        f"{len(run.failed)} failed, p99 {p99:.0f} ms"
    )
    for problem in problems:
        say(f"  [red]✗[/red] {problem}")
    if run.failed:
        say(
            "  failed answers, by when: "
            + ", ".join(f"{n} {w}" for w, n in run.when_failed().items())
        )
    if not problems:
        say("  [green]✓[/green] every request answered 200, every swap took effect")
    return not problems


def _p99_ms(run: SwapRun) -> float:
    latencies = sorted(a.seconds for a in run.answers if a.status == "200")
    return latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else float("nan")


def _fmt(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


__all__ = [
    "Answer",
    "Swap",
    "SwapRun",
    "alternate",
    "bench_swaps",
    "report_run",
    "run_swaps",
    "second_version",
]
