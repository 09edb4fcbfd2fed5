"""What the prediction log holds and where: the record, the Arrow schema, the folders."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np
import pyarrow as pa

from flywheel.storage import Location, glob, join, name, parent, state_url

if TYPE_CHECKING:
    from flywheel.config import Params

logger = logging.getLogger(__name__)

RECORD_FIELDS: tuple[str, ...] = (
    "request_id",
    "index",
    "time",
    "model_name",
    "model_version",
    "label",
    "confidence",
    "probabilities",
    "embedding",
    "image_path",
    "low_information",
    "features",
)
"""Keys of each JSON line. `read_predictions` expands `features` into one column per feature."""
COLUMN_DEFAULTS: dict[str, bool] = {"low_information": False}
"""What a column reads as where a record lacks it (written before the column existed) rather
than null: a log written before serving flagged anything reads as nothing flagged."""
IMAGES_DIR = "images"
PARTITION_GLOB = "date=*/hour=*"


class PredictionLogError(RuntimeError):
    """The prediction log cannot be written or read as asked."""


@dataclass(frozen=True)
class PredictionRecord:
    """One served prediction of one image.

    Attributes:
        request_id: the request it belongs to (several images share one).
        index: position of the image in its request.
        time: when it was served (UTC).
        model_name: the registered model.
        model_version: the version that computed it.
        label: the predicted class.
        confidence: the probability of `label`.
        probabilities: every class's probability.
        features: summary features of the input (`flywheel.monitoring.features`).
        embedding: the model's embedding of the input.
        image: the model-input image as served (`Task.stored_images`): grey
            `(H, W)` or RGB `(H, W, 3)` uint8, or 16-bit grey `(H, W)` uint16,
            at the data's levels; kept for curation and merged into the
            dataset once labelled. The logger stores it (or a sampled
            fraction) as a PNG.
        low_information: the input had no content worth a label
            (`flywheel.monitoring.features.low_information`); monitoring
            leaves it out of the drift window.
    """

    request_id: str
    index: int
    time: datetime
    model_name: str
    model_version: str
    label: str
    confidence: float
    probabilities: Mapping[str, float]
    features: Mapping[str, float]
    embedding: Sequence[float]
    image: np.ndarray | None = field(default=None, repr=False, compare=False)
    low_information: bool = False


@dataclass(frozen=True)
class PredictionBatch:
    """The predictions of one request, queued as one item: the writer makes the records.

    What the service hands the logger: arrays as computed for the whole
    request, so the request path builds no per-image dicts or lists (the
    writer thread does, `records`).

    Attributes:
        request_id: the request (every record carries it; `index` is the row).
        time: when it was served (UTC).
        model_name: the registered model.
        model_version: the version that computed it.
        classes: the class names, in the probabilities' column order.
        labels: the predicted class of each image, `N`.
        confidences: the probability of each label, `(N,)`.
        probabilities: `(N, K)`.
        features: `(N, len(feature_names))`.
        feature_names: the columns of `features`.
        embeddings: `(N, D)`.
        images: the images as served (`PredictionRecord.image`), `(N, ...)`, or None.
        low_information: `(N,)` bool.
    """

    request_id: str
    time: datetime
    model_name: str
    model_version: str
    classes: Sequence[str]
    labels: Sequence[str]
    confidences: np.ndarray = field(repr=False)
    probabilities: np.ndarray = field(repr=False)
    features: np.ndarray = field(repr=False)
    feature_names: Sequence[str]
    embeddings: np.ndarray = field(repr=False)
    images: np.ndarray | None = field(default=None, repr=False)
    low_information: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def records(self) -> Iterator[PredictionRecord]:
        """One `PredictionRecord` per image, in request order."""
        probabilities = self.probabilities.astype(np.float64).tolist()  # (N, K)
        features = self.features.astype(np.float64).tolist()  # (N, F)
        embeddings = self.embeddings.astype(np.float64).tolist()  # (N, D)
        confidences = self.confidences.astype(np.float64).tolist()  # (N,)
        flagged = (
            [False] * len(self)
            if self.low_information is None
            else self.low_information.astype(bool).tolist()
        )
        for i, label in enumerate(self.labels):
            yield PredictionRecord(
                request_id=self.request_id,
                index=i,
                time=self.time,
                model_name=self.model_name,
                model_version=self.model_version,
                label=label,
                confidence=confidences[i],
                probabilities=dict(zip(self.classes, probabilities[i], strict=True)),
                features=dict(zip(self.feature_names, features[i], strict=True)),
                embedding=embeddings[i],
                image=None if self.images is None else self.images[i],
                low_information=flagged[i],
            )


def predictions_dir(params: Params, base: Path | None = None) -> Location:
    """The prediction log of the configured registered model, where the service writes it.

    `serve.log.dir` when set (a relative one is taken relative to `base`, the
    folder of the params file in use, else to the working directory); else
    `<state URL>/predictions/model=<evaluate.registered_model>`: each model
    has its own log, so two models served from one machine or one bucket never
    share one. Every reader and the service itself resolve it here.

    >>> from flywheel.config import Params
    >>> moved = Params.model_validate({"serve": {"log": {"dir": "logs/p"}}})
    >>> predictions_dir(moved, Path("/project")).as_posix()
    '/project/logs/p'
    >>> import os; os.environ["FLYWHEEL_STATE_URL"] = "s3://bucket/state"
    >>> predictions_dir(Params.model_validate({"evaluate": {"registered_model": "cats v2"}}))
    's3://bucket/state/predictions/model=cats%20v2'
    >>> del os.environ["FLYWHEEL_STATE_URL"]
    """
    configured = params.serve.log.dir
    if configured is None:
        model = quote(params.evaluate.registered_model, safe="")
        return join(state_url(params.state.url), "predictions", f"model={model}")
    if configured.is_absolute():
        return configured
    return (base if base is not None else Path.cwd()) / configured


def partition_dir(root: Location, when: datetime) -> Location:
    """The partition folder of a time (UTC).

    >>> partition_dir(Path("log"), datetime(2026, 11, 23, 7, 5, tzinfo=UTC)).as_posix()
    'log/date=2026-11-23/hour=07'
    >>> partition_dir("s3://b/log", datetime(2026, 11, 23, 7, 5, tzinfo=UTC))
    's3://b/log/date=2026-11-23/hour=07'
    """
    utc = as_utc(when)
    return join(root, f"date={utc:%Y-%m-%d}", f"hour={utc:%H}")


def as_utc(when: datetime) -> datetime:
    """A naive datetime is taken as UTC."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


