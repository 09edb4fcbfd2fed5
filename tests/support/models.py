"""A small model logged to MLflow as training logs it, for the tests that serve or score one."""

from __future__ import annotations

from collections.abc import Sequence

import mlflow
import torch

from flywheel.config import ModelConfig
from flywheel.modeling.training import log_exported_model
from flywheel.tasks.classification import ClassificationTask


def log_small_model(classes: Sequence[str], size: int, seed: int, *, embedding_dim: int = 8) -> str:
    """Log a seeded small CNN, in a new run, with the training code's export path (pt2).

    The network is in eval mode (dropout off): the weights and the exported
    graph depend on `seed` alone.

    Returns:
        Its model URI.
    """
    torch.manual_seed(seed)
    task = ClassificationTask(classes, size)
    model = task.build_model(
        ModelConfig(width=4, stages=2, embedding_dim=embedding_dim, dropout=0.0)
    ).eval()
    example = torch.rand(2, 1, size, size)  # (2, 1, S, S)
    with mlflow.start_run():
        uri, _ = log_exported_model(task, model, model.state_dict(), example, embedding_dim)
    return uri
