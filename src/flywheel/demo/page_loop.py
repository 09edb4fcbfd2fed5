"""The page service's closed loop on this machine: `flywheel demo --plan pages`.

The digits demo's loop (`flywheel.demo.loop`) for the two-stage page service:

```
serve the pair ─► in-distribution pages ─► monitor both stages (no drift)
               ─► photographed pages    ─► monitor (drift per stage, end to end drops)
               ─► `flywheel` pipeline on the page plan: monitor → curate pages → send to
                  Label Studio (the oracle answers: a box and LaTeX per expression) →
                  collect → new data-pages version → retrain the drifted stage(s) →
                  evaluate each against its champion and the pair end to end → promote
               ─► the service swaps each stage whose alias moved (admin reload)
               ─► photographed pages again ─► monitor (end to end recovered)
```

A traffic phase (`run_page_phase`) draws production pages of a scenario
(`flywheel.demo.pages.traffic.production_pages`, from the plan's `scenarios:`),
records their truth where the oracle reads it
(`flywheel.demo.page_oracle.page_truth_dir`), sends them to the running service, scores the answers
against that truth (`score_answers`: end to end, mAP@0.5 of the boxes, CER
of the matched expressions), and monitors exactly that phase's window of the
page log (`flywheel.monitoring.pages.monitor_pages`). `page_phase_table` is
the closing summary.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from flywheel.config import Params
from flywheel.demo.loop import LOG_SETTLE_S, LoopError, label_studio_for
from flywheel.serving_api import ADMIN_TOKEN_ENV
from flywheel.storage import Location

if TYPE_CHECKING:
    import httpx

    from flywheel.demo.pages.traffic import ProductionPage
    from flywheel.evaluation.pair import PairScore
    from flywheel.monitoring.pages import PageMonitorResult

PAGE_CONCURRENCY = 8
"""Pages in flight at once during a traffic phase."""
PAGE_TIMEOUT_S = 60.0
"""Per page: a busy 2-core machine answers within seconds; this is the margin."""


@dataclass(frozen=True)
class PageAnswers:
    """What the service answered for each page of a phase (None: the request failed)."""

    answers: list[dict[str, Any] | None]
    errors: dict[str, int]
    seconds: float

    @property
    def failed(self) -> int:
        """Requests that got no answer."""
        return sum(self.errors.values())


def send_pages(
    url: str,
    pages: Sequence[ProductionPage],
    *,
    concurrency: int = PAGE_CONCURRENCY,
    timeout_s: float = PAGE_TIMEOUT_S,
) -> PageAnswers:
    """POST each page to `/read_page` (its request id in `X-Request-ID`), `concurrency` at once.

    An answer that is not a 200 counts under its status (`http 503`), a
    request that raised under its exception's name.
    """
    import httpx

    from flywheel.page_api import READ_PAGE_PATH
    from flywheel.serving_api import REQUEST_ID_HEADER

    errors: dict[str, int] = {}

    def send(client: httpx.Client, page: ProductionPage) -> dict[str, Any] | None:
        try:
            answer = client.post(
                f"{url}{READ_PAGE_PATH}",
                content=page.png,
                headers={"Content-Type": "image/png", REQUEST_ID_HEADER: page.request_id},
            )
        except httpx.HTTPError as err:
            kind = type(err).__name__
        else:
            if answer.status_code == 200:
                body: dict[str, Any] = answer.json()
                return body
            kind = f"http {answer.status_code}"
        errors[kind] = errors.get(kind, 0) + 1
        return None

    started = time.perf_counter()
    with (
        httpx.Client(timeout=timeout_s) as client,
        ThreadPoolExecutor(max_workers=concurrency) as pool,
    ):
        answers = list(pool.map(lambda page: send(client, page), pages))
    return PageAnswers(answers, errors, time.perf_counter() - started)


@dataclass(frozen=True)
class TrafficScore:
    """The pair on a phase's pages, against the simulator's truth.

    Attributes:
        pair: end to end (expressions found at IoU ≥ 0.5 and read exactly), per slice.
        map_50: the detector's mAP@0.5 on the answered pages (its boxes and scores).
        cer: the character error rate of the expressions found, their LaTeX
            against the truth, both canonical (the recogniser on the detector's crops).
    """

    pair: PairScore
    map_50: float
    cer: float


def score_answers(
    pages: Sequence[ProductionPage], answers: Sequence[Mapping[str, Any] | None]
) -> TrafficScore:
    """Score the answered pages (a page without an answer is left out) against their truth.

    Raises:
        LoopError: no page was answered.
    """
    import numpy as np
    import pandas as pd

    from flywheel.evaluation.pair import score_pages
    from flywheel.tasks.detection_metrics import detection_metrics, object_array
    from flywheel.tasks.latex_tokens import canonical
    from flywheel.tasks.recognition_metrics import character_errors

    answered = [(p, a) for p, a in zip(pages, answers, strict=True) if a is not None]
    if not answered:
        raise LoopError("no page was answered: nothing to score")
    truth = [[(r.xyxy(), r.latex) for r in p.regions] for p, _ in answered]
    predicted = [
        [(tuple(r["box"]), float(r["score"]), str(r["latex"])) for r in a["regions"]]
        for _, a in answered
    ]
    strata = pd.DataFrame(
        [{"level": p.level, "writing": p.writing, "noise": p.noise} for p, _ in answered]
    )
    pair = score_pages(truth, predicted, pages=strata, slice_columns=("level", "writing", "noise"))
    sides = [(float(a["width"]), float(a["height"])) for _, a in answered]

    def normalised(box: Sequence[float], side: tuple[float, float]) -> list[float]:
        w, h = side
        return [box[0] / w, box[1] / h, box[2] / w, box[3] / h]

    detections = object_array(
        [
            np.array([[*normalised(b, s), score] for b, score, _ in page], dtype=float).reshape(
                -1, 5
            )
            for page, s in zip(predicted, sides, strict=True)
        ]
    )
    targets = object_array(
        [
            np.array([normalised(b, s) for b, _ in page], dtype=float).reshape(-1, 4)
            for page, s in zip(truth, sides, strict=True)
        ]
    )
    map_50 = detection_metrics(detections, targets).values["map_50"]
    from flywheel.evaluation.pair import match_page

    found_truth: list[str] = []
    found_read: list[str] = []
    for true_page, predicted_page in zip(truth, predicted, strict=True):
        match = match_page(true_page, predicted_page)
        for (_, latex), m in zip(true_page, match.matched, strict=True):
            if m is not None:
                found_truth.append(latex)
                found_read.append(predicted_page[m][2])
    edits, characters = character_errors(
        [canonical(t) for t in found_truth], [canonical(r) for r in found_read]
    )
    return TrafficScore(pair, map_50, edits / characters if characters else math.nan)


@dataclass(frozen=True)
class PagePhase:
    """One row of the page demo's summary.

    Attributes:
        phase: what happened ("drifted", "retrained").
        scenario: the traffic scenario (None: no traffic in this phase).
        pages: pages sent.
        errors: pages that got no answer.
        score: the pair on the phase's pages (None: no traffic).
        drift: per stage (`detection`, `recognition`) the monitor's decision.
        shares: per stage, the drifted shares of its features and embedding.
        detector, recognizer: the versions that answered ("v1", "v1→v2").
        data_version: the data-pages version production was trained on then.
        reports: per stage, its Evidently report.
        seconds: wall time of the phase.
    """

    phase: str
    scenario: str | None
    pages: int
    errors: int
    score: TrafficScore | None
    drift: Mapping[str, bool]
    shares: Mapping[str, tuple[float, float]]
    detector: str
    recognizer: str
    data_version: str
    reports: Mapping[str, Location]
    seconds: float


def _versions(answers: Sequence[Mapping[str, Any] | None], stage: str) -> str:
    """`v1`, or `v1 (40%), v2 (60%)` when a swap happened within the phase."""
    counts: dict[str, int] = {}
    for answer in answers:
        if answer is not None:
            version = str(answer[stage]["version"])
            counts[version] = counts.get(version, 0) + 1
    total = sum(counts.values()) or 1
    return ", ".join(
        f"v{version}" + (f" ({n / total:.0%})" if len(counts) > 1 else "")
        for version, n in sorted(counts.items(), key=lambda kv: int(kv[0]))
    )


def run_page_phase(
    params: Params,
    phase: str,
    scenario: str,
    url: str,
    *,
    pages: int,
    seed: int,
    data_version: str,
    log_dir: Location,
    truth_dir: Path,
    say: Callable[[str], object] = print,
) -> PagePhase:
    """Send one scenario's pages to the service, score the answers, monitor exactly that traffic.

    Raises:
        LoopError: more than a tenth of the pages failed, or no stage could be monitored.
    """
    from flywheel.demo.pages.traffic import production_pages, save_truth
    from flywheel.monitoring import MonitoringError
    from flywheel.monitoring.pages import monitor_pages

    started = time.perf_counter()
    drawn = production_pages(
        params.data,
        pages,
        seed=seed,
        prefix=phase.replace(" ", "-"),
        scenario=params.scenario(scenario),
    )
    save_truth(drawn, truth_dir / f"{phase.replace(' ', '-')}-{seed}.json")
    since = datetime.now(UTC) - timedelta(seconds=1)
    sent = send_pages(url, drawn)
    if sent.failed > pages // 10:
        raise LoopError(f"{phase}: {sent.failed} of {pages} pages failed ({sent.errors})")
    score = score_answers(drawn, sent.answers)
    wait = params.serve.log.flush_interval_s + LOG_SETTLE_S
    say(
        f"  sent {pages} pages in {sent.seconds:.1f} s ({sent.failed} failed): "
        f"{score.pair.end_to_end:.1%} of {score.pair.n_expressions} expressions read right end "
        f"to end, mAP@0.5 {score.map_50:.3f}, CER {score.cer:.3f}"
    )
    time.sleep(wait)  # the page log's flush policy
    try:
        result = monitor_pages(params, since=since, log_dir=log_dir)
    except MonitoringError as err:
        raise LoopError(f"{phase}: {err}") from err
    for line in _verdicts(result):
        say(f"  {line}")
    return PagePhase(
        phase=phase,
        scenario=scenario,
        pages=pages,
        errors=sent.failed,
        score=score,
        drift={stage: r.drift for stage, r in result.results.items()},
        shares={
            stage: (r.check.feature_share, r.check.embedding_share)
            for stage, r in result.results.items()
        },
        detector=_versions(sent.answers, "detector"),
        recognizer=_versions(sent.answers, "recognizer"),
        data_version=data_version,
        reports={stage: r.report_path for stage, r in result.results.items() if r.report_path},
        seconds=time.perf_counter() - started,
    )


def _verdicts(result: PageMonitorResult) -> list[str]:
    """One line per stage: its verdict and drifted shares, or why it was not checked."""
    lines = []
    for stage, r in result.results.items():
        lines.append(
            f"{stage}: {'DRIFT' if r.drift else 'no drift'} ({r.check.feature_share:.0%} of "
            f"the features, {r.check.embedding_share:.0%} of the embedding drifted; "
            f"{r.window_size} rows)"
        )
    lines += [f"{stage}: not checked: {why}" for stage, why in result.skipped.items()]
    return lines


def page_phase_table(phases: Sequence[PagePhase]) -> Table:
    """The page demo's closing summary: one row per phase."""
    from rich import box

    def pct(value: float | None) -> str:
        return "-" if value is None or math.isnan(value) else f"{value:.1%}"

    def drift(row: PagePhase, stage: str) -> str:
        if stage not in row.drift:
            return "-"
        feat, emb = row.shares[stage]
        verdict = "[red]DRIFT[/red]" if row.drift[stage] else "[green]no[/green]"
        return f"{verdict} {feat:.0%}/{emb:.0%}"

    scenarios = sorted({p.scenario for p in phases if p.scenario})
    sent = sorted({p.pages for p in phases if p.pages})
    table = Table(
        title="the page service's loop, phase by phase",
        caption=f"{'/'.join(map(str, sent))} pages per traffic phase, "
        f"{sum(p.errors for p in phases)} failed ({', '.join(scenarios)}). e2e: expressions "
        "found (IoU ≥ 0.5) and read exactly; mAP: the detector's mAP@0.5; CER: of the "
        "expressions found; drift: verdict, drifted share of features/embedding, per stage",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("phase", no_wrap=True, min_width=13)
    for column in ("e2e", "mAP", "CER", "drift det", "drift rec", "detector", "recogniser"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("data", justify="right", no_wrap=True, min_width=8)
    for p in phases:
        s = p.score
        table.add_row(
            p.phase,
            pct(s.pair.end_to_end if s else None),
            "-" if s is None or math.isnan(s.map_50) else f"{s.map_50:.3f}",
            "-" if s is None or math.isnan(s.cer) else f"{s.cer:.3f}",
            drift(p, "detection"),
            drift(p, "recognition"),
            p.detector,
            p.recognizer,
            p.data_version[:8],
        )
    return table


def run_page_loop(
    params_path: Path,
    params: Params,
    *,
    retrain: Callable[[list[str]], None],
    drift_scenario: str,
    pages: int,
    say: Callable[[str], None] = print,
) -> list[PagePhase]:
    """Serve the pair and drive the page flywheel once around: the page demo's second half.

    Args:
        params_path: the page plan the service reads.
        params: the same, as loaded.
        retrain: runs the `flywheel` pipeline with these extra `--set` overrides.
        drift_scenario: the scenario under `scenarios:` that drifts.
        pages: pages per traffic phase.
        say: where progress lines go.

    Raises:
        LoopError: a phase failed (the message says which and why).
        flywheel.demo.server.ServerStartError: the service did not start.
    """
    from flywheel.data.versioning import data_version
    from flywheel.demo.page_oracle import page_truth_dir
    from flywheel.demo.server import reload_model, start_server
    from flywheel.monitoring.pages import STAGES, page_log_root, stage_params
    from flywheel.registry import version_for_alias
    from flywheel.tracking import configure_tracking

    configure_tracking()
    plans = stage_params(params)
    models = {stage: plans[stage].evaluate.registered_model for stage in STAGES}
    alias = params.serve.alias
    for stage, name in models.items():
        if version_for_alias(name, alias) is None:
            raise LoopError(f"{name} ({stage}) has no {alias!r} version to serve: train it first")
    log_dir = page_log_root(params, params_path.resolve().parent)
    try:
        truth = page_truth_dir(params)
    except ValueError as err:
        raise LoopError(str(err)) from err
    token = secrets.token_urlsafe(24)
    phases: list[PagePhase] = []
    with (
        label_studio_for(params, say) as label_studio_ready,
        start_server(params_path, env={ADMIN_TOKEN_ENV: token}) as url,
    ):
        before = data_version(".", params.data)
        say(f"serving {models['detection']} → {models['recognition']} @{alias} at {url}")
        phase_started = datetime.now(UTC)
        for phase, scenario, seed in (
            ("in-distribution", "in_distribution", 201),
            ("drifted", drift_scenario, 202),
        ):
            say(f"— {phase} traffic: {pages} pages of scenario {scenario!r}")
            phase_started = datetime.now(UTC)
            phases.append(
                run_page_phase(
                    params,
                    phase,
                    scenario,
                    url,
                    pages=pages,
                    seed=seed,
                    data_version=before,
                    log_dir=log_dir,
                    truth_dir=truth,
                    say=say,
                )
            )
        champions = {s: version_for_alias(n, alias) or "?" for s, n in models.items()}
        started = time.perf_counter()
        say(
            "— the flywheel pipeline on the page plan: monitor both stages → curate pages → "
            "send → collect the labels → new data-pages version → retrain the drifted "
            "stage(s) → evaluate (champion, pair end to end) → promote"
        )
        label_studio_ready()
        window_start = phase_started - timedelta(seconds=1)
        retrain([f"monitor.since={window_start.isoformat()}"])
        configure_tracking()
        after = data_version(".", params.data)
        serving = {s: version_for_alias(n, alias) or "?" for s, n in models.items()}
        swap = reload_model(url, token)
        for stage, key in (("detection", "detector"), ("recognition", "recognizer")):
            if serving[stage] == champions[stage]:
                say(f"{models[stage]}: the service keeps version {champions[stage]}")
            else:
                say(
                    f"{models[stage]}: the service swapped version {champions[stage]} → "
                    f"{swap[key]['model_version']} without downtime"
                )

        def moved(stage: str) -> str:
            old, new = champions[stage], serving[stage]
            return f"v{old}→v{new}" if new != old else f"v{old} kept"

        phases.append(
            PagePhase(
                phase="retrained",
                scenario=None,
                pages=0,
                errors=0,
                score=None,
                drift={},
                shares={},
                detector=moved("detection"),
                recognizer=moved("recognition"),
                data_version=after,
                reports={},
                seconds=time.perf_counter() - started,
            )
        )
        say(f"— drifted traffic again: {pages} pages of scenario {drift_scenario!r}")
        phases.append(
            run_page_phase(
                params,
                "drifted again",
                drift_scenario,
                url,
                pages=pages,
                seed=203,
                data_version=after,
                log_dir=log_dir,
                truth_dir=truth,
                say=say,
            )
        )
    return phases


__all__ = [
    "PageAnswers",
    "PagePhase",
    "TrafficScore",
    "page_phase_table",
    "run_page_loop",
    "run_page_phase",
    "score_answers",
    "send_pages",
]