TIME_TYPE = pa.timestamp("us", tz="UTC")
TABLE_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("index", pa.int64()),
        ("time", TIME_TYPE),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("label", pa.string()),
        ("confidence", pa.float64()),
        ("embedding", pa.list_(pa.float32())),
        ("image_path", pa.string()),
        ("low_information", pa.bool_()),
    ]
)
"""The typed columns of the log; `probabilities` and `features` are structs of float64.

A part written before a column existed reads with it filled in: `COLUMN_DEFAULTS`
where one is given, else null.

Tables read from the log hold `embedding` as `fixed_size_list<float32>[D]`
where every row of a part has D values (the usual case): Parquet reads it 3×
faster than a list, and taking rows from it is 30× faster.
"""


def partitions(root: Location, start: datetime | None, end: datetime | None) -> Iterator[Location]:
    """Partition folders that can hold times in [start, end), in time order."""
    for folder in glob(root, PARTITION_GLOB):
        try:
            hour = datetime.strptime(
                f"{name(parent(folder))}/{name(folder)}", "date=%Y-%m-%d/hour=%H"
            ).replace(tzinfo=UTC)
        except ValueError:
            logger.warning("prediction log: ignoring folder %s (not a date/hour partition)", folder)
            continue
        if start is not None and hour + timedelta(hours=1) <= start:
            continue
        if end is not None and hour >= end:
            continue
        yield folder
