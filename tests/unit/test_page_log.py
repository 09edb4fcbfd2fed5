"""The page service's prediction log: a page with its regions written and read back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from flywheel.monitoring.page_log import (
    PAGE_FIELDS,
    PageLogger,
    PageRecord,
    RegionRecord,
    read_pages,
)


def _page(request_id: str, regions: int, when: datetime) -> PageRecord:
    return PageRecord(
        request_id=request_id,
        time=when,
        detector_name="det",
        detector_version="1",
        recognizer_name="rec",
        recognizer_version="2",
        width=40,
        height=30,
        detector_confidence=0.9,
        page_features={"mean": 0.5},
        detector_embedding=[0.1, 0.2],
        regions=[
            RegionRecord(
                index=i,
                box=(i, 1, i + 5, 9),
                score=0.8,
                latex="x",
                confidence=0.7,
                crop_features={"mean": 0.4},
                embedding=[1.0, 2.0, 3.0],
                crop=np.full((8, 32), 200, np.uint8),
            )
            for i in range(regions)
        ],
        image=np.zeros((30, 40), np.uint8),
    )


def test_pages_and_their_regions_are_written_and_read_back(tmp_path: Path) -> None:
    when = datetime(2026, 12, 1, 7, 30, tzinfo=UTC)
    with PageLogger(tmp_path, flush_every=1) as log:
        assert log.log(_page("a", 2, when))
        assert log.log(_page("b", 0, when))  # a page without regions is a page too
    pages, regions = read_pages(tmp_path)
    assert list(pages["request_id"]) == ["a", "b"]
    assert list(pages["n_regions"]) == [2, 0]
    assert set(PAGE_FIELDS) - {"regions"} <= set(pages.columns)
    assert list(regions["index"]) == [0, 1]
    assert list(regions.iloc[1]["box"]) == [1, 1, 6, 9]
    assert Image.open(pages.iloc[0]["image_path"]).size == (40, 30)
    assert Image.open(regions.iloc[0]["crop_path"]).size == (32, 8)
    assert read_pages(tmp_path, since=datetime(2026, 12, 1, 8, tzinfo=UTC))[0].empty
