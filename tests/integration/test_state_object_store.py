"""Shared state in object storage: the prediction log, ground truth, queue and curation on S3.

Against a real S3-compatible server (moto in server mode on 127.0.0.1,
`tests.support.object_store`), reached the way a pod reaches it: the state URL
and the `AWS_*` environment, nothing else. What is written is checked with
boto3 (the bucket's own listing), what is read back through the library.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flywheel.config import CurateConfig, DataPlan, Params, Strata
from flywheel.curation import curate_batch
from flywheel.data.ground_truth import ground_truth_dir, read_ground_truth, write_ground_truth
from flywheel.data.manifest import load_manifest, sha256_file
from flywheel.data.versioning import ensure_dataset
from flywheel.labeling import QueueError, choice_result, queue_batches, read_batch
from flywheel.labeling.merge import production_image_id, update_dataset
from flywheel.monitoring.prediction_log import (
    PredictionLogger,
    PredictionRecord,
    compact,
    predictions_dir,
    read_predictions,
)
from flywheel.storage import StorageError, read_bytes, write_bytes
from flywheel.workflows.loop import curate_samples, label_samples
from tests.support.labeling import random_images, serve_collected_batch, write_prediction_log
from tests.support.object_store import ObjectStore, object_store
from tests.support.project import make_git_dvc_repo

__all__ = ["object_store"]  # the fixture, found by pytest under its name

CLASSES = ("0", "1", "2")
T0 = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)


@pytest.fixture
def store(object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """The store's environment in this process; the local state folder out of the way."""
    object_store.apply(monkeypatch)
    monkeypatch.delenv("FLYWHEEL_STATE_URL", raising=False)
    return object_store


def _probs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(len(CLASSES)), size=n)  # (N, K)


def test_prediction_log_goes_to_the_bucket_as_whole_parquet_objects(store: ObjectStore) -> None:
    root = store.prefix("log")
    images = random_images(12)
    written = write_prediction_log(root, images, _probs(12), CLASSES, start=T0)

    keys = store.keys(root)
    parts = [k for k in keys if "/part-" in k]
    assert parts
    assert all(k.endswith(".parquet") for k in parts)  # never a .jsonl appended to
    assert all("/date=2026-11-23/hour=07/" in k for k in keys)
    assert sum("/images/" in k for k in keys) == 12
    assert len(written) == 12
    assert written["request_id"].tolist() == [f"req-{i}" for i in range(12)]
    # The stored image is the served one, at its URL.
    first = written.iloc[0]
    assert first["image_path"].startswith(f"{root}/date=2026-11-23/hour=07/images/")
    with Image.open(io.BytesIO(read_bytes(first["image_path"]))) as image:
        assert np.array_equal(np.asarray(image), images[0])


def test_compaction_in_the_bucket_rewrites_closed_json_lines(
    store: ObjectStore, tmp_path: Path
) -> None:
    """A JSON-lines part (a local writer's, uploaded) is compacted in place: Parquet put, JSON
    deleted, every row still read once."""
    local = tmp_path / "log"
    with PredictionLogger(local, sample_images=0.0, compact_closed=False) as logger:
        for i in range(3):
            logger.log(_record(i))
    [jsonl] = local.glob("date=*/hour=*/part-*.jsonl")
    root = store.prefix("compact")
    write_bytes(f"{root}/date=2026-11-23/hour=07/{jsonl.name}", jsonl.read_bytes())
    assert len(read_predictions(root)) == 3

    done = compact(root, grace=timedelta(0), now=T0 + timedelta(hours=3))

    assert (done.parts, done.rows) == (1, 3)
    keys = store.keys(root)
    assert [k.rsplit("/", 1)[1] for k in keys] == [jsonl.with_suffix(".parquet").name]
    assert read_predictions(root)["request_id"].tolist() == ["r-0", "r-1", "r-2"]


def _record(i: int) -> PredictionRecord:
    return PredictionRecord(
        request_id=f"r-{i}",
        index=0,
        time=T0 + timedelta(seconds=i),
        model_name="m",
        model_version="1",
        label="0",
        confidence=0.9,
        probabilities={"0": 0.9, "1": 0.1},
        features={"brightness": 0.5},
        embedding=[0.1, 0.2],
    )


def test_ground_truth_written_and_read_in_the_bucket(store: ObjectStore) -> None:
    state = store.prefix("state")
    rows = pd.DataFrame(
        {"request_id": ["a", "b"], "index": [0, 0], "label": ["1", "2"], "origin": "label-studio"}
    )
    file = write_ground_truth(rows, ground_truth_dir(state))

    assert isinstance(file, str)
    assert file.startswith(f"{state}/ground_truth/")
    assert read_ground_truth(ground_truth_dir(state))["label"].tolist() == ["1", "2"]


def test_curation_reads_the_log_and_writes_the_queue_in_the_bucket(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = store.prefix("state")
    monkeypatch.setenv("FLYWHEEL_STATE_URL", state)
    params = Params(
        data=DataPlan(classes=CLASSES),
        curate=CurateConfig(budget=5, strategy="margin", diversity="none"),
    )
    root = predictions_dir(params)
    assert root == f"{state}/predictions/model=flywheel-digits"
    write_prediction_log(root, random_images(20), _probs(20), CLASSES, start=T0)

    first = curate_batch(params, progress=False)

    assert isinstance(first.queue_file, str)
    assert first.queue_file.startswith(f"{state}/labeling/queue/")
    tasks = read_batch(first.queue_file)
    assert len(tasks) == 5
    for task in tasks:  # Label Studio reads them from the bucket (a cloud storage), not local files
        assert task["data"]["image"].startswith(f"{root}/")
        assert task["data"]["image"] == task["data"]["image_path"]
    assert any(k.endswith("/labeling/queue/label_config.xml") for k in store.keys(state))

    second = curate_batch(params, progress=False)  # what is queued in the bucket is skipped
    assert second.excluded == 5
    assert len(queue_batches(f"{state}/labeling/queue")) == 2


def test_a_missing_batch_in_the_bucket_is_named(store: ObjectStore) -> None:
    queue = store.prefix("queue")
    with pytest.raises(QueueError, match=r"no queue batch 'nope' in s3://"):
        queue_batches(queue, "nope")


def test_a_url_without_a_driver_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="nosuch://bucket/state"):
        read_bytes("nosuch://bucket/state/x.json")


