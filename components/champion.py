"""Component: which versions the candidate is judged against (the evaluation's cache key)."""

from kfp import dsl
from kfp.dsl import Input, Model

from flywheel.workflows import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def find_champion(params: str, overrides: list, task: str, model: Input[Model]) -> str:
    """Name the versions the candidate's verdict depends on: its champion (and partner).

    Never cached: it reads the registry. The evaluation takes its answer as an
    input, so the evaluation is cached exactly while the champion stays put
    (`flywheel.workflows.judging_basis`).

    Args:
        params: params.yaml as JSON text.
        overrides: dotted.key=value pairs that replace values of params.
        task: train.task (in a plan with a section per task, that task's values).
        model: the registered candidate version.

    Returns:
        `<model>@production=<version>` (`none` for a first model), and the
        partner's the same way for a stage of a two-stage service.
    """
    from flywheel import workflows

    return workflows.judging_basis(
        workflows.resolve_params(params, overrides, task=task),
        model.metadata["name"],
        model.metadata["version"],
    )
