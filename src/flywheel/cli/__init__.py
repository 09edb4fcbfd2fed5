"""The `flywheel` command line: the composition root.

Each command loads `params.yaml`, calls one library function and prints what a
person needs to see. Heavy libraries are imported inside the commands so that
`flywheel --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flywheel.env import disable_telemetry

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.config import DataPlan, Params

if TYPE_CHECKING:
    from flywheel.evaluation import EvaluationOutcome

app = typer.Typer(
    name="flywheel",
    help="The data flywheel of a vision AI service: collect, validate, train, evaluate, "
    "promote, serve, monitor, curate, label, retrain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Collect, import and version datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="The params.yaml to read.", show_default=True)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override one value of params.yaml, as dotted.key=value (YAML value); repeatable.",
    ),
]
DatasetOpt = Annotated[
    Path | None, typer.Option(help="Dataset folder (default: data/<name> from params).")
]


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r}: expected dotted.key=value", param_hint="--set")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _params(path: Path, pairs: list[str] | None = None) -> Params:
    from flywheel.config import ConfigError, load_params

    try:
        return load_params(path, _overrides(pairs))
    except ConfigError as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None


@app.callback()
def _main() -> None:
    disable_telemetry()


# --------------------------------------------------------------------------- data


@data_app.command("collect")
def data_collect(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Generate the demo dataset the data plan asks for (deterministic from the seed).

    Handwritten glyphs come from scikit-learn's bundled digits, printed ones are
    rendered with bundled fonts; noise is applied as each stratum says. Writes
    data/<name>/images/ and data/<name>/manifest.csv.
    """
    from flywheel.data.files import DatasetWriteError
    from flywheel.demo.collect import collect_dataset

    p = _params(params, set_)
    try:
        manifest = collect_dataset(p.data)
    except DatasetWriteError as err:  # CollectError is one
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    console.print(
        f"collected [bold]{len(manifest)}[/bold] images into {p.data.dataset_dir}/ "
        f"(seed {p.data.seed})"
    )
    _print_counts(manifest)


