"""Reading windows of the log: as an Arrow table (`read_table`) or a DataFrame (`read_predictions`).

Every part of a partition is read, JSON lines or Parquet, into one typed
table (`TABLE_SCHEMA` plus the `probabilities` and `features` structs); where
a part exists in both formats (a crash mid-compaction) the JSON lines count.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from flywheel.monitoring.prediction_log.schema import (
    COLUMN_DEFAULTS,
    RECORD_FIELDS,
    TABLE_SCHEMA,
    TIME_TYPE,
    PredictionLogError,
    as_utc,
    partitions,
)
from flywheel.storage import (
    Location,
    as_location,
    exists,
    glob,
    name,
    open_binary,
    read_bytes,
)

logger = logging.getLogger(__name__)

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
    return as_utc(when)


def read_table(
    root: Location,
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
    is absolute (a URL where the log is in object storage).

    Args:
        root: the log's root folder or URL (a missing one reads as an empty log).
        since: inclusive lower bound (naive times are UTC); None: from the start.
        until: exclusive upper bound; None: up to now.
        limit: keep only the most recent `limit` rows of the window.
        columns: only these columns (plus `time`, `request_id` and `index`,
            which order the rows); Parquet parts then skip reading the rest.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    start = None if since is None else as_utc(since)
    end = None if until is None else as_utc(until)
    wanted = None if columns is None else list(dict.fromkeys([*_ORDER, *columns]))
    unknown = set(wanted or []) - set(_EMPTY_TABLE.column_names)
    if unknown:
        raise ValueError(f"no such columns in the log: {sorted(unknown)}")
    tables = []
    for folder in partitions(as_location(root), start, end):
        for part in _readable_parts(folder):
            try:
                table = _read_part(part, wanted)
            except FileNotFoundError:
                # Compacted since the folder was listed: its rows are in the Parquet part now.
                compacted = _with_suffix(part, ".parquet")
                if not name(part).endswith(".jsonl") or not exists(compacted):
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
    root: Location,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """The logged predictions with `since <= time < until`, oldest first.

    Args:
        root: the log's root folder or URL (a missing one reads as an empty log).
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


def _readable_parts(folder: Location) -> list[Location]:
    """The parts of a partition to read: every `.jsonl`, and each `.parquet` without one."""
    jsonl = glob(folder, "part-*.jsonl")
    stems = {name(p).removesuffix(".jsonl") for p in jsonl}
    parquet = [
        p for p in glob(folder, "part-*.parquet") if name(p).removesuffix(".parquet") not in stems
    ]
    return jsonl + parquet


def _with_suffix(part: Location, suffix: str) -> Location:
    """The same part with another suffix (`.jsonl` -> `.parquet`)."""
    if isinstance(part, Path):
        return part.with_suffix(suffix)
    return part.rsplit(".", 1)[0] + suffix


def _read_part(part: Location, columns: list[str] | None = None) -> pa.Table:
    if name(part).endswith(".parquet"):
        with contextlib.ExitStack() as stack:
            # A local file is read natively; an object through fsspec (random access).
            source = part if isinstance(part, Path) else stack.enter_context(open_binary(part))
            file = pq.ParquetFile(source)
            present = set(file.schema_arrow.names)
            stored = None if columns is None else [c for c in columns if c in present]
            table = _normalized(file.read(columns=stored), columns)
    else:
        table = read_jsonl(part)
    return table if columns is None else table.select(columns)


def read_jsonl(part: Location) -> pa.Table:
    """One JSON-lines part; a torn last line (the writer was killed mid-write) is left out."""
    return parse_jsonl(read_bytes(part), part)


def parse_jsonl(data: bytes, source: Location) -> pa.Table:
    """JSON lines of the log as a typed table; a torn last line is left out.

    Args:
        data: the lines.
        source: where they come from (named in warnings).
    """
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning("prediction log: skipping the torn last line of %s", source)
        data = data[:end]
    if not data.strip():
        return _EMPTY_TABLE
    try:
        table = pa_json.read_json(io.BytesIO(data), parse_options=_JSON_OPTIONS)
    except pa.ArrowInvalid:  # a damaged line: keep every readable one
        table = pa_json.read_json(
            io.BytesIO(b"".join(_readable_lines(source, data))), parse_options=_JSON_OPTIONS
        )
    return _normalized(table)


def _readable_lines(part: Location, data: bytes) -> Iterator[bytes]:
    for number, line in enumerate(data.splitlines(keepends=True), start=1):
        try:
            json.loads(line)
        except json.JSONDecodeError:
            logger.warning("prediction log: skipping unreadable line %s:%d", part, number)
            continue
        yield line


def _normalized(table: pa.Table, columns: Sequence[str] | None = None) -> pa.Table:
    """`TABLE_SCHEMA`'s columns in order, then the two structs.

    Where a part (or some of its lines) lacks a column, older than the column,
    it reads as `COLUMN_DEFAULTS` gives, else null.

    Only `columns` when given: filling a column nobody asked for costs time
    (an empty struct is built row by row, about 0.4 s per 250k rows).
    """
    wanted = None if columns is None else set(columns)
    out: dict[str, pa.Array | pa.ChunkedArray] = {}
    for field_ in TABLE_SCHEMA:
        if wanted is not None and field_.name not in wanted:
            continue
        if field_.name in table.column_names:
            column = table[field_.name].cast(field_.type)
        else:
            column = pa.nulls(table.num_rows, field_.type)
        if field_.name in COLUMN_DEFAULTS:
            column = column.fill_null(COLUMN_DEFAULTS[field_.name])
        out[field_.name] = column
    if "embedding" in out and (fixed := _fixed_size(out["embedding"])) is not None:
        out["embedding"] = fixed
    for struct in _STRUCTS:
        if wanted is not None and struct not in wanted:
            continue
        column = table[struct] if struct in table.column_names else None
        if column is None or not pa.types.is_struct(column.type):
            column = pa.array([{}] * table.num_rows, pa.struct([]))
        out[struct] = column
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


def _absolute_image_paths(table: pa.Table, folder: Location) -> pa.Table:
    if "image_path" not in table.column_names:
        return table
    prefix = f"{folder}{os.sep}" if isinstance(folder, Path) else f"{folder}/"
    paths = pc.binary_join_element_wise(prefix, table["image_path"], "")
    return table.set_column(table.schema.get_field_index("image_path"), "image_path", paths)
