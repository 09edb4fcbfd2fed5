"""Component: active-learning curation of logged production samples (`flywheel.curation`)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from flywheel.workflows import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def curate_samples(
    params: str,
    overrides: list,
    drift_report: Input[HTML],
    queue: Output[Dataset],
    metrics: Output[Metrics],
) -> int:
    """Choose the logged samples worth labelling; return how many were queued.

    Args:
        params: params.yaml as JSON text.
        overrides: dotted.key=value pairs that replace values of params.
        drift_report: the monitor's report that triggered curation (lineage only).
        queue: a folder: the batch of Label Studio tasks and the labelling config.
        metrics: the batch's labelling spend: images, unit cost, spend, the cycle's cap.
    """
    import json
    import tempfile
    from pathlib import Path

    from flywheel import workflows

    with tempfile.TemporaryDirectory() as scratch:
        spend = Path(scratch) / "spend.json"
        queued = workflows.curate_samples(
            workflows.resolve_params(params, overrides),
            queue_out=Path(queue.path),
            metrics_out=spend,
        )
        for name, value in json.loads(spend.read_text()).items():
            metrics.log_metric(name, value)
    return queued
