"""The composed page service of benchmarks/page_serving.py: what its table does not show.

The benchmark checks the composed service's answers against the single
service's on every page it sends; these check the declaration (the
recogniser a dependent BentoML service with its own workers) and the retry of
a call whose connection BentoML's client closed under it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import numpy as np
import pytest

from benchmarks.variants.composed_pages import (
    CALL_RETRIES,
    ComposedPageReader,
    CropReader,
)


class FlakyReader:
    """A recogniser service whose connection is closed under the first `failures` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def read(self, page: np.ndarray, boxes: np.ndarray) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.failures:
            raise aiohttp.ServerDisconnectedError()
        return {"boxes": boxes.shape[0], "reader_ms": 1.0}


def _reader(remote: FlakyReader) -> ComposedPageReader:
    page_reader = object.__new__(ComposedPageReader)  # no params, no models: only the call
    page_reader.__dict__["reader"] = remote  # ahead of the class's `bentoml.depends`
    return page_reader


def test_the_recogniser_is_a_dependent_service_with_workers_of_its_own() -> None:
    dependency = ComposedPageReader.__dict__["reader"]
    assert dependency.on is CropReader
    assert CropReader.name == "flywheel-page-recognizer"
    assert CropReader.config["workers"] == 1  # $FLYWHEEL_RECOGNIZER_WORKERS unset


@pytest.mark.parametrize("failures", [0, 1, CALL_RETRIES])
def test_a_call_whose_connection_closed_is_sent_again(failures: int) -> None:
    remote = FlakyReader(failures)
    boxes = np.zeros((3, 4), np.int64)
    answer = asyncio.run(_reader(remote)._read_remote(np.zeros((8, 8), np.uint8), boxes))
    assert answer == {"boxes": 3, "reader_ms": 1.0}
    assert remote.calls == failures + 1


def test_a_recogniser_that_stays_unreachable_fails_the_page() -> None:
    remote = FlakyReader(CALL_RETRIES + 1)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        asyncio.run(_reader(remote)._read_remote(np.zeros((8, 8), np.uint8), np.zeros((0, 4))))
    assert remote.calls == CALL_RETRIES + 1
