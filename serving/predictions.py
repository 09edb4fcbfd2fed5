"""From a batch of images to the answer: the forward pass with features, ranked classes.

Every prediction is counted (`serving.metrics`) and goes to the prediction log
(`flywheel.monitoring.prediction_log`), which writes it from a background thread.
An image with no content worth a label (`flywheel.monitoring.features.low_information`)
is flagged `low_information`, in the answer and in the log.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pydantic_core
from starlette.responses import Response

from flywheel.serving_api import JSON_MEDIA_TYPE
from serving.hot_swap import LoadedModel
from serving.metrics import ServiceMetrics

if TYPE_CHECKING:
    from flywheel.monitoring.prediction_log import PredictionLogger


def forward_with_features(model: LoadedModel, batch: np.ndarray) -> np.ndarray:
    """One batch on the model thread: outputs and the prediction log's summary features.

    Computing the features once per batch rather than once per request shares
    their fixed cost between the requests of a batch.

    Args:
        model: the served version.
        batch: `(B, C, S, S)` float32 in [0, 1] (`Task.pixels` gives the grey levels).

    Returns:
        `(B, K + D + F)` float64: probabilities, embedding, `FEATURE_COLUMNS`.
    """
    from flywheel.monitoring.features import feature_matrix

    output = model.forward(batch)  # (B, K + D)
    features = feature_matrix(model.task.pixels(batch))  # (B, F)
    return np.concatenate([output.astype(np.float64), features], axis=1)


def respond(
    request_id: str,
    model: LoadedModel,
    batch: np.ndarray,
    output: np.ndarray,
    *,
    top_k: int,
    min_dynamic_range: float,
    metrics: ServiceMetrics,
    prediction_log: PredictionLogger,
) -> Response:
    """The JSON response; counts the predictions and queues them for the prediction log.

    The answer is a list of `flywheel.serving_api.Prediction` items, encoded
    from plain values by pydantic-core (the models' own encoder) without
    building a model per item: validating what the service itself computed
    cost more than the rest of this function. The request's predictions go to
    the log as one `PredictionBatch` (the log's writer thread makes the records).

    Args:
        request_id: the request's id (each item carries it).
        model: the version that computed `output`.
        batch: the request's images, `(N, C, S, S)` float32 in [0, 1].
        output: `forward_with_features` of `batch`, `(N, K + D + F)`.
        top_k: how many of the most probable classes each item lists.
        min_dynamic_range: an image whose `dynamic_range` feature is below this
            is flagged `low_information` (`serve.min_dynamic_range`).
        metrics: where the predictions are counted.
        prediction_log: where they are logged.
    """
    from flywheel.monitoring.features import FEATURE_COLUMNS, low_information
    from flywheel.monitoring.prediction_log import PredictionBatch

    now = datetime.now(UTC)
    features = output[:, -len(FEATURE_COLUMNS) :]  # (N, F)
    flagged = low_information(features, min_dynamic_range)  # (N,)
    decoded = model.task.decode(output[:, : -len(FEATURE_COLUMNS)])
    probabilities = decoded.class_probabilities()  # (N, K)
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]  # (N, top_k)
    best = ranked[:, 0]  # (N,)
    confidences = probabilities[np.arange(len(best)), best]  # (N,)
    classes = model.task.classes
    labels = [classes[i] for i in best.tolist()]
    top = np.take_along_axis(probabilities, ranked, axis=1).tolist()  # (N, top_k)
    items: list[dict[str, Any]] = [
        {
            "request_id": request_id,
            "index": i,
            "label": labels[i],
            "confidence": top[i][0],
            "top_k": [
                {"label": classes[j], "probability": p} for j, p in zip(order, top[i], strict=True)
            ],
            "model_name": model.name,
            "model_version": model.version,
            "low_information": low,
        }
        for i, (order, low) in enumerate(zip(ranked.tolist(), flagged.tolist(), strict=True))
    ]
    metrics.count_predictions(labels, [ranked_probabilities[0] for ranked_probabilities in top])
    prediction_log.log_batch(
        PredictionBatch(
            request_id=request_id,
            time=now,
            model_name=model.name,
            model_version=model.version,
            classes=classes,
            labels=labels,
            confidences=confidences,
            probabilities=probabilities,
            features=features,
            feature_names=FEATURE_COLUMNS,
            embeddings=decoded.embedding,
            images=model.task.stored_images(batch),  # (N, S, S) or (N, S, S, 3), as served
            low_information=flagged,
        )
    )
    return Response(pydantic_core.to_json(items), media_type=JSON_MEDIA_TYPE)


__all__ = ["forward_with_features", "respond"]
