"""`flywheel monitor --trigger`: the guard's decision on a drift verdict, and the run it submits.

The same code runs on a laptop and in the monitor CronJob: the guard
(`flywheel.workflows.trigger`) decides against the history in the state store;
when it fires, the flywheel pipeline is compiled for the cluster and submitted
through the KFP API (`pipelines.submission`, as `flywheel pipeline submit`
does); the decision, with the run it started, is recorded and printed. A
drift is a verdict, not a failure: the command exits 0 whatever the guard
decided, and 2 only on an error (the endpoint refused, a record is unreadable).
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
    from flywheel.workflows.trigger import Decision

HostOpt = Annotated[
    str | None,
    typer.Option(
        envvar="KF_PIPELINES_ENDPOINT",
        help="--trigger: the KFP API endpoint the flywheel pipeline is submitted to.",
    ),
]
NamespaceOpt = Annotated[
    str | None,
    typer.Option(
        envvar="FLYWHEEL_KFP_NAMESPACE",
        help="--trigger: Kubeflow profile namespace (multi-user installs).",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        envvar="FLYWHEEL_KFP_TOKEN", show_default=False, help="--trigger: bearer token for KFP."
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="KF_PIPELINES_SA_TOKEN_PATH",
        help="--trigger: file holding the bearer token, read before each request.",
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


def target(
    host: str | None, namespace: str | None, token: str | None, token_file: Path | None, out: Path
) -> Target:
    """The submission target of `--trigger`, checked before monitoring starts.

    Raises:
        typer.BadParameter: no endpoint.
        typer.Exit: the credentials are contradictory or empty (status 2).
    """
    from flywheel.cli.composition import require
    from flywheel.cli.console import exit_on

    if not host:
        raise typer.BadParameter(
            "--trigger submits through the KFP API: give --host or KF_PIPELINES_ENDPOINT",
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
    result: MonitorResult,
    where: Target,
    *,
    json_out: bool = False,
    now: datetime | None = None,
) -> Decision:
    """Decide on `result`, submit the flywheel pipeline when the guard fires, record the decision.

    The triggered run gets this command's `--set` pairs and, when the labelling
    budget left is below the cycle's cap, `curate.cost.per_cycle` set to what is
    left. A refused submission is recorded as `failed` and exits 2.
    """
    from flywheel.cli.pipeline import ClusterOptions, pipeline_entry, submit_catalog_pipeline
    from flywheel.storage import state_url
    from flywheel.workflows.trigger import decide, failed, fired, record_decision
    from pipelines.cluster import ClusterError

    now = now or datetime.now(UTC)
    decision = decide(p, result, now=now)
    if decision.action == "fired":
        run_pairs = list(pairs)
        if decision.spend_limit is not None:
            run_pairs.append(f"curate.cost.per_cycle={decision.spend_limit}")
        try:
            submission = submit_catalog_pipeline(
                pipeline_entry("flywheel", runnable=True),
                params,
                run_pairs,
                host=where.host,
                experiment=p.monitor.trigger.experiment,
                run_name=f"flywheel-drift-{now:%Y%m%d-%H%M%S}",
                namespace=where.namespace,
                credentials=where.credentials,
                out=where.out,
                options=ClusterOptions(),
            )
        except ClusterError as err:
            decision = failed(decision, str(err))
            location = record_decision(state_url(p.state.url), decision)
            err_console.print(f"{decision.summary()}\ndecision: {location}", soft_wrap=True)
            raise abort(f"the triggered run was not submitted: {err}") from None
        decision = fired(decision, submission.id, submission.url, submission.namespace)
    location = record_decision(state_url(p.state.url), decision)
    out = err_console if json_out else console  # --json keeps stdout for the JSON
    out.print(decision.summary(), soft_wrap=True)
    if decision.run_url:
        out.print(f"  {decision.run_url}", soft_wrap=True)
    out.print(f"decision: {location}", soft_wrap=True)
    return decision
