"""Running a logged model over a dataset split, with the pre-processing of its Task.

`load_task` rebuilds the Task a model was logged with (its MLflow metadata,
through the task registry `flywheel.tasks.get_task`), `predict_split` runs the
model over a split in batches without gradients, and `evaluate_model` turns the
predictions into an `EvaluationReport`.

Only the `Task` interface is used: the task decodes the model's output
(`Task.decode`), says what each image's true answer is
(`Task.evaluation_targets`) and scores one against the other
(`Task.evaluation_metrics`), so any registered task is evaluated here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from flywheel.config import EvaluateConfig
from flywheel.env import tqdm_disable
from flywheel.evaluation.errors import EvaluationError
from flywheel.evaluation.metrics import EvaluationReport, evaluate_predictions, fingerprint_rows

if TYPE_CHECKING:
    from flywheel.tasks import DecodedBatch, Task


@dataclass(frozen=True)
class Predictions:
    """A model's outputs on a split, aligned with the split's manifest rows.

    Attributes:
        task: the task the model was logged with (it scores the outputs).
        decoded: the N decoded outputs (`Task.decode`).
        targets: the N true answers (`Task.evaluation_targets`).
        frame: the N manifest rows.
    """

    task: Task
    decoded: DecodedBatch
    targets: np.ndarray
    frame: pd.DataFrame


def load_task(model_uri: str) -> Task:
    """The Task a logged model was trained with, rebuilt from its metadata.

    Raises:
        EvaluationError: the model has no task metadata, or metadata no known task reads.
    """
    from mlflow.models import get_model_info

    from flywheel.tasks import get_task

    metadata = get_model_info(model_uri).metadata or {}
    if "task" not in metadata:
        raise EvaluationError(
            f"{model_uri}: the logged model has no task metadata (log it with "
            "metadata=task.export_metadata(), as flywheel.modeling.training does)"
        )
    try:
        task = get_task(str(metadata["task"])).from_metadata(metadata)
    except ValueError as err:
        raise EvaluationError(f"{model_uri}: {err}") from None
    return task


def predict_split(
    model_uri: str,
    dataset_dir: str | Path,
    split: str,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool = True,
) -> Predictions:
    """Run a logged model over one split of a manifest dataset.

    The images go through the pre-processing of the Task the model was logged
    with (`load_task`), in batches, under `torch.inference_mode`.

    Args:
        model_uri: e.g. `runs:/<id>/model`, `models:/<name>/<version>`.
        dataset_dir: folder with `manifest.csv`.
        split: the split to run.
        batch_size: images per forward pass.
        device: torch device.
        progress: show a progress bar.

    Raises:
        EvaluationError: no task metadata; targets or outputs the task cannot
            read (its message).
        flywheel.tasks.DatasetError: the split cannot be read (names the rows).
    """
    import mlflow.pytorch
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from flywheel.tasks import DecodedBatch

    task = load_task(model_uri)
    dataset = task.build_dataset(Path(dataset_dir), split)
    try:
        targets = task.evaluation_targets(dataset)  # one entry per image
    except ValueError as err:
        raise EvaluationError(f"{model_uri}: {err}") from None
    if not isinstance(targets, np.ndarray) or len(targets) != len(dataset):
        raise EvaluationError(
            f"{model_uri}: task {task.name!r} gave no array of one target per image "
            f"({len(dataset)}) for split {split!r}: {type(targets).__name__}"
        )
    model = mlflow.pytorch.load_model(model_uri, device=device)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=task.collate_fn()
    )
    chunks: list[DecodedBatch] = []
    with torch.inference_mode():
        for inputs, _ in tqdm(
            loader,
            desc=f"evaluate {split}",
            unit="batch",
            disable=tqdm_disable(progress),
            leave=False,
        ):
            output = model(inputs.to(device))  # the exported layout, e.g. (B, K + D)
            try:
                chunks.append(task.decode(output))
            except ValueError as err:
                raise EvaluationError(f"{model_uri}: {err}") from None
    return Predictions(
        task=task, decoded=DecodedBatch.concat(chunks), targets=targets, frame=dataset.frame
    )


def evaluate_model(
    model_uri: str,
    dataset_dir: str | Path,
    config: EvaluateConfig,
    *,
    progress: bool = True,
    split: str | None = None,
) -> EvaluationReport:
    """`predict_split` then `report_predictions`, as `config` says (split, slices, bins).

    `split` evaluates another split than `config.split` (e.g. the production holdout).
    """
    split = split or config.split
    predictions = predict_split(
        model_uri, dataset_dir, split, batch_size=config.batch_size, progress=progress
    )
    return report_predictions(predictions, model_uri, dataset_dir, split, config)


def report_predictions(
    predictions: Predictions,
    model_uri: str,
    dataset_dir: str | Path,
    split: str,
    config: EvaluateConfig,
) -> EvaluationReport:
    """The report of a model's predictions on `split`: overall and per slice of `config`."""
    return evaluate_predictions(
        predictions.task,
        predictions.decoded,
        predictions.targets,
        predictions.frame,
        slice_columns=config.slice_columns,
        n_bins=config.calibration_bins,
        model_uri=model_uri,
        split=split,
        dataset={
            "path": str(dataset_dir),
            "images": len(predictions.frame),
            "fingerprint": fingerprint_rows(predictions.frame),
        },
    )
