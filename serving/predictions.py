"""From a batch of images to the answer: the forward pass with features, ranked classes.

Every prediction is counted (`serving.metrics`) and goes to the prediction log
(`flywheel.monitoring.prediction_log`), which writes it from a background thread.
An image with no content worth a label (`flywheel.monitoring.features.low_information`)
is flagged `low_information`, in the answer and in the log.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from pydantic import TypeAdapter
from starlette.responses import Response

from flywheel.serving_api import JSON_MEDIA_TYPE, ClassProbability, Prediction
from serving.hot_swap import LoadedModel
from serving.metrics import ServiceMetrics

if TYPE_CHECKING:
    from flywheel.monitoring.prediction_log import PredictionLogger

_PREDICTIONS = TypeAdapter(list[Prediction])


def forward_with_features(model: LoadedModel, batch: np.ndarray) -> np.ndarray:
    """One batch on the model thread: outputs and the prediction log's summary features.

    Computing the features once per batch rather than once per request shares
    their fixed cost (a pandas frame) between the requests of a batch.

    Args:
        model: the served version.
        batch: `(B, C, S, S)` float32 in [0, 1] (`Task.pixels` gives the grey levels).

    Returns:
        `(B, K + D + F)` float64: probabilities, embedding, `FEATURE_COLUMNS`.
    """
    from flywheel.monitoring.features import summary_features

    output = model.forward(batch)  # (B, K + D)
    features = summary_features(model.task.pixels(batch)).to_numpy()  # (B, F)
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

    Serialised here rather than by BentoML, which derives the media type of a
    list-typed answer from its JSON schema, rebuilt on every response (~3 ms).

    Args:
        request_id: the request's id (each item carries it).
        model: the version that computed `output`.
        batch: the request's images, `(N, 1, S, S)` float32 in [0, 1].
        output: `forward_with_features` of `batch`, `(N, K + D + F)`.
        top_k: how many of the most probable classes each item lists.
        min_dynamic_range: an image whose `dynamic_range` feature is below this
            is flagged `low_information` (`serve.min_dynamic_range`).
        metrics: where the predictions are counted.
        prediction_log: where they are logged.
    """
    from flywheel.monitoring.features import FEATURE_COLUMNS, low_information
    from flywheel.monitoring.prediction_log import PredictionRecord

    now = datetime.now(UTC)
    features = output[:, -len(FEATURE_COLUMNS) :]  # (N, F)
    flagged = low_information(features, min_dynamic_range)  # (N,)
    decoded = model.task.decode(output[:, : -len(FEATURE_COLUMNS)])
    probabilities, embeddings = decoded.class_probabilities(), decoded.embedding  # (N, K), (N, D)
    images = model.task.stored_images(batch)  # (N, S, S) or (N, S, S, 3), as served
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    classes = model.task.classes
    out = []
    for i, order in enumerate(ranked):
        probs = probabilities[i].astype(float)  # (K,)
        label, confidence = classes[int(order[0])], float(probs[order[0]])
        out.append(
            Prediction(
                request_id=request_id,
                index=i,
                label=label,
                confidence=confidence,
                top_k=[
                    ClassProbability(label=classes[int(j)], probability=float(probs[j]))
                    for j in order
                ],
                model_name=model.name,
                model_version=model.version,
                low_information=bool(flagged[i]),
            )
        )
        metrics.count_prediction(label, confidence)
        prediction_log.log(
            PredictionRecord(
                request_id=request_id,
                index=i,
                time=now,
                model_name=model.name,
                model_version=model.version,
                label=label,
                confidence=confidence,
                probabilities=dict(zip(classes, probs.tolist(), strict=True)),
                features=dict(zip(FEATURE_COLUMNS, features[i].tolist(), strict=True)),
                embedding=embeddings[i].astype(float).tolist(),
                image=images[i],
                low_information=bool(flagged[i]),
            )
        )
    return Response(_PREDICTIONS.dump_json(out), media_type=JSON_MEDIA_TYPE)


__all__ = ["forward_with_features", "respond"]