@data_app.command("import")
def data_import(
    path: Annotated[Path, typer.Argument(help="ImageFolder tree: PATH/<split>/<label>/*.png|jpg")],
    name: Annotated[
        str | None, typer.Option(help="Dataset name (default: params data.name).")
    ] = None,
    style: Annotated[
        str, typer.Option(help="Stratum value for 'style' of every image.")
    ] = "unknown",
    noise: Annotated[
        str, typer.Option(help="Stratum value for 'noise' of every image.")
    ] = "unknown",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Import your own ImageFolder tree into the manifest format (resized to the plan's size)."""
    from flywheel.data.importer import DatasetImportError, import_imagefolder

    p = _params(params)
    try:
        manifest = import_imagefolder(
            path, p.data, name=name or p.data.name, style=style, noise=noise
        )
    except DatasetImportError as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    console.print(f"imported [bold]{len(manifest)}[/bold] images from {path}")
    _print_counts(manifest)


@data_app.command("version")
def data_version_cmd(
    repo: Annotated[Path, typer.Option(help="Repository root holding data.dvc.")] = Path("."),
) -> None:
    """Print the data version: the DVC hash of data/ recorded in data.dvc."""
    from flywheel.data.versioning import DataVersionError, data_version

    try:
        console.print(data_version(repo))
    except DataVersionError as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None


@data_app.command("ensure")
def data_ensure(
    params: ParamsOpt = Path("params.yaml"),
    repo: Annotated[Path, typer.Option(help="Repository root holding data.dvc.")] = Path("."),
) -> None:
    """Make data/ match data.dvc: keep it, `dvc pull` it, or regenerate it from the seed."""
    from flywheel.data.versioning import DataVersionError, ensure_dataset

    p = _params(params)
    try:
        how, version = ensure_dataset(p.data, repo)
    except DataVersionError as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    console.print(f"data/ is at version [bold]{version}[/bold] ({how}); `dvc status` is clean")


@data_app.command("track")
def data_track(
    repo: Annotated[Path, typer.Option(help="Repository root holding data.dvc.")] = Path("."),
    push: Annotated[bool, typer.Option(help="Push the new version to the default remote.")] = True,
) -> None:
    """Record data/ as a new version (`dvc add data`) and push it; prints the new hash."""
    from flywheel.data.versioning import track_dataset

    version = track_dataset(repo, push=push)
    console.print(f"data version [bold]{version}[/bold]; commit data.dvc to share it")


def _print_counts(manifest: pd.DataFrame) -> None:
    from flywheel.data.manifest import stratum

    counts = manifest.assign(stratum=stratum(manifest)).pivot_table(
        index="stratum", columns="split", values="image_id", aggfunc="count", fill_value=0
    )
    table = Table(title="images per stratum and split")
    table.add_column("stratum")
    for split in counts.columns:
        table.add_column(str(split), justify="right")
    for name, row in counts.iterrows():
        table.add_row(str(name), *(str(int(v)) for v in row))
    console.print(table)


# ----------------------------------------------------------------------- validate


def _describe_data_version(plan: DataPlan) -> str | None:
    """The DVC data version of the plan's data folder, flagged when the folder has moved on."""
    from flywheel.data.versioning import DataVersionError, data_version, is_clean

    try:
        version = data_version(".", plan)
    except DataVersionError:
        return None
    if not is_clean(".", plan):
        return f"{version} + unrecorded changes (run `flywheel data track`)"
    return version


@app.command()
def validate(
    params: ParamsOpt = Path("params.yaml"),
    dataset: DatasetOpt = None,
    files: Annotated[
        bool, typer.Option("--files/--no-files", help="Open and decode every image file.")
    ] = True,
) -> None:
    """Validate the dataset against the data contract derived from the plan (Great Expectations).

    Exits non-zero when any expectation fails, printing each failure with a few
    offending rows; always writes Data Docs and prints their path.
    """
    from flywheel.validation import (
        ManifestError,
        ValidationSetupError,
        print_report,
        validate_dataset,
    )

    p = _params(params)
    try:
        report = validate_dataset(dataset or p.data.dataset_dir, p, check_files=files)
    except (ManifestError, ValidationSetupError) as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    if dataset is None or dataset.resolve().is_relative_to(p.data.root.resolve()):
        report.data_version = _describe_data_version(p.data)
    print_report(report, console)
    if not report.success:
        raise typer.Exit(1)


# -------------------------------------------------------------------------- train


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    dataset: DatasetOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Checkpoints, history and curves (default: <state dir>/train)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last checkpoint in --out.")
    ] = False,
    log_model: Annotated[
        bool, typer.Option("--log-model/--no-log-model", help="Log the best model to MLflow.")
    ] = True,
) -> None:
    """Train the model params.yaml describes; log the run, curves and pt2 model to MLflow.

    Runs on CUDA with mixed precision when a GPU is present; under
    `torchrun --nproc_per_node=N $(which flywheel) train` it trains data-parallel.
    Prints the run id, the best validation metric and the logged model's URI.
    A logged model gets its reference profile for monitoring (train and val
    images through the exported model) as a run artifact and is registered as
    the new 'candidate' version, as the pipeline's train step does.
    """
    from flywheel.env import state_dir
    from flywheel.modeling.training import TrainingError
    from flywheel.registry import RegistryError
    from flywheel.tasks import DatasetError
    from flywheel.workflows import train_and_register

    p = _params(params, set_)
    data_dir = dataset or p.data.dataset_dir
    version = None
    if dataset is None or dataset.resolve().is_relative_to(p.data.root.resolve()):
        version = _describe_data_version(p.data)
    try:
        trained = train_and_register(
            p,
            data_dir,
            out_dir=out or state_dir() / "train",
            resume=resume,
            data_version=version or "",
            log_model=log_model,
            progress=True,
            reason="trained by flywheel train",
            status=err_console.status,
        )
    except (DatasetError, TrainingError, RegistryError) as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    result, reference, candidate = trained.training, trained.reference, trained.candidate
    if result.run_id is None:  # a DDP rank other than 0: rank 0 reports
        return
    last = result.history[-1]
    table = Table(title=f"last epoch ({result.device})")
    for column in ("metric", "train", "val"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name in sorted(k.removeprefix("val_") for k in last if k.startswith("val_")):
        table.add_row(name, f"{last[f'train_{name}']:.4f}", f"{last[f'val_{name}']:.4f}")
    console.print(table)
    notes = [
        f"{result.epochs_run} epochs in {result.train_seconds:.1f} s",
        "stopped early" if result.stopped_early else "",
        "[yellow]overfitting[/yellow]" if result.overfitting else "",
    ]
    console.print(", ".join(n for n in notes if n))
    console.print(
        f"best {result.monitor} [bold]{result.best_metric:.4f}[/bold] at epoch {result.best_epoch}"
        f" → {result.best_checkpoint}"
    )
    if result.model_uri:
        console.print(
            f"model [bold]{result.model_uri}[/bold] (run {result.run_id}, "
            f"logged in {result.log_model_seconds:.1f} s)"
        )
    if reference is not None:
        console.print(
            f"reference profile: {reference.rows} images → run artifact {reference.artifact} "
            f"({reference.seconds:.1f} s)"
        )
    if candidate is not None:
        console.print(
            f"registered [bold]{candidate.name}[/bold] version [bold]{candidate.version}[/bold]"
            " as candidate"
        )


@app.command()
def tune(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    dataset: DatasetOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="best_params.yaml, the default Optuna storage (default: <state>/tune)."),
    ] = None,
    n_trials: Annotated[
        int | None, typer.Option("--n-trials", min=1, help="Trials to run (default: tune.n_trials)")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(help="Start no trial after this many seconds (default: tune.timeout_s)."),
    ] = None,
    study_name: Annotated[
        str | None,
        typer.Option(help="Optuna study to create or resume (default: derived from the set-up)."),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage URL (default: SQLite in --out)."),
    ] = None,
) -> None:
    """Search tune.space of params.yaml with Optuna (TPE, median pruning); trials nest in MLflow.

    Each trial is a short training run (tune.epochs_per_trial), a child of one
    parent "tune" run. Prints the trials and the best values, writes them to
    <out>/best_params.yaml (dotted keys, ready for --set). Re-running the same
    set-up resumes the study. Exits 1 when no trial completed.
    """
    from flywheel.env import state_dir
    from flywheel.modeling.training import TrainingError
    from flywheel.modeling.tuning import TuneError, print_report, validate_space
    from flywheel.modeling.tuning import tune as tune_study
    from flywheel.tasks import DatasetError

    p = _params(params, set_)
    try:
        validate_space(p)  # before anything is opened or trained
        data_dir = dataset or p.data.dataset_dir
        version = None
        if dataset is None or dataset.resolve().is_relative_to(p.data.root.resolve()):
            version = _describe_data_version(p.data)
        result = tune_study(
            p,
            data_dir,
            out_dir=out or state_dir() / "tune",
            study_name=study_name,
            storage=storage,
            n_trials=n_trials,
            timeout_s=timeout,
            data_version=version,
        )
    except (TuneError, DatasetError, TrainingError) as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    print_report(result, console)
    if result.best is None:
        raise typer.Exit(1)


