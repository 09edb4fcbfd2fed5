"""The runs the loop starts by itself: `flywheel monitor --trigger` and `flywheel label sync`.

The same code runs on a laptop and in the CronJobs. `monitor --trigger`: the
guard (`flywheel.workflows.trigger`) decides against the history in the state
store; when it fires, the curation pipeline is compiled for the cluster and
submitted through the KFP API (`pipelines.submission`, as `flywheel pipeline
submit` does). `label sync`: when at least `label.sync.min_completed`
annotations of the outstanding batches are complete
(`flywheel.workflows.label_sync`), the update pipeline runs on the KFP local
runner or, with `--submit`, is submitted the same way. Each decision, with the
run it started, is recorded and printed. A verdict is not a failure: both exit
0 whatever was decided, and 2 only on an error (the endpoint refused, a record
is unreadable); a local update run that fails exits 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flywheel.cli.console import abort, console, err_console

if TYPE_CHECKING:
    from flywheel.config import Params
    from flywheel.monitoring import MonitorResult
    from flywheel.monitoring.pages import PageMonitorResult
    from flywheel.workflows.label_sync import SyncDecision
    from flywheel.workflows.trigger import Decision

HostOpt = Annotated[
    str | None,
    typer.Option(
        envvar="KF_PIPELINES_ENDPOINT",
        help="The KFP API endpoint a triggered run is submitted to.",
    ),
]
NamespaceOpt = Annotated[
    str | None,
    typer.Option(
        envvar="FLYWHEEL_KFP_NAMESPACE",
        help="Kubeflow profile namespace of a submitted run (multi-user installs).",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        envvar="FLYWHEEL_KFP_TOKEN", show_default=False, help="Bearer token for the KFP API."
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="KF_PIPELINES_SA_TOKEN_PATH",
        help="File holding the KFP bearer token, read before each request.",
    ),
]


@dataclass(frozen=True)
class Target:
    """Where a fired trigger submits: the KFP endpoint, namespace and credentials.

    Attributes:
        host: the KFP API endpoint.
        namespace: the Kubeflow profile namespace (None: single-user, or the pod's).
        credentials: a `pipelines.submission.Credentials`.
        out: where the compiled pipeline is written.
    """

    host: str
    namespace: str | None
    credentials: Any
    out: Path

    def submit(
        self, entry: Any, params: Path, pairs: list[str], *, experiment: str, run_name: str
    ) -> Any:
        """Compile the catalog pipeline `entry` and submit one run of it here.

        Raises:
            pipelines.cluster.ClusterError: the endpoint refused it or did not answer.
        """
        from flywheel.cli.pipeline import ClusterOptions, submit_catalog_pipeline

        return submit_catalog_pipeline(
            entry,
            params,
            pairs,
            host=self.host,
            experiment=experiment,
            run_name=run_name,
            namespace=self.namespace,
            credentials=self.credentials,
            out=self.out,
            options=ClusterOptions(),
        )


def _print_decision(decision: Any, location: Any, out: Any = console) -> None:
    """A recorded decision for the log: its summary, the run's URL, where it was recorded."""
    out.print(decision.summary(), soft_wrap=True)
    if decision.run_url:
        out.print(f"  {decision.run_url}", soft_wrap=True)
    out.print(f"decision: {location}", soft_wrap=True)


def target(
    host: str | None,
    namespace: str | None,
    token: str | None,
    token_file: Path | None,
    out: Path,
    *,
    flag: str = "--trigger",
) -> Target:
    """The submission target of `--trigger` or `--submit`, checked before anything runs.

    Raises:
        typer.BadParameter: no endpoint.
        typer.Exit: the credentials are contradictory or empty (status 2).
    """
    from flywheel.cli.composition import require
    from flywheel.cli.console import exit_on

    if not host:
        raise typer.BadParameter(
            f"{flag} submits through the KFP API: give --host or KF_PIPELINES_ENDPOINT",
            param_hint="--host",
        )
    require("pipelines")
    from pipelines.cluster import ClusterError
    from pipelines.submission import Credentials

    with exit_on(ClusterError):
        credentials = Credentials(token=token, token_file=token_file)
    return Target(host, namespace, credentials, out)


def trigger(
    p: Params,
    params: Path,
    pairs: list[str],
    result: MonitorResult | PageMonitorResult,
    where: Target,
    *,
    json_out: bool = False,
    now: datetime | None = None,
) -> Decision:
    """Decide on `result`, submit the curation pipeline when the guard fires, record the decision.

    A page plan's result (both stages) is decided by `decide_pages`, any other by `decide`.

    The triggered run gets this command's `--set` pairs and, when the labelling
    budget left is below the cycle's cap, `curate.cost.per_cycle` set to what is
    left. A refused submission is recorded as `failed` and exits 2.
    """
    from flywheel.cli.pipeline import pipeline_entry
    from flywheel.monitoring.pages import PageMonitorResult
    from flywheel.storage import state_url
    from flywheel.workflows.trigger import decide, decide_pages, failed, fired, record_decision
    from pipelines.cluster import ClusterError

    now = now or datetime.now(UTC)
    if isinstance(result, PageMonitorResult):
        decision = decide_pages(p, result, now=now)
    else:
        decision = decide(p, result, now=now)
    if decision.action == "fired":
        run_pairs = list(pairs)
        if decision.spend_limit is not None:
            run_pairs.append(f"curate.cost.per_cycle={decision.spend_limit}")
        try:
            submission = where.submit(
                pipeline_entry("curation", runnable=True),
                params,
                run_pairs,
                experiment=p.monitor.trigger.experiment,
                run_name=f"curation-drift-{now:%Y%m%d-%H%M%S}",
            )
        except ClusterError as err:
            decision = failed(decision, str(err))
            location = record_decision(state_url(p.state.url), decision)
            err_console.print(f"{decision.summary()}\ndecision: {location}", soft_wrap=True)
            raise abort(f"the triggered run was not submitted: {err}") from None
        decision = fired(decision, submission.id, submission.url, submission.namespace)
    location = record_decision(state_url(p.state.url), decision)
    # --json keeps stdout for the JSON
    _print_decision(decision, location, err_console if json_out else console)
    return decision


def sync(
    p: Params,
    params: Path,
    pairs: list[str],
    where: Target | None,
    *,
    now: datetime | None = None,
) -> SyncDecision:
    """Count the complete annotations; when enough, run the update pipeline; record the decision.

    The update run gets this command's `--set` pairs: on the KFP local runner
    (`where` None, on the data version data.dvc records) or submitted to
    `where` (from the latest version next to the DVC remote). A run that
    cannot be submitted, or fails locally, is recorded as `failed` and exits 2
    (1 for a failed local run).
    """
    from flywheel.cli.pipeline import (
        pipeline_entry,
        read_base_params,
        recorded_data_version,
        run_pipeline_locally,
    )
    from flywheel.storage import state_url
    from flywheel.workflows.label_sync import (
        count_completed,
        read_syncs,
        record_sync,
        started,
        sync_decision,
        sync_failed,
    )
    from pipelines.cluster import ClusterError

    now = now or datetime.now(UTC)
    state = state_url(p.state.url)
    decision = sync_decision(
        count_completed(p),
        now=now,
        previous=read_syncs(state),
        cooldown_minutes=p.label.sync.cooldown_minutes,
    )
    for reason in decision.reasons[1:]:
        console.print(reason, soft_wrap=True)
    console.print(decision.reasons[0], soft_wrap=True)
    entry = pipeline_entry("update", runnable=True) if decision.action == "fired" else None

    def give_up(how: str, error: str, code: int) -> typer.Exit:
        failed = sync_failed(decision, how, error)
        location = record_sync(state, failed)
        err_console.print(f"{failed.summary()}\ndecision: {location}", soft_wrap=True)
        return abort(f"the update run {error}", code=code)

    if entry is not None and where is None:
        try:
            run = run_pipeline_locally(
                entry, read_base_params(params, pairs), pairs, recorded_data_version(p), False
            )
        except typer.Exit:
            raise give_up("local", "failed", 1) from None
        decision = started(decision, "local", run.run_id)
        console.print(f"update pipeline run {run.run_id}: {run.seconds:.0f} s; log: {run.log}")
    elif entry is not None and where is not None:
        try:
            submission = where.submit(
                entry,
                params,
                pairs,
                experiment=p.label.sync.experiment,
                run_name=f"update-sync-{now:%Y%m%d-%H%M%S}",
            )
        except ClusterError as err:
            raise give_up("kfp", f"was not submitted: {err}", 2) from None
        decision = started(decision, "kfp", submission.id, submission.url, submission.namespace)
    location = record_sync(state, decision)
    _print_decision(decision, location)
    return decision
