"""The stage: a registered candidate against `production` on the same data, blessed or not.

`evaluate_candidate` evaluates both versions on the same split (and on the
production holdout when the dataset has one), applies the gates, logs the
results into the candidate's training run (`log_evaluation`) and records the
blessing on the version (`flywheel.registry.record_blessing`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flywheel import registry
from flywheel.config import HOLDOUT_SPLIT, EvaluateConfig
from flywheel.evaluation.gates import check_gates
from flywheel.evaluation.metrics import EvaluationReport
from flywheel.evaluation.plots import plot_confusion_matrix, plot_slice_metric
from flywheel.evaluation.prediction import (
    Predictions,
    evaluate_model,
    predict_split,
    report_predictions,
)
from flywheel.evaluation.system import (
    PARTNER_TASKS,
    Partner,
    SystemCheck,
    check_system,
    with_system_gate,
)
from flywheel.registry import Blessing, LockStrategy

ARTIFACT_DIR = "evaluation"
"""Folder of the evaluation artifacts in the candidate's run."""
REPORT_HTML = "report.html"
"""The self-contained HTML report in that folder (MLflow's artifact view renders it)."""


def log_evaluation(
    run_id: str,
    report: EvaluationReport,
    blessing: Blessing,
    champion: EvaluationReport | None = None,
    *,
    min_slice_accuracy: float | None = None,
    holdout: EvaluationReport | None = None,
    champion_holdout: EvaluationReport | None = None,
    system: SystemCheck | None = None,
) -> None:
    """Write the evaluation into an MLflow run (the candidate's training run).

    Metrics, the headline only: `mlflow_metrics()` of the report (and of the
    holdout report: `holdout_accuracy`), the champion's primary metric
    (`champion_test_accuracy`), `blessed` (1/0) and `gates_failed`. The detail
    is in tables and files under `evaluation/`, which MLflow shows as such:
    the per-slice table (`slices.json`, also as CSV; the holdout's in
    `holdout_slices.json`), the per-class table (`classes.json`), the gates
    (`gates.json`: value, threshold, verdict), the report and the blessing as
    JSON, the per-slice bars of the primary metric (`slice_accuracy.png` for
    classification) and, for a task that has one, the confusion matrix (PNG).
    A stage of a two-stage service run with its partner adds the pair's rates
    (`pair_end_to_end`, `champion_pair_end_to_end`, ...) and its per-slice
    table (`pair_slices.json`).
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient()
    now = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
    values = report.mlflow_metrics()
    values["blessed"] = float(blessing.blessed)
    values["gates_failed"] = float(len(blessing.failed_gates))
    primary = report.primary_metric
    if champion is not None:
        values[f"champion_{report.split}_{primary}"] = champion.primary()
    if holdout is not None:
        values.update(holdout.mlflow_metrics())
    if champion_holdout is not None:
        values[f"champion_{champion_holdout.split}_{primary}"] = champion_holdout.primary()
    if system is not None:
        values.update(system.pair.mlflow_metrics("pair"))
        if system.champion_pair is not None:
            values.update(system.champion_pair.mlflow_metrics("champion_pair"))
    metrics = [Metric(key, float(v), now, 0) for key, v in values.items()]
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    client.log_dict(run_id, report.to_dict(), f"{ARTIFACT_DIR}/report.json")
    if champion is not None:
        client.log_dict(run_id, champion.to_dict(), f"{ARTIFACT_DIR}/champion_report.json")
    if holdout is not None:
        client.log_dict(run_id, holdout.to_dict(), f"{ARTIFACT_DIR}/holdout_report.json")
    client.log_text(
        run_id, json.dumps(blessing.to_dict(), indent=2), f"{ARTIFACT_DIR}/blessing.json"
    )
    table = report.slice_table()
    client.log_text(run_id, table.to_csv(index=False), f"{ARTIFACT_DIR}/slices.csv")
    client.log_table(run_id, data=table, artifact_file=f"{ARTIFACT_DIR}/slices.json")
    if holdout is not None:
        client.log_table(
            run_id, data=holdout.slice_table(), artifact_file=f"{ARTIFACT_DIR}/holdout_slices.json"
        )
    if system is not None:
        client.log_table(
            run_id, data=system.pair.slice_table(), artifact_file=f"{ARTIFACT_DIR}/pair_slices.json"
        )
    classes = report.class_table()
    if classes is not None:
        client.log_table(run_id, data=classes, artifact_file=f"{ARTIFACT_DIR}/classes.json")
    gates = pd.DataFrame(
        [
            {
                "gate": g.name,
                "value": g.value,
                "comparison": g.comparison,
                "threshold": g.threshold,
                "verdict": g.verdict,
                "detail": g.detail,
            }
            for g in blessing.gates
        ]
    )
    client.log_table(run_id, data=gates, artifact_file=f"{ARTIFACT_DIR}/gates.json")
    if report.overall.confusion is not None:
        client.log_figure(
            run_id,
            plot_confusion_matrix(report.overall, report.classes),
            f"{ARTIFACT_DIR}/confusion_matrix.png",
        )
    client.log_figure(
        run_id,
        plot_slice_metric(report, champion, min_slice_accuracy),
        f"{ARTIFACT_DIR}/slice_{primary}.png",
    )
    client.set_tag(run_id, "flywheel.blessed", str(blessing.blessed).lower())


def log_pictures(
    run_id: str, predictions: Predictions, dataset_dir: str | Path, config: EvaluateConfig
) -> None:
    """Log the reliability diagram and the worst mistakes per slice (`evaluation.pictures`).

    Only for a task with class probabilities; the slices are the single columns
    of `evaluate.slices` (one row of images each), not their combinations.
    """
    from mlflow import MlflowClient

    from flywheel.evaluation.metrics import slice_masks
    from flywheel.evaluation.pictures import (
        MISTAKES_PNG,
        RELIABILITY_PNG,
        plot_reliability,
        plot_worst_mistakes,
    )

    probabilities = predictions.decoded.probabilities
    if probabilities is None:
        return
    targets = np.asarray(predictions.targets, dtype=np.int64)
    client = MlflowClient()
    client.log_figure(
        run_id,
        plot_reliability(probabilities, targets, config.calibration_bins),
        f"{ARTIFACT_DIR}/{RELIABILITY_PNG}",
    )
    slices = {
        name: mask
        for column in config.slice_columns
        for name, mask in slice_masks(predictions.frame, [column]).items()
    }
    mistakes = plot_worst_mistakes(
        dataset_dir, predictions.frame, predictions.decoded.classes, probabilities, targets, slices
    )
    if mistakes is not None:
        client.log_figure(run_id, mistakes, f"{ARTIFACT_DIR}/{MISTAKES_PNG}")


@dataclass(frozen=True)
class EvaluationOutcome:
    """What `evaluate_candidate` produced.

    Attributes:
        blessing: the gates' verdict (also stored on the version).
        report: the candidate's evaluation.
        champion: the champion's evaluation on the same data, None without one.
        holdout: the candidate on the production holdout split, None without one.
        champion_holdout: the champion on the same holdout.
        system: a stage of a two-stage service run with its partner in production
            (and its champion with the same partner), None otherwise.
    """

    blessing: Blessing
    report: EvaluationReport
    champion: EvaluationReport | None
    holdout: EvaluationReport | None = None
    champion_holdout: EvaluationReport | None = None
    system: SystemCheck | None = None


def evaluate_candidate(
    name: str,
    version: str,
    dataset_dir: str | Path,
    config: EvaluateConfig,
    *,
    who: str | None = None,
    lock: LockStrategy = "auto",
    progress: bool = True,
    partner: Partner | None = None,
) -> EvaluationOutcome:
    """Stage 5: evaluate a registered version against `production`, bless it or not.

    Both models run on the same split of the same dataset. When the dataset has
    a production holdout (split `holdout`, merged labelled traffic), both also
    run on it and `check_gates` weighs it too. The result is logged to the
    candidate's training run (when the version has one) and recorded on the
    version (`registry.record_blessing`): a blessed version becomes `staging`.

    Args:
        name: the registered model.
        version: the candidate version.
        dataset_dir: the dataset folder (`manifest.csv`).
        config: `evaluate` of params.yaml (split, slices, bins, gates).
        who: recorded on the version (default `registry.resolve_user()`).
        lock: the registry lock strategy.
        progress: show progress bars.
        partner: for a stage of a two-stage service, the other stage: the
            system gate runs the pair end to end (`flywheel.evaluation.system`).

    Raises:
        registry.ModelNotFoundError, registry.VersionNotFoundError: no such version.
        EvaluationError: the models or the data cannot be evaluated.
    """
    version = str(version)
    candidate_version = registry.get_version(name, version)
    champion_version = registry.version_for_alias(name, registry.ALIAS_PRODUCTION)
    if champion_version == version:
        champion_version = None  # re-evaluating production itself: absolute gates only

    def evaluate(of_version: str, split: str | None = None) -> EvaluationReport:
        """One version on `split` (default `config.split`) of the dataset."""
        return evaluate_model(
            registry.model_uri(name, of_version),
            dataset_dir,
            config,
            progress=progress,
            split=split,
        )

    candidate_uri = registry.model_uri(name, version)
    predictions = predict_split(
        candidate_uri, dataset_dir, config.split, batch_size=config.batch_size, progress=progress
    )
    report = report_predictions(predictions, candidate_uri, dataset_dir, config.split, config)
    champion = evaluate(champion_version) if champion_version is not None else None
    holdout = champion_holdout = None
    if has_split(dataset_dir, HOLDOUT_SPLIT):
        holdout = evaluate(version, HOLDOUT_SPLIT)
        if champion_version is not None:
            champion_holdout = evaluate(champion_version, HOLDOUT_SPLIT)
    blessing = check_gates(
        report,
        champion,
        config.gates,
        champion_version=champion_version,
        model_name=name,
        candidate_version=version,
        holdout=holdout,
        champion_holdout=champion_holdout,
    )
    system = None
    if partner is not None and predictions.task.name in PARTNER_TASKS:
        system = check_system(
            predictions.task.name,
            name,
            version,
            champion_version,
            partner,
            dataset_dir,
            config,
            progress=progress,
        )
        blessing = with_system_gate(blessing, system, partner, config)
    if candidate_version.run_id:
        log_evaluation(
            candidate_version.run_id,
            report,
            blessing,
            champion,
            min_slice_accuracy=config.gates.min_slice_accuracy,
            holdout=holdout,
            champion_holdout=champion_holdout,
            system=system,
        )
        log_pictures(candidate_version.run_id, predictions, dataset_dir, config)
    outcome = EvaluationOutcome(blessing, report, champion, holdout, champion_holdout, system)
    if candidate_version.run_id:
        from mlflow import MlflowClient

        from flywheel.evaluation.report import render_evaluation_html

        MlflowClient().log_text(
            candidate_version.run_id,
            render_evaluation_html(outcome, config.gates),
            f"{ARTIFACT_DIR}/{REPORT_HTML}",
        )
    registry.record_blessing(name, version, blessing, who=who, lock=lock)
    return outcome


def has_split(dataset_dir: str | Path, split: str) -> bool:
    """Whether the dataset's manifest has any row in `split` (False without a manifest)."""
    from flywheel.data.manifest import ManifestError, load_manifest

    try:
        manifest = load_manifest(dataset_dir)
    except ManifestError:
        return False
    return "split" in manifest and bool((manifest["split"] == split).any())