# ----------------------------------------------------------- evaluate, registry

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Registered model (default: evaluate.registered_model)."),
]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded on the versions).")]
WhoOpt = Annotated[
    str | None,
    typer.Option(help="Who (recorded; default: $FLYWHEEL_USER, else the login name)."),
]


def _model_name(model: str | None, params: Path) -> str:
    """The registered model: `--model`, else `evaluate.registered_model` of params.yaml."""
    return model or _params(params).evaluate.registered_model


@app.command()
def evaluate(
    version: Annotated[
        str | None,
        typer.Option(help="Registered version to evaluate (default: the 'candidate' alias)."),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", help="Register this run's model first, then evaluate it."),
    ] = None,
    artifact: Annotated[str, typer.Option(help="The model's name in the run.")] = "model",
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    who: WhoOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Evaluate a candidate on the frozen test split, overall and per slice, against production.

    Applies the gates of params.yaml (evaluate.gates) and records the verdict on
    the version; a blessed version becomes 'staging'. Exits 1 when the gates
    refuse it, naming the failed gates.
    """
    from flywheel.evaluation import EvaluationError, evaluate_candidate
    from flywheel.registry import RegistryError, register, run_lineage, version_for_alias
    from flywheel.tasks import DatasetError
    from flywheel.tracking import configure_tracking

    p = _params(params, set_)
    configure_tracking()
    name = model or p.evaluate.registered_model
    if run_id and version:
        raise typer.BadParameter("give --run-id or --version, not both", param_hint="--run-id")
    try:
        if run_id:
            version = register(
                f"runs:/{run_id}/{artifact}", name, tags=run_lineage(run_id), who=who
            )
            console.print(f"registered run {run_id} as [bold]{name}[/bold] version {version}")
        elif version is None:
            version = version_for_alias(name, "candidate")
            if version is None:
                raise RegistryError(f"model {name!r} has no 'candidate' version; pass --version")
        outcome = evaluate_candidate(
            name, version, dataset or p.data.dataset_dir, p.evaluate, who=who
        )
    except (RegistryError, EvaluationError, DatasetError) as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    _print_evaluation(outcome)
    if not outcome.blessing.blessed:
        raise typer.Exit(1)


def _print_evaluation(outcome: EvaluationOutcome) -> None:
    report, champion, blessing = outcome.report, outcome.champion, outcome.blessing
    table = Table(title=escape(f"{report.split} split: {report.model_uri}"))
    for column in ("slice", "images", "accuracy", "macro-F1", "ECE"):
        table.add_column(column, justify="left" if column == "slice" else "right")
    if champion is not None:
        table.add_column(f"champion v{blessing.champion_version}", justify="right")
    for name, m in [("all", report.overall), *report.slices.items()]:
        extra = []
        if champion is not None:
            theirs = champion.overall if name == "all" else champion.slices[name]
            extra = [f"{theirs.accuracy:.3f}"]
        row = [f"{m.accuracy:.3f}", f"{m.macro_f1:.3f}", f"{m.ece:.3f}"]
        table.add_row(escape(name), str(m.n), *row, *extra)
    console.print(table)
    gates = Table(title="gates")
    for column in ("gate", "value", "threshold", "verdict", "detail"):
        gates.add_column(column)
    for gate in blessing.gates:
        verdict = "[green]pass[/green]" if gate.passed else "[red]FAIL[/red]"
        gates.add_row(
            escape(gate.name),
            f"{gate.value:.4f}",
            f"{gate.comparison} {gate.threshold:.4f}",
            verdict,
            escape(gate.detail),
        )
    console.print(gates)
    for note in blessing.notes:
        console.print(f"note: {escape(note)}")
    version = f"{blessing.model_name} version {blessing.candidate_version}"
    if blessing.blessed:
        console.print(f"[green]blessed[/green]: {version} is now 'staging'")
    else:
        failed = ", ".join(blessing.failed_gates)
        console.print(f"[red]not blessed[/red]: {escape(version)}; failed: {escape(failed)}")


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="The version to serve.")],
    reason: ReasonOpt,
    model: ModelOpt = None,
    who: WhoOpt = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Point 'production' at a blessed version; the replaced one becomes 'previous'.

    Refuses (exit 1) a version the gates did not bless, naming the failed gates,
    or one blessed against a champion that is no longer in production.
    """
    from flywheel.registry import PromotionRefusedError, RegistryError
    from flywheel.registry import promote as promote_version
    from flywheel.tracking import configure_tracking

    configure_tracking()
    name = _model_name(model, params)
    try:
        change = promote_version(name, version, reason=reason, who=who)
    except PromotionRefusedError as err:
        err_console.print(f"[red]refused:[/red] {escape(str(err))}")
        raise typer.Exit(1) from None
    except RegistryError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    if not change.changed:
        console.print(f"{name} version {version} already is production; nothing changed")
        return
    console.print(
        f"{name}: production → version [bold]{change.production}[/bold]"
        f" (previous: {change.previous or 'none'})"
    )


@app.command()
def rollback(
    reason: ReasonOpt,
    model: ModelOpt = None,
    who: WhoOpt = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Swap 'production' and 'previous': serve the version production replaced.

    A second rollback undoes the first.
    """
    from flywheel.registry import PromotionRefusedError, RegistryError
    from flywheel.registry import rollback as rollback_model
    from flywheel.tracking import configure_tracking

    configure_tracking()
    name = _model_name(model, params)
    try:
        change = rollback_model(name, reason=reason, who=who)
    except PromotionRefusedError as err:
        err_console.print(f"[red]refused:[/red] {escape(str(err))}")
        raise typer.Exit(1) from None
    except RegistryError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    console.print(
        f"{name}: production → version [bold]{change.production}[/bold]"
        f" (previous: {change.previous})"
    )


@app.command()
def models(
    model: ModelOpt = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """List the versions of the registered model: aliases, verdict, accuracy, lineage."""
    from flywheel.registry import RegistryError, list_versions
    from flywheel.tracking import configure_tracking

    configure_tracking()
    name = _model_name(model, params)
    try:
        versions = list_versions(name)
    except RegistryError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    table = Table(title=f"registered model {name}")
    for column in (
        "version",
        "aliases",
        "blessed",
        "accuracy",
        "created (UTC)",
        "git commit",
        "data version",
        "last transition",
    ):
        table.add_column(column, justify="right" if column in ("version", "accuracy") else "left")
    for v in versions:
        blessed = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[v.blessed]
        last = v.last_transition
        table.add_row(
            v.version,
            ", ".join(v.aliases) or "-",
            blessed,
            "-" if v.eval_accuracy is None else f"{v.eval_accuracy:.3f}",
            v.created_at.removesuffix("+00:00"),
            (v.git_commit or "-")[:12],
            (v.data_version or "-").removesuffix(".dir")[:12],
            escape(f"{last.action} by {last.by}, {last.at.removesuffix('+00:00')}")
            if last
            else "-",
        )
    console.print(table)


SERVICE_TARGET = "serving.service:FlywheelService"
"""What `flywheel serve` hands to `bentoml serve`."""


def _serving_root() -> Path:
    """The folder holding the `serving` package (installed, or beside `src/` in a checkout).

    Raises:
        typer.Exit: `serving/service.py` cannot be found.
    """
    import importlib.util

    spec = importlib.util.find_spec("serving")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).resolve().parents[1]
    checkout = Path(__file__).resolve().parents[3]  # <repo>/src/flywheel/cli/__init__.py -> <repo>
    if (checkout / "serving" / "service.py").is_file():
        return checkout
    err_console.print(
        "[red]error:[/red] the `serving` package is neither installed nor beside src/"
    )
    raise typer.Exit(2)


@app.command()
def serve(
    params: ParamsOpt = Path("params.yaml"),
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default: serve.host, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (default: serve.port).")
    ] = None,
) -> None:
    """Serve the registry's production model over HTTP (BentoML, adaptive batching).

    Runs `bentoml serve serving.service:FlywheelService` in this process with
    FLYWHEEL_PARAMS pointing at --params, BENTOML_HOME under the state folder
    and telemetry off. /readyz answers 200 once the model is loaded; /metrics
    has Prometheus metrics. The model comes from MLFLOW_TRACKING_URI (or the
    local store); a newly promoted version is swapped in without downtime
    within serve.poll_interval_s, or at once by POST /admin/reload with
    'Authorization: Bearer $FLYWHEEL_ADMIN_TOKEN' (set it to enable that
    endpoint). Stop with Ctrl-C.
    """
    import os

    from flywheel.env import state_dir
    from flywheel.tracking import resolve_tracking

    p = _params(params)  # fail here, with the bad key, rather than inside a worker
    params_path = params.resolve()
    env = dict(os.environ)
    env["FLYWHEEL_PARAMS"] = str(params_path)
    env.setdefault("BENTOML_HOME", str((state_dir() / "bentoml").resolve()))
    env["BENTOML_DO_NOT_TRACK"] = "true"
    # BentoML changes into --working-dir: pin the state folder and the store absolutely.
    env["FLYWHEEL_HOME"] = str(state_dir().resolve())
    env["MLFLOW_TRACKING_URI"] = resolve_tracking().uri
    Path(env["BENTOML_HOME"]).mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        SERVICE_TARGET,
        "--working-dir",
        str(_serving_root()),
        "--host",
        host or p.serve.host,
        "--port",
        str(port or p.serve.port),
    ]
    err_console.print(
        f"serving models:/{p.evaluate.registered_model}@{p.serve.alias} on "
        f"http://{host or p.serve.host}:{port or p.serve.port}"
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)  # the server replaces this process: signals go to it


# ----------------------------------------------- simulate, curate, label, merge


@app.command()
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

    p = _params(params, set_)
    try:
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
    except (ConfigError, SimulationError) as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
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
    console.print(table)
    if report.first_error:
        err_console.print(f"first error: {escape(report.first_error)}")
    if report.truth_file:
        console.print(f"truth: {report.truth_file}", soft_wrap=True)
    if report.answered == 0:
        raise typer.Exit(1)


@app.command()
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
    log_dir: Annotated[
        Path | None,
        typer.Option(help="The prediction log (default: serve.log.dir, else <state>/predictions)."),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Choose the logged production images worth labelling; queue them as Label Studio tasks.

    Candidates have a stored image and are neither queued nor labelled. Writes
    <label dir>/queue/<batch-id>.json (import it into Label Studio with the
    label_config.xml beside it) and prints the batch.
    """
    from flywheel.curation import STRATEGIES, CurationError, curate_batch, parse_since
    from flywheel.registry import RegistryError
    from flywheel.tracking import configure_tracking

    p = _params(params, set_)
    if strategy is not None and strategy not in STRATEGIES:
        raise typer.BadParameter(f"choose one of {', '.join(STRATEGIES)}", param_hint="--strategy")
    try:
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
            log_root=log_dir,
        )
    except (CurationError, RegistryError) as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
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
    console.print(table)
    console.print(f"queue: {result.queue_file}", soft_wrap=True)


label_app = typer.Typer(
    help="Labels in and out of Label Studio (JSON); the demo oracle.", no_args_is_help=True
)
app.add_typer(label_app, name="label")


@label_app.command("import")
def label_import(
    path: Annotated[Path, typer.Argument(help="A Label Studio JSON export (a list of tasks).")],
    origin: Annotated[
        str, typer.Option(help="Recorded on the labels: label-studio (people) or oracle.")
    ] = "label-studio",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Import a Label Studio export: check every task, then record the labels, all or nothing.

    A label outside the plan's classes, a task without data.request_id/index,
    or two tasks labelling one image differently is an error naming the task;
    nothing is written then (exit 2). Re-importing an export records nothing new.
    """
    from flywheel.labeling import LabelImportError, import_labels

    p = _params(params)
    try:
        result = import_labels(path, p.data.classes, p.label, origin=origin)
    except LabelImportError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    console.print(
        f"{path}: {len(result.labels)} labelled tasks; [bold]{result.written}[/bold] new or "
        f"changed labels recorded, {result.unchanged} already known, "
        f"{len(result.unlabelled)} tasks without a label"
    )
    if result.file:
        console.print(f"labels: {result.file}", soft_wrap=True)


@label_app.command("oracle")
def label_oracle(
    batch: Annotated[
        str | None, typer.Option(help="Queue batch id to answer (default: every pending task).")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """The demo labeller: answer the queue from the simulator's truth, as a Label Studio export.

    The export (under <label dir>/exports/) is imported with `label import`'s
    code, as a person's would be. Tasks the simulator did not send stay unlabelled.
    """
    from flywheel.demo.oracle import label_with_oracle
    from flywheel.labeling import LabelImportError, QueueError

    p = _params(params)
    try:
        result = label_with_oracle(p, batch=batch)
    except (QueueError, LabelImportError) as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    if result.export is None:
        console.print(f"nothing to label: no pending task in {len(result.batches)} queue batches")
        return
    written = result.imported.written if result.imported else 0
    console.print(
        f"oracle answered [bold]{result.answered}[/bold] of {result.tasks} pending tasks "
        f"({len(result.unanswered)} without truth); {written} labels recorded"
    )
    console.print(f"export: {result.export}", soft_wrap=True)


@data_app.command("merge")
def data_merge(
    repo: Annotated[Path, typer.Option(help="Repository root holding data.dvc.")] = Path("."),
    push: Annotated[bool, typer.Option(help="Push the new version to the default remote.")] = True,
    log_dir: Annotated[
        Path | None,
        typer.Option(help="The prediction log (default: serve.log.dir, else <state>/predictions)."),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Merge every label into data/ as production rows and record a new data version.

    data/ is first brought to the version data.dvc records. The test split
    stays frozen; merge.holdout_share of the new images form the evaluation-only
    `holdout` split. The merged dataset must pass the data gate (else the merge
    is undone, exit 1); `dvc add` records it. Merging the same labels again adds
    nothing and keeps the version.
    """
    from flywheel.data.merge import SKIP_REASONS, MergeError, update_dataset
    from flywheel.data.versioning import DataVersionError

    p = _params(params, set_)
    try:
        update = update_dataset(p, repo, log_root=log_dir, push=push)
    except DataVersionError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    except MergeError as err:
        err_console.print(f"[red]refused:[/red] {escape(str(err))}")
        raise typer.Exit(1) from None
    merge = update.merge
    added = ", ".join(f"{n} to {split}" for split, n in merge.added_per_split().items())
    console.print(
        f"{merge.labels} labelled images: [bold]{len(merge.added)}[/bold] merged"
        f"{f' ({added})' if added else ''}"
    )
    for reason, keys in merge.skipped.items():
        console.print(f"  skipped {len(keys)}: {SKIP_REASONS[reason]} (e.g. {escape(keys[0])})")
    if update.changed:
        console.print(
            f"data version [bold]{update.version}[/bold] (was {update.version_before}); "
            "commit data.dvc to share it"
        )
    else:
        console.print(f"data version unchanged: {update.version}")


# ------------------------------------------------------------ monitoring, dashboards


@app.command()
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
    """
    import json

    from flywheel.config import ConfigError
    from flywheel.monitoring import MonitoringError, parse_time, result_table
    from flywheel.monitoring import monitor as run_monitor
    from flywheel.monitoring.monitor import EXIT_ERROR, predictions_dir
    from flywheel.registry import RegistryError
    from flywheel.tracking import configure_tracking

    p = _params(params, set_)
    configure_tracking()
    try:
        start = parse_time(since) if since else None
        end = parse_time(until) if until else None
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
            )
    except (MonitoringError, ConfigError, RegistryError, ValueError) as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(EXIT_ERROR) from None
    if json_out:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        console.print(result_table(result))
        for note in result.check.notes:
            console.print(f"note: {escape(note)}")
        if result.report_path:
            console.print(f"report: {result.report_path}", soft_wrap=True)
        if result.project_id:
            console.print(f"dashboard: `flywheel ui`, project {result.project_id}")
    raise typer.Exit(result.exit_code)


@app.command()
def reference(
    version: Annotated[
        str | None, typer.Option(help="Registered version (default: the 'production' alias).")
    ] = None,
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Compute and store the reference profile of a registered version (monitoring's baseline).

    Training does this for every new model; use it for versions trained before,
    or to profile a version on the dataset it was trained on after the fact.
    """
    from flywheel.evaluation import EvaluationError
    from flywheel.monitoring import MonitoringError, build_version_reference
    from flywheel.registry import RegistryError, version_for_alias
    from flywheel.tasks import DatasetError
    from flywheel.tracking import configure_tracking

    p = _params(params)
    configure_tracking()
    name = model or p.evaluate.registered_model
    try:
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
    except (MonitoringError, RegistryError, EvaluationError, DatasetError) as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    console.print(
        f"{name} version {chosen}: reference profile of {info.rows} images "
        f"({'+'.join(info.splits)}, embedding {info.embedding_dim}) → run {info.run_id} "
        f"artifact {info.artifact} ({info.seconds:.1f} s)"
    )


@app.command()
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

    from flywheel.env import state_dir
    from flywheel.monitoring.dashboards import DashboardError, start_dashboards
    from flywheel.monitoring.monitor import workspace_dir
    from flywheel.monitoring.workspace import open_workspace
    from flywheel.tracking import configure_tracking

    p = _params(params, set_)
    tracking = configure_tracking()
    bind = host or p.ui.host
    workspace = workspace_dir(p).resolve()
    try:
        with err_console.status("starting the Evidently UI and the MLflow UI"):
            dashboards = start_dashboards(
                workspace,
                tracking.uri,
                host=bind,
                evidently_port=evidently_port or p.ui.evidently_port,
                mlflow_port=(mlflow_port or p.ui.mlflow_port) if mlflow else None,
                log_dir=state_dir() / "logs",
            )
    except DashboardError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
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
            console.print(f"MLflow UI:    {server.url}  ({tracking.uri})")
        console.print("Ctrl-C stops both.")
        while not stop.wait(1.0) and not dashboards.dead():
            pass
        dead = dashboards.dead()
        if stop.is_set() or not dead:
            console.print("stopping the dashboards")
            return
        err_console.print(
            f"[red]error:[/red] the {dead[0].name} UI exited (status "
            f"{dead[0].process.returncode}); log: {dead[0].log}"
        )
        raise typer.Exit(2)


# ---------------------------------------------------------------- pipelines, demo

pipeline_app = typer.Typer(
    help="Kubeflow pipelines: run locally (KFP local runner), compile to IR YAML, submit to a "
    "cluster.",
    no_args_is_help=True,
)
app.add_typer(pipeline_app, name="pipeline")

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


def _import_pipelines() -> None:
    """Make `pipelines`/`components` importable when the editable install maps only src/."""
    import importlib.util

    if importlib.util.find_spec("pipelines") is not None:
        return
    checkout = Path(__file__).resolve().parents[3]  # <repo>/src/flywheel/cli/__init__.py -> <repo>
    if (checkout / "pipelines" / "catalog.py").is_file():
        sys.path.insert(0, str(checkout))
        return
    err_console.print(
        "[red]error:[/red] the `pipelines` package is neither installed nor beside src/"
    )
    raise typer.Exit(2)


def _pipeline_entry(name: str, *, runnable: bool) -> Any:
    """The catalog entry `name`; with `runnable`, refuse a pipeline whose steps are not built."""
    _import_pipelines()
    from pipelines.catalog import get_pipeline

    try:
        entry = get_pipeline(name)
    except KeyError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err.args[0]))}")
        raise typer.Exit(2) from None
    if runnable and not entry.ready:
        err_console.print(f"[red]error:[/red] pipeline {name!r} cannot run yet: {entry.not_ready}")
        raise typer.Exit(2)
    return entry


