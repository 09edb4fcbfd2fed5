"""`flywheel pipeline`: run a Kubeflow pipeline locally, compile it, submit it to a cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flywheel.cli.composition import require
from flywheel.cli.console import abort, console, err_console, exit_on, print_error
from flywheel.cli.options import ParamsOpt, SetOpt, read_params

if TYPE_CHECKING:
    from flywheel.config import Params

commands = typer.Typer(
    help="Kubeflow pipelines: run locally (KFP local runner), compile to IR YAML, submit to a "
    "cluster.",
    no_args_is_help=True,
)

PipelineArg = Annotated[str, typer.Argument(help="The pipeline: training | flywheel.")]
ImageOpt = Annotated[
    str | None,
    typer.Option(help="The steps' image (default: $FLYWHEEL_IMAGE, else the release image)."),
]
TrainImageOpt = Annotated[
    str | None,
    typer.Option(help="The training step's image (default: the CUDA build, <image>-cuda)."),
]
AcceleratorOpt = Annotated[
    str | None,
    typer.Option(help="The training step's accelerator resource (default: nvidia.com/gpu)."),
]
ConfigMapOpt = Annotated[
    str | None,
    typer.Option(
        help="ConfigMap with MLFLOW_TRACKING_URI, MLFLOW_S3_ENDPOINT_URL, FLYWHEEL_USER "
        "(default: flywheel-config)."
    ),
]
S3SecretOpt = Annotated[
    str | None,
    typer.Option(help="Secret with the S3 keys access-key, secret-key (default: flywheel-s3)."),
]
PackageDirOpt = Annotated[
    Path, typer.Option("--out", help="Folder for the compiled IR YAML (<out>/<name>.yaml).")
]


def pipeline_entry(name: str, *, runnable: bool) -> Any:
    """The catalog entry `name`; with `runnable`, refuse a pipeline whose steps are not built."""
    require("pipelines")
    from pipelines.catalog import get_pipeline

    try:
        entry = get_pipeline(name)
    except KeyError as err:  # its message is the first argument (str() would quote it)
        raise abort(str(err.args[0])) from None
    if runnable and not entry.ready:
        raise abort(f"pipeline {name!r} cannot run yet: {entry.not_ready}")
    return entry


def read_base_params(params: Path, pairs: list[str] | None) -> Params:
    """params.yaml as a pipeline run's base: *without* the `--set` pairs, checked all the same.

    The pairs travel apart, so the run shows what was changed; a bad one fails
    here, with its key, before anything runs.
    """
    read_params(params, pairs)
    return read_params(params)


def recorded_data_version(p: Params) -> str:
    """The data version data.dvc records, '' when there is none (the run then takes any)."""
    from flywheel.data.versioning import DataVersionError, data_version

    try:
        return data_version(".", p.data)
    except DataVersionError:
        return ""


def _cluster_settings(
    train_image: str | None,
    accelerator: str | None,
    config_map: str | None,
    s3_secret: str | None,
) -> Any:
    """The default cluster placement, changed where an option says so."""
    from pipelines.cluster import ClusterSettings

    defaults = ClusterSettings()
    return ClusterSettings(
        train_image=train_image or defaults.train_image,
        accelerator=accelerator or defaults.accelerator,
        config_map=config_map or defaults.config_map,
        s3_secret=s3_secret or defaults.s3_secret,
    )


def _compile_for_cluster(
    entry: Any, p: Params, version: str, image: str | None, settings: Any, package: Path
) -> tuple[Any, Path]:
    """Build a catalog pipeline for a cluster and compile it to `package`; both come back."""
    from flywheel.env import component_image
    from pipelines.cluster import compile_pipeline

    pipeline = entry.build(
        p,
        data_version=version,
        target="cluster",
        image=image or component_image(),
        cluster=settings,
    )
    return pipeline, compile_pipeline(pipeline, package)


def _arguments(pipeline: Any, p: Params, pairs: list[str], *, data_version: str, repo: str) -> Any:
    """The run's arguments, limited to the parameters this pipeline declares."""
    from pipelines.arguments import pipeline_arguments

    arguments = pipeline_arguments(p, pairs, data_version=data_version, repo=repo)
    return {k: v for k, v in arguments.items() if k in pipeline.component_spec.inputs}


