"""A real prediction log and the simulator's truth, written as serving and the simulator do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flywheel.config import DataPlan, Scenario, ServeConfig
from flywheel.monitoring.features import low_information, summary_features
from flywheel.monitoring.prediction_log import PredictionLogger, PredictionRecord, read_predictions


def write_prediction_log(
    root: Path | str,
    images: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    embeddings: np.ndarray | None = None,
    model_version: str = "1",
    model_name: str = "digits",
    request_ids: Sequence[str] | None = None,
    start: datetime | None = None,
    store_images: bool = True,
) -> pd.DataFrame:
    """Log one prediction per image with the real `PredictionLogger`; return the log as read back.

    Args:
        root: the log's root folder, or a URL (`s3://...`).
        images: `(N, S, S)` uint8 model-input images (stored as PNG when `store_images`).
        probs: `(N, K)` the probabilities "served".
        classes: the K class names.
        embeddings: `(N, D)` (default: the probabilities themselves, so similar
            predictions sit close together).
        model_version: recorded on every row.
        model_name: recorded on every row.
        request_ids: one per image (default `req-<i>`); each image is index 0 of its request.
        start: time of the first record, one millisecond apart (default: now).
        store_images: store the images (False: `image_path` stays null).
    """
    n = len(images)
    embeddings = probs if embeddings is None else embeddings
    request_ids = list(request_ids) if request_ids is not None else [f"req-{i}" for i in range(n)]
    start = start or datetime.now(UTC)
    summary = summary_features(images)
    features = summary.to_dict(orient="records")
    empty = low_information(summary, ServeConfig().min_dynamic_range)  # as serving flags them
    with PredictionLogger(root, flush_every=1, flush_interval_s=0.05) as logger:
        for i in range(n):
            best = int(np.argmax(probs[i]))
            logged = logger.log(
                PredictionRecord(
                    request_id=request_ids[i],
                    index=0,
                    time=start + timedelta(milliseconds=i),
                    model_name=model_name,
                    model_version=model_version,
                    label=classes[best],
                    confidence=float(probs[i, best]),
                    probabilities=dict(zip(classes, map(float, probs[i]), strict=True)),
                    features=features[i],
                    embedding=[float(v) for v in embeddings[i]],
                    image=images[i] if store_images else None,
                    low_information=bool(empty[i]),
                )
            )
            assert logged, "the prediction logger dropped a record"
    return read_predictions(root)


def random_images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """`(n, size, size)` uint8 images, all different."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size), dtype=np.uint8)


def serve_collected_batch(
    plan: DataPlan,
    n: int,
    log_root: Path,
    gt_root: Path,
    *,
    seed: int = 0,
    scenario: Scenario | None = None,
    work_dir: Path,
) -> pd.DataFrame:
    """Traffic as the simulator and the service would leave it, without a server.

    Draws `n` images with the real collector (`collect_batch`), logs a
    prediction for each with the real `PredictionLogger` (probabilities that
    favour the true class for two thirds of the images, a torn guess for the
    rest) and records the simulator's truth (style, noise, group) in the
    ground-truth store.

    Returns:
        The truth rows written (`request_id`, `index`, `label`, `origin`, `style`, `noise`,
        `scenario`, `group`).
    """
    from PIL import Image

    from flywheel.data.ground_truth import write_ground_truth
    from flywheel.demo.collect import collect_batch

    batch = collect_batch(plan, scenario or Scenario(), n, seed, work_dir / f"batch-{seed}")
    images = np.stack(
        [np.asarray(Image.open(work_dir / f"batch-{seed}" / p)) for p in batch["path"]]
    )  # (n, S, S)
    rng = np.random.default_rng(seed)
    k = len(plan.classes)
    probs = rng.dirichlet(np.full(k, 0.5), size=n)  # (n, K)
    sure = rng.random(n) < 2 / 3
    for i in np.flatnonzero(sure):
        probs[i] = 0.02 / (k - 1)
        probs[i, plan.classes.index(batch["label"].iloc[i])] = 0.98
    request_ids = [f"sim-{seed}-{i:04d}" for i in range(n)]
    write_prediction_log(log_root, images, probs, plan.classes, request_ids=request_ids)
    truth = pd.DataFrame(
        {
            "request_id": request_ids,
            "index": 0,
            "label": batch["label"].to_numpy(),
            "origin": "simulator",
            "style": batch["style"].to_numpy(),
            "noise": batch["noise"].to_numpy(),
            "scenario": "test",
            "group": batch["group"].to_numpy(),
        }
    )
    write_ground_truth(truth, gt_root)
    return truth


def stratum_from_log(label: Mapping[str, Any], logged: Mapping[str, Any] | None) -> str | None:
    """A `merge.strata` rule as a user would declare one: from the logged prediction.

    Images the model was unsure of (confidence below 0.5) go to `unknown/unknown`;
    the rest to the unknown stratum `production/production` (None).
    """
    if logged is None or label["request_id"] is None:
        return None
    return "unknown/unknown" if float(logged["confidence"]) < 0.5 else None
