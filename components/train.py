"""Component: train, log to MLflow with lineage, register the new candidate version."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from flywheel.workflows import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def train_model(
    params: str,
    overrides: list,
    task: str,
    epochs: int,
    learning_rate: float,
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Train on the validated dataset and register the model as the 'candidate' version.

    Args:
        params: params.yaml as JSON text.
        overrides: dotted.key=value pairs that replace values of params.
        task: train.task (in a plan with a section per task, that task's values).
        epochs: train.epochs.
        learning_rate: train.lr.
        dataset: the validated dataset.
        model: the registered version; metadata: name, version, run_id, model_uri, registry_uri.
        metrics: the best epoch's training and validation metrics.
    """
    from pathlib import Path

    from flywheel import workflows

    candidate = workflows.train_candidate(
        workflows.resolve_params(
            params, overrides, task=task, epochs=epochs, learning_rate=learning_rate
        ),
        dataset.path,
        data_version=dataset.metadata.get("data_version", ""),
        model_out=Path(model.path),
        metrics_out=Path(metrics.path),
    )
    model.metadata.update(candidate.metadata())
    for name, value in candidate.metrics.items():
        metrics.log_metric(name, value)