def run_pipeline_locally(
    entry: Any, p: Params, pairs: list[str], version: str, caching: bool
) -> Any:
    """Run a catalog pipeline on the KFP local runner, showing progress; exit 1 on failure."""
    from pipelines.local import PipelineRunError, TaskEvent, run_locally

    live = Console(file=sys.stdout)  # bound now: the runner redirects sys.stdout to its log
    marks = {"start": "▶", "cached": "[cyan]↺[/cyan]", "done": "[green]✓[/green]"}

    def show(event: TaskEvent) -> None:
        if event.kind == "message":
            live.print(f"    [dim]{escape(event.text)}[/dim]")
        elif event.kind == "cached":
            live.print(f"{marks['cached']} {event.task}: cached (inputs unchanged)")
        elif event.kind == "failed":
            live.print(f"[red]✗[/red] {event.task} [red]failed[/red]")
        elif event.kind == "done" and event.seconds is not None:
            live.print(f"{marks['done']} {event.task} [dim]{event.seconds:.1f} s[/dim]")
        elif event.kind == "start":
            live.print(f"{marks['start']} {event.task}")

    pipeline = entry.build(p, data_version=version, target="local")
    arguments = _arguments(pipeline, p, pairs, data_version=version, repo=str(Path().resolve()))
    console.print(
        f"running pipeline [bold]{entry.name}[/bold] on the KFP local runner"
        f"{'' if caching else ' (no cache)'}"
    )
    try:
        return run_locally(
            pipeline,
            arguments,
            name=entry.name,
            output_tasks=entry.outputs,
            caching=caching,
            on_event=show,
        )
    except PipelineRunError as err:
        print_error(str(err))
        if err.error:
            err_console.print(f"  {escape(err.error)}")
        else:  # no exception in its log: show how it ended
            for line in err.tail[-20:]:
                err_console.print(f"    {escape(line)}")
        err_console.print(f"full log: {err.log}", soft_wrap=True)
        raise typer.Exit(1) from None


def print_outputs(run: Any) -> None:
    """Where every output landed: paths relative to the runner's outputs folder, printed once."""
    root = run.outputs_root
    table = Table(title=f"outputs of {run.pipeline} run {run.run_id} ({run.seconds:.0f} s)")
    for column in ("task", "output", "type"):
        table.add_column(column, no_wrap=True)
    table.add_column("path / value", overflow="fold")
    for r in run.records:
        task = f"{r.task} [cyan](cached)[/cyan]" if r.cached else r.task
        location = r.location
        if r.kind != "parameter" and Path(location).is_relative_to(root):
            location = str(Path(location).relative_to(root))
        table.add_row(task, r.output, r.kind, escape(location))
    console.print(table)
    console.print(f"paths are under the outputs folder {root}", soft_wrap=True)
    console.print(f"runner log: {run.log}", soft_wrap=True)


def print_training_summary(run: Any) -> None:
    """The promoted version, its aliases, test accuracy per slice, the reports, the MLflow UI."""
    from flywheel.cli.summaries import mlflow_ui_command, summarize_training_run
    from flywheel.tracking import local_store_dir, resolve_tracking

    s = summarize_training_run(
        run.outputs["model"].metadata, run.outputs["metrics"].metadata, bool(run.outputs["blessed"])
    )
    table = Table(title=f"test accuracy of {s.model_name} version {s.version}")
    for column in ("slice", "images", "accuracy"):
        table.add_column(column, justify="left" if column == "slice" else "right")
    if s.champion_version is not None:
        table.add_column(f"champion v{s.champion_version}", justify="right")
    for row in s.slices:
        extra = (
            []
            if s.champion_version is None
            else ["-" if row.champion_accuracy is None else f"{row.champion_accuracy:.3f}"]
        )
        table.add_row(escape(row.name), str(row.images), f"{row.accuracy:.3f}", *extra)
    console.print(table)
    version = f"{s.model_name} version {s.version}"
    if s.promoted:
        previous = f"; previous: {s.champion_version}" if s.champion_version else ""
        console.print(f"[green]promoted[/green]: {version} is production{previous}")
    elif s.blessed:
        console.print(f"[yellow]blessed but not production[/yellow]: {version}")
    else:
        console.print(
            f"[red]candidate not blessed[/red]: {version}; failed: "
            f"{escape(', '.join(s.failed_gates) or '?')}. Not promoted: production stays "
            f"version {s.production or 'none'}"
        )
    console.print(f"aliases of version {s.version}: {', '.join(s.aliases) or 'none'}")
    console.print(f"data version: {s.data_version}")
    docs = run.outputs["dataset"].metadata.get("data_docs") or run.outputs["data_docs"].path
    console.print(f"Data Docs: {docs}", soft_wrap=True)
    console.print(f"evaluation report (HTML): {run.outputs['evaluation'].path}", soft_wrap=True)
    uri = resolve_tracking().uri
    if local_store_dir(uri) is not None:
        console.print("MLflow UI (then open http://127.0.0.1:5000):")
        console.print(f"  {mlflow_ui_command(uri)}", soft_wrap=True, highlight=False)
    else:
        console.print(f"MLflow: {uri}", soft_wrap=True)


@commands.command("run")
def pipeline_run(
    name: PipelineArg = "training",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache/--no-cache", help="Reuse outputs of steps whose inputs are unchanged."
        ),
    ] = True,
) -> None:
    """Run a pipeline on this machine with the KFP local runner (each step a subprocess).

    The pipeline's parameters default to params.yaml; --set changes one value for
    this run (epochs, learning rate and min accuracy are parameters of their own,
    any other key travels as an override). Trains on the data version data.dvc
    records. Prints where every output landed and, for `training`, what was
    promoted. Exits 1 when a step fails (a failed data validation stops the run
    before training).
    """
    entry = pipeline_entry(name, runnable=True)
    p = read_base_params(params, set_)
    run = run_pipeline_locally(entry, p, list(set_ or []), recorded_data_version(p), cache)
    print_outputs(run)
    if entry.name == "training":
        print_training_summary(run)


