"""The prediction log: every served prediction, appended to hourly-partitioned JSON Lines files.

Monitoring reads windows of it (drift of the summary features, the
embedding, the predicted labels and the confidence) and curation picks images
from it for labelling. Layout under the root (Hive-style partitions, so Spark,
DuckDB or pyarrow can read it as a table as well):

    <root>/date=YYYY-MM-DD/hour=HH/part-<host>-<pid>-<token>-<n>.jsonl    (being written)
    <root>/date=YYYY-MM-DD/hour=HH/part-<host>-<pid>-<token>-<n>.parquet  (compacted)
    <root>/date=YYYY-MM-DD/hour=HH/images/<request_id>-<index>.png

One JSON object per line (`RECORD_FIELDS`, plus one key per summary feature
under `features`). Every writer (one per server worker process) appends to
its own part files, so several processes never interleave lines, and each file
it opens gets a new name (`<n>` counts them), so a name is never reused.

Compaction. JSON lines are cheap to append and survive a crash, but slow to
read: about 100 µs a row, so a million rows take a minute and a half. A closed
part is therefore rewritten as Parquet (`compact`; typed columns, float32
embeddings, zstd), which reads about 30× faster. The writer compacts its own
part when it rolls to the next hour (in a background thread, so serving never
waits on it); `compact` also picks up what no writer will touch again — parts
of hours that ended, untouched for `grace` (a killed worker's, the last part
before a restart) — and `flywheel monitor` runs it before reading. A part is
converted to `<name>.parquet.tmp`, renamed over `<name>.parquet`, and only then
is the `.jsonl` deleted; where both exist (a crash between the two steps),
readers take the JSON lines and ignore the Parquet, so nothing is read twice or
lost. Do not compact a log that a back-fill (`flywheel.monitoring.replay`) is
still writing into past hours with `compact_closed=False`.

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

import io
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
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from PIL import Image

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
        features: summary features of the input (`flywheel.monitoring.features`).
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


def predictions_dir(params: Params, base: Path | None = None) -> Path:
    """The prediction log the service writes: `serve.log.dir`, else `<state dir>/predictions`.

    A relative `serve.log.dir` is taken relative to `base` (the folder of the
    params file in use: the project root), else to the working directory.
    Every reader and the service itself resolve it here.

    >>> from flywheel.config import Params
    >>> moved = Params.model_validate({"serve": {"log": {"dir": "logs/p"}}})
    >>> predictions_dir(moved, Path("/project")).as_posix()
    '/project/logs/p'
    """
    from flywheel.env import state_dir

    configured = params.serve.log.dir
    if configured is None:
        return state_dir() / "predictions"
    if configured.is_absolute():
        return configured
    return (base if base is not None else Path.cwd()) / configured


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


def read_table(
    root: str | Path,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    *,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """The logged predictions with `since <= time < until`, oldest first, as an Arrow table.

    The fast way in for large windows (`read_predictions` builds a DataFrame
    from it): columns `TABLE_SCHEMA` plus the structs `probabilities` (one
    field per class) and `features` (one per summary feature); `image_path`
    is absolute.

    Args:
        root: the log's root folder (a missing folder reads as an empty log).
        since: inclusive lower bound (naive times are UTC); None: from the start.
        until: exclusive upper bound; None: up to now.
        limit: keep only the most recent `limit` rows of the window.
        columns: only these columns (plus `time`, `request_id` and `index`,
            which order the rows); Parquet parts then skip reading the rest.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    start = None if since is None else _as_utc(since)
    end = None if until is None else _as_utc(until)
    wanted = None if columns is None else list(dict.fromkeys([*_ORDER, *columns]))
    unknown = set(wanted or []) - set(_EMPTY_TABLE.column_names)
    if unknown:
        raise ValueError(f"no such columns in the log: {sorted(unknown)}")
    tables = []
    for folder in _partitions(Path(root), start, end):
        for part in _readable_parts(folder):
            try:
                table = _read_part(part, wanted)
            except FileNotFoundError:
                # Compacted since the folder was listed: its rows are in the Parquet part now.
                compacted = part.with_suffix(".parquet")
                if part.suffix != ".jsonl" or not compacted.exists():
                    raise
                table = _read_part(compacted, wanted)
            if table.num_rows:
                tables.append(_absolute_image_paths(table, folder))
    if not tables:
        return _EMPTY_TABLE if wanted is None else _EMPTY_TABLE.select(wanted)
    types = {t.schema.field("embedding").type for t in tables if "embedding" in t.column_names}
    if len(types) > 1:  # sizes differ
        tables = [_with_embedding(t, t["embedding"].cast(_EMBEDDING_LIST)) for t in tables]
    table = pa.concat_tables(tables, promote_options="permissive")
    if start is not None:
        table = table.filter(pc.greater_equal(table["time"], pa.scalar(start, TIME_TYPE)))
    if end is not None:
        table = table.filter(pc.less(table["time"], pa.scalar(end, TIME_TYPE)))
    order = pc.sort_indices(table, [(column, "ascending") for column in _ORDER])
    if not _is_identity(order):  # parts of several writers interleave: reorder (costs ~1 s/1M)
        table = table.take(order)
    if limit is not None:
        table = table.slice(max(0, table.num_rows - limit))
    return table


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
        `flywheel.monitoring.features.FEATURE_COLUMNS`); `time` is a UTC datetime;
        `probabilities` a dict per row, `embedding` a float32 array per row;
        `image_path` is absolute (None where the image was not sampled).
    """
    return to_frame(read_table(root, since, until, limit))


def to_frame(
    table: pa.Table, *, probabilities: bool = True, embedding: bool = True
) -> pd.DataFrame:
    """A `read_table` table as `read_predictions` returns it.

    Args:
        table: from `read_table`.
        probabilities: include the per-row dict column (slow for millions of rows).
        embedding: include the per-row array column (`embedding_matrix` is the fast way).
    """
    base = [c for c in RECORD_FIELDS if c != "features"]
    if table.num_rows == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in base}).assign(
            time=pd.Series(dtype="datetime64[ns, UTC]")
        )
    drop = {"features", "probabilities", "embedding"}
    frame = table.select([c for c in base if c not in drop and c in table.column_names]).to_pandas(
        coerce_temporal_nanoseconds=True
    )
    probabilities &= "probabilities" in table.column_names
    embedding &= "embedding" in table.column_names
    if probabilities:
        frame["probabilities"] = [
            {k: v for k, v in row.items() if v is not None}
            for row in table["probabilities"].to_pylist()
        ]
    if embedding:
        try:
            frame["embedding"] = list(embedding_matrix(table))
        except PredictionLogError:  # sizes differ: one array per row, each its own size
            frame["embedding"] = [
                None if row is None else np.asarray(row, dtype=np.float32)
                for row in table["embedding"].to_pylist()
            ]
    if "features" not in table.column_names:
        return frame[[c for c in base if c in frame]]
    features = pa.Table.from_arrays(
        table["features"].combine_chunks().flatten(),
        names=[f.name for f in table.schema.field("features").type],
    ).to_pandas()
    frame = pd.concat([frame, features.astype(np.float64)], axis=1)
    return frame[[c for c in base if c in frame] + list(features.columns)]


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """The `embedding` column as one `(N, D)` float32 array (no per-row objects).

    Raises:
        PredictionLogError: rows have embeddings of different sizes (several
            model architectures in one window).
    """
    column = table["embedding"].combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if pa.types.is_fixed_size_list(column.type):  # the usual case: one reshape, no copy
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.astype(np.float32, copy=False).reshape(len(column), column.type.list_size)
    if column.null_count:
        raise PredictionLogError(f"{column.null_count} rows have no embedding")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if (lengths != lengths[0]).any():
        raise PredictionLogError(
            f"the window mixes embedding sizes {sorted(set(lengths.tolist()))}: "
            "read one model version at a time"
        )
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(column), int(lengths[0]))


# ---------------------------------------------------------------- compaction


@dataclass(frozen=True)
class Compaction:
    """What `compact` did.

    Attributes:
        parts: JSON-lines parts rewritten as Parquet.
        rows: rows they held.
        seconds: time it took.
    """

    parts: int
    rows: int
    seconds: float


def compact(
    root: str | Path,
    *,
    grace: timedelta = timedelta(minutes=10),
    now: datetime | None = None,
) -> Compaction:
    """Rewrite every closed JSON-lines part of the log as Parquet (see the module docstring).

    A part is closed when its hour ended at least `grace` ago and it has not
    been modified for `grace`: a live writer only appends records of the
    current hour, so it never touches such a part again.

    Args:
        root: the log's root folder.
        grace: how long after its hour and its last write a part is left alone.
        now: the current time for the hour test (tests); the modification test
            always uses the real clock.
    """
    started = time.perf_counter()
    now = _as_utc(now or datetime.now(UTC))
    cutoff = time.time() - grace.total_seconds()  # file times are the real clock's
    parts = rows = 0
    for folder in _partitions(Path(root), None, now - grace - timedelta(hours=1)):
        for part in sorted(folder.glob("part-*.jsonl")):
            try:
                if part.stat().st_mtime > cutoff:
                    continue
                written = compact_part(part)
            except (OSError, pa.ArrowException) as err:
                logger.error("prediction log: cannot compact %s: %s", part, err)
                continue
            if written is not None:
                parts, rows = parts + 1, rows + written
    return Compaction(parts, rows, time.perf_counter() - started)


def compact_part(part: Path) -> int | None:
    """Rewrite one closed JSON-lines part as Parquet beside it, then delete it.

    Returns:
        The rows written, or None when there was nothing to do (the part is gone).
    """
    if not part.exists():
        return None
    table = _read_jsonl(part)
    target = part.with_suffix(".parquet")
    temporary = target.with_name(target.name + ".tmp")
    write_parquet(table, temporary)
    os.replace(temporary, target)
    part.unlink()
    return table.num_rows


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write rows of the log as a Parquet part, as compaction does."""
    pq.write_table(
        table,
        path,
        compression="zstd",
        # Dictionaries only where values repeat; the embedding's floats split by byte
        # compress better and read 1.6× faster than dictionary pages of them.
        use_dictionary=["model_name", "model_version", "label"],
        use_byte_stream_split=["embedding.list.element"],
    )