def _recorded_data_version(p: Params) -> str:
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


def _arguments(pipeline: Any, p: Params, pairs: list[str], *, data_version: str, repo: str) -> Any:
    """The run's arguments, limited to the parameters this pipeline declares."""
    from pipelines.arguments import pipeline_arguments

    arguments = pipeline_arguments(p, pairs, data_version=data_version, repo=repo)
    return {k: v for k, v in arguments.items() if k in pipeline.component_spec.inputs}


def _run_locally(entry: Any, p: Params, pairs: list[str], version: str, caching: bool) -> Any:
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
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        if err.error:
            err_console.print(f"  {escape(err.error)}")
        else:  # no exception in its log: show how it ended
            for line in err.tail[-20:]:
                err_console.print(f"    {escape(line)}")
        err_console.print(f"full log: {err.log}", soft_wrap=True)
        raise typer.Exit(1) from None


def _print_outputs(run: Any) -> None:
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


def _print_training_summary(run: Any) -> None:
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


@pipeline_app.command("run")
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
    entry = _pipeline_entry(name, runnable=True)
    p = _params(params)
    _params(params, set_)  # a bad override fails here, with its key
    run = _run_locally(entry, p, list(set_ or []), _recorded_data_version(p), cache)
    _print_outputs(run)
    if entry.name == "training":
        _print_training_summary(run)


