"""Serve the production model over HTTP; send it simulated traffic."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flywheel.cli.composition import serving_root
from flywheel.cli.console import abort, console, err_console, exit_on, print_table
from flywheel.cli.options import ParamsOpt, SetOpt, read_params
from flywheel.cli.project_root import ProjectTyper

commands = ProjectTyper()


SERVICE_TARGET = "serving.service:FlywheelService"
"""What `flywheel serve` hands to `bentoml serve`."""
PAGE_SERVICE_TARGET = "serving.pages.service:PageService"
"""What it hands over for a plan whose tasks are a detector and a recogniser (the page pair)."""
PAGE_TASKS = frozenset({"detection", "recognition"})
"""A plan with these tasks (`tasks:`) is served as the two-stage page service."""


def is_page_plan(tasks: object) -> bool:
    """Whether a plan's `tasks` section makes it the two-stage page service.

    >>> is_page_plan({"detection": {}, "recognition": {}}), is_page_plan({})
    (True, False)
    """
    return isinstance(tasks, dict) and set(tasks) >= PAGE_TASKS


@commands.command()
def serve(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default: serve.host, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (default: serve.port).")
    ] = None,
) -> None:
    """Serve the registry's production model over HTTP (BentoML, adaptive batching).

    Runs `bentoml serve serving.service:FlywheelService` in this process with
    FLYWHEEL_PARAMS pointing at --params (and FLYWHEEL_SET holding the --set
    pairs, which the server applies the same way), BENTOML_HOME under the state folder
    and telemetry off. /readyz answers 200 while a model is served (its body:
    which version, and why when it is not production's:
    serve.on_unloadable_production), 503 with the reason while none is; /metrics
    has Prometheus metrics. The model comes from MLFLOW_TRACKING_URI (or the
    local store); a newly promoted version is swapped in without downtime
    within serve.poll_interval_s, or at once by POST /admin/reload with
    'Authorization: Bearer $FLYWHEEL_ADMIN_TOKEN' (set it to enable that
    endpoint). Once a model is served it prints its URLs: the API, Swagger,
    /metrics and /readyz. Stop with Ctrl-C.

    A plan whose tasks are a detector and a recognizer (plans/pages.yaml) is
    served as the two-stage page service (serving.pages.service:PageService):
    POST /read_page a page photo, each formula's box and LaTeX come back;
    each model swaps on its own.
    """
    import os

    from flywheel.env import state_dir
    from flywheel.processes import port_holder
    from flywheel.serving_api import PARAMS_ENV, SERVE_URL_ENV, SET_ENV, base_url
    from flywheel.storage import STATE_URL_ENV, state_url
    from flywheel.tracking import resolve_tracking

    p = read_params(params, set_)  # fail here, with the bad key, rather than inside a worker
    held = port_holder(host or p.serve.host, port or p.serve.port)
    if held is not None:  # say who holds it, rather than BentoML's "Address already in use"
        raise abort(f"{held}; choose another port (--port)")
    params_path = params.resolve()
    env = dict(os.environ)
    env[PARAMS_ENV] = str(params_path)
    env[SET_ENV] = "\n".join(set_ or [])
    env.setdefault("BENTOML_HOME", str((state_dir() / "bentoml").resolve()))
    env["BENTOML_DO_NOT_TRACK"] = "true"
    # BentoML changes into --working-dir: pin the state folder and the store absolutely.
    env["FLYWHEEL_HOME"] = str(state_dir().resolve())
    shared = state_url(p.state.url)
    if isinstance(shared, Path):  # a local shared-state folder, pinned like FLYWHEEL_HOME
        env[STATE_URL_ENV] = str(shared.resolve())
    env["MLFLOW_TRACKING_URI"] = resolve_tracking().uri
    env[SERVE_URL_ENV] = base_url(host or p.serve.host, port or p.serve.port)
    Path(env["BENTOML_HOME"]).mkdir(parents=True, exist_ok=True)
    pages = is_page_plan(p.tasks)
    argv = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        PAGE_SERVICE_TARGET if pages else SERVICE_TARGET,
        "--working-dir",
        str(serving_root()),
        "--host",
        host or p.serve.host,
        "--port",
        str(port or p.serve.port),
    ]
    served = f"models:/{p.evaluate.registered_model}@{p.serve.alias}"
    if pages:  # the recogniser's name: the plan under its other task
        reader = read_params(params, [*(set_ or []), "train.task=recognition"])
        served = f"pages: {served} → models:/{reader.evaluate.registered_model}@{p.serve.alias}"
    err_console.print(f"serving {served} on {env[SERVE_URL_ENV]}")  # URLs follow once ready
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)  # the server replaces this process: signals go to it


@commands.command()
def simulate(
    scenario: Annotated[
        str,
        typer.Option(help="Traffic scenario of params.yaml `scenarios:` (e.g. in_distribution)."),
    ],
    requests: Annotated[
        int | None, typer.Option(min=1, help="Requests to send (default: simulate.requests).")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="The service (default: simulate.url, else serve.host:serve.port)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Batch seed: the same seed draws the same images.")] = 0,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Requests in flight (default: simulate.concurrency).")
    ] = None,
    images_per_request: Annotated[
        int | None,
        typer.Option(min=1, help="Images per request (default: simulate.images_per_request)."),
    ] = None,
    max_seconds: Annotated[
        float | None,
        typer.Option(
            help="Start no request after this many seconds (default: simulate.max_seconds)."
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Send a scenario's images to the running service; record the truth of what was sent.

    Images come from the collector's production glyph pool, mixed as the
    scenario says (in-distribution or drifted). Each request carries an
    X-Request-ID; the truth of every answered image goes to
    <state dir>/ground_truth/ (the service never reads it). Prints requests,
    errors, accuracy of the answers against the truth, the versions that
    answered and the latency. Exits 1 when no request was answered.
    """
    from flywheel.config import ConfigError
    from flywheel.demo.simulate import SimulationError, simulate_traffic

    p = read_params(params, set_)
    with exit_on(ConfigError, SimulationError):
        report = simulate_traffic(
            p,
            scenario,
            requests=requests,
            url=url,
            seed=seed,
            concurrency=concurrency,
            images_per_request=images_per_request,
            max_seconds=max_seconds,
        )
    table = Table(title=f"traffic: {report.scenario} → {report.url}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("requests sent", str(report.requests))
    if report.not_sent:
        table.add_row("not sent (time limit)", str(report.not_sent))
    table.add_row("images answered", str(report.images))
    for kind, count in report.errors.items():
        table.add_row(f"[red]errors: {escape(kind)}[/red]", str(count))
    if report.accuracy is not None:
        table.add_row("accuracy vs truth", f"{report.accuracy:.3f}")
    for name, value in report.accuracy_by_stratum.items():
        table.add_row(f"  {name}", f"{value:.3f}")
    for version, count in report.versions.items():
        table.add_row(f"answered by version {version}", str(count))
    for name, value in report.latency_ms.items():
        table.add_row(f"latency {name}", f"{value:.1f} ms")
    table.add_row("throughput", f"{report.throughput_rps:.1f} req/s in {report.elapsed_s:.1f} s")
    print_table(table)
    if report.first_error:
        err_console.print(f"first error: {escape(report.first_error)}")
    if report.truth_file:
        console.print(f"truth: {report.truth_file}", soft_wrap=True)
    if report.answered == 0:
        raise typer.Exit(1)
