"""`flywheel data`: collect, import, version and merge datasets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flywheel.cli.console import console, exit_on, refuse_on
from flywheel.cli.options import LogDirOpt, ParamsOpt, SetOpt, read_params

if TYPE_CHECKING:
    import pandas as pd

commands = typer.Typer(help="Collect, import and version datasets.", no_args_is_help=True)

RepoOpt = Annotated[Path, typer.Option(help="Repository root holding data.dvc.")]
PushOpt = Annotated[bool, typer.Option(help="Push the new version to the default remote.")]


@commands.command("collect")
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

    p = read_params(params, set_)
    with exit_on(DatasetWriteError):  # CollectError is one
        manifest = collect_dataset(p.data)
    console.print(
        f"collected [bold]{len(manifest)}[/bold] images into {p.data.dataset_dir}/ "
        f"(seed {p.data.seed})"
    )
    _print_counts(manifest)


@commands.command("import")
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

    p = read_params(params)
    with exit_on(DatasetImportError):
        manifest = import_imagefolder(
            path, p.data, name=name or p.data.name, style=style, noise=noise
        )
    console.print(f"imported [bold]{len(manifest)}[/bold] images from {path}")
    _print_counts(manifest)


@commands.command("version")
def data_version_cmd(
    repo: RepoOpt = Path("."),
) -> None:
    """Print the data version: the DVC hash of data/ recorded in data.dvc."""
    from flywheel.data.versioning import DataVersionError, data_version

    with exit_on(DataVersionError):
        console.print(data_version(repo))


@commands.command("ensure")
def data_ensure(
    params: ParamsOpt = Path("params.yaml"),
    repo: RepoOpt = Path("."),
    regenerate: Annotated[
        bool,
        typer.Option(
            "--regenerate",
            help="When the pull fails, make the data again with data.generator even if "
            "data.dvc does not record the version as the generator's.",
        ),
    ] = False,
) -> None:
    """Make data/ match data.dvc: keep it, `dvc pull` it, or regenerate it from the seed.

    Regenerates only a version data.dvc records as the generator's (the demo's),
    or with --regenerate; any other version that cannot be pulled is an error
    naming the version and the remote.
    """
    from flywheel.data.versioning import DataVersionError, ensure_dataset

    p = read_params(params)
    with exit_on(DataVersionError):
        how, version = ensure_dataset(p.data, repo, regenerate=regenerate)
    console.print(f"data/ is at version [bold]{version}[/bold] ({how}); `dvc status` is clean")


@commands.command("checkout")
def data_checkout(
    version: Annotated[
        str, typer.Argument(help="The data version (DVC hash in data.dvc), or 'latest'.")
    ],
    params: ParamsOpt = Path("params.yaml"),
    repo: RepoOpt = Path("."),
) -> None:
    """Bring any data version from the DVC remote into data/ and record it in data.dvc.

    'latest' is the version recorded next to the remote (flywheel/latest.json),
    e.g. the one a cluster run made. Refuses when data/ holds unrecorded changes.
    """
    from flywheel.data.remote import checkout_version
    from flywheel.data.versioning import DataVersionError

    p = read_params(params)
    with exit_on(DataVersionError):
        checked_out = checkout_version(repo, p.data, version)
    console.print(f"data/ is at version [bold]{checked_out}[/bold]; commit data.dvc to share it")


@commands.command("latest")
def data_latest(repo: RepoOpt = Path(".")) -> None:
    """Print the latest data version recorded next to the DVC remote: version, time, who."""
    from flywheel.data.remote import find_remote, latest_version
    from flywheel.data.versioning import DataVersionError

    with exit_on(DataVersionError):
        remote = find_remote(repo)
        latest = latest_version(remote, repo)
        if latest is None:
            raise DataVersionError(f"DVC remote {remote} records no latest data version")
    console.print(f"{latest.version} (recorded {latest.time} by {latest.who})")


@commands.command("track")
def data_track(
    repo: RepoOpt = Path("."),
    push: PushOpt = True,
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


@commands.command("merge")
def data_merge(
    repo: RepoOpt = Path("."),
    push: PushOpt = True,
    log_dir: LogDirOpt = None,
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
    from flywheel.data.versioning import DataVersionError
    from flywheel.labeling.merge import SKIP_REASONS, MergeError, update_dataset

    p = read_params(params, set_)
    with exit_on(DataVersionError), refuse_on(MergeError):
        update = update_dataset(p, repo, log_root=log_dir, push=push)
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
