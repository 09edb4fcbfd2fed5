"""The prediction log in a local folder and in an S3-compatible store, written and read back.

The same N records (10 classes, a 64-dimensional embedding, 8 summary features,
no images) go through `PredictionLogger` into a temporary folder (JSON lines,
appended; compaction off, as within the hour it is written) and into a bucket
of moto's S3 server on 127.0.0.1 (one whole Parquet object per flush), then
`read_table` reads each back. Times are wall-clock on this machine, the ratio
S3 / local is what to compare across machines.

    .venv/bin/python benchmarks/state_store.py [N]
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

import numpy as np

from flywheel.monitoring.dashboards import free_port
from flywheel.monitoring.prediction_log import PredictionLogger, PredictionRecord, read_table

T0 = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)


def records(n: int) -> list[PredictionRecord]:
    rng = np.random.default_rng(0)
    return [
        PredictionRecord(
            request_id=f"r{i}",
            index=0,
            time=T0 + timedelta(milliseconds=i),
            model_name="m",
            model_version="1",
            label="3",
            confidence=0.9,
            probabilities={str(k): 0.1 for k in range(10)},
            features={f"f{k}": float(k) for k in range(8)},
            embedding=rng.normal(size=64).tolist(),
        )
        for i in range(n)
    ]


def measure(root: str, batch: list[PredictionRecord]) -> tuple[float, float]:
    """Seconds to write `batch` (until the logger is closed) and to read it back."""
    started = time.perf_counter()
    logger = PredictionLogger(root, flush_every=1000, queue_size=len(batch), compact_closed=False)
    logger.start()
    for record in batch:
        logger.log(record)
    logger.close(timeout=600)  # everything queued is written before it returns
    written = time.perf_counter() - started
    assert logger.written == len(batch), logger.written
    assert not logger.errors, logger.errors
    started = time.perf_counter()
    rows = read_table(root).num_rows
    assert rows == len(batch), rows
    return written, time.perf_counter() - started


def main(n: int) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="benchmark",
        AWS_SECRET_ACCESS_KEY="benchmark",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        boto3.client("s3").create_bucket(Bucket="benchmark-state")
        batch = records(n)
        with tempfile.TemporaryDirectory() as folder:
            local = measure(f"{folder}/log", batch)
        s3 = measure("s3://benchmark-state/log", batch)
    finally:
        server.stop()
    print(f"{n} records   write s   read s")
    print(f"local        {local[0]:7.2f}  {local[1]:7.2f}")
    print(f"s3 (moto)    {s3[0]:7.2f}  {s3[1]:7.2f}")
    print(f"s3 / local   {s3[0] / local[0]:7.2f}  {s3[1] / local[1]:7.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
