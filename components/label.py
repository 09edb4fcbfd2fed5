"""Components: the two ends of asynchronous labelling (`flywheel.workflows.label_sync`).

`send_batch` ends the curation pipeline: the curated batch goes before the
annotators. `collect_labels` starts the update pipeline: every completed
annotation of every outstanding batch is read back, and its return value says
whether enough are complete (`label.sync.min_completed`) to merge and retrain.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from flywheel.workflows import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def send_batch(params: str, overrides: list, queue: Input[Dataset]) -> int:
    """Send the curated batch to the configured labeller; return how many tasks it holds.

    Args:
        params: params.yaml as JSON text.
        overrides: dotted.key=value pairs that replace values of params.
        queue: the curation step's batch (Label Studio task files).
    """
    from pathlib import Path

    from flywheel import workflows

    return workflows.send_batch(workflows.resolve_params(params, overrides), Path(queue.path))


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def collect_labels(
    params: str, overrides: list, labels: Output[Dataset], metrics: Output[Metrics]
) -> bool:
    """Read back the completed annotations of the outstanding batches; return whether enough.

    The return value is the decision (KFP names a single return value `Output`;
    the local runner resolves conditions only on that name).

    Args:
        params: params.yaml as JSON text.
        overrides: dotted.key=value pairs that replace values of params.
        labels: a folder: labels.parquet, the outstanding tasks and what was read back.
        metrics: outstanding batches and tasks, complete tasks, the threshold.
    """
    import json
    import tempfile
    from pathlib import Path

    from flywheel import workflows

    with tempfile.TemporaryDirectory() as scratch:
        counts = Path(scratch) / "counts.json"
        status = workflows.collect_labels(
            workflows.resolve_params(params, overrides),
            labels_out=Path(labels.path),
            metrics_out=counts,
        )
        for name, value in json.loads(counts.read_text()).items():
            metrics.log_metric(name, value)
    return status.ready