def test_a_store_that_refuses_writes_costs_records_not_the_writer(store: ObjectStore) -> None:
    """A bucket that does not exist: every put fails; the failures are counted and logged, the
    writer thread lives on and closes, and the logger's memory stays bounded."""
    logger = PredictionLogger(
        "s3://no-such-bucket-flywheel/log", sample_images=0.0, flush_every=1, queue_size=4
    )
    with logger:
        for i in range(10):
            logger.log(_record(i))
        deadline = time.monotonic() + 30
        while logger.errors < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert logger._thread is not None
        assert logger._thread.is_alive()
    assert logger.errors >= 5
    assert logger.written + logger.dropped <= 10


def test_the_loop_steps_curate_and_label_through_the_bucket(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What the flywheel pipeline's curate and label steps do, with only the state URL: the
    queue goes to the bucket (and the step's output), people's export is read from the
    bucket, and the labels land in the bucket's ground truth."""
    state = store.prefix("loop")
    monkeypatch.setenv("FLYWHEEL_STATE_URL", state)
    params = Params(
        data=DataPlan(classes=CLASSES),
        curate=CurateConfig(budget=4, strategy="margin", diversity="none"),
    )
    write_prediction_log(predictions_dir(params), random_images(12), _probs(12), CLASSES, start=T0)

    assert curate_samples(params, queue_out=tmp_path / "queue") == 4

    [batch] = (tmp_path / "queue").glob("*-margin-*.json")
    assert any(k.endswith(f"/labeling/queue/{batch.name}") for k in store.keys(state))
    tasks = json.loads(batch.read_text())
    export = [
        {
            **task,
            "id": i,
            "annotations": [{"id": i, "result": [choice_result("1", "label", "image")]}],
        }
        for i, task in enumerate(tasks)
    ]
    write_bytes(f"{state}/labeling/exports/people.json", json.dumps(export).encode())

    assert label_samples(params, tmp_path / "queue", labels_out=tmp_path / "labels") == 4

    truth = read_ground_truth(f"{state}/ground_truth")
    assert len(truth) == 4
    assert set(truth["origin"]) == {"label-studio"}
    assert set(truth["label"]) == {"1"}
    assert (tmp_path / "labels" / "people.json").is_file()  # the step's output keeps the export

    # Asynchronous labelling through the bucket: counted, collected, then settled by a merge.
    from flywheel.labeling.sync import Completion
    from flywheel.workflows.label_sync import collect_labels, count_completed, settle_labels

    assert count_completed(params) == Completion(batches=1, outstanding=4, completed=4, needed=1)
    assert collect_labels(params, labels_out=tmp_path / "collected").ready
    collected = pd.read_parquet(tmp_path / "collected" / "labels.parquet")
    assert settle_labels(params, collected, "v2") is not None
    assert any("/labeling/merged/" in k for k in store.keys(state))
    assert count_completed(params) == Completion(0, 0, 0, 1)


@pytest.mark.slow  # DVC and GX: a few seconds each
def test_labelled_traffic_in_the_bucket_becomes_a_new_data_version(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`update_dataset` (`flywheel data merge`, the pipeline's update step) with the log and the
    labels in the bucket: the images are read from there into a new DVC version."""
    plan = DataPlan(
        seed=11,
        classes=("0", "1", "2", "3"),
        image_size=16,
        strata=Strata(style=("handwritten", "printed"), noise=("clean", "shadow")),
        per_stratum={"train": 8, "val": 4, "test": 4},
        generator="flywheel.demo.collect:collect_dataset",
    )
    state = store.prefix("merge")
    monkeypatch.setenv("FLYWHEEL_STATE_URL", state)
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    repo = make_git_dvc_repo(tmp_path / "repo", remote=tmp_path / "remote")
    ensure_dataset(plan, repo)
    params = Params(data=plan)
    truth = serve_collected_batch(
        plan, 12, predictions_dir(params), ground_truth_dir(state), seed=3, work_dir=tmp_path
    )
    labels = truth[["request_id", "index", "label"]].iloc[:8].assign(origin="oracle")
    write_ground_truth(labels, ground_truth_dir(state))

    update = update_dataset(params, repo, push=False)

    assert update.changed
    added = update.merge.added
    assert len(added) == 8
    log = read_predictions(predictions_dir(params))
    stored = {
        production_image_id(r, i): path
        for r, i, path in zip(log["request_id"], log["index"], log["image_path"], strict=True)
    }
    dataset = repo / "data" / plan.name
    merged = load_manifest(dataset).query("source == 'production'")
    assert len(merged) == 8
    for row in merged.itertuples():  # the bytes served and stored in the bucket, versioned
        assert stored[row.image_id].startswith(f"{state}/predictions/model=")
        assert hashlib.sha256(read_bytes(stored[row.image_id])).hexdigest() == row.sha256
        assert sha256_file(dataset / row.path) == row.sha256
    assert not (tmp_path / "home" / "ground_truth").exists()  # nothing local
