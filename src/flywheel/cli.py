"""The `flywheel` command line: the composition root.

Each command loads `params.yaml`, calls one library function and prints what a
person needs to see. Heavy libraries are imported inside the commands so that
`flywheel --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flywheel.env import disable_telemetry

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


def _params(path: Path, pairs: list[str] | None = None):  # type: ignore[no-untyped-def]
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
    from flywheel.data.collect import collect_dataset

    p = _params(params, set_)
    manifest = collect_dataset(p.data)
    console.print(
        f"collected [bold]{len(manifest)}[/bold] images into {p.data.dataset_dir}/ "
        f"(seed {p.data.seed})"
    )
    _print_counts(manifest)


@data_app.command("import")
def data_import(
    path: Annotated[Path, typer.Argument(help="ImageFolder tree: PATH/<split>/<label>/*.png|jpg")],
    name: Annotated[str | None, typer.Option(help="Dataset name (default: params data.name).")] = None,
    style: Annotated[str, typer.Option(help="Stratum value for 'style' of every image.")] = "unknown",
    noise: Annotated[str, typer.Option(help="Stratum value for 'noise' of every image.")] = "unknown",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Import your own ImageFolder tree into the manifest format (images resized to the plan's size)."""
    from flywheel.data.importer import ImportError_, import_imagefolder

    p = _params(params)
    try:
        manifest = import_imagefolder(
            path, p.data, name=name or p.data.name, style=style, noise=noise
        )
    except ImportError_ as err:
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


def _print_counts(manifest) -> None:  # type: ignore[no-untyped-def]
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
    from flywheel.validation import print_report, validate_dataset

    p = _params(params)
    report = validate_dataset(dataset or p.data.dataset_dir, p, check_files=files)
    print_report(report, console)
    if not report.success:
        raise typer.Exit(1)


def main() -> None:
    """Entry point of the `flywheel` script."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
