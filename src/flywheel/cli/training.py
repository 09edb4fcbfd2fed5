"""Validate, train, tune and evaluate: from a dataset to a blessed (or refused) candidate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flywheel.cli.console import console, err_console, exit_on, print_table
from flywheel.cli.options import DatasetOpt, ModelOpt, ParamsOpt, SetOpt, WhoOpt, read_params
from flywheel.cli.project_root import ProjectTyper

if TYPE_CHECKING:
    from flywheel.config import DataPlan, Params
    from flywheel.evaluation import EvaluationOutcome

commands = ProjectTyper()


UNTRACKED = "untracked"
"""The data version recorded for data no DVC version describes (`--allow-untracked`)."""

AllowUntrackedOpt = Annotated[
    bool,
    typer.Option(
        "--allow-untracked",
        help="Train on data data.dvc does not record (changed, or a --dataset elsewhere); "
        f"the run and model record the data version '{UNTRACKED}'.",
    ),
]
TrackOpt = Annotated[
    bool,
    typer.Option(
        "--track",
        help="Record changed data/ as a new data version first (dvc add + push), and train on it.",
    ),
]
DataVersionOpt = Annotated[
    str | None,
    typer.Option(
        "--data-version",
        help="Train on this data version (DVC hash, or 'latest': the latest recorded next to "
        "the remote), materialised from the DVC remote (FLYWHEEL_DVC_REMOTE, else .dvc/config) "
        "into <state dir>/data/<version>; under torchrun only local rank 0 fetches it.",
    ),
]


def _describe_data_version(plan: DataPlan, dataset: Path | None = None) -> str | None:
    """The DVC data version of the plan's data folder, flagged when the folder has moved on.

    For display only (lineage uses `_lineage_version`). None when there is none, or
    when `dataset` (a `--dataset` given) lies outside that folder.
    """
    from flywheel.data.versioning import DataVersionError, data_version, is_clean

    if dataset is not None and not dataset.resolve().is_relative_to(plan.root.resolve()):
        return None
    try:
        version = data_version(".", plan)
    except DataVersionError:
        return None
    if not is_clean(".", plan):
        return f"{version} + unrecorded changes (run `flywheel data track`)"
    return version


def _lineage_version(
    plan: DataPlan, dataset: Path | None, *, allow_untracked: bool, track: bool
) -> str:
    """The data version a run records: the true DVC hash of what it trains on, never a guess.

    Data that data.dvc records as it is: its version. Changed data/: recorded
    first with `track` (a new version), else refused unless `allow_untracked`
    (then `UNTRACKED`). A `--dataset` outside data/: `UNTRACKED` when allowed.

    Raises:
        DataVersionError: the data does not match data.dvc and neither flag says what to do.
    """
    from flywheel.data.versioning import DataVersionError, data_version, is_clean, track_dataset

    outside = dataset is not None and not dataset.resolve().is_relative_to(plan.root.resolve())
    if outside:
        if allow_untracked:
            return UNTRACKED
        raise DataVersionError(
            f"{dataset}: not under {plan.root}/, so no data version (data.dvc) describes it; "
            "import it into the plan's data folder and `flywheel data track` it, or train with "
            "--allow-untracked (the model then records the data version 'untracked')"
        )
    if is_clean(".", plan):
        return data_version(".", plan)
    if track:
        return track_dataset(".", plan, push=True)
    if allow_untracked:
        return UNTRACKED
    try:
        recorded = f"records {data_version('.', plan)}"
    except DataVersionError:
        recorded = "does not exist"
    raise DataVersionError(
        f"{plan.root}/ does not match data.dvc (which {recorded}): training on it would record "
        "a data version it is not. Record it first (--track, or `flywheel data track`), or "
        "train with --allow-untracked (the model then records the data version 'untracked')"
    )


def _local_rank() -> tuple[int, int]:
    """This process's local rank and how many local ranks there are (torchrun's; 0 and 1 alone)."""
    import os

    return int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def _materialised_dataset(p: Params, version: str) -> tuple[Path, str]:
    """`version` (or `latest`) from the DVC remote in `<state dir>/data/<version>`; where, which.

    One fetch per machine: local rank 0 materialises, the other local ranks wait
    for it (and, for `latest`, take the version it chose).
    """
    from flywheel.data.remote import bare
    from flywheel.env import state_dir
    from flywheel.workflows.datasets import LATEST, materialise_once, ready_version

    label = LATEST if version == LATEST else bare(version)
    workspace = state_dir() / "data" / label
    local_rank, _ = _local_rank()
    dataset = materialise_once(p, version, workspace, local_rank=local_rank)
    return dataset, ready_version(workspace) or label


def _lineage_once(
    plan: DataPlan, dataset: Path | None, *, allow_untracked: bool, track: bool
) -> str:
    """`_lineage_version`, decided by local rank 0 alone when torchrun starts several ranks.

    The check runs DVC on the repository (and may commit the folder to an empty
    cache, or track it): every rank doing so at once races for DVC's lock. The
    other ranks wait for rank 0's answer (`workflows.datasets.decide_once`).
    """
    from flywheel.env import state_dir
    from flywheel.workflows.datasets import decide_once, launch_key

    def decide() -> str:
        return _lineage_version(plan, dataset, allow_untracked=allow_untracked, track=track)

    local_rank, local_ranks = _local_rank()
    if local_ranks == 1:
        return decide()
    answer = state_dir() / "ranks" / f"lineage-{launch_key()}.json"
    return decide_once(answer, decide, local_rank=local_rank)


@commands.command()
def validate(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
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

    p = read_params(params, set_)
    with exit_on(ManifestError, ValidationSetupError):
        report = validate_dataset(dataset or p.data.dataset_dir, p, check_files=files)
    report.data_version = _describe_data_version(p.data, dataset)
    print_report(report, console)
    if not report.success:
        raise typer.Exit(1)


@commands.command()
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
    data_version: DataVersionOpt = None,
    allow_untracked: AllowUntrackedOpt = False,
    track: TrackOpt = False,
) -> None:
    """Train the model params.yaml describes; log the run, curves and pt2 model to MLflow.

    Runs on CUDA with mixed precision when a GPU is present; under
    `torchrun --nproc_per_node=N $(which flywheel) train` it trains data-parallel.
    Prints the run id, the best validation metric and the logged model's URI.
    A logged model gets its reference profile for monitoring (train and val
    images through the exported model) as a run artifact and is registered as
    the new 'candidate' version, as the pipeline's train step does.

    The run records the data version it really trained on: data.dvc's when
    data/ matches it, the one given by --data-version (fetched from the DVC
    remote by hash: a pod needs no repository), a new one with --track;
    otherwise it refuses, unless --allow-untracked.
    """
    from flywheel.config import ConfigError
    from flywheel.data.versioning import DataVersionError
    from flywheel.env import state_dir
    from flywheel.modeling.training import TrainingError
    from flywheel.registry import RegistryError
    from flywheel.tasks import DatasetError
    from flywheel.workflows import train_and_register

    p = read_params(params, set_)
    with exit_on(DataVersionError):
        if data_version:
            if dataset is not None:
                raise DataVersionError("--data-version and --dataset: give one of them")
            data_dir, version = _materialised_dataset(p, data_version)
        else:
            data_dir = dataset or p.data.dataset_dir
            version = _lineage_once(p.data, dataset, allow_untracked=allow_untracked, track=track)
    with exit_on(DatasetError, TrainingError, RegistryError, ConfigError):
        trained = train_and_register(
            p,
            data_dir,
            out_dir=out or state_dir() / "train",
            resume=resume,
            data_version=version,
            log_model=log_model,
            progress=True,
            reason="trained by flywheel train",
            status=err_console.status,
        )
    result, reference, candidate = trained.training, trained.reference, trained.candidate
    if result.run_id is None:  # a DDP rank other than 0: rank 0 reports
        return
    last = result.history[-1]
    table = Table(title=f"last epoch ({result.device})")
    for column in ("metric", "train", "val"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name in sorted(k.removeprefix("val_") for k in last if k.startswith("val_")):
        table.add_row(name, f"{last[f'train_{name}']:.4f}", f"{last[f'val_{name}']:.4f}")
    print_table(table)
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


@commands.command()
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
    allow_untracked: AllowUntrackedOpt = False,
    track: TrackOpt = False,
) -> None:
    """Search tune.space of params.yaml with Optuna (TPE, median pruning); trials nest in MLflow.

    Each trial is a short training run (tune.epochs_per_trial), a child of one
    parent "tune" run. Prints the trials and the best values, writes them to
    <out>/best_params.yaml (dotted keys, ready for --set). Re-running the same
    set-up resumes the study. Exits 1 when no trial completed.
    """
    from flywheel.config import ConfigError
    from flywheel.data.versioning import DataVersionError
    from flywheel.env import state_dir
    from flywheel.modeling.training import TrainingError
    from flywheel.modeling.tuning import TuneError, print_report, validate_space
    from flywheel.modeling.tuning import tune as tune_study
    from flywheel.tasks import DatasetError

    p = read_params(params, set_)
    with exit_on(TuneError, DatasetError, TrainingError, DataVersionError, ConfigError):
        validate_space(p)  # before anything is opened or trained
        data_dir = dataset or p.data.dataset_dir
        version = _lineage_version(p.data, dataset, allow_untracked=allow_untracked, track=track)
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
    print_report(result, console)
    if result.best is None:
        raise typer.Exit(1)


@commands.command()
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
    from flywheel.workflows import model_description

    p = read_params(params, set_)
    configure_tracking()
    name = model or p.evaluate.registered_model
    if run_id and version:
        raise typer.BadParameter("give --run-id or --version, not both", param_hint="--run-id")
    with exit_on(RegistryError, EvaluationError, DatasetError):
        if run_id:
            version = register(
                f"runs:/{run_id}/{artifact}",
                name,
                tags=run_lineage(run_id),
                who=who,
                model_description=model_description(p),
            )
            console.print(f"registered run {run_id} as [bold]{name}[/bold] version {version}")
        elif version is None:
            version = version_for_alias(name, "candidate")
            if version is None:
                raise RegistryError(f"model {name!r} has no 'candidate' version; pass --version")
        outcome = evaluate_candidate(
            name, version, dataset or p.data.dataset_dir, p.evaluate, who=who
        )
    _print_evaluation(outcome)
    if not outcome.blessing.blessed:
        raise typer.Exit(1)


def _print_evaluation(outcome: EvaluationOutcome) -> None:
    report, champion, blessing = outcome.report, outcome.champion, outcome.blessing
    table = Table(title=escape(f"{report.split} split: {report.model_uri}"))
    for column in ("slice", "images", *(report.label(m) for m in report.metric_names)):
        table.add_column(column, justify="left" if column == "slice" else "right")
    if champion is not None:
        table.add_column(f"champion v{blessing.champion_version}", justify="right")
    for name, m in [("all", report.overall), *report.slices.items()]:
        extra = [] if champion is None else [f"{champion.primary(name):.3f}"]
        row = [f"{m[metric]:.3f}" for metric in report.metric_names]
        table.add_row(escape(name), str(m.n), *row, *extra)
    print_table(table)
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
    print_table(gates)
    for note in blessing.notes:
        console.print(f"note: {escape(note)}")
    version = f"{blessing.model_name} version {blessing.candidate_version}"
    if blessing.blessed:
        console.print(f"[green]blessed[/green]: {version} is now 'staging'")
    else:
        failed = ", ".join(blessing.failed_gates)
        console.print(f"[red]not blessed[/red]: {escape(version)}; failed: {escape(failed)}")
