"""The prediction log: every served prediction, appended to hourly-partitioned JSON Lines files.

Monitoring reads windows of it (drift of the summary features, the
embedding, the predicted labels and the confidence) and curation picks images
from it for labelling. Layout under the root (Hive-style partitions, so Spark,
DuckDB or pyarrow can read it as a table as well):

    <root>/date=YYYY-MM-DD/hour=HH/part-<host>-<pid>-<token>-<n>.jsonl    (being written)
    <root>/date=YYYY-MM-DD/hour=HH/part-<host>-<pid>-<token>-<n>.parquet  (compacted)
    <root>/date=YYYY-MM-DD/hour=HH/images/<host>-<pid>-<token>-<n>.png

One JSON object per line (`RECORD_FIELDS`, plus one key per summary feature
under `features`); a sampled image is named by the writer, and its record's
`image_path` points at it (the request's id is a field, never a file name).
A key added later (`low_information`) is absent from older lines and parts,
which read as `COLUMN_DEFAULTS` says.
Every writer (one per server worker process) appends to its own part files,
so several processes never interleave lines, and each file it opens gets a
new name (`<n>` counts them), so a name is never reused.

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

Writing never blocks a response: `PredictionLogger.log` puts the record (or
`log_batch` a request's `PredictionBatch`, whose records the writer makes) on a
bounded queue and returns; a background thread encodes images and appends
lines. Flush policy: the writer flushes its open files after `flush_every`
records or `flush_interval_s` seconds since the last flush, whichever comes
first, and on `close()` (the server's shutdown hook). When the queue is full
(the disk cannot keep up) a record is dropped and counted in `dropped`, rather
than slowing down serving. A crash can lose at most the records not yet
flushed; `read_predictions` skips a torn last line.

Modules: `schema` (the record, the Arrow schema, the folders), `writer`
(`PredictionLogger`), `reader` (`read_table`, `read_predictions`),
`compaction` (`compact`).
"""

from flywheel.monitoring.prediction_log.compaction import (
    Compaction,
    compact,
    compact_part,
    write_parquet,
)
from flywheel.monitoring.prediction_log.reader import (
    embedding_matrix,
    parse_time,
    read_predictions,
    read_table,
    to_frame,
)
from flywheel.monitoring.prediction_log.schema import (
    COLUMN_DEFAULTS,
    IMAGES_DIR,
    RECORD_FIELDS,
    TABLE_SCHEMA,
    TIME_TYPE,
    PredictionBatch,
    PredictionLogError,
    PredictionRecord,
    partition_dir,
    predictions_dir,
)
from flywheel.monitoring.prediction_log.writer import PredictionLogger

__all__ = [
    "COLUMN_DEFAULTS",
    "IMAGES_DIR",
    "RECORD_FIELDS",
    "TABLE_SCHEMA",
    "TIME_TYPE",
    "Compaction",
    "PredictionBatch",
    "PredictionLogError",
    "PredictionLogger",
    "PredictionRecord",
    "compact",
    "compact_part",
    "embedding_matrix",
    "parse_time",
    "partition_dir",
    "predictions_dir",
    "read_predictions",
    "read_table",
    "to_frame",
    "write_parquet",
]