# ---------------------------------------------------------------- file formats

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
    ]
)
"""The typed columns of the log; `probabilities` and `features` are structs of float64.

Tables read from the log hold `embedding` as `fixed_size_list<float32>[D]`
where every row of a part has D values (the usual case): Parquet reads it 3×
faster than a list, and taking rows from it is 30× faster.
"""
_EMBEDDING_LIST = pa.list_(pa.float32())
_JSON_OPTIONS = pa_json.ParseOptions(
    explicit_schema=TABLE_SCHEMA, unexpected_field_behavior="infer"
)
_STRUCTS = ("probabilities", "features")
_ORDER = ("time", "request_id", "index")
"""The columns that order the rows."""
_EMPTY_TABLE = pa.schema(
    [*TABLE_SCHEMA, pa.field("probabilities", pa.struct([])), pa.field("features", pa.struct([]))]
).empty_table()


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


def _readable_parts(folder: Path) -> list[Path]:
    """The parts of a partition to read: every `.jsonl`, and each `.parquet` without one."""
    jsonl = sorted(folder.glob("part-*.jsonl"))
    stems = {p.stem for p in jsonl}
    parquet = [p for p in sorted(folder.glob("part-*.parquet")) if p.stem not in stems]
    return jsonl + parquet


def _read_part(part: Path, columns: list[str] | None = None) -> pa.Table:
    if part.suffix == ".parquet":
        file = pq.ParquetFile(part)
        present = set(file.schema_arrow.names)
        stored = None if columns is None else [c for c in columns if c in present]
        table = _normalized(file.read(columns=stored), columns)
    else:
        table = _read_jsonl(part)
    return table if columns is None else table.select(columns)


