"""Fine-tuning: a run that starts from a registered version's weights (`train.init_from`).

A loop that retrains after a batch of labels need not start from random
weights: the production model already reads the plan's data, and a few epochs
on the new data version teach it the drift (what a team does by hand). With
`train.init_from` set to an alias of the run's registered model
(`production`, `previous`, ...) or a model URI (`models:/name/3`,
`runs:/<id>/model`), the network built from `train.model` takes that model's
weights before the first epoch; the optimiser, schedule and early stopping
start afresh. The version is resolved when training starts, and the run
records it (`flywheel.init_from`), so the lineage says what it was tuned from.

The registered model is the pt2 program MLflow logged (`flywheel.modeling.export`);
its weights sit under the export wrapper (`model.` in front of every name). A
network of another shape (another `train.model`, another vocabulary) is
refused with the names that differ, never loaded in part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flywheel.config import Params
from flywheel.modeling.checkpoints import TrainingError

if TYPE_CHECKING:
    from torch import nn

INIT_TAG = "flywheel.init_from"
"""The run tag naming the model a fine-tuning run started from."""
WRAPPER_PREFIX = "model."
"""The export wrapper's attribute in front of the network's parameter names."""


class WarmStartError(TrainingError):
    """`train.init_from` names no model, or one whose weights do not fit the network."""


def init_source(params: Params) -> str | None:
    """The model URI `train.init_from` names, with an alias resolved to its version; None if unset.

    Raises:
        WarmStartError: the alias points at no version of the run's registered model.
    """
    spec = params.train.init_from
    if not spec:
        return None
    if ":/" in spec:
        return spec
    from flywheel.registry import version_for_alias

    name = params.evaluate.registered_model
    version = version_for_alias(name, spec)
    if version is None:
        raise WarmStartError(
            f"train.init_from {spec!r}: {name} has no {spec!r} version to fine-tune from "
            "(train from scratch: leave train.init_from unset)"
        )
    return f"models:/{name}/{version}"


def load_initial_weights(model: nn.Module, uri: str) -> None:
    """Copy the weights of the logged model at `uri` into `model` (all of them, or none).

    Raises:
        WarmStartError: the model cannot be loaded, or its weights do not match
            the network's names and shapes.
    """
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    try:
        source = mlflow.pytorch.load_model(uri, map_location="cpu")
    except (MlflowException, OSError) as err:
        raise WarmStartError(f"train.init_from: cannot load {uri}: {err}") from err
    weights = {k.removeprefix(WRAPPER_PREFIX): v for k, v in source.state_dict().items()}
    target = model.state_dict()
    missing, extra = sorted(set(target) - set(weights)), sorted(set(weights) - set(target))
    shapes = sorted(
        k for k in set(target) & set(weights) if tuple(target[k].shape) != tuple(weights[k].shape)
    )
    if missing or extra or shapes:
        raise WarmStartError(
            f"train.init_from: {uri} is another network (train.model or the task's outputs "
            f"changed): missing {missing[:3]}, unexpected {extra[:3]}, other shapes "
            f"{shapes[:3]}; train from scratch (leave train.init_from unset)"
        )
    model.load_state_dict({k: weights[k] for k in target}, strict=True)


__all__ = ["INIT_TAG", "WarmStartError", "init_source", "load_initial_weights"]
