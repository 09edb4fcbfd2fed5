"""`flywheel data`: collect, import, version and merge datasets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from flywheel.cli.console import (
    abort,
    console,
    err_console,
    exit_on,
    print_error,
    print_table,
    refuse_on,
)
from flywheel.cli.options import DATA_SECTIONS, LogDirOpt, ParamsOpt, SetOpt, read_params
from flywheel.cli.project_root import ProjectTyper

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.config import DataPlan, Params

commands = ProjectTyper(help="Collect, import and version datasets.", no_args_is_help=True)

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
    data/<name>/images/ and data/<name>/manifest.csv. A page plan (data.pages,
    e.g. plans/pages.yaml) gets formula pages with COCO, YOLO and crop labels
    (layout: flywheel.data.pages).
    """
    from flywheel.data.files import DatasetWriteError

    p = read_params(params, set_, needs=DATA_SECTIONS)
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
    path: Annotated[
        Path, typer.Argument(help="ImageFolder tree: PATH/[<split>/]<class>/*.png|jpg")
    ],
    name: Annotated[
        str | None, typer.Option(help="Dataset name (default: params data.name).")
    ] = None,
    style: Annotated[
        str | None,
        typer.Option(help="'style' of every image (default: the plan's, if it has one style)."),
    ] = None,
    noise: Annotated[
        str | None,
        typer.Option(help="'noise' of every image (default: the plan's, if it has one noise)."),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Import your own ImageFolder tree into data/<name>/ with a manifest (`flywheel init` first).

    Layouts: PATH/<class>/* (split per class, stable per file) or
    PATH/<split>/<class>/* (train, val or validation, test).
    """
    from flywheel.data.importer import DatasetImportError, import_imagefolder

    p = read_params(params, set_, needs=DATA_SECTIONS)
    strata = p.data.strata
    with exit_on(DatasetImportError):
        manifest = import_imagefolder(
            path,
            p.data,
            name=name or p.data.name,
            style=style or _only(strata.style),
            noise=noise or _only(strata.noise),
        )
    console.print(f"imported [bold]{len(manifest)}[/bold] images from {path}")
    _print_counts(manifest)
    if name and name != p.data.name:
        err_console.print(
            f"[yellow]note[/yellow]: the plan's dataset is {p.data.name!r}, not {name!r}: the "
            f"other commands read {p.data.dataset_dir}/ unless given --set data.name={name} "
            "(or write a plan for this tree with `flywheel init`)"
        )


@commands.command("version")
def data_version_cmd(
    repo: RepoOpt = Path("."),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Print the data version: the DVC hash of the plan's data root recorded in its .dvc file."""
    from flywheel.data.versioning import DataVersionError, data_version

    plan = read_params(params, set_, needs=DATA_SECTIONS).data if params.is_file() or set_ else None
    with exit_on(DataVersionError):
        console.print(data_version(repo, plan))


@commands.command("ensure")
def data_ensure(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    repo: RepoOpt = Path("."),
    regenerate: Annotated[
        bool,
        typer.Option(
            "--regenerate",
            help="When the pull fails, make the data again with data.generator even if "
            "data.dvc does not record the version as the generator's.",
        ),
    ] = False,
    remote_check: Annotated[
        bool,
        typer.Option(
            help="Check that the default DVC remote holds every file of the version "
            "(--no-remote-check for a version kept local on purpose, e.g. after --no-push).",
        ),
    ] = True,
) -> None:
    """Make data/ match data.dvc: keep it, `dvc pull` it, or regenerate it from the seed.

    First puts right what a killed `flywheel data track` or `merge` left (and
    says so). Regenerates only a version data.dvc records as the generator's
    (the demo's), or with --regenerate; any other version that cannot be pulled
    is an error naming the version and the remote. Then checks, file by file on
    the remote itself, that the default DVC remote holds the whole version: if
    it lacks some, they are counted and named, with the fix (exit 2).
    """
    from flywheel.data.sync import check_remote
    from flywheel.data.versioning import DataVersionError, ensure_dataset

    p = read_params(params, set_, needs=DATA_SECTIONS)
    with exit_on(DataVersionError):
        _recover(repo, p.data, strict=remote_check)
        how, version = ensure_dataset(
            p.data, repo, regenerate=regenerate, verify_remote=remote_check
        )
        check = check_remote(repo, p.data, version) if remote_check else None
    remote = (
        f"; {check.describe()}"
        if check is not None
        else ("; no default DVC remote to check" if remote_check else "")
    )
    console.print(
        f"{p.data.root.as_posix()}/ is at version [bold]{version}[/bold] ({how}); "
        f"`dvc status` is clean{remote}"
    )


@commands.command("push")
def data_push(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    repo: RepoOpt = Path("."),
    latest: Annotated[
        bool,
        typer.Option(
            "--latest",
            help="Record the pushed version as the latest (flywheel/latest.json next to the "
            "remote), even when the remote records another one already.",
        ),
    ] = False,
) -> None:
    """Upload what the DVC remote lacks of the version data.dvc records, then check it all arrived.

    Looks every file up on the remote itself (DVC's `dvc push` trusts an index
    of what the remote holds, and uploads nothing when objects were deleted
    from it). Finishes a killed track or merge first (and says so). The first
    version pushed to a remote is recorded as its latest, which cluster runs
    given no version take; after that only `--latest` (or a track or merge) moves it.
    """
    from flywheel.data.remote import find_remote, latest_version, record_latest
    from flywheel.data.sync import push_version
    from flywheel.data.versioning import DataVersionError

    plan = read_params(params, set_, needs=DATA_SECTIONS).data if params.is_file() or set_ else None
    with exit_on(DataVersionError):
        _recover(repo, plan, strict=True)
        check = push_version(repo, plan)
        if check is None:
            raise DataVersionError(
                f"{repo}/.dvc/config names no default DVC remote: add one with "
                "`dvc remote add -d NAME URL`"
            )
        console.print(check.describe())
        recorded = latest_version(find_remote(repo), repo)
        if latest or recorded is None:
            record_latest(repo, check.version)
            console.print(f"recorded {check.version} as the latest data version")
        elif recorded.version != check.version:
            console.print(
                f"the latest data version stays {recorded.version} (recorded {recorded.time} "
                f"by {recorded.who}); `flywheel data push --latest` makes it {check.version}"
            )


def _recover(repo: Path, plan: DataPlan | None, *, strict: bool) -> None:
    """Put right what a killed track or merge left, saying so; a failed push warns if not strict."""
    from flywheel.data.versioning import DataVersionError, recover_interrupted

    try:
        done = recover_interrupted(repo, plan)
    except DataVersionError as err:
        if strict:
            raise
        print_error(str(err), label="warning")
        return
    if done is not None:
        err_console.print(escape(done))


@commands.command("checkout")
def data_checkout(
    version: Annotated[
        str, typer.Argument(help="The data version (DVC hash in data.dvc), or 'latest'.")
    ],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    repo: RepoOpt = Path("."),
) -> None:
    """Bring any data version from the DVC remote into data/ and record it in data.dvc.

    'latest' is the version recorded next to the remote (flywheel/latest.json),
    e.g. the one a cluster run made. Refuses when data/ holds unrecorded changes.
    """
    from flywheel.data.remote import checkout_version
    from flywheel.data.versioning import DataVersionError

    p = read_params(params, set_, needs=DATA_SECTIONS)
    with exit_on(DataVersionError):
        _recover(repo, p.data, strict=True)
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
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Record the plan's data root as a new version (`dvc add data`), push it; prints the hash.

    The push is checked on the remote, file by file. Finishes a killed track or
    merge first (and says so); a push that fails is a warning, and the next
    command (or `flywheel data push`) tries again.
    """
    from flywheel.data.versioning import DataVersionError, dvc_file, track_dataset

    plan = read_params(params, set_, needs=DATA_SECTIONS).data if params.is_file() or set_ else None
    with exit_on(DataVersionError):
        _recover(repo, plan, strict=False)
        version = track_dataset(repo, plan, push=push)
    _refuse_unpushed(repo, version)
    console.print(
        f"data version [bold]{version}[/bold]; commit {dvc_file(repo, plan).name} to share it"
    )


def _refuse_unpushed(repo: Path, version: str) -> None:
    """Exit 1 when `version` is in data/ but its push failed, so data.dvc does not record it."""
    from flywheel.data.transaction import unpushed

    if unpushed(repo) is not None:
        raise abort(
            f"data version {version} is in data/ but its push failed (the warning above says "
            "why), so data.dvc does not record it yet: `flywheel data push` pushes it and "
            "records it once the remote answers",
            code=1,
        )


def _only(values: tuple[str, ...]) -> str:
    """The plan's one value of a stratum axis, else `unknown` (the stratum of unsorted images)."""
    return values[0] if len(values) == 1 else "unknown"


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
    from rich.table import Table

    table = Table(title="images per stratum and split")
    table.add_column("stratum")
    for split in counts.columns:
        table.add_column(str(split), justify="right")
    for name, row in counts.iterrows():
        table.add_row(str(name), *(str(int(v)) for v in row))
    print_table(table)


@commands.command("merge")
def data_merge(
    repo: RepoOpt = Path("."),
    push: PushOpt = True,
    log_dir: LogDirOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Merge every label into data/ as production rows and record a new data version.

    A merge killed at any step is put right first (undone before data.dvc
    names the new version, finished after; either is said). data/ is then
    brought to the version data.dvc records. The test split stays frozen;
    merge.holdout_share of the new images form the evaluation-only `holdout`
    split. The merged dataset is built and gated beside data/ and switched in
    at once, so data/ is never half merged; if it fails the data gate nothing
    changes (exit 1). `dvc add` records it, and the push is checked on the
    remote. Merging the same labels again adds
    nothing and keeps the version. A label without a recorded stratum gets one
    by merge.strata (default: the stratum production/production). Labels not
    merged are counted with their reason; when none of the labels can be
    merged, the command says why and exits 1.
    """
    from flywheel.data.versioning import DataVersionError
    from flywheel.labeling.merge import STRATUM_SOURCES, MergeError, update_dataset
    from flywheel.labeling.strata import StratumError
    from flywheel.storage import as_location

    p = read_params(params, set_)
    if p.data.is_pages:
        raise typer.BadParameter(
            "a page plan's labels are merged by its update pipeline, which reads them back "
            "from the page labeller and records the pages it settled: `flywheel label sync "
            "--params <plan>` (or `flywheel pipeline run update --params <plan>`)",
            param_hint="--params",
        )
    with exit_on(DataVersionError, StratumError), refuse_on(MergeError):
        _recover(repo, p.data, strict=push)
        log_root = as_location(log_dir) if log_dir else None
        update = update_dataset(p, repo, log_root=log_root, push=push)
    merge = update.merge
    added = ", ".join(f"{n} to {split}" for split, n in merge.added_per_split().items())
    console.print(
        f"{merge.labels} labelled images: [bold]{len(merge.added)}[/bold] merged"
        f"{f' ({added})' if added else ''}"
    )
    for where, n in merge.strata.items():
        console.print(f"  stratum of {n}: {STRATUM_SOURCES[where]}")
    print_skipped(merge.skipped)
    if merge.nothing_merged is not None:
        raise abort(merge.nothing_merged, code=1)
    _refuse_unpushed(repo, update.version)
    _settle(p, update.version)
    if update.changed:
        console.print(
            f"data version [bold]{update.version}[/bold] (was {update.version_before}); "
            "commit data.dvc to share it"
        )
    else:
        console.print(f"data version unchanged: {update.version}")


def _settle(p: Params, version: str) -> None:
    """The labels merged (every one recorded) settle their queued tasks: not outstanding now."""
    from flywheel.data.ground_truth import ground_truth_dir
    from flywheel.labeling import read_labels
    from flywheel.storage import state_url
    from flywheel.workflows.label_sync import settle_labels

    labels = read_labels(ground_truth_dir(state_url(p.state.url)))
    if not labels.empty:
        settle_labels(p, labels, version)


def print_skipped(skipped: dict[str, list[str]]) -> None:
    """Warn, on stderr, how many labels were not merged for each reason, with an example."""
    from flywheel.labeling.merge import SKIP_REASONS

    for reason, keys in skipped.items():
        print_error(
            f"skipped {len(keys)} labels: {SKIP_REASONS[reason]} (e.g. {keys[0]})",
            label="warning",
        )