def _read_jsonl(part: Path) -> pa.Table:
    """One JSON-lines part; a torn last line (the writer was killed mid-write) is left out."""
    data = part.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning("prediction log: skipping the torn last line of %s", part)
        data = data[:end]
    if not data.strip():
        return _EMPTY_TABLE
    try:
        table = pa_json.read_json(io.BytesIO(data), parse_options=_JSON_OPTIONS)
    except pa.ArrowInvalid:  # a damaged line: keep every readable one
        table = pa_json.read_json(
            io.BytesIO(b"".join(_readable_lines(part, data))), parse_options=_JSON_OPTIONS
        )
    return _normalized(table)


def _readable_lines(part: Path, data: bytes) -> Iterator[bytes]:
    for number, line in enumerate(data.splitlines(keepends=True), start=1):
        try:
            json.loads(line)
        except json.JSONDecodeError:
            logger.warning("prediction log: skipping unreadable line %s:%d", part, number)
            continue
        yield line


def _normalized(table: pa.Table, columns: Sequence[str] | None = None) -> pa.Table:
    """`TABLE_SCHEMA`'s columns in order (null where a part lacks one), then the two structs.

    Only `columns` when given: filling a column nobody asked for costs time
    (an empty struct is built row by row, about 0.4 s per 250k rows).
    """
    wanted = None if columns is None else set(columns)
    out: dict[str, pa.Array | pa.ChunkedArray] = {}
    for field_ in TABLE_SCHEMA:
        if wanted is not None and field_.name not in wanted:
            continue
        if field_.name in table.column_names:
            out[field_.name] = table[field_.name].cast(field_.type)
        else:
            out[field_.name] = pa.nulls(table.num_rows, field_.type)
    if "embedding" in out and (fixed := _fixed_size(out["embedding"])) is not None:
        out["embedding"] = fixed
    for name in _STRUCTS:
        if wanted is not None and name not in wanted:
            continue
        column = table[name] if name in table.column_names else None
        if column is None or not pa.types.is_struct(column.type):
            column = pa.array([{}] * table.num_rows, pa.struct([]))
        out[name] = column
    return pa.table(out)