@pipeline_app.command("compile")
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
    _import_pipelines()
    from flywheel.env import component_image
    from pipelines.catalog import PIPELINES
    from pipelines.cluster import compile_pipeline

    p = _params(params)
    chosen = names or [n for n, e in PIPELINES.items() if e.ready]
    settings = _cluster_settings(train_image, accelerator, config_map, s3_secret)
    version = _recorded_data_version(p)
    for name in chosen:
        entry = _pipeline_entry(name, runnable=False)
        pipeline = entry.build(
            p,
            data_version=version,
            target="cluster",
            image=image or component_image(),
            cluster=settings,
        )
        package = compile_pipeline(pipeline, out / f"{name}.yaml")
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


@pipeline_app.command("submit")
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

    Arguments: params.yaml with --set applied, the data version data.dvc records,
    repo '.' (the image's working directory). Prints the run's id and URL. Exits 2
    when the endpoint cannot be reached or refuses.
    """
    from datetime import UTC, datetime

    from flywheel.env import component_image

    entry = _pipeline_entry(name, runnable=True)
    from pipelines.cluster import kfp_cron

    if recurring != (cron is not None):
        raise typer.BadParameter("--recurring and --cron go together", param_hint="--cron")
    try:
        schedule = kfp_cron(cron) if cron is not None else None
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--cron") from None
    from pipelines.cluster import ClusterError, compile_pipeline, submit

    p = _params(params)
    _params(params, set_)
    version = _recorded_data_version(p)
    pipeline = entry.build(
        p,
        data_version=version,
        target="cluster",
        image=image or component_image(),
        cluster=_cluster_settings(train_image, accelerator, config_map, s3_secret),
    )
    package = compile_pipeline(pipeline, out / f"{name}.yaml")
    run_name = run_name or f"{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    arguments = _arguments(pipeline, p, list(set_ or []), data_version=version, repo=".")
    try:
        submission = submit(
            package,
            host=host,
            experiment=experiment,
            run_name=run_name,
            arguments=arguments,
            namespace=namespace,
            cron=schedule,
        )
    except ClusterError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    when = f" on '{schedule}'" if schedule else ""
    console.print(f"submitted {submission.kind} [bold]{run_name}[/bold]{when}: {submission.id}")
    console.print(f"  {submission.url}")


@app.command()
def demo(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    cache: Annotated[
        bool,
        typer.Option("--cache/--no-cache", help="Reuse cached steps (default: train afresh)."),
    ] = False,
    loop: Annotated[
        bool,
        typer.Option(
            "--loop/--no-loop",
            help="After training: serve, send traffic, detect drift, curate, label, retrain.",
        ),
    ] = True,
    requests: Annotated[
        int, typer.Option(min=1, help="Requests per traffic phase of the loop.")
    ] = 400,
    drift_scenario: Annotated[
        str, typer.Option(help="The drifting traffic scenario (params.yaml `scenarios:`).")
    ] = "handwritten_shadow_rotated",
) -> None:
    """Run the loop locally: data (keep, pull or regenerate) → the training pipeline → summary.

    The training pipeline runs on the KFP local runner: validate, train, evaluate
    against production, promote when blessed. Then shows the version promoted, its
    aliases, test accuracy overall and per slice, the Data Docs path and the
    command that opens the MLflow UI, and ends by serving the production model on
    127.0.0.1 for one prediction of a test image (and the command that serves it).
    Run it again: the new candidate faces the champion, and is promoted only if
    the gates bless it.
    """
    import time

    from flywheel.data.versioning import DataVersionError, ensure_dataset

    started = time.perf_counter()
    entry = _pipeline_entry("training", runnable=True)
    p = _params(params)
    _params(params, set_)
    try:
        how, version = ensure_dataset(p.data, ".")
    except DataVersionError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    console.print(f"data/ is at version [bold]{version}[/bold] ({how})")
    run = _run_locally(entry, p, list(set_ or []), version, cache)
    _print_outputs(run)
    _print_training_summary(run)
    _show_served_prediction(p, params)
    if loop:
        _run_closed_loop(params, set_, drift_scenario, requests)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")


def _run_closed_loop(params: Path, set_: list[str] | None, scenario: str, requests: int) -> None:
    """The demo's second half (`flywheel.demo.loop.run_closed_loop`), then the phase table.

    Exits 1 when a phase fails.
    """
    import httpx

    from flywheel.data.versioning import data_version
    from flywheel.demo.loop import LoopError, phase_table, run_closed_loop
    from flywheel.demo.server import PredictionError, ServerStartError

    p = _params(params, set_)
    if scenario not in p.scenarios:
        raise typer.BadParameter(
            f"unknown scenario {scenario!r}; params.yaml has {', '.join(p.scenarios)}",
            param_hint="--drift-scenario",
        )
    entry = _pipeline_entry("flywheel", runnable=True)
    base = _params(params)
    before = data_version(".", p.data)

    def retrain(extra: list[str]) -> None:
        run = _run_locally(entry, base, [*(set_ or []), *extra], data_version(".", p.data), False)
        console.print(f"flywheel pipeline run {run.run_id}: {run.seconds:.0f} s")

    console.rule("the closed loop")
    try:
        phases = run_closed_loop(
            params,
            p,
            retrain=retrain,
            drift_scenario=scenario,
            requests=requests,
            say=console.print,
        )
    except (LoopError, ServerStartError, PredictionError, httpx.HTTPError) as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(1) from None
    console.print(phase_table(phases))
    after = phases[-1].data_version
    if after != before:
        console.print(
            f"data.dvc now records data version {after} (was {before}): "
            "`git diff HEAD -- data.dvc` shows it (DVC staged it); commit it to keep the "
            "labelled production data, or `git checkout HEAD -- data.dvc && dvc checkout` "
            "to go back",
            soft_wrap=True,
        )
    for row in phases:
        if row.report is not None:
            console.print(f"drift report, {row.phase}: {row.report}", soft_wrap=True)
    console.print(
        "dashboards (Evidently UI + MLflow UI): [bold]make ui[/bold] or `flywheel ui`",
        soft_wrap=True,
    )


def _show_served_prediction(p: Params, params: Path) -> None:
    """Serve the production model on a free local port, classify one test image, stop it.

    Exits 1 when the server does not become ready or the prediction fails.
    """
    import httpx

    from flywheel.data.manifest import ManifestError, load_manifest
    from flywheel.demo.server import (
        PredictionError,
        ServerStartError,
        predict_file,
        serve_command,
        start_server,
    )
    from flywheel.registry import version_for_alias
    from flywheel.tracking import configure_tracking

    configure_tracking()
    name = p.evaluate.registered_model
    if version_for_alias(name, p.serve.alias) is None:
        console.print(f"no {p.serve.alias!r} version of {name} yet: nothing to serve")
        return
    try:
        manifest = load_manifest(p.data.dataset_dir)
    except ManifestError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    sample = manifest[manifest["split"] == "test"].iloc[0]
    image = p.data.dataset_dir / str(sample["path"])
    try:
        with (
            console.status(f"serving models:/{name}@{p.serve.alias} on 127.0.0.1 ..."),
            start_server(params) as url,
        ):
            item = predict_file(url, image, request_id="demo-sample")
    except (ServerStartError, PredictionError, httpx.HTTPError) as err:
        err_console.print(f"[red]error:[/red] serving failed: {escape(str(err))}")
        raise typer.Exit(1) from None
    console.print(
        f"served {url}: {image} (true label {sample['label']}) → label "
        f"[bold]{item['label']}[/bold], confidence {item['confidence']:.3f}, "
        f"{item['model_name']} version {item['model_version']}",
        soft_wrap=True,
    )
    console.print(
        f"serve it on http://{p.serve.host}:{p.serve.port} "
        "(POST /predict_image, /predict_images or /predict_arrays; docs at /):"
    )
    console.print(f"  {serve_command(params)}", soft_wrap=True, highlight=False)


def main() -> None:
    """Entry point of the `flywheel` script."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
