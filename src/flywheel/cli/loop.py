"""The loop after serving: monitor for drift, curate, label; the reference profile; the dashboards.

`flywheel label import|oracle|server|sync` is the `label` group (`label_commands`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from flywheel.cli.console import abort, console, err_console, exit_on, print_table
from flywheel.cli.options import DatasetOpt, LogDirOpt, ModelOpt, ParamsOpt, SetOpt, read_params
from flywheel.cli.project_root import ProjectTyper
from flywheel.cli.trigger import HostOpt, NamespaceOpt, TokenFileOpt, TokenOpt

if TYPE_CHECKING:
    from flywheel.config import Params
    from flywheel.monitoring import AlreadyMonitoredError

commands = ProjectTyper()
label_commands = ProjectTyper(
    help="Label Studio: the local server; labels in and out (JSON); the demo oracle.",
    no_args_is_help=True,
)


@commands.command()
def curate(
    budget: Annotated[
        int | None, typer.Option(min=1, help="Images to queue (default: curate.budget).")
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="least_confidence | margin | entropy | committee | random "
            "(default: curate.strategy)."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Window start: ISO time (naive = UTC) or a duration back (90m, 2h, 1d)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Window end: ISO time or a duration back (default: now).")
    ] = None,
    log_dir: LogDirOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Choose the logged production images worth labelling; queue them as Label Studio tasks.

    Candidates have a stored image and are neither queued nor labelled. The
    batch is at most curate.budget images and costs at most curate.cost.per_cycle
    (an image's annotations at curate.cost.prices); its spend is printed and
    recorded under <state>/labeling/spend/. Writes
    <label dir>/queue/<batch-id>.json (import it into Label Studio with the
    label_config.xml beside it) and prints the batch.
    """
    from flywheel.curation import STRATEGIES, CurationError, curate_batch, parse_since
    from flywheel.registry import RegistryError
    from flywheel.storage import as_location
    from flywheel.tracking import configure_tracking

    p = read_params(params, set_)
    if p.data.pages is not None:  # the page plan: pages, priced per box and transcription
        if strategy is not None:
            raise typer.BadParameter(
                "a page plan ranks pages by the pair's uncertainty only", param_hint="--strategy"
            )
        from flywheel.cli.page_loop import curate_page_batch

        with exit_on(CurationError):
            curate_page_batch(p, params, budget, since, until, Path(log_dir) if log_dir else None)
        return
    if strategy is not None and strategy not in STRATEGIES:
        raise typer.BadParameter(f"choose one of {', '.join(STRATEGIES)}", param_hint="--strategy")
    with exit_on(CurationError, RegistryError):
        start = parse_since(since) if since else None
        end = parse_since(until) if until else None
        if (strategy or p.curate.strategy) == "committee":
            configure_tracking()
        result = curate_batch(
            p,
            strategy=strategy,  # type: ignore[arg-type]  # checked against STRATEGIES above
            budget=budget,
            since=start,
            until=end,
            log_root=as_location(log_dir) if log_dir else None,
        )
    if result.queue_file is None and result.image_budget == 0:
        console.print(
            f"nothing to curate: the cycle's budget of {result.spend_limit:g} {result.currency} "
            f"buys no image at {result.unit_cost:g} {result.currency} each (curate.cost)"
        )
        return
    if result.queue_file is None:
        console.print(
            f"nothing to curate: no logged image with a stored file that is not already "
            f"queued or labelled ({result.excluded} are)"
        )
        return
    selected = result.selected
    committee = f", committee versions {', '.join(result.committee)}" if result.committee else ""
    console.print(
        f"queued [bold]{len(selected)}[/bold] of {result.candidates} candidates "
        f"({result.strategy}, spread over {result.space}{committee})"
    )
    table = Table(title=f"batch {result.batch_id}: by predicted label and model version")
    for column in ("predicted", "version", "images", "mean score", "mean confidence"):
        table.add_column(column, justify="left" if column in ("predicted", "version") else "right")
    grouped = selected.groupby(["label", "model_version"])
    for (label, version), rows in grouped:
        table.add_row(
            str(label),
            str(version),
            str(len(rows)),
            f"{rows['score'].mean():.3f}",
            f"{rows['confidence'].mean():.3f}",
        )
    print_table(table)
    cap = "" if result.spend_limit is None else f" of {result.spend_limit:.2f} allowed"
    console.print(
        f"labelling cost: [bold]{result.spend:.2f} {result.currency}[/bold]{cap} "
        f"({len(selected)} images x {result.unit_cost:g}; the cycle buys up to "
        f"{result.image_budget})"
    )
    console.print(f"queue: {result.queue_file}", soft_wrap=True)
    if result.picture_file is not None:
        console.print(f"the batch as a picture: {result.picture_file}", soft_wrap=True)


