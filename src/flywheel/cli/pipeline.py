"""`flywheel pipeline`: run a Kubeflow pipeline locally, compile it, submit it to a cluster."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from flywheel.cli.composition import require
from flywheel.cli.console import (
    abort,
    console,
    err_console,
    exit_on,
    print_error,
    text_console,
)
from flywheel.cli.options import ParamsOpt, SetOpt, read_params, task_pairs
from flywheel.cli.project_root import ProjectTyper
from flywheel.cli.run_output import print_outputs, print_training_summary

if TYPE_CHECKING:
    from flywheel.config import Params

commands = ProjectTyper(
    help="Kubeflow pipelines: run locally (KFP local runner), compile to IR YAML, submit to a "
    "cluster.",
    no_args_is_help=True,
)

PipelineArg = Annotated[
    str, typer.Argument(help="The pipeline: training | curation | update | flywheel.")
]
ImageOpt = Annotated[
    str | None,
    typer.Option(
        help="The steps' image (default: $FLYWHEEL_IMAGE, else <image repo>/flywheel:<version>)."
    ),
]
ImageRepoOpt = Annotated[
    str | None,
    typer.Option(
        envvar="FLYWHEEL_IMAGE_REPO",
        help="Registry of the images when --image is not given (make's IMAGE_REPO; default: "
        "ghcr.io/flywheel-ml).",
    ),
]
TrainImageOpt = Annotated[
    str | None,
    typer.Option(help="The training step's image (default: the CUDA build, <image>-cuda)."),
]
GpusOpt = Annotated[
    int | None,
    typer.Option(
        min=0, help="GPUs of the training step; 0 trains on CPU (default: cluster.train.gpus)."
    ),
]
AcceleratorOpt = Annotated[
    str | None,
    typer.Option(
        help="The GPU's resource name, e.g. nvidia.com/gpu (default: cluster.train.accelerator)."
    ),
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
    here, with its key, before anything runs. `train.task` is the exception: the
    base is the run's task's (in a plan with a section per task, the pipeline's
    defaults are that task's values).
    """
    read_params(params, pairs)
    return read_params(params, task_pairs(pairs) or None)


def recorded_data_version(p: Params) -> str:
    """The data version data.dvc records, '' when there is none (the run then takes any)."""
    from flywheel.data.versioning import DataVersionError, data_version

    try:
        return data_version(".", p.data)
    except DataVersionError:
        return ""


@dataclass(frozen=True)
class ClusterOptions:
    """The command-line choices that change where and in what the steps run."""

    image: str | None = None
    image_repo: str | None = None
    train_image: str | None = None
    gpus: int | None = None
    accelerator: str | None = None
    config_map: str | None = None
    s3_secret: str | None = None

    def steps_image(self) -> str:
        """The steps' image: --image, else from $FLYWHEEL_IMAGE or the image repository."""
        from flywheel.env import component_image

        return self.image or component_image(self.image_repo)

    def settings(self, p: Params) -> Any:
        """params.yaml `cluster`, changed where an option says so, as `ClusterSettings`."""
        from pipelines.cluster import ClusterSettings

        train = p.cluster.train
        if self.gpus is not None:
            train = train.model_copy(update={"gpus": self.gpus})
        if self.accelerator:
            train = train.model_copy(update={"accelerator": self.accelerator})
        defaults = ClusterSettings()
        return ClusterSettings(
            placement=p.cluster.model_copy(update={"train": train}),
            train_image=self.train_image,
            config_map=self.config_map or defaults.config_map,
            s3_secret=self.s3_secret or defaults.s3_secret,
        )


def _compile_for_cluster(
    entry: Any,
    p: Params,
    version: str,
    options: ClusterOptions,
    package: Path,
    placed: Params | None = None,
) -> tuple[Any, Path]:
    """Build a catalog pipeline for a cluster and compile it to `package`; both come back.

    `p` gives the parameters' defaults; `placed` (default `p`) the `cluster`
    section, which may carry this run's `--set cluster.*` pairs.
    """
    from pipelines.cluster import compile_pipeline

    pipeline = entry.build(
        p,
        data_version=version,
        target="cluster",
        image=options.steps_image(),
        cluster=options.settings(placed or p),
    )
    return pipeline, compile_pipeline(pipeline, package)


