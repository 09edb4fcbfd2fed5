"""The writer: `PredictionLogger` appends records from a background thread; serving never waits."""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
from PIL import Image

from flywheel.monitoring.prediction_log.compaction import compact_part
from flywheel.monitoring.prediction_log.schema import (
    IMAGES_DIR,
    PredictionRecord,
    as_utc,
    partition_dir,
)

logger = logging.getLogger(__name__)


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
        compact_closed: rewrite each part as Parquet once the writer has closed
            it for good (it rolled to the next hour), in a background thread.

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
        compact_closed: bool = True,
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
        self._opened = 0
        self.compact_closed = compact_closed
        self._compactor: threading.Thread | None = None
        self._to_compact: queue.Queue[Path | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.dropped = 0
        """Records dropped because the queue was full or the logger closed."""
        self.written = 0
        """Records appended so far."""
        self.errors = 0
        """Records that could not be written (the error is logged)."""
        self.compacted = 0
        """Parts rewritten as Parquet so far."""

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
            if self.compact_closed:
                self._compactor = threading.Thread(
                    target=self._compact_loop, name="prediction-log-compactor", daemon=True
                )
                self._compactor.start()

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
        if self._compactor is not None:
            self._to_compact.put(None)  # after every closed part already queued
            self._compactor.join(timeout)
            if self._compactor.is_alive():
                logger.warning(
                    "prediction log: compaction still running after %.1f s; `compact` finishes it",
                    timeout,
                )

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
                closed = files.pop(old)
                closed.close()
                if self.compact_closed:
                    self._to_compact.put(Path(closed.name))
            # Made once per part (per image, the checks cost the writer a tenth of its time).
            (folder / IMAGES_DIR if self.sample_images > 0 else folder).mkdir(
                parents=True, exist_ok=True
            )
            self._opened += 1  # a new name per file: a compacted name never comes back
            handle = files[folder] = (folder / f"part-{self._token}-{self._opened}.jsonl").open(
                "a", encoding="utf-8"
            )
        image_path = None
        if record.image is not None and self._random.random() < self.sample_images:
            image_path = f"{IMAGES_DIR}/{record.request_id}-{record.index}.png"
            Image.fromarray(np.asarray(record.image, dtype=np.uint8)).save(folder / image_path)
        line = {
            "request_id": record.request_id,
            "index": record.index,
            "time": as_utc(record.time).isoformat(timespec="microseconds"),
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

    def _compact_loop(self) -> None:
        while (part := self._to_compact.get()) is not None:
            try:
                if compact_part(part) is not None:
                    self.compacted += 1
            except (OSError, pa.ArrowException) as err:  # the JSON lines stay: nothing is lost
                logger.error("prediction log: cannot compact %s: %s", part, err)


_TICK: Any = object()
"""Stands for "no record arrived before the flush deadline" in the writer loop."""


def _flush(files: Mapping[Path, IO[str]]) -> None:
    for handle in files.values():
        handle.flush()
