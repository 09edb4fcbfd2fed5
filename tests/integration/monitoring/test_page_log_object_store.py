"""The page log in object storage: `PageLogger` puts whole objects into a real S3-compatible
server (moto on 127.0.0.1), `read_pages` reads them back with `s3://` paths, and a store
that refuses every put never blocks the caller."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from io import BytesIO

import pytest
from PIL import Image

from flywheel.monitoring.page_log import PageLogger, read_pages
from flywheel.storage import read_bytes
from tests.support.object_store import ObjectStore, object_store
from tests.unit.test_page_log import _page

__all__ = ["object_store"]  # the fixture, found by pytest under its name

WHEN = datetime(2026, 12, 1, 7, 30, tzinfo=UTC)


def test_pages_are_put_as_whole_objects_and_read_back_with_urls(
    object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    object_store.apply(monkeypatch)
    root = object_store.prefix("page-log")
    with PageLogger(root, flush_every=1) as log:
        assert log.log(_page("a", 2, WHEN))
        assert log.log(_page("b", 0, WHEN.replace(hour=8)))
    assert log.written == 2
    assert log.errors == 0
    keys = object_store.keys(root)
    parts = [k for k in keys if "/part-" in k]
    assert len(parts) == 2  # one object per flush and hour, never appended to
    assert all(k.endswith(".jsonl") for k in parts)
    assert sum(k.endswith(".png") for k in keys) == 4  # pages a and b, and two crops of a

    pages, regions = read_pages(root)
    assert list(pages["request_id"]) == ["a", "b"]
    assert list(pages["n_regions"]) == [2, 0]
    page_url = pages.iloc[0]["image_path"]
    assert page_url.startswith(f"{root}/date=2026-12-01/hour=07/images/")
    assert Image.open(BytesIO(read_bytes(page_url))).size == (40, 30)
    assert all(u.startswith(f"{root}/date=2026-12-01/hour=07/") for u in regions["crop_path"])
    assert Image.open(BytesIO(read_bytes(regions.iloc[1]["crop_path"]))).size == (32, 8)
    assert list(read_pages(root, since=WHEN.replace(hour=8))[0]["request_id"]) == ["b"]


def test_a_store_that_refuses_every_put_never_blocks_the_caller(
    object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    object_store.apply(monkeypatch)
    root = f"s3://no-such-bucket-{object_store.prefix().rsplit('-', 1)[1]}/pages"
    log = PageLogger(root, flush_every=1, queue_size=4)
    log.start()
    started = time.monotonic()
    accepted = [log.log(_page(f"p{i}", 1, WHEN)) for i in range(50)]
    assert time.monotonic() - started < 0.5  # every put fails in the writer thread
    log.close()
    assert accepted.count(False) == log.dropped > 0  # the bounded queue was full
    assert log.errors > 0  # each refused flush, and each record beyond the bound, counted
    assert log.written <= 4  # no more records than the queue's size wait for a put
