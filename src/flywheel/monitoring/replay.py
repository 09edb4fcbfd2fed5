"""Replay images through a registered version into the prediction log, as the service would.

For back-filling a log, for examples and benchmarks of monitoring without a
running server, and for tests. Per image it computes what `serving/predictions.py`
logs: the task's pre-processing, the summary features of the pre-processed
pixels (`Task.pixels`), and what `Task.decode` reads from the exported model's
output (loaded with `mlflow.pytorch.load_model`, as the service loads it):
label, confidence, class probabilities and embedding; and the `low_information`
flag of an image with no content worth a label (`features.low_information`).
Records are timed `start, start + interval, ...` so windows can be laid out
in time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from flywheel.monitoring.features import low_information, summary_features
from flywheel.monitoring.prediction_log import PredictionLogger, PredictionRecord

if TYPE_CHECKING:
    from flywheel.tasks.base import ImageLike


def replay_images(
    model_name: str,
    version: str,
    images: Sequence[ImageLike],
    logger: PredictionLogger,
    *,
    start: datetime,
    interval: timedelta = timedelta(seconds=1),
    request_prefix: str = "replay",
    batch_size: int = 256,
    min_dynamic_range: float | None = None,
) -> list[str]:
    """Serve `images` with `model_name` version `version` and append the predictions to `logger`.

    Args:
        model_name: the registered model.
        version: the version that "serves" them.
        images: PIL images or uint8 arrays, any size (pre-processed as served).
        logger: an open prediction logger.
        start: time of the first record; record i is at `start + i * interval`.
        interval: time between records.
        request_prefix: request ids are `<prefix>-<i>`, one image per request.
        batch_size: images per forward pass.
        min_dynamic_range: images with less dynamic range are flagged
            `low_information`, as the service flags them (None: the default of
            `serve.min_dynamic_range`).

    Returns:
        The request ids, in image order (each image is index 0 of its request).

    Raises:
        flywheel.evaluation.EvaluationError: the version has no usable task metadata.
    """
    import mlflow.pytorch
    import torch

    from flywheel.config import ServeConfig
    from flywheel.evaluation import load_task
    from flywheel.registry import model_uri

    if min_dynamic_range is None:
        min_dynamic_range = ServeConfig().min_dynamic_range
    uri = model_uri(model_name, version)
    task = load_task(uri)
    module = mlflow.pytorch.load_model(uri, map_location="cpu")
    ids: list[str] = []
    for first in range(0, len(images), batch_size):
        batch = task.preprocess(list(images[first : first + batch_size]))  # (B, C, S, S)
        pixels = task.pixels(batch)  # (B, S, S) in [0, 1]
        frame = summary_features(pixels)  # (B, F)
        flagged = low_information(frame, min_dynamic_range)  # (B,)
        features = frame.to_dict(orient="records")
        with torch.inference_mode():
            decoded = task.decode(module(batch))
        stored = task.stored_images(batch)  # as the service stores: colour and levels kept
        for j in range(len(batch)):
            i = first + j
            request_id = f"{request_prefix}-{i}"
            logger.log(
                PredictionRecord(
                    request_id=request_id,
                    index=0,
                    time=start + i * interval,
                    model_name=model_name,
                    model_version=str(version),
                    label=decoded.labels[j],
                    confidence=float(decoded.confidence[j]),
                    probabilities=decoded.probability_map(j),
                    features=features[j],
                    embedding=decoded.embedding[j].astype(float).tolist(),
                    image=stored[j],
                    low_information=bool(flagged[j]),
                )
            )
            ids.append(request_id)
    return ids
