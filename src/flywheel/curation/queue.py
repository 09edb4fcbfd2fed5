"""The selected images as Label Studio tasks: a labelling-queue batch."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from flywheel.labeling import choice_result
from flywheel.storage import Location, as_location


def image_url(image_path: Location, image_root: Location, prefix: str) -> str:
    """A Label Studio URL of a stored image: `prefix` + its path relative to `image_root`.

    Outside `image_root` the absolute path is used (a document root of `/`). An
    image in object storage keeps its URL (`s3://...`): Label Studio serves it
    through a cloud storage connected to the bucket, not through local files.

    >>> image_url("/log/date=2026-11-23/images/r-0.png", Path("/log"), "/data/local-files/?d=")
    '/data/local-files/?d=date%3D2026-11-23/images/r-0.png'
    >>> image_url("s3://b/log/images/r-0.png", "s3://b/log", "/data/local-files/?d=")
    's3://b/log/images/r-0.png'
    """
    location = as_location(image_path)
    if not isinstance(location, Path):
        return location
    path = location.resolve()
    try:
        relative = path.relative_to(Path(image_root).resolve()).as_posix()
    except ValueError:
        relative = path.as_posix().lstrip("/")
    return prefix + quote(relative, safe="/")


def _stored_at(image_path: str) -> str:
    """The image's absolute path, or its URL."""
    location = as_location(image_path)
    return str(location.resolve()) if isinstance(location, Path) else location


def build_tasks(
    selected: pd.DataFrame,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    batch_id: str,
    strategy: str,
    from_name: str,
    to_name: str,
    image_root: Location,
    url_prefix: str,
) -> list[dict[str, Any]]:
    """The selected rows as Label Studio tasks, the logged prediction as a pre-annotation.

    Args:
        selected: rows of `Candidates.frame` plus `score` and `rank`.
        probs: `(len(selected), K)` their logged probabilities.
        classes: class names of the probability columns.
        batch_id: recorded in each task's data.
        strategy: recorded in each task's data.
        from_name: the labelling config's Choices control.
        to_name: the labelling config's Image object.
        image_root: the folder image URLs are relative to.
        url_prefix: the URL prefix (Label Studio local-files by default).
    """
    tasks = []
    for row, p in zip(selected.itertuples(index=False), probs, strict=True):
        best = int(np.argmax(p))
        tasks.append(
            {
                "data": {
                    "image": image_url(row.image_path, image_root, url_prefix),
                    "request_id": str(row.request_id),
                    "index": int(row.index),
                    "image_path": _stored_at(row.image_path),
                    "model_name": str(row.model_name),
                    "model_version": str(row.model_version),
                    "served_at": pd.Timestamp(row.time).isoformat(),
                    "batch_id": batch_id,
                    "strategy": strategy,
                    "score": round(float(row.score), 6),
                    "rank": int(row.rank),
                },
                "predictions": [
                    {
                        "model_version": str(row.model_version),
                        "score": round(float(p[best]), 6),
                        "result": [choice_result(classes[best], from_name, to_name)],
                    }
                ],
            }
        )
    return tasks


def new_batch_id(strategy: str, now: datetime | None = None) -> str:
    """`<UTC time>-<strategy>-<random>`: sorts by time, names its strategy.

    >>> new_batch_id("margin", datetime(2026, 11, 23, 7, 5, tzinfo=UTC))[:24]
    '20261123T070500Z-margin-'
    """
    stamp = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{stamp:%Y%m%dT%H%M%SZ}-{strategy}-{uuid.uuid4().hex[:6]}"