@commands.command()
def monitor(
    since: Annotated[
        str | None,
        typer.Option(
            help="Window start: ISO time (naive = UTC) or a duration back from now (90m, 2h, 1d). "
            "Default: the last monitor.window_hours, unless --last is given."
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Window end (exclusive), same forms. Default: now.")
    ] = None,
    last: Annotated[
        int | None, typer.Option(min=1, help="Only the most recent N predictions of the window.")
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(help="Model version to check (default: the one that served the latest)."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON on stdout, nothing else.")
    ] = False,
    save: Annotated[
        bool,
        typer.Option("--save/--no-save", help="Write the HTML report and the Evidently snapshot."),
    ] = True,
    report: Annotated[
        Path | None,
        typer.Option(
            help="The HTML report (default: monitor.reports_dir/<model>-v<N>-<time>.html)."
        ),
    ] = None,
    trigger: Annotated[
        bool,
        typer.Option(
            "--trigger",
            help="On drift, submit the curation pipeline through the KFP API if the guard "
            "(monitor.trigger) allows; record the decision; exit 0 on a verdict.",
        ),
    ] = False,
    host: HostOpt = None,
    namespace: NamespaceOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    out: Annotated[
        Path, typer.Option(help="--trigger: where the submitted pipeline is compiled.")
    ] = Path("dist/pipelines"),
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Check a window the Evidently workspace already holds again (a second snapshot).",
        ),
    ] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Check a window of the prediction log for drift against the serving version's reference.

    Evidently compares the summary features, the embedding (PCA components),
    the predicted labels and the confidence with the reference profile of the
    model version that served the window; accuracy is reported where ground
    truth is known. The snapshot goes to the Evidently workspace (`flywheel ui`).

    Exit status: 0 no drift, 1 drift, 2 error (bad configuration, no reference
    profile, fewer predictions than monitor.min_window_size, ...).

    A window already monitored (same version, same first and last prediction)
    is not checked again: the command names its report and snapshot, writes
    nothing and exits with the status of the verdict recorded then (0 with
    --trigger, which does not fire again); --force checks it again.

    With --trigger (the monitor CronJob): on drift the guard of monitor.trigger
    (cooldown, runs per day, minimum window, labelling budget left) decides
    whether to submit the curation pipeline to the KFP endpoint (--host, or
    KF_PIPELINES_ENDPOINT; --namespace, --token or --token-file as `pipeline
    submit` takes them); the decision (fired, held back and why, none) is
    recorded under <state>/monitoring/triggers/ and printed. Exit status 0
    for any verdict, 2 on an error (the endpoint refused included). A page
    plan (--params plans/pages.yaml) is decided on both stages: drift in
    either, each on at least its own minimum window (pages, crops).
    """
    import json
    from dataclasses import asdict

    from flywheel.cli.trigger import target
    from flywheel.cli.trigger import trigger as run_trigger
    from flywheel.config import ConfigError
    from flywheel.monitoring import AlreadyMonitoredError, MonitoringError, parse_time, result_table
    from flywheel.monitoring import monitor as run_monitor
    from flywheel.monitoring.monitor import EXIT_ERROR, predictions_dir
    from flywheel.registry import RegistryError
    from flywheel.tracking import configure_tracking

    where = target(host, namespace, token, token_file, out) if trigger else None
    p = read_params(params, set_)
    configure_tracking()
    if p.data.pages is not None:  # the page plan: both stages, versions from the page log
        if version is not None or report is not None:
            raise abort(
                "a page plan is monitored per stage: --version and --report apply to a "
                "one-model plan"
            )
        from flywheel.cli.page_loop import monitor_page_plan

        monitor_page_plan(
            p,
            params,
            since=since,
            until=until,
            last=last,
            save=save,
            force=force,
            json_out=json_out,
            where=where,
            pairs=list(set_ or []),
        )
    with exit_on(MonitoringError, ConfigError, RegistryError, ValueError, code=EXIT_ERROR):
        start = parse_time(since) if since else None
        end = parse_time(until) if until else None
        try:
            with err_console.status("monitoring: Evidently report over the window"):
                result = run_monitor(
                    p,
                    since=start,
                    until=end,
                    last=last,
                    version=version,
                    log_dir=predictions_dir(p, params.resolve().parent),
                    save=save,
                    report_path=report,
                    force=force,
                )
        except AlreadyMonitoredError as done:
            already_monitored(done, json_out=json_out, trigger=where is not None)
    if where is not None:
        from flywheel.curation import CurationError
        from flywheel.workflows.trigger import TriggerError

        with exit_on(TriggerError, CurationError, OSError, code=EXIT_ERROR):
            decision = run_trigger(p, params, list(set_ or []), result, where, json_out=json_out)
    if json_out:
        document = result.to_dict()
        if where is not None:
            document["trigger"] = asdict(decision)
        print(json.dumps(document, indent=2, allow_nan=False))
    else:
        print_table(result_table(result))
        for note in result.check.notes:
            console.print(f"note: {escape(note)}")
        if result.report_path:
            console.print(f"report: {result.report_path}", soft_wrap=True)
        if result.project_id:
            console.print(f"dashboard: `flywheel ui`, project {result.project_id}")
    raise typer.Exit(0 if where is not None else result.exit_code)


def already_monitored(done: AlreadyMonitoredError, *, json_out: bool, trigger: bool) -> NoReturn:
    """Say the window was monitored before (where its report is); exit with its verdict."""
    import json

    from flywheel.monitoring import EXIT_DRIFT, EXIT_NO_DRIFT

    window = done.window
    if json_out:
        document = {
            **window.metadata,  # the window, its report; "drift" as text, replaced below
            "already_monitored": True,
            "drift": window.drift,
            "model_name": window.model_name,
            "project_id": window.project_id,
            "snapshot_id": window.snapshot_id,
            "message": str(done),
        }
        print(json.dumps(document, indent=2, allow_nan=False))
    else:
        console.print(escape(str(done)), soft_wrap=True)
    verdict = EXIT_DRIFT if window.drift else EXIT_NO_DRIFT
    raise typer.Exit(EXIT_NO_DRIFT if trigger else verdict)


@commands.command()
def reference(
    version: Annotated[
        str | None, typer.Option(help="Registered version (default: the 'production' alias).")
    ] = None,
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    pair: Annotated[
        bool,
        typer.Option(
            "--pair",
            help="A page plan: the crop stage's reference, the production recogniser on the "
            "crops the production detector cuts; kept in the state store.",
        ),
    ] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Compute and store the reference profile of a registered version (monitoring's baseline).

    Training does this for every new model; use it for versions trained before,
    or to profile a version on the dataset it was trained on after the fact.

    With --pair (a page plan, --params plans/pages.yaml): the crop stage's
    reference of the production pair (flywheel.monitoring.page_reference),
    made where the page dataset is so that a monitor without it finds it in
    the state store.
    """
    from flywheel.evaluation import EvaluationError
    from flywheel.monitoring import MonitoringError, build_version_reference
    from flywheel.registry import RegistryError, version_for_alias
    from flywheel.tasks import DatasetError
    from flywheel.tracking import configure_tracking

    p = read_params(params, set_)
    configure_tracking()
    if pair:
        if version is not None or model is not None:
            raise abort("--pair profiles the production pair: --version and --model do not apply")
        from flywheel.monitoring.page_reference import build_pair_reference

        with exit_on(MonitoringError, RegistryError, EvaluationError, DatasetError):
            where, frame = build_pair_reference(p, dataset_dir=dataset)
        console.print(
            f"crop-stage reference: {len(frame)} crops the detector cut from the "
            f"{'+'.join(p.monitor.reference_splits)} pages → {where}",
            soft_wrap=True,
        )
        return
    name = model or p.evaluate.registered_model
    with exit_on(MonitoringError, RegistryError, EvaluationError, DatasetError):
        chosen = version or version_for_alias(name, "production")
        if chosen is None:
            raise RegistryError(f"model {name!r} has no 'production' version; pass --version")
        info = build_version_reference(
            name,
            chosen,
            dataset or p.data.dataset_dir,
            splits=p.monitor.reference_splits,
            progress=True,
        )
    console.print(
        f"{name} version {chosen}: reference profile of {info.rows} images "
        f"({'+'.join(info.splits)}, embedding {info.embedding_dim}) → run {info.run_id} "
        f"artifact {info.artifact} ({info.seconds:.1f} s)"
    )


@commands.command()
def ui(
    host: Annotated[str | None, typer.Option(help="Address (default: ui.host).")] = None,
    evidently_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Evidently UI port (default: ui.evidently_port)."),
    ] = None,
    mlflow_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="MLflow UI port (default: ui.mlflow_port).")
    ] = None,
    mlflow: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="Start the MLflow UI too.")
    ] = True,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Open the dashboards until Ctrl-C: the Evidently UI over the workspace, and MLflow's.

    The Evidently project of the registered model shows drift over time (share
    of drifted features, embedding drift, confidence, prediction distribution,
    accuracy on labelled traffic, the version serving). Both bind 127.0.0.1 by
    default: neither has authentication.
    """
    import signal
    import threading

    from flywheel.cli.summaries import mlflow_training_url
    from flywheel.env import state_dir
    from flywheel.monitoring.dashboards import DashboardError, start_dashboards
    from flywheel.monitoring.monitor import workspace_dir
    from flywheel.monitoring.workspace import open_workspace
    from flywheel.tracking import configure_tracking

    p = read_params(params, set_)
    tracking = configure_tracking()
    bind = host or p.ui.host
    workspace = workspace_dir(p)
    workspace = workspace.resolve() if isinstance(workspace, Path) else workspace
    with (
        exit_on(DashboardError),
        err_console.status("starting the Evidently UI and the MLflow UI"),
    ):
        dashboards = start_dashboards(
            workspace,
            tracking.uri,
            host=bind,
            evidently_port=evidently_port or p.ui.evidently_port,
            mlflow_port=(mlflow_port or p.ui.mlflow_port) if mlflow else None,
            log_dir=state_dir() / "logs",
        )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # explicit: a background job ignores SIGINT
        signal.signal(signum, lambda *_: stop.set())
    with dashboards:
        evidently = dashboards.servers[0]
        projects = open_workspace(workspace).search_project(p.evaluate.registered_model)
        where = (
            f"/projects/{projects[0].id}"
            if projects
            else " (no snapshot yet: run `flywheel monitor`)"
        )
        console.print(f"Evidently UI: {evidently.url}{where}  (workspace {workspace})")
        for server in dashboards.servers[1:]:
            console.print(
                f"MLflow UI:    {mlflow_training_url(server.url)}  ({tracking.uri})", soft_wrap=True
            )
        console.print("Ctrl-C stops both.")
        while not stop.wait(1.0) and not dashboards.dead():
            pass
        dead = dashboards.dead()
        if stop.is_set() or not dead:
            console.print("stopping the dashboards")
            return
        raise abort(
            f"the {dead[0].name} UI exited (status {dead[0].process.returncode}); "
            f"log: {dead[0].log}"
        )


@label_commands.command("import")
def label_import(
    path: Annotated[
        Path, typer.Argument(help="A Label Studio export: JSON or JSON-MIN (a list of tasks).")
    ],
    origin: Annotated[
        str, typer.Option(help="Recorded on the labels: label-studio (people) or oracle.")
    ] = "label-studio",
    log_dir: LogDirOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Import a Label Studio export: check every task, then record the labels, all or nothing.

    Reads Label Studio's JSON and JSON-MIN exports (and the pre-1.0
    `completions`); the class is the choice of label.from_name, else of the
    only Choices control (the stock template's `choice`). Several annotators on
    a task: label.annotators (majority by default; a tie is an error). A label
    outside the plan's classes, a request never served (in no queue batch and
    not in the prediction log), a task without data.request_id/index, or two
    tasks labelling one image differently is an error naming the task; so is
    an export that yields no label, and a CSV export. Nothing is written then
    (exit 2). Re-importing an export records nothing new.

    With a page plan (--params plans/pages.yaml) an export of the page project
    is checked whole (every task's boxes and LaTeX, its annotators agreeing)
    and saved into <label dir>/page-exports/, where the `label-studio-export`
    page labeller reads it (`label sync`, the update pipeline).
    """
    from flywheel.data.ground_truth import ground_truth_dir
    from flywheel.labeling import LabelImportError, import_labels, queue_dir, served_keys
    from flywheel.monitoring.prediction_log import predictions_dir
    from flywheel.storage import state_url

    p = read_params(params, set_)
    if p.data.is_pages:
        _import_page_export(p, path)
        return
    with exit_on(LabelImportError):
        state = state_url(p.state.url)
        served = served_keys(
            queue_dir(p.label, state), log_dir if log_dir is not None else predictions_dir(p)
        )
        result = import_labels(
            path,
            p.data.classes,
            p.label,
            served=served,
            origin=origin,
            gt_root=ground_truth_dir(state),
        )
    console.print(
        f"{path}: {len(result.labels)} labelled tasks; [bold]{result.written}[/bold] new or "
        f"changed labels recorded, {result.unchanged} already known, "
        f"{len(result.unlabelled)} tasks without a label"
    )
    if result.file:
        console.print(f"labels: {result.file}", soft_wrap=True)


