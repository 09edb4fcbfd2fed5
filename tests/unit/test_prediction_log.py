"""The prediction log (`flywheel.monitoring.prediction_log`): partitions, flush, sampling, reads."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from PIL import Image

from flywheel.monitoring.features import FEATURE_COLUMNS
from flywheel.monitoring.prediction_log import (
    RECORD_FIELDS,
    PredictionBatch,
    PredictionLogger,
    PredictionRecord,
    compact,
    compact_part,
    embedding_matrix,
    partition_dir,
    read_predictions,
    read_table,
    write_parquet,
)
from flywheel.monitoring.prediction_log.reader import read_jsonl

T0 = datetime(2026, 11, 23, 9, 59, 58, tzinfo=UTC)


def _record(
    i: int, when: datetime = T0, image: bool = True, low_information: bool = False
) -> PredictionRecord:
    return PredictionRecord(
        request_id=f"req-{i // 2}",
        index=i % 2,
        time=when,
        model_name="digits",
        model_version="3",
        label=str(i % 3),
        confidence=0.5 + i / 100,
        probabilities={"0": 0.2, "1": 0.3, "2": 0.5},
        features={name: float(i) for name in FEATURE_COLUMNS},
        embedding=[float(i), -1.0],
        image=np.full((4, 4), i % 256, dtype=np.uint8) if image else None,
        low_information=low_information,
    )


def _lines(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for p in sorted(root.rglob("*.jsonl")) for line in p.open()]


def test_records_land_in_hourly_partitions_and_read_back(tmp_path: Path) -> None:
    records = [_record(i, T0 + timedelta(seconds=i)) for i in range(4)]  # crosses 10:00
    with PredictionLogger(tmp_path, compact_closed=False) as log:
        for record in records:
            assert log.log(record)
    assert log.written == 4
    assert log.dropped == 0
    folders = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("date=*/hour=*"))
    assert folders == ["date=2026-11-23/hour=09", "date=2026-11-23/hour=10"]
    lines = _lines(tmp_path)
    assert len(lines) == 4
    assert all(set(line) == set(RECORD_FIELDS) for line in lines)

    frame = read_predictions(tmp_path)
    assert len(frame) == 4
    assert frame["request_id"].tolist() == ["req-0", "req-0", "req-1", "req-1"]
    assert frame["index"].tolist() == [0, 1, 0, 1]
    assert frame["time"].tolist() == [r.time for r in records]
    assert frame["confidence"].tolist() == [r.confidence for r in records]
    assert [e.tolist() for e in frame["embedding"]] == [list(r.embedding) for r in records]
    assert frame["embedding"][0].dtype == np.float32
    assert frame["probabilities"][0] == {"0": 0.2, "1": 0.3, "2": 0.5}
    assert frame[list(FEATURE_COLUMNS)].to_numpy().tolist() == [[float(i)] * 7 for i in range(4)]
    assert "features" not in frame.columns
    for i, path in enumerate(frame["image_path"]):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), np.full((4, 4), i))


@pytest.mark.parametrize(
    ("since", "until", "limit", "expected"),
    [
        (None, None, None, [0, 1, 2, 3, 4, 5]),
        (T0 + timedelta(minutes=2), None, None, [2, 3, 4, 5]),
        (None, T0 + timedelta(minutes=2), None, [0, 1]),
        (T0 + timedelta(minutes=1), T0 + timedelta(minutes=4), None, [1, 2, 3]),
        (None, None, 2, [4, 5]),
        (T0, T0 + timedelta(minutes=3), 1, [2]),
        (T0 + timedelta(hours=5), None, None, []),
        # naive datetimes are UTC
        (datetime(2026, 11, 23, 10, 3), None, None, [4, 5]),
    ],
)
def test_window_by_time_and_limit(
    tmp_path: Path,
    since: datetime | None,
    until: datetime | None,
    limit: int | None,
    expected: list[int],
) -> None:
    with PredictionLogger(tmp_path) as log:
        for i in range(6):
            log.log(_record(i, T0 + timedelta(minutes=i), image=False))
    frame = read_predictions(tmp_path, since=since, until=until, limit=limit)
    assert [round((c - 0.5) * 100) for c in frame["confidence"]] == expected


def test_flush_by_interval_makes_records_readable_while_running(tmp_path: Path) -> None:
    log = PredictionLogger(tmp_path, flush_every=1000, flush_interval_s=0.1)
    log.start()
    try:
        log.log(_record(0, image=False))
        deadline = time.monotonic() + 5
        while len(read_predictions(tmp_path)) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(read_predictions(tmp_path)) == 1
    finally:
        log.close()


def test_close_flushes_everything_queued(tmp_path: Path) -> None:
    log = PredictionLogger(tmp_path, flush_every=10_000, flush_interval_s=3600)
    log.start()
    for i in range(50):
        log.log(_record(i, image=False))
    log.close()
    assert len(read_predictions(tmp_path)) == 50
    assert not log.log(_record(99))  # closed: dropped, counted
    assert log.dropped == 1


class _StuckLogger(PredictionLogger):
    """A logger whose disk never answers until `release` is set."""

    def __init__(self, root: Path, **kwargs: int) -> None:
        super().__init__(root, **kwargs)
        self.release = threading.Event()

    def _write(self, record: PredictionRecord, files: dict[Path, IO[str]]) -> None:
        self.release.wait(10)
        super()._write(record, files)


def test_a_full_queue_drops_instead_of_blocking(tmp_path: Path) -> None:
    log = _StuckLogger(tmp_path, queue_size=3)
    log.start()
    started = time.monotonic()
    accepted = [log.log(_record(i, image=False)) for i in range(8)]
    assert time.monotonic() - started < 1.0  # never waited for the stuck writer
    # 3 queued, plus at most 1 already taken by the (stuck) writer thread
    assert sum(accepted) in (3, 4)
    assert accepted[:3] == [True, True, True]
    assert log.dropped == 8 - sum(accepted)
    log.release.set()
    log.close()
    assert log.written == sum(accepted)
    assert len(read_predictions(tmp_path)) == sum(accepted)


def _batch(records: list[PredictionRecord]) -> PredictionBatch:
    """The records of one request as the service hands them over: arrays, not dicts."""
    first = records[0]
    return PredictionBatch(
        request_id=first.request_id,
        time=first.time,
        model_name=first.model_name,
        model_version=first.model_version,
        classes=tuple(first.probabilities),
        labels=[r.label for r in records],
        confidences=np.array([r.confidence for r in records]),
        probabilities=np.array([list(r.probabilities.values()) for r in records]),
        features=np.array([list(r.features.values()) for r in records]),
        feature_names=tuple(first.features),
        embeddings=np.array([list(r.embedding) for r in records], dtype=np.float32),
        images=np.stack([r.image for r in records if r.image is not None]),
        low_information=np.array([r.low_information for r in records]),
    )


def test_a_batch_logs_what_its_records_log_one_by_one(tmp_path: Path) -> None:
    records = [_record(0), _record(1, low_information=True)]  # one request, indices 0 and 1
    with PredictionLogger(tmp_path / "one", compact_closed=False) as log:
        for record in records:
            log.log(record)
    with PredictionLogger(tmp_path / "batch", compact_closed=False) as log:
        assert log.log_batch(_batch(records))
    assert log.written == 2
    one, batch = read_predictions(tmp_path / "one"), read_predictions(tmp_path / "batch")
    columns = [c for c in one.columns if c not in ("image_path", "embedding")]
    assert one[columns].equals(batch[columns])
    assert [e.tolist() for e in batch["embedding"]] == [e.tolist() for e in one["embedding"]]
    for path, record in zip(batch["image_path"], records, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), record.image)


def test_a_batch_that_does_not_fit_the_queue_is_dropped_whole(tmp_path: Path) -> None:
    log = PredictionLogger(tmp_path, queue_size=1)
    log._thread = threading.Thread(target=lambda: None)  # started, but never drains the queue
    assert not log.log_batch(_batch([_record(0), _record(1)]))
    assert log.dropped == 2
    assert log.log(_record(2))
    assert not log.log(_record(3))
    assert log.dropped == 3


def test_a_non_finite_value_is_an_error_not_a_line(tmp_path: Path) -> None:
    with PredictionLogger(tmp_path, compact_closed=False) as log:
        log.log(dataclasses.replace(_record(0), confidence=float("nan")))
        log.log(_record(1))
    assert (log.errors, log.written) == (1, 1)


@pytest.mark.parametrize(("fraction", "stored"), [(0.0, 0), (1.0, 40)])
def test_image_sampling_extremes(tmp_path: Path, fraction: float, stored: int) -> None:
    with PredictionLogger(tmp_path, sample_images=fraction, seed=0) as log:
        for i in range(40):
            log.log(_record(i))
    frame = read_predictions(tmp_path)
    assert frame["image_path"].notna().sum() == stored
    assert len(list(tmp_path.rglob("*.png"))) == stored


def test_a_reused_request_id_never_overwrites_a_logged_image(tmp_path: Path) -> None:
    """Clients choose X-Request-ID: two requests with the same id keep two images."""
    first, second = _record(0), _record(2)
    second = dataclasses.replace(second, request_id=first.request_id, index=first.index)
    with PredictionLogger(tmp_path, sample_images=1.0, seed=0) as log:
        log.log(first)
        log.log(second)
    frame = read_predictions(tmp_path)
    assert list(frame["request_id"]) == [first.request_id] * 2
    paths = list(frame["image_path"])
    assert len(set(paths)) == 2
    for path, record in zip(paths, (first, second), strict=True):
        with Image.open(path) as image:
            np.testing.assert_array_equal(np.asarray(image), record.image)


def test_image_sampling_keeps_about_the_fraction(tmp_path: Path) -> None:
    with PredictionLogger(tmp_path, sample_images=0.25, seed=0) as log:
        for i in range(400):
            log.log(_record(i))
    stored = read_predictions(tmp_path)["image_path"].notna().sum()
    assert 60 <= stored <= 140


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    with PredictionLogger(tmp_path) as log:
        log.log(_record(0, image=False))
        log.log(_record(1, image=False))
    part = next(tmp_path.rglob("*.jsonl"))
    with part.open("a") as handle:
        handle.write('{"request_id": "torn", "ind')
    frame = read_predictions(tmp_path)
    assert frame["request_id"].tolist() == ["req-0", "req-0"]


def test_each_logger_appends_to_its_own_file(tmp_path: Path) -> None:
    for _ in range(2):
        with PredictionLogger(tmp_path) as log:
            log.log(_record(0, image=False))
    assert len(list(tmp_path.rglob("*.jsonl"))) == 2
    assert len(read_predictions(tmp_path)) == 2


def test_a_missing_log_reads_as_empty(tmp_path: Path) -> None:
    frame = read_predictions(tmp_path / "nothing-yet")
    assert frame.empty
    assert {"request_id", "time", "label", "confidence"} <= set(frame.columns)


def test_partition_dir_is_utc() -> None:
    local = datetime(2026, 11, 23, 1, 30, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=-5))
    )
    assert partition_dir(Path("r"), local).as_posix() == "r/date=2026-11-23/hour=01"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_images": 1.5},
        {"sample_images": -0.1},
        {"flush_every": 0},
        {"queue_size": 0},
        {"flush_interval_s": 0},
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        PredictionLogger(tmp_path, **kwargs)


# ---------------------------------------------------------------- compaction


def _frames_equal(left: Any, right: Any) -> None:
    assert left.drop(columns=["embedding"]).equals(right.drop(columns=["embedding"]))
    assert [e.tolist() for e in left["embedding"]] == [e.tolist() for e in right["embedding"]]


def test_the_writer_compacts_the_hour_it_closed(tmp_path: Path) -> None:
    records = [_record(i, T0 + timedelta(seconds=i)) for i in range(4)]  # crosses 10:00
    with PredictionLogger(tmp_path, compact_closed=False) as log:
        for record in records:
            log.log(record)
    expected = read_predictions(tmp_path)
    for part in tmp_path.rglob("*.jsonl"):
        part.unlink()
    with PredictionLogger(tmp_path) as log:
        for record in records:
            log.log(record)
    assert log.compacted == 1
    closed = tmp_path / "date=2026-11-23" / "hour=09"
    assert [p.suffix for p in closed.glob("part-*")] == [".parquet"]
    open_hour = tmp_path / "date=2026-11-23" / "hour=10"
    assert [p.suffix for p in open_hour.glob("part-*")] == [".jsonl"]  # still being written
    compacted = read_predictions(tmp_path)
    # the second writer named its images itself; each is still found from Parquet
    assert all(Path(p).is_file() for p in compacted["image_path"])
    _frames_equal(compacted.drop(columns="image_path"), expected.drop(columns="image_path"))


def test_compact_takes_closed_parts_only(tmp_path: Path) -> None:
    with PredictionLogger(tmp_path, compact_closed=False) as log:
        for i in range(6):
            log.log(_record(i, T0 + timedelta(minutes=i), image=False))  # hours 09 and 10
    before = read_predictions(tmp_path)
    # 10:20: hour 09 ended 20 min ago, hour 10 has not ended
    done = compact(tmp_path, now=datetime(2026, 11, 23, 10, 20, tzinfo=UTC), grace=timedelta(0))
    assert (done.parts, done.rows) == (1, 1)
    assert len(list(tmp_path.rglob("*.parquet"))) == 1
    _frames_equal(read_predictions(tmp_path), before)
    # a recently modified part is left alone however old its hour
    later = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert compact(tmp_path, now=later).parts == 0
    (last,) = tmp_path.rglob("*.jsonl")
    an_hour_ago = time.time() - 3600
    os.utime(last, (an_hour_ago, an_hour_ago))
    assert compact(tmp_path, now=later).parts == 1
    assert not list(tmp_path.rglob("*.jsonl"))
    _frames_equal(read_predictions(tmp_path), before)
    window = read_predictions(tmp_path, since=T0 + timedelta(minutes=1), limit=2)
    assert window["request_id"].tolist() == before["request_id"].tolist()[-2:]


def test_a_crash_between_rename_and_delete_reads_each_row_once(tmp_path: Path) -> None:
    with PredictionLogger(tmp_path, compact_closed=False) as log:
        for i in range(3):
            log.log(_record(i, image=False))
    part = next(tmp_path.rglob("*.jsonl"))
    saved = part.read_bytes()
    compact_part(part)
    part.write_bytes(saved)  # as if the process died before deleting the JSON lines
    assert len(read_predictions(tmp_path)) == 3
    assert compact_part(part) == 3
    assert len(read_predictions(tmp_path)) == 3


def test_a_damaged_line_in_the_middle_loses_only_itself(tmp_path: Path) -> None:
    with PredictionLogger(tmp_path, compact_closed=False) as log:
        for i in range(4):
            log.log(_record(i, image=False))
    part = next(tmp_path.rglob("*.jsonl"))
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join([*lines[:2], "{not json\n", *lines[2:]]))
    assert read_predictions(tmp_path)["confidence"].tolist() == [0.5, 0.51, 0.52, 0.53]


def test_embedding_matrix_is_one_array(tmp_path: Path) -> None:
    with PredictionLogger(tmp_path) as log:
        for i in range(5):
            log.log(_record(i, image=False))
    matrix = embedding_matrix(read_table(tmp_path))
    assert matrix.shape == (5, 2)
    assert matrix.dtype == np.float32
    assert matrix[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_read_table_reads_only_the_asked_columns(tmp_path: Path) -> None:
    with PredictionLogger(tmp_path, compact_closed=False) as log:
        for i in range(4):
            log.log(_record(i, T0 + timedelta(seconds=i), image=False))  # hours 09 and 10
    compact(tmp_path, now=datetime(2026, 11, 23, 12, 0, tzinfo=UTC), grace=timedelta(0))
    table = read_table(tmp_path, columns=["confidence", "embedding"])
    assert table.column_names == ["time", "request_id", "index", "confidence", "embedding"]
    assert table["confidence"].to_pylist() == [0.5, 0.51, 0.52, 0.53]
    with pytest.raises(ValueError, match="no such columns"):
        read_table(tmp_path, columns=["confidance"])


def test_a_part_compacted_while_the_window_is_read_is_read_from_parquet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's compactor may replace a part between listing the folder and reading it."""
    import flywheel.monitoring.prediction_log.reader as prediction_log

    with PredictionLogger(tmp_path, compact_closed=False) as log:
        for i in range(3):
            log.log(_record(i, image=False))
    (folder,) = tmp_path.glob("date=*/hour=*")
    listed = prediction_log._readable_parts(folder)  # the JSON-lines part
    compact_part(listed[0])
    monkeypatch.setattr(prediction_log, "_readable_parts", lambda _: listed)
    assert read_table(tmp_path)["confidence"].to_pylist() == [0.5, 0.51, 0.52]


