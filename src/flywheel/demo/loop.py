"""The closed loop on this machine: traffic phases around a running service (`flywheel demo`).

The demo first trains and promotes through the `training` pipeline, then
serves production and drives the flywheel with real components:

```
serve ─► in-distribution traffic ─► monitor (no drift)
      ─► drifted traffic          ─► monitor (drift, accuracy drops)
      ─► `flywheel` pipeline: monitor → curate → send → collect the labels (the oracle, an
         annotator in a real Label Studio, answers at once) → new data version → train
         → evaluate → promote ─► the service swaps in the new version (admin reload)
      ─► drifted traffic again    ─► monitor (accuracy recovered)
```

This module holds the pieces the command sequences: one traffic phase
(`run_traffic_phase`: the simulator, then monitoring of exactly that phase's
window) and the closing summary (`phase_table`). Accuracy on traffic is the
simulator's truth against the service's answers; the monitor's accuracy is the
same join done from the prediction log and the ground-truth store, as on a
cluster where labels arrive later.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.table import Table

from flywheel.config import Params
from flywheel.serving_api import ADMIN_TOKEN_ENV  # the loop makes a fresh token per run
from flywheel.storage import Location

LOG_SETTLE_S = 0.5
"""Extra wait after the prediction log's flush interval before reading it back."""


class LoopError(RuntimeError):
    """A phase of the loop cannot go on (the service failed requests, monitoring had no data)."""


@dataclass(frozen=True)
class PhaseResult:
    """One row of the demo's summary.

    Attributes:
        phase: what happened (e.g. "drifted traffic").
        scenario: the traffic scenario (None: no traffic in this phase).
        requests: requests sent.
        errors: requests that failed.
        traffic_accuracy: answers right against the simulator's truth.
        versions: model versions that answered, with their share of images.
        drift: the monitor's decision (None: not monitored).
        feature_drift_share: share of drifted summary features.
        embedding_drift_share: share of drifted embedding components.
        mean_confidence: mean top-class probability of the window.
        monitored_accuracy: accuracy the monitor computed from the logged traffic
            and the ground-truth store.
        data_version: the dataset version production was trained on at the time.
        report: the Evidently HTML report of the window.
        seconds: wall time of the phase.
    """

    phase: str
    scenario: str | None
    requests: int
    errors: int
    traffic_accuracy: float | None
    versions: str
    drift: bool | None
    feature_drift_share: float | None
    embedding_drift_share: float | None
    mean_confidence: float | None
    monitored_accuracy: float | None
    data_version: str
    report: Location | None
    seconds: float


def run_traffic_phase(
    params: Params,
    phase: str,
    scenario: str,
    url: str,
    *,
    requests: int,
    seed: int,
    data_version: str,
    log_dir: Path | None = None,
    ground_truth_dir: Path | None = None,
    say: Callable[[str], object] = print,
) -> PhaseResult:
    """Send one scenario's traffic to the service, then monitor exactly that traffic.

    The monitor's window starts when the phase starts, so each phase is judged
    on its own traffic (earlier phases stay in the log and on the dashboard).

    Args:
        params: the configuration (scenarios, simulate, serve.log, monitor).
        phase: the row's name.
        scenario: a name under `scenarios:`.
        url: the running service.
        requests: requests to send (one image each by default).
        seed: the simulator's batch seed (a new seed draws new images).
        data_version: recorded in the row.
        log_dir: the prediction log the service writes (default: params').
        ground_truth_dir: where the simulator writes its truth (default: the state folder's).
        say: where the progress lines go: what was sent, the wait for the log,
            then the drift verdict as soon as it is known.

    Raises:
        LoopError: most requests failed, or the window is too small to monitor.
    """
    from flywheel.demo.simulate import simulate_traffic
    from flywheel.monitoring import MonitoringError, monitor

    started = time.perf_counter()
    since = datetime.now(UTC) - timedelta(seconds=1)
    sent = simulate_traffic(
        params, scenario, requests=requests, url=url, seed=seed, gt_root=ground_truth_dir
    )
    failed = sum(sent.errors.values())
    if failed > requests // 10:
        raise LoopError(
            f"{phase}: {failed} of {requests} requests failed ({sent.errors}); "
            f"first error: {sent.first_error}"
        )
    right = "" if sent.accuracy is None else f", {sent.accuracy:.1%} answered right"
    wait = params.serve.log.flush_interval_s + LOG_SETTLE_S
    say(
        f"  sent {sent.requests} requests ({failed} failed{right}); the prediction log "
        f"flushes within {wait:g} s, then the monitor checks this phase's window"
    )
    time.sleep(wait)  # the log's flush policy
    try:
        result = monitor(params, since=since, log_dir=log_dir, ground_truth_dir=ground_truth_dir)
    except MonitoringError as err:  # too few predictions, no reference profile
        raise LoopError(f"{phase}: {err}") from err
    check = result.check
    say(
        f"  {'DRIFT' if result.drift else 'no drift'}: {check.feature_share:.0%} of the "
        f"image features and {check.embedding_share:.0%} of the embedding drifted"
        + (f"; report {result.report_path}" if result.report_path else "")
    )
    images = sum(sent.versions.values()) or 1
    versions = ", ".join(
        f"v{version}" + (f" ({count / images:.0%})" if len(sent.versions) > 1 else "")
        for version, count in sorted(sent.versions.items(), key=lambda kv: int(kv[0]))
    )
    return PhaseResult(
        phase=phase,
        scenario=scenario,
        requests=sent.requests,
        errors=failed,
        traffic_accuracy=sent.accuracy,
        versions=versions,
        drift=result.drift,
        feature_drift_share=check.feature_share,
        embedding_drift_share=check.embedding_share,
        mean_confidence=check.mean_confidence,
        monitored_accuracy=check.accuracy,
        data_version=data_version,
        report=result.report_path,
        seconds=time.perf_counter() - started,
    )


