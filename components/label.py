"""Component: labelling of the curated queue (`flywheel.labeling`; the oracle in the demo)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from flywheel.workflows import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def label_samples(
    params: str, overrides: list, queue: Input[Dataset], labels: Output[Dataset]
) -> int:
    """Label the queue (an oracle labeller in the demo); return how many were labelled.

    Args:
        params: params.yaml as JSON text.
        overrides: dotted.key=value pairs that replace values of params.
        queue: the labelling queue (a folder of Label Studio task files).
        labels: a folder: the Label Studio export and labels.parquet.
    """
    from pathlib import Path

    from flywheel import workflows

    return workflows.label_samples(
        workflows.resolve_params(params, overrides), Path(queue.path), labels_out=Path(labels.path)
    )
