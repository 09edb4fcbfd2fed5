"""The writer: `PredictionLogger` appends records from a background thread; serving never waits."""

from __future__ import annotations

import io
import logging
import math
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import pyarrow as pa
import pydantic_core
from PIL import Image

from flywheel.monitoring.prediction_log.compaction import compact_part, write_parquet
from flywheel.monitoring.prediction_log.reader import parse_jsonl
from flywheel.monitoring.prediction_log.schema import (
    IMAGES_DIR,
    PredictionBatch,
    PredictionRecord,
    as_utc,
    partition_dir,
)
from flywheel.storage import Location, as_location, join, make_dirs, write_bytes

logger = logging.getLogger(__name__)

POLL_S = 0.02
"""How long the writer sleeps when it finds the queue empty (`PredictionLogger._run`)."""


class PredictionLogger:
    """Appends `PredictionRecord`s to the log from a background thread.

    Args:
        root: the log's root folder (created on `start`) or URL (`s3://bucket/prefix`:
            each flush then puts one whole Parquet object, see `_ObjectParts`).
        sample_images: fraction of records whose image is stored, in [0, 1]
            (1: all; 0: none). The rest keep `image_path` null.
        flush_every: flush after this many records...
        flush_interval_s: ...or this many seconds since the last flush.
        queue_size: records waiting to be written at most; beyond it, records are dropped
            (a `PredictionBatch` counts as its records).
        seed: seeds the image sampling (None: random).
        compact_closed: rewrite each part as Parquet once the writer has closed
            it for good (it rolled to the next hour), in a background thread.

    Use as a context manager, or call `start()` and `close()`.
    """

    def __init__(
        self,
        root: Location,
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
        self.root = as_location(root)
        self.sample_images = sample_images
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self.queue_size = queue_size
        self._queue: queue.SimpleQueue[PredictionRecord | PredictionBatch | None] = (
            queue.SimpleQueue()
        )
        # Records waiting: queued (counted by the callers of `log`) minus taken (by the
        # writer). Each count has one writer thread, so no lock: a logger serves one
        # event loop; from several threads the bound is approximate, never a block.
        self._queued = 0
        self._taken = 0
        self._random = random.Random(seed)
        self._token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._opened = 0
        self._images_saved = 0
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
            make_dirs(self.root)
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
        return self._put(record, 1)

    def log_batch(self, batch: PredictionBatch) -> bool:
        """Queue one request's predictions for writing, as one item; never blocks.

        The writer thread makes the records (`PredictionBatch.records`), so the
        request path only hands over the arrays it already has.

        Returns:
            False when the batch was dropped, all its records (the queue cannot take
            them all, or the logger is closed).
        """
        return self._put(batch, len(batch))

    def _put(self, item: PredictionRecord | PredictionBatch, count: int) -> bool:
        waiting = self._queued - self._taken
        if self._closed or self._thread is None or waiting + count > self.queue_size:
            self.dropped += count
            return False
        self._queued += count
        self._queue.put(item)  # never wakes the writer: it polls (`_run`)
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
        """Write what is queued; when nothing is, sleep (at most `POLL_S`) and look again.

        The writer polls instead of blocking on the queue, so `log` never has
        to wake it: under load it drains what arrived while it slept, in one
        burst, instead of waking (and taking the interpreter from the event
        loop) once per request.
        """
        parts = self._parts()
        pending = 0
        last_flush = time.monotonic()
        try:
            while True:
                try:
                    record = self._queue.get_nowait()
                except queue.Empty:
                    wait = self.flush_interval_s - (time.monotonic() - last_flush)
                    time.sleep(min(POLL_S, max(wait, 0.0)))
                    record = _TICK
                if record is None:  # close() was called
                    break
                if record is not _TICK:
                    records = record.records() if isinstance(record, PredictionBatch) else [record]
                    self._taken += len(record) if isinstance(record, PredictionBatch) else 1
                    for one in records:
                        try:
                            self._write(one, parts)
                            pending += 1
                        except (OSError, ValueError, TypeError) as err:
                            self.errors += 1
                            logger.error("prediction log: cannot write %s: %s", one.request_id, err)
                if pending >= self.flush_every or (
                    time.monotonic() - last_flush >= self.flush_interval_s
                ):
                    self._flush(parts)
                    pending, last_flush = 0, time.monotonic()
        finally:
            self._flush(parts)
            parts.close()

    def _parts(self) -> _Parts:
        if isinstance(self.root, Path):
            return _AppendedParts(self._next_name, self.sample_images > 0, self._closed_part)
        return _ObjectParts(self._next_name, self.queue_size)

    def _next_name(self, suffix: str) -> str:
        self._opened += 1  # a new name per file: a compacted name never comes back
        return f"part-{self._token}-{self._opened}{suffix}"

    def _closed_part(self, part: Path) -> None:
        if self.compact_closed:
            self._to_compact.put(part)

    def _flush(self, parts: _Parts) -> None:
        try:
            parts.flush()
        except (OSError, ValueError, pa.ArrowException) as err:
            self.errors += 1
            logger.error("prediction log: cannot flush to %s: %s", self.root, err)

    def _write(self, record: PredictionRecord, parts: _Parts) -> None:
        folder = partition_dir(self.root, record.time)
        parts.open(folder)
        image_path = None
        if record.image is not None and self._random.random() < self.sample_images:
            # Named by this writer, never by the request: a client's X-Request-ID used
            # twice must not overwrite the first request's image.
            self._images_saved += 1
            image_path = f"{IMAGES_DIR}/{self._token}-{self._images_saved}.png"
            encoded = io.BytesIO()
            # Lossless whatever the level; level 1 and one `write` took 40 % less CPU per
            # image than PIL's default level saved to a path (the writer's largest cost).
            Image.fromarray(_storable(record.image)).save(encoded, format="PNG", compress_level=1)
            if isinstance(folder, Path):
                _write_file(folder / image_path, encoded.getbuffer())
            else:  # one whole object per image
                write_bytes(join(folder, image_path), encoded.getvalue())
        probabilities = {str(k): float(v) for k, v in record.probabilities.items()}
        embedding = [float(v) for v in record.embedding]
        features = {str(k): float(v) for k, v in record.features.items()}
        confidence = float(record.confidence)
        if not (
            math.isfinite(confidence)
            and all(map(math.isfinite, probabilities.values()))
            and all(map(math.isfinite, embedding))
            and all(map(math.isfinite, features.values()))
        ):
            raise ValueError("a value is NaN or infinite (JSON has no such numbers)")
        line = {
            "request_id": record.request_id,
            "index": record.index,
            "time": as_utc(record.time).isoformat(timespec="microseconds"),
            "model_name": record.model_name,
            "model_version": record.model_version,
            "label": record.label,
            "confidence": confidence,
            "probabilities": probabilities,
            "embedding": embedding,
            "image_path": image_path,
            "low_information": bool(record.low_information),
            "features": features,
        }
        # pydantic-core's encoder: the same JSON as `json.dumps`, about 8x faster
        parts.write(folder, pydantic_core.to_json(line).decode("utf-8") + "\n")
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


class _Parts(Protocol):
    """Where the writer thread puts lines: appended local files, or whole objects."""

    def open(self, folder: Location) -> None: ...
    def write(self, folder: Location, line: str) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class _AppendedParts:
    """A local log: one JSON-lines file per partition, appended to and flushed.

    A new hour closes the previous hour's file, which `closed` hands to compaction.
    """

    def __init__(
        self, next_name: Callable[[str], str], images: bool, closed: Callable[[Path], None]
    ) -> None:
        self._next_name, self._images, self._closed = next_name, images, closed
        self._files: dict[Path, IO[str]] = {}

    def open(self, folder: Location) -> None:
        assert isinstance(folder, Path)
        if folder in self._files:
            return
        for old in [p for p in self._files if p != folder]:  # a new hour: close the old one's file
            handle = self._files.pop(old)
            handle.close()
            self._closed(Path(handle.name))
        # Made once per part (per image, the checks cost the writer a tenth of its time).
        (folder / IMAGES_DIR if self._images else folder).mkdir(parents=True, exist_ok=True)
        self._files[folder] = (folder / self._next_name(".jsonl")).open("a", encoding="utf-8")

    def write(self, folder: Location, line: str) -> None:
        assert isinstance(folder, Path)
        self._files[folder].write(line)

    def flush(self) -> None:
        for handle in self._files.values():
            handle.flush()

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()


class _ObjectParts:
    """A log in object storage: each flush puts the lines since the last one as one Parquet object.

    Objects cannot be appended to, so nothing is: every part is written whole,
    under a new name, already compacted (`compact` has nothing to do there).
    """

    def __init__(self, next_name: Callable[[str], str], max_pending: int) -> None:
        self._next_name, self._max_pending = next_name, max_pending
        self._lines: dict[Location, list[str]] = {}

    def open(self, folder: Location) -> None:
        self._lines.setdefault(folder, [])

    def write(self, folder: Location, line: str) -> None:
        waiting = sum(map(len, self._lines.values()))
        if waiting >= self._max_pending:  # puts keep failing: memory stays bounded
            raise OSError(f"the object store took no part for {waiting} records; dropping")
        self._lines[folder].append(line)

    def flush(self) -> None:
        for folder, lines in list(self._lines.items()):
            if not lines:
                del self._lines[folder]
                continue
            target = join(folder, self._next_name(".parquet"))
            table = parse_jsonl("".join(lines).encode("utf-8"), target)
            buffer = pa.BufferOutputStream()
            write_parquet(table, buffer)
            write_bytes(target, buffer.getvalue().to_pybytes())
            del self._lines[folder]  # only once written: a failed put is retried next flush

    def close(self) -> None:
        """Nothing is open; lines the last flush could not put are lost, and said so."""
        waiting = sum(map(len, self._lines.values()))
        if waiting:
            logger.error("prediction log: %d records never reached the object store", waiting)


def _write_file(path: Path, data: memoryview) -> None:
    """`data` as the whole content of `path`, in one system call where the OS allows."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # as open()
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _storable(image: np.ndarray) -> np.ndarray:
    """An image as PNG stores it: uint16 grey kept 16-bit, anything else as uint8 (grey or RGB)."""
    array = np.asarray(image)
    if array.dtype == np.uint16 and array.ndim == 2:
        return array
    return array.astype(np.uint8)
