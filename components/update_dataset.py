"""Component: merge new labels into a new dataset version (`flywheel.labeling.merge`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input

from flywheel.workflows import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def update_dataset(
    params: str, overrides: list, repo: str, data_version: str, labels: Input[Dataset]
) -> str:
    """Merge the labels into the data version, gate it, push a new DVC version; return its hash.

    Args:
        params: params.yaml as JSON text.
        overrides: dotted.key=value pairs that replace values of params.
        repo: the repository root holding data.dvc ('' on a cluster: no repository).
        data_version: the DVC data version to merge into ('' for the latest recorded).
        labels: the labelling step's folder (labels.parquet).
    """
    from pathlib import Path

    from flywheel import workflows

    return workflows.update_dataset(
        workflows.resolve_params(params, overrides),
        repo,
        Path(labels.path),
        data_version=data_version,
    )