@commands.command("compile")
def pipeline_compile(
    names: Annotated[
        list[str] | None, typer.Argument(help="Pipelines to compile (default: every ready one).")
    ] = None,
    out: PackageDirOpt = Path("dist/pipelines"),
    params: ParamsOpt = Path("params.yaml"),
    image: ImageOpt = None,
    train_image: TrainImageOpt = None,
    accelerator: AcceleratorOpt = None,
    config_map: ConfigMapOpt = None,
    s3_secret: S3SecretOpt = None,
) -> None:
    """Compile pipelines for a cluster to Kubeflow Pipelines IR YAML: <out>/<name>.yaml.

    Parameters default to params.yaml and the data version of data.dvc; the
    training step asks for a GPU on GPU nodes (CUDA image); every step reads the
    tracking settings from the ConfigMap and the S3 keys from the Secret, which
    must exist in the namespace the pipeline runs in. Upload the file in the KFP
    UI or use `submit`.
    """
    require("pipelines")
    from flywheel.env import component_image
    from pipelines.catalog import PIPELINES

    p = read_params(params)
    chosen = names or [n for n, e in PIPELINES.items() if e.ready]
    settings = _cluster_settings(train_image, accelerator, config_map, s3_secret)
    version = recorded_data_version(p)
    for name in chosen:
        entry = pipeline_entry(name, runnable=False)
        _, package = _compile_for_cluster(entry, p, version, image, settings, out / f"{name}.yaml")
        note = (
            "" if entry.ready else f" [yellow](cannot run yet: {escape(entry.not_ready)})[/yellow]"
        )
        console.print(f"compiled [bold]{name}[/bold] → {package}{note}")
    steps_image = image or component_image()
    console.print(
        f"image: {steps_image} (training: {settings.training_image(steps_image)}); "
        f"ConfigMap {settings.config_map}, Secrets {settings.s3_secret} and "
        f"{settings.mlflow_secret} (optional)"
    )


@commands.command("submit")
def pipeline_submit(
    name: PipelineArg = "training",
    host: Annotated[
        str,
        typer.Option(
            envvar="KF_PIPELINES_ENDPOINT",
            help="KFP API endpoint, e.g. http://localhost:8080 (port-forward of ml-pipeline-ui).",
        ),
    ] = ...,  # type: ignore[assignment]
    experiment: Annotated[str, typer.Option(help="KFP experiment (created if missing).")] = (
        "flywheel"
    ),
    run_name: Annotated[
        str | None, typer.Option(help="Run name (default: <pipeline>-<UTC time>).")
    ] = None,
    set_: SetOpt = None,
    recurring: Annotated[
        bool, typer.Option("--recurring", help="Create a recurring run on --cron instead.")
    ] = False,
    cron: Annotated[
        str | None,
        typer.Option(help="Schedule of --recurring: 5 fields ('0 * * * *') or 6 (seconds first)."),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(help="Kubeflow profile namespace (multi-user installs).")
    ] = None,
    out: PackageDirOpt = Path("dist/pipelines"),
    params: ParamsOpt = Path("params.yaml"),
    image: ImageOpt = None,
    train_image: TrainImageOpt = None,
    accelerator: AcceleratorOpt = None,
    config_map: ConfigMapOpt = None,
    s3_secret: S3SecretOpt = None,
) -> None:
    """Compile a pipeline and submit it to a Kubeflow Pipelines endpoint: a run, or a schedule.

    Arguments: params.yaml with --set applied, the data version data.dvc records
    (for `flywheel`, whose runs each make a new one: '', the latest recorded next
    to the DVC remote), and no repository: the steps materialise the version from
    `FLYWHEEL_DVC_REMOTE` by hash. Prints the run's id and URL. Exits 2 when the
    endpoint cannot be reached or refuses.
    """
    from datetime import UTC, datetime

    entry = pipeline_entry(name, runnable=True)
    from pipelines.cluster import kfp_cron

    if recurring != (cron is not None):
        raise typer.BadParameter("--recurring and --cron go together", param_hint="--cron")
    try:
        schedule = kfp_cron(cron) if cron is not None else None
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--cron") from None
    from pipelines.cluster import ClusterError, submit

    p = read_base_params(params, set_)
    version = "" if name == "flywheel" else recorded_data_version(p)
    settings = _cluster_settings(train_image, accelerator, config_map, s3_secret)
    pipeline, package = _compile_for_cluster(
        entry, p, version, image, settings, out / f"{name}.yaml"
    )
    run_name = run_name or f"{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    arguments = _arguments(pipeline, p, list(set_ or []), data_version=version, repo="")
    with exit_on(ClusterError):
        submission = submit(
            package,
            host=host,
            experiment=experiment,
            run_name=run_name,
            arguments=arguments,
            namespace=namespace,
            cron=schedule,
        )
    when = f" on '{schedule}'" if schedule else ""
    console.print(f"submitted {submission.kind} [bold]{run_name}[/bold]{when}: {submission.id}")
    console.print(f"  {submission.url}")
