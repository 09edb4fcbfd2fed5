"""Component: merge new labels into a new dataset version (`flywheel.labeling.merge`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input

from flywheel.workflows import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def update_dataset(params: str, overrides: list, repo: str, labels: Input[Dataset]) -> str:
    """Merge the labels into the dataset, gate it, record a new DVC version; return it.

    Args:
        params: params.yaml as JSON text.
        overrides: dotted.key=value pairs that replace values of params.
        repo: the repository root holding data.dvc.
        labels: the labelling step's folder (labels.parquet).
    """
    from pathlib import Path

    from flywheel import workflows

    return workflows.update_dataset(
        workflows.resolve_params(params, overrides), repo, Path(labels.path)
    )
