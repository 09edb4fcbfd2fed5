"""The prediction log: every served prediction, appended to hourly-partitioned JSON Lines files.

Monitoring reads windows of it (drift of the summary features, the
embedding, the predicted labels and the confidence) and curation picks images
from it for labelling. Layout under the root (Hive-style partitions, so Spark,
DuckDB or pandas+glob can read it as a table as well):

    <root>/date=YYYY-MM-DD/hour=HH/part-<host>-<pid>-<token>.jsonl
    <root>/date=YYYY-MM-DD/hour=HH/images/<request_id>-<index>.png

One JSON object per line (`RECORD_FIELDS`, plus one key per summary feature
under `features`). Every writer (one per server worker process) appends to
its own part files, so several processes never interleave lines; files are
never rewritten.

Writing never blocks a response: `PredictionLogger.log` puts the record on a
bounded queue and returns; a background thread encodes images and appends
lines. Flush policy: the writer flushes its open files after `flush_every`
records or `flush_interval_s` seconds since the last flush, whichever comes
first, and on `close()` (the server's shutdown hook). When the queue is full
(the disk cannot keep up) a record is dropped and counted in `dropped`, rather
than slowing down serving. A crash can lose at most the records not yet
flushed; `read_predictions` skips a torn last line.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
from PIL import Image

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
    "features",
)
"""Keys of each JSON line. `read_predictions` expands `features` into one column per feature."""
IMAGES_DIR = "images"
_PARTITION_GLOB = "date=*/hour=*"


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
        features: summary features of the input (`flywheel.features`).
        embedding: the model's embedding of the input.
        image: the model-input image, `(H, W)` uint8, kept for curation; the
            logger stores it (or a sampled fraction) as a PNG.
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


def partition_dir(root: Path, when: datetime) -> Path:
    """The partition folder of a time (UTC).

    >>> partition_dir(Path("log"), datetime(2026, 11, 23, 7, 5, tzinfo=UTC)).as_posix()
    'log/date=2026-11-23/hour=07'
    """
    utc = _as_utc(when)
    return root / f"date={utc:%Y-%m-%d}" / f"hour={utc:%H}"


class PredictionLogger:
    """Appends `PredictionRecord`s to the log from a background thread.

    Args:
        root: the log's root folder (created on `start`).
        sample_images: fraction of records whose image is stored, in [0, 1]
            (1: all; 0: none). The rest keep `image_path` null.
        flush_every: flush after this many records...
        flush_interval_s: ...or this many seconds since the last flush.
        queue_size: records waiting to be written at most; beyond it, records are dropped.
        seed: seeds the image sampling (None: random).

    Use as a context manager, or call `start()` and `close()`.
    """

    def __init__(
        self,
        root: Path,
        *,
        sample_images: float = 1.0,
        flush_every: int = 100,
        flush_interval_s: float = 1.0,
        queue_size: int = 10_000,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= sample_images <= 1.0:
            raise ValueError(f"sample_images must be in [0, 1], got {sample_images}")
        if flush_every < 1 or flush_interval_s <= 0 or queue_size < 1:
            raise ValueError("flush_every and queue_size must be >= 1, flush_interval_s > 0")
        self.root = Path(root)
        self.sample_images = sample_images
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self._queue: queue.Queue[PredictionRecord | None] = queue.Queue(maxsize=queue_size)
        self._random = random.Random(seed)
        self._token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.dropped = 0
        """Records dropped because the queue was full or the logger closed."""
        self.written = 0
        """Records appended so far."""
        self.errors = 0
        """Records that could not be written (the error is logged)."""

    def __enter__(self) -> PredictionLogger:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Create the root and start the writer thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self.root.mkdir(parents=True, exist_ok=True)
            self._thread = threading.Thread(
                target=self._run, name="prediction-log-writer", daemon=True
            )
            self._thread.start()

    def log(self, record: PredictionRecord) -> bool:
        """Queue a record for writing; never blocks.

        Returns:
            False when the record was dropped (queue full, or the logger is closed).
        """
        if self._closed or self._thread is None:
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, flush and close the files, stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._queue.put(None)  # after every record already queued
        thread.join(timeout)
        if thread.is_alive():
            logger.error("prediction log writer did not finish within %.1f s", timeout)

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        files: dict[Path, IO[str]] = {}
        pending = 0
        last_flush = time.monotonic()
        try:
            while True:
                wait = max(0.0, self.flush_interval_s - (time.monotonic() - last_flush))
                try:
                    record = self._queue.get(timeout=wait)
                except queue.Empty:
                    record = _TICK  # no record before the flush deadline
                if record is None:  # close() was called
                    break
                if record is not _TICK:
                    try:
                        self._write(record, files)
                        pending += 1
                    except (OSError, ValueError, TypeError) as err:
                        self.errors += 1
                        logger.error("prediction log: cannot write %s: %s", record.request_id, err)
                if pending >= self.flush_every or (
                    time.monotonic() - last_flush >= self.flush_interval_s
                ):
                    _flush(files)
                    pending, last_flush = 0, time.monotonic()
        finally:
            _flush(files)
            for handle in files.values():
                handle.close()

    def _write(self, record: PredictionRecord, files: dict[Path, IO[str]]) -> None:
        folder = partition_dir(self.root, record.time)
        handle = files.get(folder)
        if handle is None:
            for old in [p for p in files if p != folder]:  # a new hour: close the old one's file
                files.pop(old).close()
            folder.mkdir(parents=True, exist_ok=True)
            handle = files[folder] = (folder / f"part-{self._token}.jsonl").open(
                "a", encoding="utf-8"
            )
        image_path = None
        if record.image is not None and self._random.random() < self.sample_images:
            image_path = f"{IMAGES_DIR}/{record.request_id}-{record.index}.png"
            (folder / IMAGES_DIR).mkdir(exist_ok=True)
            Image.fromarray(np.asarray(record.image, dtype=np.uint8)).save(folder / image_path)
        line = {
            "request_id": record.request_id,
            "index": record.index,
            "time": _as_utc(record.time).isoformat(timespec="microseconds"),
            "model_name": record.model_name,
            "model_version": record.model_version,
            "label": record.label,
            "confidence": float(record.confidence),
            "probabilities": {str(k): float(v) for k, v in record.probabilities.items()},
            "embedding": [float(v) for v in record.embedding],
            "image_path": image_path,
            "features": {str(k): float(v) for k, v in record.features.items()},
        }
        handle.write(json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n")
        self.written += 1


_TICK: Any = object()
"""Stands for "no record arrived before the flush deadline" in the writer loop."""


def _flush(files: Mapping[Path, IO[str]]) -> None:
    for handle in files.values():
        handle.flush()


def _as_utc(when: datetime) -> datetime:
    """A naive datetime is taken as UTC."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# ---------------------------------------------------------------- reading


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """A window bound: an ISO 8601 time (naive = UTC) or a duration back from now (`90m`, `2h`).

    >>> now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    >>> parse_time("2h", now).isoformat()
    '2026-11-23T10:00:00+00:00'
    >>> parse_time("2026-11-23T07:30", now).isoformat()
    '2026-11-23T07:30:00+00:00'

    Raises:
        ValueError: neither a time nor a duration.
    """
    match = _DURATION.match(text)
    if match:
        amount, unit = float(match.group(1)), _UNITS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO time (2026-11-23T07:30) nor a duration (90m, 2h, 1d)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def read_predictions(
    root: str | Path,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """The logged predictions with `since <= time < until`, oldest first.

    Args:
        root: the log's root folder (a missing folder reads as an empty log).
        since: inclusive lower bound (naive times are UTC); None: from the start.
        until: exclusive upper bound; None: up to now.
        limit: keep only the most recent `limit` rows of the window.

    Returns:
        One row per image: the `RECORD_FIELDS` except `features`, which is
        expanded into one float column per feature (named as in
        `flywheel.features.FEATURE_COLUMNS`); `time` is a UTC datetime;
        `image_path` is absolute (None where the image was not sampled).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    start = None if since is None else _as_utc(since)
    end = None if until is None else _as_utc(until)
    rows: list[dict[str, Any]] = []
    for folder in _partitions(Path(root), start, end):
        for part in sorted(folder.glob("part-*.jsonl")):
            rows.extend(_read_part(part, folder))
    base = [c for c in RECORD_FIELDS if c != "features"]
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in base}).assign(
            time=pd.Series(dtype="datetime64[ns, UTC]")
        )
    frame = pd.DataFrame(rows)
    features = pd.DataFrame(list(frame.pop("features")), index=frame.index, dtype=np.float64)
    frame = pd.concat([frame, features], axis=1)
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    if start is not None:
        frame = frame[frame["time"] >= start]
    if end is not None:
        frame = frame[frame["time"] < end]
    frame = frame.sort_values(["time", "request_id", "index"], kind="stable")
    if limit is not None:
        frame = frame.tail(limit)
    return frame.reset_index(drop=True)


def _partitions(root: Path, start: datetime | None, end: datetime | None) -> Iterator[Path]:
    """Partition folders that can hold times in [start, end), in time order."""
    for folder in sorted(root.glob(_PARTITION_GLOB)):
        try:
            hour = datetime.strptime(
                f"{folder.parent.name}/{folder.name}", "date=%Y-%m-%d/hour=%H"
            ).replace(tzinfo=UTC)
        except ValueError:
            logger.warning("prediction log: ignoring folder %s (not a date/hour partition)", folder)
            continue
        if start is not None and hour + timedelta(hours=1) <= start:
            continue
        if end is not None and hour >= end:
            continue
        yield folder


def _read_part(part: Path, folder: Path) -> Iterator[dict[str, Any]]:
    with part.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                # A torn line: the writer was killed mid-write. Nothing after it is lost.
                logger.warning("prediction log: skipping unreadable line %s:%d", part, number)
                continue
            if row.get("image_path"):
                row["image_path"] = str(folder / row["image_path"])
            yield row
