"""Component: the data gate (Great Expectations) in front of training."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Output

from flywheel.workflows import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def validate_data(
    params: str,
    overrides: list,
    data_version: str,
    repo: str,
    dataset: Output[Dataset],
    data_docs: Output[HTML],
):
    """Bring the data to the DVC version asked for and gate it; a failed expectation fails the run.

    Args:
        params: params.yaml as JSON text.
        overrides: dotted.key=value pairs that replace values of params.
        data_version: the DVC data version to train on, materialised from the DVC remote by
            hash ('' takes what data.dvc records; with no repo, the latest recorded).
        repo: the repository root holding data.dvc ('' on a cluster: no repository).
        dataset: the validated dataset (manifest.csv and images); metadata: data_version, counts.
        data_docs: the Great Expectations Data Docs page of this validation.
    """
    from pathlib import Path

    from flywheel import workflows

    result = workflows.validate_data(
        workflows.resolve_params(params, overrides),
        repo,
        expected_version=data_version,
        dataset_out=Path(dataset.path),
        docs_out=Path(data_docs.path),
    )
    dataset.metadata.update(result.metadata())
