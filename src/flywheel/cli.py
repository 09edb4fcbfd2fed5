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
    from flywheel.data.collect import CollectError, collect_dataset

    p = _params(params, set_)
    try:
        manifest = collect_dataset(p.data)
    except CollectError as err:
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
    dataset: Annotated[
        Path | None, typer.Option(help="Dataset folder (default: data/<name> from params).")
    ] = None,
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
    dataset: Annotated[
        Path | None, typer.Option(help="Dataset folder (default: data/<name> from params).")
    ] = None,
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
    """
    from flywheel.env import state_dir
    from flywheel.tasks import DatasetError
    from flywheel.training import TrainingError
    from flywheel.training import train as train_model

    p = _params(params, set_)
    data_dir = dataset or p.data.dataset_dir
    version = None
    if dataset is None or dataset.resolve().is_relative_to(p.data.root.resolve()):
        version = _describe_data_version(p.data)
    try:
        result = train_model(
            p,
            data_dir,
            out_dir=out or state_dir() / "train",
            resume=resume,
            data_version=version,
            log_model=log_model,
        )
    except (DatasetError, TrainingError) as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
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
    dataset: Annotated[
        Path | None, typer.Option(help="Dataset folder (default: data/<name> from params).")
    ] = None,
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


def main() -> None:
    """Entry point of the `flywheel` script."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
