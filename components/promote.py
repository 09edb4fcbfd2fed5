"""Component: move 'production' to the blessed candidate."""

from kfp import dsl
from kfp.dsl import Input, Model

from flywheel.workflows import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def promote_model(model: Input[Model]) -> str:
    """Point 'production' at the blessed version (the replaced one becomes 'previous').

    Args:
        model: the registered candidate version the gates blessed.

    Returns:
        The version in production afterwards.
    """
    from flywheel import workflows

    return workflows.promote_candidate(model.metadata["name"], model.metadata["version"]).production
