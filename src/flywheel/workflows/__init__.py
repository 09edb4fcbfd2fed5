"""The pipeline steps as library functions: what each Kubeflow component calls.

A component (`components/*.py`) is a handful of lines: it turns its KFP inputs
into plain values, calls ONE function of this module and writes what comes back
into its KFP outputs. Everything else a step does — resolving the parameters,
bringing the data to the recorded version, gating, training and registering,
judging, promoting, rendering the reports the KFP UI shows — lives here, where
unit tests reach it. This module never imports kfp; the pipelines and the local
runner live in `pipelines/`.

The steps of the training pipeline, in order:

1. `validate_data` — the data at the version `data.dvc` records (kept, pulled or
   regenerated), through the Great Expectations gate; a failure raises
   `DataGateError` (the pipeline stops before training) after writing Data Docs.
   The validated dataset is copied into the step's output, so the steps after it
   read exactly what was validated, here and on a cluster alike.
2. `train_candidate` — train on it, log to MLflow with lineage, register the
   logged model as the new `candidate` version.
3. `judge_candidate` — evaluate that version against `production` on the frozen
   split; the gates bless it or not (recorded in the registry).
4. `promote_candidate` — move `production` to it (only run when blessed).

The retraining (`flywheel`) pipeline adds `detect_drift` (Evidently against
the serving version's reference profile), `curate_samples` (active learning),
`label_samples` (the oracle, through a Label Studio export) and `update_dataset`
(merge, data gate, `dvc add`) in front.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.config import ConfigError, GatesConfig, Params, parse_params
from flywheel.config.overrides import parse_overrides
from flywheel.env import TELEMETRY_OFF, state_dir
from flywheel.tracking import PIPELINE_RUN_ID_ENV, resolve_tracking

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from flywheel.evaluation import EvaluationOutcome
    from flywheel.monitoring import MonitorResult
    from flywheel.registry import AliasChange

LOG_PREFIX = "[flywheel]"
"""Marks the lines a step prints for people (the local runner echoes them; pod logs show them)."""

FIRST_CLASS_PARAMETERS: dict[str, str] = {
    "epochs": "train.epochs",
    "learning_rate": "train.lr",
    "min_accuracy": "evaluate.gates.min_accuracy",
}
"""Pipeline parameters of their own (shown and editable one by one in the KFP UI) → params key."""

MONITORING_ISSUE = "the monitoring and curation issue"


class StepError(RuntimeError):
    """A pipeline step cannot do its job; the message says why and what to do."""


class DataGateError(StepError):
    """The dataset failed validation: the pipeline stops before training."""


class DataVersionMismatchError(StepError):
    """The repository records another data version than the pipeline run asked for."""


def say(message: str) -> None:
    """Print one progress line for people, marked with `LOG_PREFIX`, flushed at once."""
    print(f"{LOG_PREFIX} {message}", flush=True)


def write_json(path: Path, value: Any) -> Path:
    """Write JSON (indented, keys sorted) to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True, allow_nan=False))
    return path


# -------------------------------------------------------------------- parameters


def params_document(params: Params) -> str:
    """params as the one-line JSON text the pipelines carry in their `params` parameter.

    Text rather than a mapping because KFP's parameters cannot hold nulls, and
    params.yaml has them (`null` turns a gate off); one line because the KFP
    compiler copies defaults into a YAML comment and a line break there breaks
    the compiled file. Every key is written out, so a run shows the whole
    configuration it used. Keys are sorted: the text is part of the cache key of
    every step, and the same configuration must always read the same.
    """
    return json.dumps(params.model_dump(mode="json"), sort_keys=True, allow_nan=False)