def _is_identity(order: pa.Array) -> bool:
    """Whether sort indices leave every row where it is (the table is already in order)."""
    return bool(np.array_equal(order.to_numpy(), np.arange(len(order))))


def _fixed_size(column: pa.Array | pa.ChunkedArray) -> pa.FixedSizeListArray | None:
    """A list column as `fixed_size_list` when every row has the same size (else None)."""
    merged = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(merged.type):
        return merged
    if len(merged) == 0 or merged.null_count:
        return None
    lengths = pc.list_value_length(merged)
    size = pc.min_max(lengths)
    if size["min"].as_py() != size["max"].as_py() or not size["min"].as_py():
        return None
    return pa.FixedSizeListArray.from_arrays(merged.flatten(), size["min"].as_py())


def _with_embedding(table: pa.Table, column: pa.Array | pa.ChunkedArray) -> pa.Table:
    index = table.schema.get_field_index("embedding")
    return table.set_column(index, pa.field("embedding", column.type), column)


def _absolute_image_paths(table: pa.Table, folder: Path) -> pa.Table:
    if "image_path" not in table.column_names:
        return table
    paths = pc.binary_join_element_wise(f"{folder}{os.sep}", table["image_path"], "")
    return table.set_column(table.schema.get_field_index("image_path"), "image_path", paths)