def _arguments(pipeline: Any, p: Params, pairs: list[str], *, data_version: str, repo: str) -> Any:
    """The run's arguments, limited to the parameters this pipeline declares.

    A first-class value the pipeline has no parameter for travels as an override
    (`--set train.task=recognition` on a pipeline without `task` still picks the
    task's section of the plan).
    """
    from flywheel.workflows import FIRST_CLASS_PARAMETERS
    from pipelines.arguments import pipeline_arguments

    arguments = pipeline_arguments(p, pairs, data_version=data_version, repo=repo)
    inputs = pipeline.component_spec.inputs
    undeclared = [
        f"{key}={arguments[name]}"
        for name, key in FIRST_CLASS_PARAMETERS.items()
        if name in arguments and name not in inputs
    ]
    if undeclared and "overrides" in inputs:
        arguments["overrides"] = [*arguments["overrides"], *undeclared]
    return {k: v for k, v in arguments.items() if k in inputs}


def run_pipeline_locally(
    entry: Any, p: Params, pairs: list[str], version: str, caching: bool
) -> Any:
    """Run a catalog pipeline on the KFP local runner, showing progress; exit 1 on failure."""
    from pipelines.local import PipelineRunError, TaskEvent, run_locally

    live = text_console(sys.stdout)  # bound now: the runner redirects sys.stdout to its log
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
    before training). `training` on a plan with a model per task (`tasks`, the
    page plan) runs once per task unless --set train.task picks one.
    """
    from pipelines.step_server import shared_server

    shared_server()  # the steps' imports, paid once, while the pipeline is built
    entry = pipeline_entry(name, runnable=True)
    pairs = list(set_ or [])
    p = read_base_params(params, pairs)
    for run_pairs in task_runs(entry.name, p, pairs):
        if run_pairs is not pairs:
            p = read_base_params(params, run_pairs)
            console.rule(f"{entry.name}: task {p.train.task} → {p.evaluate.registered_model}")
        run = run_pipeline_locally(entry, p, run_pairs, recorded_data_version(p), cache)
        print_outputs(run)
        if entry.name == "training":
            print_training_summary(run)


def task_runs(pipeline: str, p: Params, pairs: list[str]) -> list[list[str]]:
    """The runs of one `pipeline run`: one, or for `training` on a plan of several tasks
    (`tasks`) without `--set train.task`, one per task, in the plan's order.

    So one command trains, evaluates and promotes both models of the page plan:
    the detector first, then the recogniser, judged with the detector just promoted.
    """
    if pipeline != "training" or task_pairs(pairs) or not p.tasks:
        return [pairs]
    return [[*pairs, f"train.task={task}"] for task in p.tasks]


@commands.command("compile")
def pipeline_compile(
    names: Annotated[
        list[str] | None, typer.Argument(help="Pipelines to compile (default: every ready one).")
    ] = None,
    out: PackageDirOpt = Path("dist/pipelines"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    image: ImageOpt = None,
    image_repo: ImageRepoOpt = None,
    train_image: TrainImageOpt = None,
    gpus: GpusOpt = None,
    accelerator: AcceleratorOpt = None,
    config_map: ConfigMapOpt = None,
    s3_secret: S3SecretOpt = None,
) -> None:
    """Compile pipelines for a cluster to Kubeflow Pipelines IR YAML: <out>/<name>.yaml.

    Parameters default to params.yaml (with --set applied) and the data version of
    data.dvc. Every step asks for the CPU and memory of params.yaml `cluster`; the
    training step gets its GPUs (CUDA image) on the nodes `cluster.train.placement`
    names, or trains on CPU with --gpus 0. Every step reads the tracking settings
    from the ConfigMap and the S3 keys from the Secret, which must exist in the
    namespace the pipeline runs in. The spec needs a KFP backend >= 2.15. Upload
    the file in the KFP UI or use `submit`.
    """
    require("pipelines")
    from pipelines.catalog import PIPELINES

    p = read_params(params, set_)
    chosen = names or [n for n, e in PIPELINES.items() if e.ready]
    options = ClusterOptions(
        image, image_repo, train_image, gpus, accelerator, config_map, s3_secret
    )
    version = recorded_data_version(p)
    for name in chosen:
        entry = pipeline_entry(name, runnable=False)
        _, package = _compile_for_cluster(entry, p, version, options, out / f"{name}.yaml")
        note = (
            "" if entry.ready else f" [yellow](cannot run yet: {escape(entry.not_ready)})[/yellow]"
        )
        console.print(f"compiled [bold]{name}[/bold] → {package}{note}")
    print_placement(options, p)


def print_placement(options: ClusterOptions, p: Params) -> None:
    """Images, training placement, the objects the steps need, the KFP backend needed."""
    from pipelines.cluster import MIN_KFP_BACKEND

    settings = options.settings(p)
    steps_image = options.steps_image()
    train = settings.placement.train
    gpus = f"{train.gpus} × {train.accelerator}" if train.gpus else "CPU only"
    console.print(
        f"image: {steps_image} (training: {settings.training_image(steps_image)}, {gpus}); "
        f"ConfigMap {settings.config_map}, Secrets {settings.s3_secret} and "
        f"{settings.mlflow_secret} (optional); needs a KFP backend >= {MIN_KFP_BACKEND}",
        soft_wrap=True,
    )


def submit_catalog_pipeline(
    entry: Any,
    params: Path,
    pairs: list[str],
    *,
    host: str,
    experiment: str,
    run_name: str,
    namespace: str | None,
    credentials: Any,
    out: Path,
    options: ClusterOptions,
    cron: str | None = None,
) -> Any:
    """Compile a catalog pipeline for the cluster and submit it: `pipeline submit`, the trigger.

    Arguments: params.yaml with `pairs` applied, the data version data.dvc
    records (for `flywheel` and `update`, '': the latest recorded next to the DVC
    remote), no repository. Returns the `pipelines.submission.Submission`.

    Raises:
        pipelines.cluster.ClusterError: the endpoint cannot be reached or refused.
    """
    from pipelines.submission import submit

    p = read_base_params(params, pairs)
    version = "" if entry.new_data_version else recorded_data_version(p)
    placed = read_params(params, pairs)  # `cluster.*` pairs place the steps of this run
    pipeline, package = _compile_for_cluster(
        entry, p, version, options, out / f"{entry.name}.yaml", placed
    )
    arguments = _arguments(pipeline, p, pairs, data_version=version, repo="")
    return submit(
        package,
        host=host,
        experiment=experiment,
        run_name=run_name,
        arguments=arguments,
        namespace=namespace,
        cron=cron,
        credentials=credentials,
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
        str | None,
        typer.Option(
            envvar="FLYWHEEL_KFP_NAMESPACE",
            help="Kubeflow profile namespace (multi-user installs; in a pod: the pod's own).",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FLYWHEEL_KFP_TOKEN",
            show_default=False,
            help="Bearer token for the KFP API (e.g. `kubectl create token ... --audience "
            "pipelines.kubeflow.org`).",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            envvar="KF_PIPELINES_SA_TOKEN_PATH",
            help="File holding the bearer token, read before each request (a projected "
            "service-account token).",
        ),
    ] = None,
    in_cluster: Annotated[
        bool,
        typer.Option(
            "--in-cluster",
            help="In a pod: the service-account token Kubeflow projects to "
            "/var/run/secrets/kubeflow/pipelines/token.",
        ),
    ] = False,
    out: PackageDirOpt = Path("dist/pipelines"),
    params: ParamsOpt = Path("params.yaml"),
    image: ImageOpt = None,
    image_repo: ImageRepoOpt = None,
    train_image: TrainImageOpt = None,
    gpus: GpusOpt = None,
    accelerator: AcceleratorOpt = None,
    config_map: ConfigMapOpt = None,
    s3_secret: S3SecretOpt = None,
) -> None:
    """Compile a pipeline and submit it to a Kubeflow Pipelines endpoint: a run, or a schedule.

    Arguments: params.yaml with --set applied, the data version data.dvc records
    (for `flywheel` and `update`, whose runs each make a new one: '', the latest
    recorded next to the DVC remote), and no repository: the steps materialise the version from
    `FLYWHEEL_DVC_REMOTE` by hash. On multi-user Kubeflow give the profile
    namespace and a token (or a token file; --in-cluster in a pod). Prints the
    run's id and URL. Exits 2 when the endpoint cannot be reached or refuses.
    """
    from datetime import UTC, datetime

    entry = pipeline_entry(name, runnable=True)
    from pipelines.cluster import ClusterError, kfp_cron
    from pipelines.submission import IN_CLUSTER_TOKEN, Credentials

    if recurring != (cron is not None):
        raise typer.BadParameter("--recurring and --cron go together", param_hint="--cron")
    try:
        schedule = kfp_cron(cron) if cron is not None else None
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--cron") from None
    if in_cluster and token_file is None:
        token_file = IN_CLUSTER_TOKEN
    with exit_on(ClusterError):
        credentials = Credentials(token=token, token_file=token_file)
    run_name = run_name or f"{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    options = ClusterOptions(
        image, image_repo, train_image, gpus, accelerator, config_map, s3_secret
    )
    with exit_on(ClusterError):
        submission = submit_catalog_pipeline(
            entry,
            params,
            list(set_ or []),
            host=host,
            experiment=experiment,
            run_name=run_name,
            namespace=namespace,
            credentials=credentials,
            out=out,
            options=options,
            cron=schedule,
        )
    when = f" on '{schedule}'" if schedule else ""
    where = f" in namespace {submission.namespace}" if submission.namespace else ""
    console.print(
        f"submitted {submission.kind} [bold]{run_name}[/bold]{when}{where}: {submission.id}"
    )
    console.print(f"  {submission.url}")
