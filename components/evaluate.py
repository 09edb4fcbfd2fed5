"""Component: evaluate the candidate against production; the gates bless it or not."""

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from flywheel.workflows import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def evaluate_model(
    params: str,
    overrides: list,
    task: str,
    min_accuracy: float,
    champion: str,
    dataset: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
) -> bool:
    """Evaluate the candidate overall and per slice against production; return the blessing.

    The return value is the blessing (KFP names a single return value `Output`;
    the local runner resolves conditions only on that name).

    Args:
        params: params.yaml as JSON text.
        overrides: dotted.key=value pairs that replace values of params.
        task: train.task (in a plan with a section per task, that task's values).
        min_accuracy: evaluate.gates.min_accuracy.
        champion: the versions the verdict depends on (`find_champion`): read by
            nobody here, it makes them part of the step's cache key, so a cached
            verdict is re-used only while they stay put.
        dataset: the validated dataset (its frozen test split is evaluated).
        model: the registered candidate version.
        metrics: the task's metrics overall, its primary metric (accuracy) per
            slice, the champion's, the verdict.
        confusion: the candidate's confusion matrix on the test split (for a
            task that computes one).
        report: the evaluation report (tables, gates, per-slice bars, confusion matrix).
    """
    from pathlib import Path

    from flywheel import workflows

    judgement = workflows.judge_candidate(
        workflows.resolve_params(params, overrides, task=task, min_accuracy=min_accuracy),
        model.metadata["name"],
        model.metadata["version"],
        dataset.path,
        report_out=Path(report.path),
        metrics_out=Path(metrics.path),
        confusion_out=Path(confusion.path),
    )
    for name, value in judgement.scalars.items():
        metrics.log_metric(name, value)
    if judgement.confusion:  # a task without a confusion matrix leaves the artifact empty
        confusion.log_confusion_matrix(list(judgement.classes), judgement.confusion)
    return judgement.blessed