# ------------------------------------------------------------ the low-information flag


def _flagged_log(root: Path) -> list[bool]:
    """Four records over two hours, the odd ones flagged; returns the flags in time order."""
    flags = [i % 2 == 1 for i in range(4)]
    with PredictionLogger(root, compact_closed=False) as log:
        for i, flag in enumerate(flags):
            log.log(_record(i, T0 + timedelta(seconds=i), image=False, low_information=flag))
    return flags


def test_the_low_information_flag_round_trips_through_lines_and_parquet(tmp_path: Path) -> None:
    flags = _flagged_log(tmp_path)
    assert [line["low_information"] for line in _lines(tmp_path)] == flags
    assert read_predictions(tmp_path)["low_information"].tolist() == flags

    done = compact(tmp_path, now=datetime(2026, 11, 23, 12, 0, tzinfo=UTC), grace=timedelta(0))
    assert done.parts == 2
    assert not list(tmp_path.rglob("*.jsonl"))
    frame = read_predictions(tmp_path)
    assert frame["low_information"].dtype == bool
    assert frame["low_information"].tolist() == flags
    assert read_table(tmp_path, columns=["low_information"])["low_information"].to_pylist() == flags


def test_records_written_before_the_flag_read_as_not_flagged(tmp_path: Path) -> None:
    """Lines and Parquet parts without `low_information` (older logs) read as False, not null."""
    flags = _flagged_log(tmp_path)
    old_hour, new_hour = sorted(tmp_path.rglob("*.jsonl"))  # hours 09 (i = 0, 1) and 10 (2, 3)
    # Hour 09: one old-style line beside a current one in the same part.
    lines = [json.loads(line) for line in old_hour.open()]
    del lines[1]["low_information"]
    old_hour.write_text("".join(json.dumps(line) + "\n" for line in lines))
    # Hour 10: a Parquet part compacted before the column existed.
    table = read_jsonl(new_hour)
    write_parquet(table.drop_columns(["low_information"]), new_hour.with_suffix(".parquet"))
    new_hour.unlink()

    assert flags == [False, True, False, True]
    assert read_predictions(tmp_path)["low_information"].tolist() == [False, False, False, False]
    window = read_table(tmp_path, columns=["low_information"])
    assert window["low_information"].null_count == 0
    assert window["low_information"].to_pylist() == [False, False, False, False]
