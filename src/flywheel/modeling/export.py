"""The trained network as an MLflow pt2 model (`torch.export`) that serving loads without pickle."""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from flywheel.tasks import Task

MODEL_ARTIFACT = "model"
"""Name of the logged MLflow model: `runs:/<run_id>/model`, `models:/<model_id>`."""

PIP_REQUIREMENTS: tuple[str, ...] = (f"torch=={torch.__version__.split('+')[0]}", "numpy<3")
"""What loading the exported pt2 model needs; explicit, so MLflow does not infer (slow)."""


def log_exported_model(
    task: Task,
    model: nn.Module,
    state_dict: dict[str, Any],
    example: torch.Tensor,
    embedding_dim: int,
) -> tuple[str, float]:
    """Log `model` with `state_dict` loaded as an MLflow pt2 model in the active run.

    The task's export wrapper gives one output tensor (for classification:
    probabilities ‖ embedding). The signature marks the batch dimension -1 and
    the input example holds two images: MLflow then exports with
    `torch.export.Dim.AUTO` on that dimension, so the loaded program accepts any
    batch size (an example of batch 1 would pin it to 1). No pickle anywhere.

    Args:
        task: gives the export wrapper and the metadata serving needs.
        model: the trained network (any device; a CPU float32 copy is exported).
        state_dict: the weights to export (the best epoch's).
        example: a batch of real inputs `(B, C, H, W)`; the first two become the example.
        embedding_dim: recorded in the metadata.

    Returns:
        The model URI and the seconds `log_model` took.
    """
    import mlflow
    import mlflow.pytorch
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    cpu_model = copy.deepcopy(model).to("cpu").float()
    cpu_model.load_state_dict(state_dict)
    exported = task.export_module(cpu_model).eval()
    example = example[:2].detach().to("cpu", torch.float32)  # (2, C, H, W)
    if example.shape[0] < 2:
        example = example.repeat(2, 1, 1, 1)
    with torch.no_grad():
        output = exported(example)  # (2, O)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *output.shape[1:]))]),
    )
    metadata = {**task.export_metadata(), "embedding_dim": embedding_dim}
    started = time.perf_counter()
    info = mlflow.pytorch.log_model(
        exported,
        name=MODEL_ARTIFACT,
        input_example=example.numpy(),
        signature=signature,
        pip_requirements=list(PIP_REQUIREMENTS),
        metadata=metadata,
        serialization_format="pt2",
    )
    return info.model_uri, time.perf_counter() - started
