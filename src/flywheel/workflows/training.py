"""The training workflow: validate the data → train and register → (judge) → promote.

1. `validate_data` — the data at the version `data.dvc` records (kept, pulled or
   regenerated), through the Great Expectations gate; a failure raises
   `DataGateError` (the pipeline stops before training) after writing Data Docs.
   The validated dataset is copied into the step's output, so the steps after it
   read exactly what was validated, here and on a cluster alike.
2. `train_candidate` — train on it, log to MLflow with lineage, store the
   model's reference profile, register it as the new `candidate` version
   (`train_and_register`, which `flywheel train` calls too).
3. `judge_candidate` (`flywheel.workflows.judging`) — evaluate that version
   against `production` on the frozen split; the gates bless it or not.
4. `promote_candidate` — move `production` to it (only run when blessed).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.config import Params
from flywheel.tracking import PIPELINE_RUN_ID_ENV
from flywheel.workflows.errors import DataGateError, StepError
from flywheel.workflows.output import say, write_json

if TYPE_CHECKING:
    from flywheel.modeling.training import TrainResult
    from flywheel.monitoring.reference import ReferenceInfo
    from flywheel.registry import AliasChange


@dataclass(frozen=True)
class ValidatedDataset:
    """What `validate_data` checked and exported.

    Attributes:
        data_version: the DVC data version (hash of the data folder in `data.dvc`).
        provenance: how the data got there: present, pulled, regenerated or collected.
        source_dir: the dataset folder that was validated (in the repository).
        exported_dir: the copy handed to the next steps.
        n_rows: manifest rows.
        n_expectations: expectations evaluated.
        counts: images per stratum and split.
        data_docs: the Great Expectations Data Docs page of this validation.
    """

    data_version: str
    provenance: str
    source_dir: Path
    exported_dir: Path
    n_rows: int
    n_expectations: int
    counts: dict[str, dict[str, int]]
    data_docs: Path | None

    def metadata(self) -> dict[str, Any]:
        """JSON-able metadata for the Dataset artifact (shown in the KFP UI)."""
        return {
            "data_version": self.data_version,
            "provenance": self.provenance,
            "source": str(self.source_dir),
            "rows": self.n_rows,
            "expectations": self.n_expectations,
            "counts": self.counts,
            "data_docs": str(self.data_docs) if self.data_docs else "",
        }


def validate_data(
    params: Params,
    repo: str | Path,
    *,
    expected_version: str = "",
    dataset_out: Path,
    docs_out: Path,
) -> ValidatedDataset:
    """Bring the data to the version asked for, gate it, and export it for the next steps.

    The version comes from the repository when its `data.dvc` records it (kept,
    pulled or regenerated), else from the DVC remote by hash, in an empty
    scratch folder (`flywheel.workflows.datasets.data_at_version`): a pod needs
    no repository and no git.

    Args:
        params: the configuration (`data` plan, `validation` thresholds).
        repo: the repository root holding `data.dvc` (locally the project); ''
            for none (a pod: the version comes from `FLYWHEEL_DVC_REMOTE`).
        expected_version: the data version the run asked for; empty takes what
            `data.dvc` records (without a repository: the latest recorded next
            to the remote).
        dataset_out: folder to copy the validated dataset into (the step's output).
        docs_out: file to copy the Data Docs page into (written even on failure).

    Raises:
        flywheel.data.versioning.DataVersionError: the data cannot be brought to
            the version (no remote, the version missing from it, unrecorded
            changes in the repository's folder).
        DataGateError: an expectation failed; names them and the Data Docs page.
    """
    from flywheel.workflows.datasets import data_at_version

    with tempfile.TemporaryDirectory(prefix="flywheel-data-") as scratch:
        data = data_at_version(params, expected_version, repo, Path(scratch) / "workspace")
        say(f"data version {data.version} ({data.provenance})")
        return _gate_and_export(
            params,
            data.version,
            data.provenance,
            data.dataset_dir,
            dataset_out=dataset_out,
            docs_out=docs_out,
        )


def _gate_and_export(
    params: Params,
    version: str,
    provenance: str,
    source: Path,
    *,
    dataset_out: Path,
    docs_out: Path,
) -> ValidatedDataset:
    """The Great Expectations gate on `source`, its Data Docs, and the copy for the next steps."""
    from rich.console import Console

    from flywheel.validation import print_report, validate_dataset
    from flywheel.validation.offline_docs import standalone_page

    report = validate_dataset(source, params, progress=False)
    report.data_version = version
    print_report(report, Console(file=sys.stdout, width=120, color_system=None))
    docs_out.parent.mkdir(parents=True, exist_ok=True)
    if report.data_docs is not None:  # one file that needs nothing beside it
        docs_out.write_text(standalone_page(report.data_docs), encoding="utf-8")
    else:
        docs_out.write_text("<html><body><p>Great Expectations wrote no Data Docs page.</p>")
    if not report.success:
        for f in report.failures:
            shown = ", ".join(f"{o.key} ({str(o.value)[:60]})" for o in f.offenders[:3])
            rows = f"{f.unexpected_count} rows, e.g. {shown}" if f.unexpected_count else shown
            say(f"✗ {f.rule} [{f.expectation}{f' on {f.column}' if f.column else ''}] {rows}")
        failed = "; ".join(
            f"{f.rule} ({f.expectation}{f' on {f.column}' if f.column else ''})"
            for f in report.failures
        )
        raise DataGateError(
            f"{source}: {len(report.failures)} of {report.n_expectations} expectations "
            f"failed, training will not start: {failed}. Data Docs: {report.data_docs}"
        )
    shutil.copytree(source, dataset_out, dirs_exist_ok=True)
    say(f"{report.n_rows} rows passed {report.n_expectations} expectations")
    return ValidatedDataset(
        data_version=version,
        provenance=provenance,
        source_dir=source,
        exported_dir=dataset_out,
        n_rows=report.n_rows,
        n_expectations=report.n_expectations,
        counts=report.counts,
        data_docs=report.data_docs,
    )


# ----------------------------------------------------------------------- train


@dataclass(frozen=True)
class RegisteredCandidate:
    """A trained model, logged and registered as the `candidate` version.

    Attributes:
        name: the registered model.
        version: its new version.
        run_id: the MLflow training run.
        model_uri: the logged model the version was registered from.
        data_version: the data version it was trained on.
        monitor: the validation metric that picked the best epoch.
        best_metric: that metric's best value.
        epochs_run: epochs trained (fewer than asked when it stopped early).
        metrics: the best epoch's train/validation metrics.
    """

    name: str
    version: str
    run_id: str
    model_uri: str
    data_version: str
    monitor: str
    best_metric: float
    epochs_run: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def registry_uri(self) -> str:
        """`models:/<name>/<version>`: what serving and evaluation load."""
        return f"models:/{self.name}/{self.version}"

    def metadata(self) -> dict[str, Any]:
        """JSON-able metadata for the Model artifact; `from_metadata` reads it back."""
        return {**asdict(self), "registry_uri": self.registry_uri}

    @classmethod
    def from_metadata(cls, raw: Mapping[str, Any]) -> RegisteredCandidate:
        """Read `metadata()` back (KFP turns integers into floats on the way; undone here).

        Raises:
            StepError: a key is missing (not a Model artifact of `train_candidate`).
        """
        try:
            return cls(
                name=str(raw["name"]),
                version=str(raw["version"]),
                run_id=str(raw["run_id"]),
                model_uri=str(raw["model_uri"]),
                data_version=str(raw["data_version"]),
                monitor=str(raw["monitor"]),
                best_metric=float(raw["best_metric"]),
                epochs_run=int(raw["epochs_run"]),
                metrics={str(k): float(v) for k, v in dict(raw.get("metrics", {})).items()},
            )
        except KeyError as err:
            raise StepError(f"model artifact metadata lacks {err}: {dict(raw)}") from None


def epoch_line(metrics: Mapping[str, float], monitor: str) -> str:
    """One epoch's progress in a few numbers: losses, the monitored metric, the time.

    >>> epoch_line({"train_loss": 0.7381, "val_loss": 0.5034, "val_accuracy": 0.8875,
    ...             "epoch_seconds": 17.87, "lr": 0.0015}, "val_accuracy")
    'train_loss 0.7381, val_loss 0.5034, val_accuracy 0.8875 (17.9 s)'
    """
    shown = [k for k in ("train_loss", "val_loss", monitor) if k in metrics]
    line = ", ".join(f"{k} {metrics[k]:.4f}" for k in dict.fromkeys(shown))
    if "epoch_seconds" in metrics:
        line += f" ({metrics['epoch_seconds']:.1f} s)"
    return line


@dataclass(frozen=True)
class TrainedModel:
    """What `train_and_register` did.

    Attributes:
        training: the training run (history, best epoch, the logged model).
        reference: the reference profile stored on the run; None when no model
            was logged (or on a DDP rank other than 0).
        candidate: the registered `candidate` version; None when no model was
            logged (or on a DDP rank other than 0).
    """

    training: TrainResult
    reference: ReferenceInfo | None = None
    candidate: RegisteredCandidate | None = None


def _quiet(what: str) -> AbstractContextManager[object]:
    """No status shown."""
    return nullcontext()


def model_description(params: Params) -> str:
    """What the registered model is, for its page in the MLflow UI (Markdown).

    The model, the task, the data plan it learns, and how its versions move
    through the aliases, with the gates that judge them.
    """
    plan, gates = params.data, params.evaluate.gates
    if plan.pages is not None:
        data = f"the `{plan.name}` page plan ({plan.per_stratum.get('train', 0)} pages per stratum)"
    else:
        shown = ", ".join(plan.classes[:12]) + (", …" if len(plan.classes) > 12 else "")
        strata = " × ".join(
            f"{k} ({', '.join(v)})"
            for k, v in (("style", plan.strata.style), ("noise", plan.strata.noise))
        )
        data = (
            f"the `{plan.name}` data plan: {len(plan.classes)} classes ({shown}); strata {strata}"
        )
    judged = [f"accuracy ≥ {gates.min_accuracy:.2f}"]
    if gates.max_slice_regression is not None:
        judged.append(f"no slice more than {gates.max_slice_regression:.2f} below production")
    judged.append(f"at least {gates.min_improvement:+.2f} over production overall")
    return (
        f"`{params.train.model.name}` network for the `{params.train.task}` task, trained on "
        f"{data}.\n\n"
        "How versions move: each training registers a version as `candidate`; the gates judge "
        f"it against `production` on the frozen `{params.evaluate.split}` split (and the "
        "labelled production hold-out when there is one) and a blessed version becomes "
        "`staging`; `flywheel promote` serves it as `production`, and the version it replaces "
        "becomes `previous` for `flywheel rollback`. The production version holds no other "
        "stage alias.\n\n"
        f"Gates: {'; '.join(judged)}. Each version's description gives its verdict and "
        "headline metrics."
    )


def train_and_register(
    params: Params,
    dataset_dir: str | Path,
    *,
    out_dir: Path,
    data_version: str,
    reason: str,
    resume: bool = False,
    log_model: bool = True,
    progress: bool = False,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    status: Callable[[str], AbstractContextManager[object]] | None = None,
) -> TrainedModel:
    """Train, log the run and the model to MLflow, store its reference profile, register it.

    What `flywheel train` and the pipeline's train step (`train_candidate`) both
    do. Before registering, the model's reference profile (its train and val
    images through the exported model, `flywheel.monitoring.reference`) is
    stored on the run, so monitoring can compare traffic with what every version
    learned from; then the logged model becomes the new `candidate` version of
    `evaluate.registered_model`. A run that logged no model (`log_model=False`,
    or a DDP rank other than 0) is neither profiled nor registered.

    Args:
        params: the configuration (`train`; `evaluate.registered_model`).
        dataset_dir: the dataset folder (`manifest.csv` and the images).
        out_dir: checkpoints, `history.json` and the learning curves.
        data_version: the DVC data version, for the lineage ('' when unknown).
        reason: why the version is registered, for the registry's history.
        resume: continue from the last checkpoint in `out_dir`.
        log_model: log the best model to MLflow (without it, nothing is registered).
        progress: show progress bars.
        on_epoch_end: called after each epoch with `(epoch, metrics)`.
        status: wraps the reference profile's computation (given what it does), e.g. in a
            spinner.

    Raises:
        flywheel.tasks.DatasetError: the dataset cannot be read.
        flywheel.modeling.training.TrainingError: training cannot run as configured.
    """
    from flywheel.modeling.training import train
    from flywheel.monitoring.reference import build_reference
    from flywheel.registry import register, run_lineage
    from flywheel.tracking import configure_tracking

    configure_tracking()
    result = train(
        params,
        Path(dataset_dir),
        out_dir=out_dir,
        resume=resume,
        data_version=data_version or None,
        log_model=log_model,
        progress=progress,
        on_epoch_end=on_epoch_end,
    )
    if result.run_id is None or result.model_uri is None:
        return TrainedModel(result)
    with (status or _quiet)("reference profile: train + val through the exported model"):
        reference = build_reference(result.model_uri, result.run_id, dataset_dir)
    name = params.evaluate.registered_model
    version = register(
        result.model_uri,
        name,
        tags=run_lineage(result.run_id),
        reason=reason,
        model_description=model_description(params),
    )
    best = next((row for row in result.history if int(row["epoch"]) == result.best_epoch), {})
    candidate = RegisteredCandidate(
        name=name,
        version=version,
        run_id=result.run_id,
        model_uri=result.model_uri,
        data_version=data_version,
        monitor=result.monitor,
        best_metric=float(result.best_metric),
        epochs_run=result.epochs_run,
        # a rate over nothing (the precision of a detector that found no box) is NaN:
        # left out, as JSON and the KFP Metrics artifact cannot hold it
        metrics={k: float(v) for k, v in best.items() if k != "epoch" and math.isfinite(v)},
    )
    return TrainedModel(result, reference, candidate)


def train_candidate(
    params: Params,
    dataset_dir: str | Path,
    *,
    data_version: str,
    model_out: Path,
    metrics_out: Path,
) -> RegisteredCandidate:
    """The pipeline's train step: `train_and_register`, with the step's outputs and progress lines.

    Checkpoints go to a scratch folder that is removed afterwards: the best model
    is in MLflow, the learning curves and history in the run. Prints one line per
    epoch. `model_out` receives the version's metadata as JSON (the Model
    artifact's content: a pointer into the registry), `metrics_out` the best
    epoch's metrics as JSON (an output without a file counts as missing, and
    the local runner's cache then never hits).

    Raises:
        flywheel.tasks.DatasetError: the dataset cannot be read.
        flywheel.modeling.training.TrainingError: training cannot run as configured.
        StepError: training logged no model (nothing to register).
    """
    epochs = params.train.epochs

    def report_epoch(epoch: int, metrics: dict[str, float]) -> None:
        say(f"epoch {epoch}/{epochs}: {epoch_line(metrics, params.train.monitor)}")

    run_id = os.environ.get(PIPELINE_RUN_ID_ENV) or "unknown"
    with tempfile.TemporaryDirectory(prefix="flywheel-train-") as scratch:
        trained = train_and_register(
            params,
            dataset_dir,
            out_dir=Path(scratch),
            data_version=data_version,
            reason=f"trained by pipeline run {run_id}",
            on_epoch_end=report_epoch,
        )
    candidate, reference, result = trained.candidate, trained.reference, trained.training
    if candidate is None or reference is None:
        raise StepError("training finished without logging a model; nothing to register")
    say(
        f"reference profile: {reference.rows} images of {'+'.join(reference.splits)} through "
        f"the exported model ({reference.seconds:.1f} s) → run artifact {reference.artifact}"
    )
    write_json(model_out, candidate.metadata())
    write_json(metrics_out, candidate.metrics)
    say(
        f"registered {candidate.name} version {candidate.version} (run {candidate.run_id}); "
        f"best {result.monitor} {result.best_metric:.4f} at epoch {result.best_epoch}"
    )
    return candidate


def promote_candidate(name: str, version: str, *, reason: str = "") -> AliasChange:
    """Point `production` at a blessed version (the replaced one becomes `previous`).

    Args:
        name: the registered model.
        version: the version the gates blessed.
        reason: recorded on the versions; default names the pipeline run.

    Raises:
        flywheel.registry.PromotionRefusedError: not blessed, or blessed against a
            champion that is no longer production.
    """
    from flywheel.registry import promote
    from flywheel.tracking import configure_tracking

    configure_tracking()
    run_id = os.environ.get(PIPELINE_RUN_ID_ENV) or "unknown"
    change = promote(
        name, version, reason=reason or f"blessed by the gates in pipeline run {run_id}"
    )
    if change.changed:
        say(f"{name}: production → version {change.production} (previous: {change.previous})")
    else:
        say(f"{name}: version {version} already is production; nothing changed")
    return change
