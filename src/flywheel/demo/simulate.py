"""The traffic simulator: production-like requests to the running service, with hidden truth.

`simulate_traffic` draws images with the real collector for a traffic scenario
of `params.yaml` (`flywheel.demo.collect.collect_batch`: the production glyph
pool, the scenario's stratum mix and noise severity — in-distribution or
drifted), posts them to the service's image-file API (`/predict_images`,
multipart field `images`) with an `X-Request-ID` header per request, and
records the truth of every answered image in the ground-truth store
(`flywheel.data.ground_truth`, `origin="simulator"`, with `style`, `noise`,
`scenario` and the source glyph `group`), where the service never looks.
Monitoring joins that truth with the prediction log to measure accuracy on
labelled traffic; the demo's oracle labeller answers from it.

A run is bounded: at most `requests` requests, none started after
`max_seconds`, each with its own timeout. The report counts errors by kind,
measures accuracy of the answers against the truth (overall and per
stratum), the model versions that answered and the latency.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flywheel.config import Params
from flywheel.data.ground_truth import ORIGIN_SIMULATOR, ground_truth_dir, write_ground_truth
from flywheel.env import tqdm_disable
from flywheel.serving_api import (
    IMAGES_FIELD,
    PNG_MEDIA_TYPE,
    PREDICT_IMAGES_PATH,
    READY_PATH,
    REQUEST_ID_HEADER,
)
from flywheel.storage import Location, state_url

if TYPE_CHECKING:
    import httpx


class SimulationError(RuntimeError):
    """The simulator cannot run: the service is not there or not ready, or the scenario is bad."""


@dataclass(frozen=True)
class RequestOutcome:
    """One request: what was sent and what came back.

    Attributes:
        request_id: the `X-Request-ID` sent.
        image_ids: the batch images sent, in request order.
        status: HTTP status, or None when no response came (see `error`).
        seconds: wall time of the request.
        answers: the service's items (label, confidence, model_version, ...) on 200.
        error: why it failed: the response's error text or the exception.
    """

    request_id: str
    image_ids: tuple[str, ...]
    status: int | None
    seconds: float
    answers: tuple[dict[str, Any], ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Answered with one item per image."""
        return self.status == 200 and len(self.answers) == len(self.image_ids)


@dataclass(frozen=True)
class SimulationReport:
    """The summary of one simulator run.

    Attributes:
        scenario: the traffic scenario.
        url: the service.
        seed: the batch seed (same seed, same images).
        requests: requests sent.
        not_sent: requests not started because `max_seconds` ran out.
        images: images in the answered requests.
        errors: failed requests by kind (`HTTP 503`, `ConnectError`, ...).
        accuracy: share of answered images whose label is the truth (None: none answered).
        accuracy_by_stratum: the same per `style/noise`.
        versions: answered images per model version.
        latency_ms: p50, p95, mean and max request latency (answered requests).
        elapsed_s: wall time of the sending.
        truth_file: the ground-truth file written (None when nothing was answered).
        first_error: one error message, to show what went wrong.
    """

    scenario: str
    url: str
    seed: int
    requests: int
    not_sent: int
    images: int
    errors: dict[str, int]
    accuracy: float | None
    accuracy_by_stratum: dict[str, float]
    versions: dict[str, int]
    latency_ms: dict[str, float]
    elapsed_s: float
    truth_file: Location | None
    first_error: str | None = None
    outcomes: tuple[RequestOutcome, ...] = field(default=(), repr=False)

    @property
    def answered(self) -> int:
        """Requests answered with a prediction per image."""
        return self.requests - sum(self.errors.values())

    @property
    def throughput_rps(self) -> float:
        """Answered requests per second of sending."""
        return self.answered / self.elapsed_s if self.elapsed_s > 0 else 0.0


def service_url(params: Params, url: str | None = None) -> str:
    """The service to call: `url`, else `simulate.url`, else `http://<serve.host>:<serve.port>`."""
    chosen = url or params.simulate.url or f"http://{params.serve.host}:{params.serve.port}"
    return chosen.rstrip("/")


