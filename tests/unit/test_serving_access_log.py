"""BentoML's access log written by a thread of its own (`serving.access_log`)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from serving.access_log import offload


class _Tag(logging.Filter):
    """Stands for BentoML's `TraceRecordFilter`: sets a field where the record is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.tag = "[tagged]"
        return True


@pytest.fixture
def access_logger() -> Iterator[logging.Logger]:
    parent = logging.getLogger("test_access_parent")
    logger = logging.getLogger("test_access_parent.access")
    saved = (parent.handlers[:], parent.propagate, logger.handlers[:], logger.propagate)
    yield logger
    parent.handlers, parent.propagate, logger.handlers, logger.propagate = saved


def test_lines_keep_their_format_filters_and_order(access_logger: logging.Logger) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(tag)s %(message)s"))
    handler.addFilter(_Tag())
    parent = access_logger.parent
    assert parent is not None
    parent.handlers, parent.propagate = [handler], False
    parent.setLevel(logging.INFO)

    writer = offload(access_logger.name)
    assert writer is not None
    for i in range(3):
        access_logger.info("request %d (status=%d)", i, 200)
    writer.stop()  # writes what is queued
    expected = [f"[tagged] request {i} (status=200)" for i in range(3)]
    assert stream.getvalue().splitlines() == expected


def test_a_logger_without_one_stream_handler_is_left_alone(access_logger: logging.Logger) -> None:
    parent = access_logger.parent
    assert parent is not None
    parent.handlers, parent.propagate = [logging.NullHandler()], False
    assert offload(access_logger.name) is None
    assert access_logger.propagate