def resolve_params(
    params: str | Mapping[str, Any],
    overrides: Sequence[str] = (),
    *,
    epochs: int | None = None,
    learning_rate: float | None = None,
    min_accuracy: float | None = None,
) -> Params:
    """The configuration a step runs with: params.yaml, the overrides, then the first-class ones.

    The pipeline carries the whole params.yaml as one parameter (so a cached
    step's key changes whenever any value does), the `--set` pairs of the run,
    and a few values as parameters of their own; those win over both.

    Args:
        params: params.yaml as JSON text (the pipeline's `params`) or as a mapping.
        overrides: `dotted.key=value` pairs, e.g. `["train.batch_size=64"]`.
        epochs: `train.epochs`, when given.
        learning_rate: `train.lr`, when given.
        min_accuracy: `evaluate.gates.min_accuracy`, when given.

    Raises:
        ConfigError: not JSON, or the result does not match the schema (names the key).
    """
    if isinstance(params, str):
        try:
            raw = json.loads(params)
        except json.JSONDecodeError as err:
            raise ConfigError(f"pipeline parameter params: not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError("pipeline parameter params: expected a mapping at the top level")
    else:
        raw = dict(params)
    merged = parse_overrides(overrides)
    given = {"epochs": epochs, "learning_rate": learning_rate, "min_accuracy": min_accuracy}
    for name, value in given.items():
        if value is not None:
            merged[FIRST_CLASS_PARAMETERS[name]] = value
    return parse_params(raw, merged, source="pipeline parameters")


def split_overrides(pairs: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Route `--set` pairs: first-class pipeline parameters (typed), and the other pairs as given.

    >>> split_overrides(["train.epochs=3", "train.batch_size=64"])
    ({'epochs': 3}, ['train.batch_size=64'])

    Raises:
        ConfigError: a malformed pair.
    """
    by_key = {key: name for name, key in FIRST_CLASS_PARAMETERS.items()}
    first_class: dict[str, Any] = {}
    rest: list[str] = []
    for pair in pairs:
        ((key, value),) = parse_overrides([pair]).items()
        if key in by_key:
            first_class[by_key[key]] = value
        else:
            rest.append(pair)
    return first_class, rest


def pipeline_arguments(
    params: Params,
    overrides: Sequence[str] = (),
    *,
    data_version: str,
    repo: str,
) -> dict[str, Any]:
    """Arguments of one training-pipeline run: the base params, the routed overrides, the data.

    Args:
        params: params.yaml as loaded, *without* the overrides (they travel apart,
            so the run shows what was changed).
        overrides: `dotted.key=value` pairs (`--set`).
        data_version: the DVC data version the run must train on.
        repo: the repository root holding `data.dvc`, as the steps will see it.
    """
    first_class, rest = split_overrides(overrides)
    return {
        "params": params_document(params),
        "overrides": rest,
        **first_class,
        "data_version": data_version,
        "repo": repo,
    }


# -------------------------------------------------------------------- validate


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
    """Bring the data to its recorded version, gate it, and export it for the next steps.

    Args:
        params: the configuration (`data` plan, `validation` thresholds).
        repo: the repository root holding `data.dvc` (locally the project; on a
            cluster the image's working directory).
        expected_version: the data version the run asked for; empty accepts
            whatever `data.dvc` records.
        dataset_out: folder to copy the validated dataset into (the step's output).
        docs_out: file to copy the Data Docs page into (written even on failure).

    Raises:
        flywheel.data.versioning.DataVersionError: the data cannot be brought to
            the recorded version (e.g. unrecorded changes in the folder).
        DataVersionMismatchError: `data.dvc` records another version than asked for.
        DataGateError: an expectation failed; names them and the Data Docs page.
    """
    from rich.console import Console

    from flywheel.data.versioning import ensure_dataset
    from flywheel.validation import print_report, validate_dataset

    repo = Path(repo)
    provenance, version = ensure_dataset(params.data, repo)
    say(f"data version {version} ({provenance})")
    if expected_version and version != expected_version:
        raise DataVersionMismatchError(
            f"{repo / 'data.dvc'} records data version {version}, but the run asked for "
            f"{expected_version}: build the image from the commit that recorded it, or "
            "run with the version the repository holds"
        )
    source = repo / params.data.dataset_dir
    report = validate_dataset(source, params, progress=False)
    report.data_version = version
    print_report(report, Console(file=sys.stdout, width=120, color_system=None))
    docs_out.parent.mkdir(parents=True, exist_ok=True)
    if report.data_docs is not None:
        shutil.copyfile(report.data_docs, docs_out)
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


def train_candidate(
    params: Params,
    dataset_dir: str | Path,
    *,
    data_version: str,
    model_out: Path,
    metrics_out: Path,
) -> RegisteredCandidate:
    """Train, log the run and the model to MLflow, register it as the new `candidate`.

    Before registering, the model's reference profile (its train and val images
    through the exported model, `flywheel.monitoring.reference`) is stored on the
    run, so monitoring can compare traffic with what every version learned from.
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
    from flywheel.modeling.training import train
    from flywheel.monitoring.reference import build_reference
    from flywheel.registry import register, run_lineage
    from flywheel.tracking import configure_tracking

    configure_tracking()
    epochs = params.train.epochs

    def report_epoch(epoch: int, metrics: dict[str, float]) -> None:
        say(f"epoch {epoch}/{epochs}: {epoch_line(metrics, params.train.monitor)}")

    with tempfile.TemporaryDirectory(prefix="flywheel-train-") as scratch:
        result = train(
            params,
            Path(dataset_dir),
            out_dir=Path(scratch),
            data_version=data_version or None,
            progress=False,
            on_epoch_end=report_epoch,
        )
    if result.run_id is None or result.model_uri is None:
        raise StepError("training finished without logging a model; nothing to register")
    reference = build_reference(result.model_uri, result.run_id, dataset_dir)
    say(
        f"reference profile: {reference.rows} images of {'+'.join(reference.splits)} through "
        f"the exported model ({reference.seconds:.1f} s) → run artifact {reference.artifact}"
    )
    name = params.evaluate.registered_model
    run_id = os.environ.get(PIPELINE_RUN_ID_ENV) or "unknown"
    version = register(
        result.model_uri,
        name,
        tags=run_lineage(result.run_id),
        reason=f"trained by pipeline run {run_id}",
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
        metrics={k: float(v) for k, v in best.items() if k != "epoch"},
    )
    write_json(model_out, candidate.metadata())
    write_json(metrics_out, candidate.metrics)
    say(
        f"registered {name} version {version} (run {result.run_id}); best "
        f"{result.monitor} {result.best_metric:.4f} at epoch {result.best_epoch}"
    )
    return candidate


# -------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class SliceRow:
    """One line of the per-slice table: the whole split (`all`) or one slice."""

    name: str
    images: int
    accuracy: float
    champion_accuracy: float | None = None


@dataclass(frozen=True)
class Judgement:
    """The evaluation step's result, as plain values for the KFP outputs.

    Attributes:
        blessed: every gate passed.
        summary: the blessing in one line (`blessed: 7/7 gates passed`, or the failures).
        failed_gates: names of the failed gates.
        champion_version: the `production` version it was compared with (None: first model).
        scalars: the Metrics artifact's values (`evaluation_scalars`).
        classes: class names, the confusion matrix's order.
        confusion: `(K, K)` counts, rows true classes.
    """

    blessed: bool
    summary: str
    failed_gates: tuple[str, ...]
    champion_version: str | None
    scalars: dict[str, float]
    classes: tuple[str, ...]
    confusion: list[list[int]]


def judge_candidate(
    params: Params,
    name: str,
    version: str,
    dataset_dir: str | Path,
    *,
    report_out: Path,
    metrics_out: Path,
    confusion_out: Path,
) -> Judgement:
    """Evaluate a registered version against `production` and let the gates bless it or not.

    The verdict is recorded on the version (`flywheel.evaluation.evaluate_candidate`);
    `report_out` receives a self-contained HTML report (tables and pictures inline),
    `metrics_out` the scalars and `confusion_out` the confusion matrix, as JSON.

    Raises:
        flywheel.registry.RegistryError: no such model or version.
        flywheel.evaluation.EvaluationError: the models or the data cannot be evaluated.
    """
    from flywheel.evaluation import evaluate_candidate
    from flywheel.tracking import configure_tracking

    configure_tracking()
    outcome = evaluate_candidate(name, version, dataset_dir, params.evaluate, progress=False)
    report_out.parent.mkdir(parents=True, exist_ok=True)
    report_out.write_text(render_evaluation_html(outcome, params.evaluate.gates))
    blessing = outcome.blessing
    say(f"{name} version {version}: {blessing.summary()}")
    judgement = Judgement(
        blessed=blessing.blessed,
        summary=blessing.summary(),
        failed_gates=tuple(blessing.failed_gates),
        champion_version=blessing.champion_version,
        scalars=evaluation_scalars(outcome),
        classes=tuple(outcome.report.classes),
        confusion=[list(row) for row in outcome.report.overall.confusion],
    )
    write_json(metrics_out, judgement.scalars)
    write_json(confusion_out, {"classes": list(judgement.classes), "matrix": judgement.confusion})
    return judgement


def evaluation_scalars(outcome: EvaluationOutcome) -> dict[str, float]:
    """Flat scalars for the KFP Metrics artifact: overall, per slice, the champion's, the verdict.

    Names: `accuracy`, `macro_f1`, `ece`, `images`, `accuracy[<slice>]`,
    `images[<slice>]`, `champion_accuracy`, `champion_accuracy[<slice>]`,
    `blessed` (1 or 0) and `gates_failed`. `slice_rows` reads them back.
    """
    report, champion, blessing = outcome.report, outcome.champion, outcome.blessing
    out = {
        "accuracy": report.overall.accuracy,
        "macro_f1": report.overall.macro_f1,
        "ece": report.overall.ece,
        "images": float(report.overall.n),
    }
    for name, m in report.slices.items():
        out[f"accuracy[{name}]"] = m.accuracy
        out[f"images[{name}]"] = float(m.n)
    if champion is not None:
        out["champion_accuracy"] = champion.overall.accuracy
        for name, m in champion.slices.items():
            if name in report.slices:
                out[f"champion_accuracy[{name}]"] = m.accuracy
    out["blessed"] = float(blessing.blessed)
    out["gates_failed"] = float(len(blessing.failed_gates))
    return out


_SLICED = re.compile(r"^(?P<metric>\w+)\[(?P<slice>.+)\]$")


def slice_rows(scalars: Mapping[str, float]) -> list[SliceRow]:
    """The per-slice table back from `evaluation_scalars`' names.

    `all` first, then single-column slices, then combinations, each by name.

    >>> rows = slice_rows({"accuracy": 0.9, "images": 10.0,
    ...                    "accuracy[style=a,noise=b]": 0.7, "images[style=a,noise=b]": 2.0,
    ...                    "accuracy[style=a]": 0.8, "images[style=a]": 5.0})
    >>> [(r.name, r.images, r.accuracy, r.champion_accuracy) for r in rows]
    [('all', 10, 0.9, None), ('style=a', 5, 0.8, None), ('style=a,noise=b', 2, 0.7, None)]
    """
    slices: list[SliceRow] = []
    for key, value in scalars.items():
        match = _SLICED.match(key)
        if match and match["metric"] == "accuracy":
            name = match["slice"]
            slices.append(
                SliceRow(
                    name,
                    int(scalars.get(f"images[{name}]", 0)),
                    float(value),
                    scalars.get(f"champion_accuracy[{name}]"),
                )
            )
    # KFP does not keep the order of metadata keys: single columns first, then combinations.
    slices.sort(key=lambda row: (row.name.count(","), row.name))
    overall = SliceRow(
        "all",
        int(scalars.get("images", 0)),
        float(scalars["accuracy"]),
        scalars.get("champion_accuracy"),
    )
    return [overall, *slices]


def figure_png_base64(fig: Figure) -> str:
    """A matplotlib figure as a base64 PNG, for an `<img src="data:image/png;base64,...">`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_evaluation_html(outcome: EvaluationOutcome, gates: GatesConfig) -> str:
    """The evaluation as one self-contained HTML page (the KFP UI renders HTML artifacts).

    Verdict, per-slice table (with the champion beside the candidate), every gate
    with value, threshold and detail, the notes, and the per-slice accuracy bars
    and confusion matrix as inline PNGs — no external resources.
    """
    from flywheel.evaluation import plot_confusion_matrix, plot_slice_accuracy

    report, champion, blessing = outcome.report, outcome.champion, outcome.blessing
    title = f"{blessing.model_name or ''} version {blessing.candidate_version or '?'}".strip()
    verdict = (
        '<p class="ok">blessed: every gate passed</p>'
        if blessing.blessed
        else f'<p class="bad">not blessed; failed: {html.escape(", ".join(blessing.failed_gates))}'
        "</p>"
    )
    champ = blessing.champion_version
    slice_headers = ["slice", "images", "accuracy", "macro-F1", "ECE"]
    if champion is not None:
        slice_headers.append(f"champion v{champ} accuracy")
    slice_table = []
    for name, m in [("all", report.overall), *report.slices.items()]:
        row = [name, str(m.n), f"{m.accuracy:.4f}", f"{m.macro_f1:.4f}", f"{m.ece:.4f}"]
        if champion is not None:
            theirs = champion.overall if name == "all" else champion.slices.get(name)
            row.append("-" if theirs is None else f"{theirs.accuracy:.4f}")
        slice_table.append(row)
    gate_rows = [
        [
            g.name,
            f"{g.value:.4f}",
            f"{g.comparison} {g.threshold:.4f}",
            "pass" if g.passed else "FAIL",
            g.detail,
        ]
        for g in blessing.gates
    ]
    bars = figure_png_base64(plot_slice_accuracy(report, champion, gates.min_slice_accuracy))
    confusion = figure_png_base64(plot_confusion_matrix(report.overall, report.classes))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in blessing.notes)
    against = f"production version {champ}" if champ else "no production model (first model)"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>evaluation: {html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.ok {{ color: #176f2c; font-weight: bold; }} .bad {{ color: #b00020; font-weight: bold; }}
</style></head><body>
<h1>Evaluation of {html.escape(title)}</h1>
<p>{html.escape(report.split)} split, {report.overall.n} images, against
{html.escape(against)}; evaluated {html.escape(blessing.evaluated_at)}.</p>
{verdict}
<h2>Accuracy per slice</h2>
{_html_table(slice_headers, slice_table)}
<img alt="accuracy per slice" src="data:image/png;base64,{bars}">
<h2>Gates</h2>
{_html_table(["gate", "value", "threshold", "verdict", "detail"], gate_rows)}
<ul>{notes}</ul>
<h2>Confusion matrix</h2>
<img alt="confusion matrix" src="data:image/png;base64,{confusion}">
</body></html>
"""


# --------------------------------------------------------------------- promote


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


# ----------------------------------------------------------------- run summary


@dataclass(frozen=True)
class TrainingRunSummary:
    """What a finished training-pipeline run did, for people (`flywheel demo`, `pipeline run`).

    Attributes:
        model_name: the registered model.
        version: the candidate version the run registered (or reused from the cache).
        run_id: its MLflow training run.
        data_version: the data it was trained on.
        blessed: the gates' verdict.
        failed_gates: the gates that failed (empty when blessed).
        champion_version: the production version it was judged against (None: first model).
        production: the version in production after the run.
        aliases: the aliases the candidate version holds after the run.
        slices: test accuracy overall and per slice (with the champion's).
    """

    model_name: str
    version: str
    run_id: str
    data_version: str
    blessed: bool
    failed_gates: tuple[str, ...]
    champion_version: str | None
    production: str | None
    aliases: tuple[str, ...]
    slices: list[SliceRow]

    @property
    def promoted(self) -> bool:
        """The candidate is what production serves now."""
        return self.blessed and self.production == self.version


def summarize_training_run(
    model: Mapping[str, Any], scalars: Mapping[str, float], blessed: bool
) -> TrainingRunSummary:
    """Read back what a training run did: its outputs, and the registry as it is now.

    Args:
        model: the Model artifact's metadata (`RegisteredCandidate.metadata`).
        scalars: the evaluation Metrics artifact's metadata (`evaluation_scalars`).
        blessed: the evaluation step's verdict.
    """
    from flywheel.registry import list_versions, read_blessing, version_for_alias
    from flywheel.tracking import configure_tracking

    configure_tracking()
    candidate = RegisteredCandidate.from_metadata(model)
    blessing = read_blessing(candidate.name, candidate.version)
    aliases = next(
        (v.aliases for v in list_versions(candidate.name) if v.version == candidate.version), ()
    )
    return TrainingRunSummary(
        model_name=candidate.name,
        version=candidate.version,
        run_id=candidate.run_id,
        data_version=candidate.data_version,
        blessed=blessed,
        failed_gates=tuple(blessing.failed_gates) if blessing is not None else (),
        champion_version=blessing.champion_version if blessing is not None else None,
        production=version_for_alias(candidate.name, "production"),
        aliases=tuple(aliases),
        slices=slice_rows(scalars),
    )


def mlflow_ui_command(tracking_uri: str, *, port: int = 5000) -> str:
    """The command that opens the MLflow UI on a local store (one worker: 2 cores are plenty).

    >>> mlflow_ui_command("sqlite:////p/.flywheel/mlflow/mlflow.db").split()[1:4]
    ['ui', '--backend-store-uri', 'sqlite:////p/.flywheel/mlflow/mlflow.db']
    """
    mlflow = Path(sys.executable).parent / "mlflow"
    with contextlib.suppress(ValueError):
        mlflow = mlflow.relative_to(Path.cwd())
    return (
        f"{mlflow} ui --backend-store-uri {tracking_uri} --workers 1 --host 127.0.0.1 --port {port}"
    )


# ------------------------------------------------------------------ retraining


def detect_drift(
    params: Params, *, report_out: Path, metrics_out: Path | None = None
) -> MonitorResult:
    """Compare the recent prediction log with the serving version's reference (`flywheel monitor`).

    The window is the last `monitor.window_hours` of the log under the state
    folder; the Evidently report goes to `report_out` and the snapshot into the
    workspace, `metrics_out` receives `MonitorResult.scalars()` as JSON.

    Raises:
        flywheel.monitoring.NotEnoughDataError: too few predictions to decide.
        flywheel.monitoring.ReferenceNotFoundError: the served version has no profile.
    """
    from rich.console import Console

    from flywheel.monitoring import monitor, result_table
    from flywheel.tracking import configure_tracking

    configure_tracking()
    result = monitor(params, report_path=report_out)
    Console(file=sys.stdout, width=120, color_system=None).print(result_table(result))
    if metrics_out is not None:
        write_json(metrics_out, result.scalars())
    reasons = f" ({', '.join(result.check.reasons)})" if result.drift else ""
    say(
        f"{result.model_name} version {result.model_version}, {result.window_size} predictions: "
        f"{'DRIFT' + reasons if result.drift else 'no drift'}"
    )
    return result


LABELS_FILE = "labels.parquet"
"""The labels one labelling step hands to the next (in its `labels` output folder)."""


def curate_samples(params: Params, *, queue_out: Path) -> int:
    """Choose the logged samples worth labelling; write the labelling queue; return its size.

    `flywheel.curation.curate_batch` with params.yaml's `curate` settings over
    the whole prediction log (what is already queued or labelled is skipped).
    The batch goes to the labelling queue and is copied, with the labelling
    config, into `queue_out` (a folder) for the next step.
    """
    from flywheel.curation import curate_batch
    from flywheel.labeling import LABEL_CONFIG_NAME

    result = curate_batch(params, progress=False)
    queue_out.mkdir(parents=True, exist_ok=True)
    if result.queue_file is None:
        say(f"nothing to curate: every logged image is queued or labelled ({result.excluded})")
        return 0
    shutil.copy2(result.queue_file, queue_out / result.queue_file.name)
    shutil.copy2(result.queue_file.parent / LABEL_CONFIG_NAME, queue_out / LABEL_CONFIG_NAME)
    say(
        f"queued {len(result.selected)} of {result.candidates} candidates "
        f"({result.strategy}, spread over {result.space}): batch {result.batch_id}"
    )
    return len(result.selected)


def label_samples(params: Params, queue_dir: Path, *, labels_out: Path) -> int:
    """Label the queue (an oracle in the demo); write the labels; return how many.

    `label.labeler: oracle` answers the batches in `queue_dir` from the
    simulator's truth through a Label Studio export (`flywheel.labeling.label_with_oracle`);
    the export and `labels.parquet` (the labels recorded) go to `labels_out`.
    """
    import pandas as pd

    from flywheel.labeling import LABEL_COLUMNS, label_with_oracle

    labels_out.mkdir(parents=True, exist_ok=True)
    result = label_with_oracle(params, queue=queue_dir, export_dir=labels_out)
    labels = (
        result.imported.labels
        if result.imported is not None
        else pd.DataFrame(columns=list(LABEL_COLUMNS))
    )
    labels.to_parquet(labels_out / LABELS_FILE, index=False)
    say(
        f"oracle answered {result.answered} of {result.tasks} pending tasks "
        f"({len(result.unanswered)} without truth)"
    )
    return len(labels)


def update_dataset(params: Params, repo: str | Path, labels_dir: Path) -> str:
    """Merge the labels into a new dataset version (`dvc add` + push); return the version.

    Reads `labels.parquet` of the labelling step from `labels_dir` and calls
    `flywheel.data.merge.update_dataset`; the merged dataset passes the data
    gate or nothing is recorded. No new labels: the version stays.
    """
    import pandas as pd

    from flywheel.data.merge import update_dataset as merge_and_track

    path = labels_dir / LABELS_FILE
    labels = (
        pd.read_parquet(path)
        if path.is_file()
        else pd.DataFrame(columns=["request_id", "index", "label"])
    )
    update = merge_and_track(params, repo, labels)
    added = update.merge.added_per_split()
    say(
        f"merged {len(update.merge.added)} of {update.merge.labels} labelled images {added}; "
        f"data version {update.version}" + ("" if update.changed else " (unchanged)")
    )
    return update.version


# ----------------------------------------------------------- local runs, cron


def new_run_id(pipeline: str) -> str:
    """A run id for a local pipeline run: `<pipeline>-local-<UTC time>-<random>`.

    >>> new_run_id("training").startswith("training-local-")
    True
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{pipeline}-local-{stamp}-{uuid.uuid4().hex[:6]}"


def local_run_environment(*, run_id: str, tmp_dir: Path) -> dict[str, str]:
    """Environment for the local runner's step processes: this process's stores, as absolute paths.

    The steps are subprocesses: they must find the same MLflow store, GX context
    and DVC state as the process that launched them, whatever their working
    directory, and record the pipeline run as lineage. Telemetry stays off
    (values the user set win), output is unbuffered so logs stream, and
    temporary files go to `tmp_dir`, which the runner removes afterwards.
    """
    env = {key: os.environ.get(key, value) for key, value in TELEMETRY_OFF.items()}
    env.update(
        {
            "FLYWHEEL_HOME": str(state_dir().resolve()),
            "MLFLOW_TRACKING_URI": resolve_tracking().uri,
            PIPELINE_RUN_ID_ENV: run_id,
            "TMPDIR": str(tmp_dir.resolve()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def kfp_cron(expression: str) -> str:
    """A cron expression as Kubeflow Pipelines wants it: six fields, seconds first.

    Standard five-field expressions get `0` seconds in front.

    >>> kfp_cron("0 * * * *")
    '0 0 * * * *'

    Raises:
        ValueError: neither five nor six fields.
    """
    fields = expression.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise ValueError(
        f"cron expression {expression!r} has {len(fields)} fields; give five "
        "(minute hour day month weekday, e.g. '0 * * * *') or six (seconds first)"
    )