def event_row(phase: str, versions: str, data_version: str, seconds: float) -> PhaseResult:
    """A summary row for a phase without traffic (training, retraining)."""
    return PhaseResult(
        phase=phase,
        scenario=None,
        requests=0,
        errors=0,
        traffic_accuracy=None,
        versions=versions,
        drift=None,
        feature_drift_share=None,
        embedding_drift_share=None,
        mean_confidence=None,
        monitored_accuracy=None,
        data_version=data_version,
        report=None,
        seconds=seconds,
    )


def phase_table(phases: list[PhaseResult]) -> Table:
    """The demo's closing summary: one row per phase, narrow enough for an 80-column terminal."""
    from rich import box

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    scenarios = sorted({p.scenario for p in phases if p.scenario})
    sent = sorted({p.requests for p in phases if p.requests})
    failed = sum(p.errors for p in phases)
    table = Table(
        title="the loop, phase by phase",
        caption=f"{'/'.join(map(str, sent))} requests per traffic phase, {failed} failed "
        f"({', '.join(scenarios)}). acc: answers right (simulator truth); feat / emb: share "
        "of drifted summary features / embedding components; conf: mean confidence",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("phase", no_wrap=True, min_width=15)
    for column in ("acc", "drift", "feat", "emb", "conf", "model"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("data", justify="right", no_wrap=True, min_width=8)
    for p in phases:
        table.add_row(
            p.phase,
            pct(p.traffic_accuracy),
            "-" if p.drift is None else ("[red]DRIFT[/red]" if p.drift else "[green]no[/green]"),
            pct(p.feature_drift_share),
            pct(p.embedding_drift_share),
            "-" if p.mean_confidence is None else f"{p.mean_confidence:.2f}",
            p.versions,
            p.data_version[:8],
        )
    return table


def ensure_reference(params: Params, say: Callable[[str], object]) -> None:
    """Profile the production version now if it has no reference profile yet.

    Training profiles every version it registers; a production version from
    before profiles existed (or whose artifact was lost) would leave the
    monitor nothing to compare traffic with.
    """
    from flywheel.monitoring.reference import (
        ReferenceNotFoundError,
        build_version_reference,
        load_reference,
    )
    from flywheel.registry import version_for_alias

    name = params.evaluate.registered_model
    version = version_for_alias(name, params.serve.alias)
    if version is None:
        raise LoopError(f"{name} has no {params.serve.alias!r} version to serve")
    try:
        load_reference(name, version)
    except ReferenceNotFoundError:
        say(f"{name} version {version} has no reference profile yet: profiling it now")
        build_version_reference(
            name, version, params.data.dataset_dir, splits=params.monitor.reference_splits
        )


@contextmanager
def label_studio_for(params: Params, say: Callable[[str], None]) -> Iterator[Callable[[], None]]:
    """Label Studio for the loop's label step, started in the background; yields `ready`.

    When `label.labeler` works through Label Studio (digits or pages), a server `flywheel label
    server` left running is reused, else one is started (from the migrated
    template: seconds, not minutes) and stopped at the end. Its start overlaps
    the traffic phases; `ready()` waits for it (and re-raises its failure).
    The oracle's account is added to its organisation.
    """
    from concurrent.futures import ThreadPoolExecutor

    from flywheel.demo.oracle import ORACLE_EMAIL
    from flywheel.labeling.page_labeler import PageStudioLabeler, labeler_of
    from flywheel.labeling.server import running_label_studio
    from flywheel.labeling.studio import LabelStudioLabeler

    if not isinstance(labeler_of(params), LabelStudioLabeler | PageStudioLabeler):
        yield lambda: None
        return
    started = time.perf_counter()
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=1) as pool:
        server = running_label_studio(params.label.studio, members=[ORACLE_EMAIL])
        starting = pool.submit(stack.enter_context, server)

        def ready() -> None:
            connection = starting.result()
            say(
                f"Label Studio at {connection.url} (ready {time.perf_counter() - started:.0f} s "
                f"after its start; sign in as {connection.admin}: the password is in the "
                "connection file)"
            )

        try:
            yield ready
        finally:
            starting.exception()  # let the start finish, so the stack stops what it started


def run_closed_loop(
    params_path: Path,
    params: Params,
    *,
    retrain: Callable[[list[str]], None],
    drift_scenario: str,
    requests: int,
    say: Callable[[str], None] = print,
) -> list[PhaseResult]:
    """Serve production and drive the flywheel once around: the demo's second half.

    Args:
        params_path: the params.yaml the service reads.
        params: the same, as loaded (with the run's overrides applied).
        retrain: runs the `flywheel` pipeline with these extra `--set` overrides
            (the CLI passes its KFP local runner with progress).
        drift_scenario: the scenario under `scenarios:` that drifts.
        requests: requests per traffic phase (at least `monitor.min_window_size`).
        say: where progress lines go.

    Returns:
        One row per phase, for `phase_table`.

    Raises:
        LoopError: a phase failed (the message says which and why).
        flywheel.demo.server.ServerStartError: the service did not start.
    """
    from flywheel.data.versioning import data_version
    from flywheel.demo.server import reload_model, start_server
    from flywheel.registry import version_for_alias
    from flywheel.tracking import configure_tracking

    if requests < params.monitor.min_window_size:
        raise LoopError(
            f"{requests} requests per phase are fewer than monitor.min_window_size "
            f"({params.monitor.min_window_size}): the monitor could not decide"
        )
    configure_tracking()
    name = params.evaluate.registered_model
    ensure_reference(params, say)
    token = secrets.token_urlsafe(24)
    phases: list[PhaseResult] = []
    with (
        label_studio_for(params, say) as label_studio_ready,
        start_server(params_path, env={ADMIN_TOKEN_ENV: token}) as url,
    ):
        before = data_version(".", params.data)
        say(f"serving models:/{name}@{params.serve.alias} at {url}")
        phase_started = datetime.now(UTC)
        for phase, scenario, seed in (
            ("in-distribution", "in_distribution", 101),
            ("drifted", drift_scenario, 102),
        ):
            say(f"— {phase} traffic: {requests} requests of scenario {scenario!r}")
            phase_started = datetime.now(UTC)
            phases.append(
                run_traffic_phase(
                    params,
                    phase,
                    scenario,
                    url,
                    requests=requests,
                    seed=seed,
                    data_version=before,
                    say=say,
                )
            )
        champion = version_for_alias(name, params.serve.alias) or "?"
        started = time.perf_counter()
        window_start = phase_started - timedelta(seconds=1)  # the drifted phase, all of it
        say(
            "— the flywheel pipeline (curation, then update, in one run): monitor → curate → "
            "send → collect the labels → new data version → train → evaluate → promote"
        )
        label_studio_ready()
        retrain([f"monitor.since={window_start.isoformat()}"])
        configure_tracking()
        after = data_version(".", params.data)
        serving = version_for_alias(name, params.serve.alias) or "?"
        swap = reload_model(url, token)
        if serving == champion:
            say(f"the candidate was not promoted: the service keeps version {champion}")
        else:
            how = "admin reload" if swap["changed"] else "its own poll of the alias, first"
            say(
                f"the service swapped version {champion} → {swap['model_version']} "
                f"without downtime ({how})"
            )
        phases.append(
            event_row(
                "retrained",
                f"v{champion}→v{serving}" if serving != champion else f"v{champion} kept",
                after,
                time.perf_counter() - started,
            )
        )
        say(f"— drifted traffic again: {requests} requests of scenario {drift_scenario!r}")
        phases.append(
            run_traffic_phase(
                params,
                "drifted again",
                drift_scenario,
                url,
                requests=requests,
                seed=103,
                data_version=after,
                say=say,
            )
        )
    return phases