def _import_page_export(p: Params, path: Path) -> None:
    """Check a page project's export whole, then save it where the page export labeller reads."""
    from flywheel.labeling import write_json_atomic
    from flywheel.labeling.page_annotations import PageLabelError, parse_page_tasks
    from flywheel.labeling.page_labeler import page_exports_dir
    from flywheel.labeling.queue import read_json
    from flywheel.storage import join

    assert p.data.pages is not None
    with exit_on(PageLabelError):
        tasks = read_json(path, PageLabelError)
        read = parse_page_tasks(
            tasks,
            box_name=p.label.from_name,
            vocabulary=p.data.pages.vocabulary,
            annotators=p.label.annotators,
            source=str(path),
            strict=True,
        )
        if not read.labels:
            raise PageLabelError(f"{path}: no labelled page ({len(read.unlabelled)} unlabelled)")
        saved = write_json_atomic(join(page_exports_dir(p), path.name), tasks)
    console.print(
        f"{path}: [bold]{len(read.labels)}[/bold] labelled pages, {len(read.unlabelled)} "
        f"without a submitted annotation; saved as {saved} (read by `label sync` and the "
        "update pipeline)",
        soft_wrap=True,
    )


@label_commands.command("oracle")
def label_oracle(
    batch: Annotated[
        str | None, typer.Option(help="Queue batch id to answer (default: every pending task).")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """The demo labeller: answer the queue from the simulator's truth, as a Label Studio export.

    The export (under <label dir>/exports/) is imported with `label import`'s
    code, as a person's would be. Tasks the simulator did not send stay unlabelled.
    """
    from flywheel.demo.oracle import label_with_oracle
    from flywheel.labeling import LabelImportError, QueueError

    p = read_params(params, set_)
    if p.data.is_pages:
        raise typer.BadParameter(
            "the page plan's oracle annotates in Label Studio as the pipeline's labeller "
            "(label.labeler: flywheel.demo.page_oracle:PageStudioOracle); this command "
            "answers the digits queue",
            param_hint="--params",
        )
    with exit_on(QueueError, LabelImportError):
        result = label_with_oracle(p, batch=batch)
    if result.export is None:
        console.print(f"nothing to label: no pending task in {len(result.batches)} queue batches")
        return
    written = result.imported.written if result.imported else 0
    console.print(
        f"oracle answered [bold]{result.answered}[/bold] of {result.tasks} pending tasks "
        f"({len(result.unanswered)} without truth); {written} labels recorded"
    )
    console.print(f"export: {result.export}", soft_wrap=True)


@label_commands.command("server")
def label_server(
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port (default: label.studio.port)."),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Run Label Studio on 127.0.0.1 until Ctrl-C, for the `label-studio` labeller and people.

    Installed by `make label-studio` (its own venv). The data (SQLite) lives in
    <state dir>/label-studio/data; the first start creates the owner
    (label.studio.admin) with a random password and an access token, written to
    <state dir>/label-studio/connection.json (mode 0600), where the labeller
    finds the server. Nothing is sent outside (version check, analytics, Sentry off).
    """
    import signal
    import threading

    from flywheel.labeling.server import (
        LabelStudioError,
        connection_path,
        healthy,
        read_connection,
        start_label_studio,
    )

    p = read_params(params, set_)
    with exit_on(LabelStudioError):
        running = read_connection()
        if running is not None and healthy(running.url):
            console.print(f"Label Studio already runs at {running.url} ({connection_path()})")
            return
        with err_console.status("starting Label Studio (the first start migrates: minutes)"):
            server = start_label_studio(p.label.studio, port=port)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    connection = server.connection
    console.print(f"Label Studio: {connection.url}  (sign in as {connection.admin})")
    console.print(f"connection, password and token: {connection_path()}", soft_wrap=True)
    console.print("Ctrl-C stops it.")
    try:
        while not stop.wait(1.0) and server.alive():
            pass
    finally:
        server.stop()
    if not stop.is_set():
        raise abort(f"Label Studio exited (status {server.process.returncode}); log: {server.log}")


@label_commands.command("sync")
def label_sync(
    submit: Annotated[
        bool,
        typer.Option(
            "--submit",
            help="Submit the update pipeline through the KFP API instead of running it here.",
        ),
    ] = False,
    host: HostOpt = None,
    namespace: NamespaceOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    out: Annotated[
        Path, typer.Option(help="--submit: where the submitted pipeline is compiled.")
    ] = Path("dist/pipelines"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Count the complete annotations of the outstanding batches; update when there are enough.

    A batch is outstanding from the curation run that sent it until a merge
    took its tasks. The configured labeller (label.labeler) says which tasks
    are complete, recording nothing: the Label Studio project's annotations,
    the exports saved in <label dir>/exports/, or the demo oracle's truth. When
    at least label.sync.min_completed are, the update pipeline (collect the
    labels → merge into a new data version → training; with a page plan the
    pair's update: each model retrained, the recogniser after the detector) runs
    on the KFP local runner, or with --submit is submitted to the KFP endpoint (--host or
    KF_PIPELINES_ENDPOINT; --namespace, --token or --token-file as `pipeline
    submit` takes them), as the label-sync CronJob does. The decision (fired,
    held and the counts) is recorded under
    <state>/monitoring/triggers/label-sync/ and printed.

    Exit status 0 for either decision, 1 when the local update run fails, 2 on
    an error (a queue batch, merge record or export unreadable, Label Studio or
    the endpoint unreachable or refusing).
    """
    from flywheel.cli.trigger import sync, target
    from flywheel.labeling import LabelerError, LabelImportError, QueueError
    from flywheel.labeling.server import LabelStudioError
    from flywheel.workflows.trigger import TriggerError

    where = target(host, namespace, token, token_file, out, flag="--submit") if submit else None
    p = read_params(params, set_)
    errors = (QueueError, LabelImportError, LabelStudioError, LabelerError, TriggerError, OSError)
    with exit_on(*errors):
        sync(p, params, list(set_ or []), where)