def chunk(items: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """Consecutive groups of `size` (the last may be shorter).

    >>> chunk(["a", "b", "c"], 2)
    [('a', 'b'), ('c',)]
    """
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p95, mean and max in milliseconds (empty when there are none).

    >>> latency_summary([0.1, 0.2, 0.3])["p50"]
    200.0
    """
    if not seconds:
        return {}
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "mean": float(ms.mean()),
        "max": float(ms.max()),
    }


def _post(
    client: httpx.Client,
    url: str,
    request_id: str,
    paths: Sequence[Path],
    image_ids: tuple[str, ...],
) -> RequestOutcome:
    import httpx

    files = [(IMAGES_FIELD, (p.name, p.read_bytes(), PNG_MEDIA_TYPE)) for p in paths]
    started = time.perf_counter()
    try:
        response = client.post(
            url + PREDICT_IMAGES_PATH, files=files, headers={REQUEST_ID_HEADER: request_id}
        )
    except httpx.HTTPError as err:
        return RequestOutcome(
            request_id,
            image_ids,
            None,
            time.perf_counter() - started,
            error=f"{type(err).__name__}: {err}",
        )
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        return RequestOutcome(
            request_id, image_ids, response.status_code, seconds, error=response.text[:300]
        )
    try:
        answers = tuple(response.json())
    except ValueError:
        return RequestOutcome(request_id, image_ids, 200, seconds, error="the answer is not JSON")
    if len(answers) != len(image_ids):
        return RequestOutcome(
            request_id,
            image_ids,
            200,
            seconds,
            error=f"{len(answers)} answers for {len(image_ids)} images",
        )
    return RequestOutcome(request_id, image_ids, 200, seconds, answers)


def _error_kind(outcome: RequestOutcome) -> str:
    if outcome.status is None:
        return (outcome.error or "error").split(":", 1)[0]
    if outcome.status == 200:
        return "malformed answer"
    return f"HTTP {outcome.status}"


def check_ready(url: str, timeout_s: float = 5.0) -> None:
    """Fail fast unless the service answers `/readyz` with 200.

    Raises:
        SimulationError: no connection, or not ready (with the service's reason).
    """
    import httpx

    try:
        response = httpx.get(url + READY_PATH, timeout=timeout_s)
    except httpx.HTTPError as err:
        raise SimulationError(
            f"no service at {url} ({type(err).__name__}: {err}); start it with `flywheel serve`"
        ) from None
    if response.status_code != 200:
        raise SimulationError(
            f"the service at {url} is not ready ({response.status_code}): "
            f"{response.text[:200] or 'no reason given'}"
        )


def simulate_traffic(
    params: Params,
    scenario: str,
    *,
    requests: int | None = None,
    url: str | None = None,
    seed: int = 0,
    concurrency: int | None = None,
    images_per_request: int | None = None,
    timeout_s: float | None = None,
    max_seconds: float | None = None,
    gt_root: Location | None = None,
    progress: bool = True,
) -> SimulationReport:
    """Send a scenario's traffic to the service and record the truth of every answered image.

    Args:
        params: the plan (`data`), the scenarios, `simulate` defaults, `serve` host/port.
        scenario: a name under `scenarios:` in params.yaml.
        requests: overrides `simulate.requests`.
        url: the service (default `service_url(params)`).
        seed: the batch seed; request ids are fresh each run either way.
        concurrency: overrides `simulate.concurrency`.
        images_per_request: overrides `simulate.images_per_request`.
        timeout_s: overrides `simulate.timeout_s` (per request).
        max_seconds: overrides `simulate.max_seconds` (no request starts later).
        gt_root: the ground-truth folder (default `<state URL>/ground_truth`).
        progress: show a progress bar.

    Raises:
        flywheel.config.ConfigError: unknown scenario.
        SimulationError: the service is not reachable or not ready, or the
            collector cannot draw the scenario.
    """
    import httpx

    from flywheel.data.files import DatasetWriteError
    from flywheel.data.manifest import stratum
    from flywheel.demo.collect import collect_batch

    cfg = params.simulate
    chosen = params.scenario(scenario)
    n_requests = cfg.requests if requests is None else requests
    per_request = cfg.images_per_request if images_per_request is None else images_per_request
    workers = cfg.concurrency if concurrency is None else concurrency
    timeout = cfg.timeout_s if timeout_s is None else timeout_s
    budget_s = cfg.max_seconds if max_seconds is None else max_seconds
    if n_requests < 1 or per_request < 1 or workers < 1:
        raise SimulationError("requests, images per request and concurrency must be >= 1")
    target = service_url(params, url)
    check_ready(target, timeout_s=min(timeout, 10.0))

    token = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="flywheel-simulate-") as tmp:
        try:
            batch = collect_batch(
                params.data, chosen, n_requests * per_request, seed, Path(tmp) / "batch"
            )
        except DatasetWriteError as err:  # CollectError is one
            raise SimulationError(f"scenario {scenario!r}: {err}") from None
        batch = batch.assign(stratum=stratum(batch)).set_index("image_id", drop=False)
        groups = chunk(batch["image_id"].tolist(), per_request)
        request_ids = [f"sim-{token}-{i:06d}" for i in range(len(groups))]
        deadline = time.monotonic() + budget_s
        stop = threading.Event()
        root = Path(tmp) / "batch"

        def send(
            client: httpx.Client, request_id: str, image_ids: tuple[str, ...]
        ) -> RequestOutcome | None:
            """One request, unless the time budget ran out (then None: not sent)."""
            if stop.is_set() or time.monotonic() > deadline:
                stop.set()
                return None
            paths = [root / batch.at[i, "path"] for i in image_ids]
            return _post(client, target, request_id, paths, image_ids)

        from tqdm import tqdm

        started = time.perf_counter()
        outcomes: list[RequestOutcome] = []
        not_sent = 0
        with (
            httpx.Client(timeout=timeout) as client,
            ThreadPoolExecutor(max_workers=workers) as pool,
            tqdm(
                total=len(groups),
                desc=f"simulate {scenario}",
                unit="req",
                disable=tqdm_disable(progress),
            ) as bar,
        ):
            futures = [
                pool.submit(send, client, r, g) for r, g in zip(request_ids, groups, strict=True)
            ]
            for future in as_completed(futures):
                outcome = future.result()
                if outcome is None:
                    not_sent += 1
                else:
                    outcomes.append(outcome)
                    if not outcome.ok:
                        bar.set_postfix_str(f"errors {sum(not o.ok for o in outcomes)}")
                bar.update()
        elapsed = time.perf_counter() - started

    truth_rows: list[dict[str, Any]] = []
    for outcome in outcomes:
        if not outcome.ok:
            continue
        for index, (image_id, answer) in enumerate(
            zip(outcome.image_ids, outcome.answers, strict=True)
        ):
            row = batch.loc[image_id]
            truth_rows.append(
                {
                    "request_id": str(answer.get("request_id", outcome.request_id)),
                    "index": int(answer.get("index", index)),
                    "label": str(row["label"]),
                    "origin": ORIGIN_SIMULATOR,
                    "style": str(row["style"]),
                    "noise": str(row["noise"]),
                    "scenario": scenario,
                    "group": str(row["group"]),
                    "predicted": str(answer.get("label")),
                    "model_version": str(answer.get("model_version")),
                    "stratum": str(row["stratum"]),
                }
            )
    truth = pd.DataFrame(truth_rows)
    if gt_root is None:
        gt_root = ground_truth_dir(state_url(params.state.url))
    truth_file = (
        write_ground_truth(truth.drop(columns=["predicted", "model_version", "stratum"]), gt_root)
        if not truth.empty
        else None
    )
    failed = [o for o in outcomes if not o.ok]
    accuracy = None
    by_stratum: dict[str, float] = {}
    versions: dict[str, int] = {}
    if not truth.empty:
        correct = truth["predicted"] == truth["label"]
        accuracy = float(correct.mean())
        by_stratum = {str(k): float(v) for k, v in correct.groupby(truth["stratum"]).mean().items()}
        versions = dict(Counter(truth["model_version"]).most_common())
    return SimulationReport(
        scenario=scenario,
        url=target,
        seed=seed,
        requests=len(outcomes),
        not_sent=not_sent,
        images=len(truth),
        errors=dict(Counter(_error_kind(o) for o in failed).most_common()),
        accuracy=accuracy,
        accuracy_by_stratum=by_stratum,
        versions=versions,
        latency_ms=latency_summary([o.seconds for o in outcomes if o.ok]),
        elapsed_s=elapsed,
        truth_file=truth_file,
        first_error=next((o.error for o in failed if o.error), None),
        outcomes=tuple(outcomes),
    )
