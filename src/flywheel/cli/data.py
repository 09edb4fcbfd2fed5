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
PlanOpt = Annotated[
    Path | None,
    typer.Option(
        "--params",
        "-p",
        help="The params.yaml whose data plan names the data root (default: data/).",
    ),
]


@commands.command("collect")
def data_collect(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Generate the demo dataset the data plan asks for (deterministic from the seed).

    Handwritten glyphs come from scikit-learn's bundled digits, printed ones are
    rendered with bundled fonts; noise is applied as each stratum says. Writes
    data/<name>/images/ and data/<name>/manifest.csv. A page plan (data.pages,
    e.g. plans/pages.yaml) gets formula pages with COCO, YOLO and crop labels
    (layout: flywheel.data.pages).
    """
    from flywheel.data.files import DatasetWriteError

    p = read_params(params, set_)
    if p.data.pages is not None:
        from flywheel.demo.pages import collect_pages as collect
    else:
        from flywheel.demo.collect import collect_dataset as collect
    with exit_on(DatasetWriteError):  # CollectError is one
        manifest = collect(p.data)
    what = "pages" if p.data.pages is not None else "images"
    console.print(
        f"collected [bold]{len(manifest)}[/bold] {what} into {p.data.dataset_dir}/ "
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
    params: PlanOpt = None,
) -> None:
    """Print the data version: the DVC hash of the data root recorded in its .dvc file."""
    from flywheel.data.versioning import DataVersionError, data_version

    plan = read_params(params).data if params is not None else None
    with exit_on(DataVersionError):
        console.print(data_version(repo, plan))


@commands.command("ensure")
def data_ensure(
    params: ParamsOpt = Path("params.yaml"),
    repo: RepoOpt = Path("."),
) -> None:
    """Make data/ match data.dvc: keep it, `dvc pull` it, or regenerate it from the seed."""
    from flywheel.data.versioning import DataVersionError, ensure_dataset

    p = read_params(params)
    with exit_on(DataVersionError):
        how, version = ensure_dataset(p.data, repo)
    console.print(
        f"{p.data.root.as_posix()}/ is at version [bold]{version}[/bold] ({how}); "
        "`dvc status` is clean"
    )


@commands.command("track")
def data_track(
    repo: RepoOpt = Path("."),
    push: PushOpt = True,
    params: PlanOpt = None,
) -> None:
    """Record the data root (data/) as a new version (`dvc add`) and push it; prints the hash."""
    from flywheel.data.versioning import dvc_file, track_dataset

    plan = read_params(params).data if params is not None else None
    version = track_dataset(repo, plan, push=push)
    console.print(
        f"data version [bold]{version}[/bold]; commit {dvc_file(repo, plan).name} to share it"
    )


def _print_counts(manifest: pd.DataFrame) -> None:
    from flywheel.data.manifest import stratum
    from flywheel.data.pages import STRATA_COLUMNS

    if set(STRATA_COLUMNS) <= set(manifest.columns):  # a page manifest
        strata = manifest[list(STRATA_COLUMNS)].astype(str).agg("/".join, axis=1)
    else:
        strata = stratum(manifest)
    counts = manifest.assign(stratum=strata).pivot_table(
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
