"""The page service's prediction log: one JSON line per page, its regions nested, with images.

The digits log (`flywheel.monitoring.prediction_log`) holds one image and one
class per line; a page holds any number of regions, each with a box, a
transcript and a crop, and two models answered it. So pages get a record type
of their own, written by the same machinery (`PageLogger` is a
`PredictionLogger`: a bounded queue, a background writer thread, hourly
Hive-style partitions, one part file per writer, the same flush policy) into
a log of their own (`page_predictions_dir`). Monitoring and curation of
pages read it with `read_pages`.

Layout under the root:

    <root>/date=YYYY-MM-DD/hour=HH/part-<host>-<pid>-<token>-<n>.jsonl
    <root>/date=YYYY-MM-DD/hour=HH/images/<host>-<pid>-<token>-<n>.png        (the page)
    <root>/date=YYYY-MM-DD/hour=HH/images/<host>-<pid>-<token>-<n>-r<i>.png   (region i's crop)

Schema of one line (`PAGE_FIELDS`; `REGION_FIELDS` per region):

* `request_id` (str), `time` (ISO 8601, UTC, microseconds);
* `detector_name`, `detector_version`, `recognizer_name`, `recognizer_version`
  (str): the registered versions that answered (each stage swaps on its own,
  so a page names both);
* `width`, `height` (int): the page as received, in pixels;
* `image_path` (str or null): the page as received (grey or RGB PNG), relative
  to the partition; null when not sampled (`serve.log.sample_images`);
* `detector_confidence` (float): the certainty of the detector's least certain
  grid cell, `max(p, 1 - p)` (`DetectionTask.decode`): low for a page with an
  ambiguous region (curation);
* `page_features` (object): summary features of the detector's input
  (`flywheel.monitoring.features.FEATURE_COLUMNS`): page-level drift;
* `detector_embedding` (list of float): the detector's page embedding;
* `regions` (list, highest detection score first, possibly empty), each:
  `index` (int), `box` (`[x0, y0, x1, y1]` page pixels, x1/y1 exclusive),
  `score` (float, detection), `latex` (str), `confidence` (float, the
  probability of the greedy CTC path), `crop_path` (str or null: the
  recogniser's input, a grey PNG of its input size, stored with the page),
  `crop_features` (object, the summary features of that input) and
  `embedding` (list of float, the recogniser's crop embedding).

The root may be a local folder or an object-store URL (`s3://bucket/prefix`,
`flywheel.storage`), as for the digits log, and both keep the layout above.
Locally a part is appended to and flushed; in object storage, which has no
append, each flush puts the images since the last one (page and crops, one
object each, all at once: concurrent puts, about one round trip) and then the
lines as one whole new `part-*.jsonl` object, so a part names only images that
are there; the writer thread does it all (serving never waits on the store). `read_pages`
returns `image_path`/`crop_path` as paths or as `s3://` URLs accordingly, which
every reader (curation and its picture, the page tasks, the page merge) reads
through `flywheel.storage`.

The parts stay JSON lines in both places, on purpose: the digits log's Parquet
(its compaction, and its object-store parts) is built on its own flat schema
(`TABLE_SCHEMA`), while a page line nests a variable list of regions, each with
its features and embedding; the page log is small (a page is a heavy request:
a few per second, not thousands); and its readers take every line whole.
`compact` is for the digits log; do not point it here.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from PIL import Image

from flywheel.monitoring.prediction_log.schema import (
    IMAGES_DIR,
    as_utc,
    partition_dir,
    partitions,
)
from flywheel.monitoring.prediction_log.writer import PredictionLogger, _ObjectParts, _storable
from flywheel.storage import (
    Location,
    as_location,
    glob,
    join,
    read_bytes,
    state_url,
    write_bytes,
    write_files,
)

if TYPE_CHECKING:
    from flywheel.config import Params
    from flywheel.monitoring.prediction_log.writer import _Parts

logger = logging.getLogger(__name__)

MAX_PENDING_IMAGE_BYTES = 256 * 2**20
"""Encoded images an object-store writer keeps for its next flush at most (`PageLogger`)."""

PAGE_FIELDS: tuple[str, ...] = (
    "request_id",
    "time",
    "detector_name",
    "detector_version",
    "recognizer_name",
    "recognizer_version",
    "width",
    "height",
    "image_path",
    "detector_confidence",
    "page_features",
    "detector_embedding",
    "regions",
)
"""Keys of each JSON line (the module doc says what each holds)."""
REGION_FIELDS: tuple[str, ...] = (
    "index",
    "box",
    "score",
    "latex",
    "confidence",
    "crop_path",
    "crop_features",
    "embedding",
)
"""Keys of each region of a line."""


@dataclass(frozen=True)
class RegionRecord:
    """One region of a served page (`REGION_FIELDS`; `crop` is stored as `crop_path`)."""

    index: int
    box: tuple[int, int, int, int]
    score: float
    latex: str
    confidence: float
    crop_features: Mapping[str, float]
    embedding: Sequence[float]
    crop: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class PageRecord:
    """One served page (`PAGE_FIELDS`; `image` is stored as `image_path`).

    Attributes:
        image: the page as received, uint8 grey `(H, W)` or RGB `(H, W, 3)`
            (uint16 grey kept 16-bit), for curation and labelling.
    """

    request_id: str
    time: datetime
    detector_name: str
    detector_version: str
    recognizer_name: str
    recognizer_version: str
    width: int
    height: int
    detector_confidence: float
    page_features: Mapping[str, float]
    detector_embedding: Sequence[float]
    regions: Sequence[RegionRecord]
    image: np.ndarray | None = field(default=None, repr=False, compare=False)


def page_predictions_dir(
    params: Params, detector: str, recognizer: str, base: Path | None = None
) -> Location:
    """The page service's log: `serve.log.dir` when set, else under the state URL.

    A relative `serve.log.dir` is relative to `base` (the params file's folder),
    else to the working directory; the default is
    `<state URL>/predictions/pages=<detector>+<recognizer>`, beside the digits
    models' `model=<name>` logs and never shared with them.

    >>> from flywheel.config import Params
    >>> page_predictions_dir(Params(), "det", "rec", Path("/p")).as_posix().split("/")[-2:]
    ['predictions', 'pages=det+rec']
    """
    configured = params.serve.log.dir
    if configured is None:
        name = f"pages={quote(detector, safe='')}+{quote(recognizer, safe='')}"
        return join(state_url(params.state.url), "predictions", name)
    if configured.is_absolute():
        return configured
    return (base if base is not None else Path.cwd()) / configured


class PageLogger(PredictionLogger):
    """Appends `PageRecord`s to the page log from a background thread (never blocks serving).

    Arguments as `PredictionLogger`'s: `root` a local folder or an object-store
    URL (module doc); `sample_images` samples pages (a sampled page's crops are
    stored with it). Parts are never compacted.
    """

    def __init__(self, root: Location, **options: Any) -> None:
        super().__init__(root, compact_closed=False, **options)

    def log(self, record: PageRecord) -> bool:  # type: ignore[override]
        """Queue a page for writing; False when it was dropped (queue full, or closed)."""
        return super().log(record)  # type: ignore[arg-type]

    def _parts(self) -> _Parts:
        if isinstance(self.root, Path):
            return super()._parts()
        return _JsonObjectParts(self._next_name, self.queue_size)

    def _write(self, record: Any, parts: _Parts) -> None:
        page: PageRecord = record
        folder = partition_dir(self.root, page.time)
        parts.open(folder)
        image_path = None
        crop_paths: list[str | None] = [None] * len(page.regions)
        if page.image is not None and self._random.random() < self.sample_images:
            self._images_saved += 1
            stem = f"{IMAGES_DIR}/{self._token}-{self._images_saved}"
            image_path = f"{stem}.png"
            images = {image_path: page.image}
            for i, region in enumerate(page.regions):
                if region.crop is not None:
                    crop_paths[i] = f"{stem}-r{region.index}.png"
                    images[str(crop_paths[i])] = region.crop
            for relative, array in images.items():
                if isinstance(parts, _JsonObjectParts):  # put with the next part, at once
                    parts.add_image(join(folder, relative), _png(array))
                else:
                    assert isinstance(folder, Path)  # made once per part by `_AppendedParts`
                    Image.fromarray(_storable(array)).save(folder / relative)
        line = {
            "request_id": page.request_id,
            "time": as_utc(page.time).isoformat(timespec="microseconds"),
            "detector_name": page.detector_name,
            "detector_version": page.detector_version,
            "recognizer_name": page.recognizer_name,
            "recognizer_version": page.recognizer_version,
            "width": int(page.width),
            "height": int(page.height),
            "image_path": image_path,
            "detector_confidence": float(page.detector_confidence),
            "page_features": _floats(page.page_features),
            "detector_embedding": [float(v) for v in page.detector_embedding],
            "regions": [
                {
                    "index": int(r.index),
                    "box": [int(v) for v in r.box],
                    "score": float(r.score),
                    "latex": r.latex,
                    "confidence": float(r.confidence),
                    "crop_path": path,
                    "crop_features": _floats(r.crop_features),
                    "embedding": [float(v) for v in r.embedding],
                }
                for r, path in zip(page.regions, crop_paths, strict=True)
            ],
        }
        parts.write(folder, json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n")
        self.written += 1


class _JsonObjectParts(_ObjectParts):
    """A page log in object storage: each flush puts the images since the last one, all at
    once (`write_files`), then the lines as one JSON-lines object per partition (the digits'
    `_ObjectParts` puts Parquet of the digits' schema). A part is put only after the images
    it names; what a failed flush could not put is tried again at the next one, within
    `MAX_PENDING_IMAGE_BYTES`."""

    def __init__(self, next_name: Callable[[str], str], max_pending: int) -> None:
        super().__init__(next_name, max_pending)
        self._images: dict[Location, bytes] = {}
        self._image_bytes = 0

    def add_image(self, location: Location, data: bytes) -> None:
        """Keep an encoded image for the next flush.

        Raises:
            OSError: the records or images waiting already fill their bound (the queue's
                size, `MAX_PENDING_IMAGE_BYTES`): puts keep failing, so memory stays
                bounded; the record is dropped and counted.
        """
        waiting = sum(map(len, self._lines.values()))
        if waiting >= self._max_pending or self._image_bytes + len(data) > MAX_PENDING_IMAGE_BYTES:
            raise OSError(
                f"the object store took no part for {waiting} records and no image for "
                f"{self._image_bytes} bytes; dropping"
            )
        self._images[location] = data
        self._image_bytes += len(data)

    def flush(self) -> None:
        if self._images:
            write_files(self._images)
            self._images, self._image_bytes = {}, 0
        for folder, lines in list(self._lines.items()):
            if lines:
                write_bytes(join(folder, self._next_name(".jsonl")), "".join(lines).encode())
            del self._lines[folder]  # only once written: a failed put is retried next flush

    def close(self) -> None:
        super().close()
        if self._images:
            logger.error("page log: %d images never reached the object store", len(self._images))


def _png(image: np.ndarray) -> bytes:
    """An image as a lossless PNG (level 1: the writer's largest cost, 40 % less CPU)."""
    encoded = io.BytesIO()
    Image.fromarray(_storable(image)).save(encoded, format="PNG", compress_level=1)
    return encoded.getvalue()


def _floats(values: Mapping[str, float]) -> dict[str, float]:
    return {str(k): float(v) for k, v in values.items()}


def read_pages(
    root: Location, since: datetime | None = None, until: datetime | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The logged pages with `since <= time < until` and their regions, oldest first.

    Returns:
        `pages`: one row per page, `PAGE_FIELDS` but `regions`, plus `n_regions`;
        `image_path` absolute, a path or a URL as `root` is (None where not
        stored). `regions`: one row per region, `request_id` and `time` of its
        page then `REGION_FIELDS`; `crop_path` likewise. A torn last line (a
        crash mid-write) is skipped.

    Raises:
        OSError: the log cannot be listed or a part read (`StorageError` for a store).
    """
    start = None if since is None else as_utc(since)
    end = None if until is None else as_utc(until)
    pages: list[dict[str, Any]] = []
    regions: list[dict[str, Any]] = []
    for folder in partitions(as_location(root), start, end):
        for part in glob(folder, "part-*.jsonl"):
            for text in read_bytes(part).decode("utf-8", errors="replace").splitlines():
                try:
                    line = json.loads(text)
                except json.JSONDecodeError:
                    continue  # a torn line
                when = datetime.fromisoformat(line["time"])
                if (start is not None and when < start) or (end is not None and when >= end):
                    continue
                line["time"] = when
                found = line.pop("regions")
                line["n_regions"] = len(found)
                if line["image_path"] is not None:
                    line["image_path"] = str(join(folder, line["image_path"]))
                pages.append(line)
                for region in found:
                    if region["crop_path"] is not None:
                        region["crop_path"] = str(join(folder, region["crop_path"]))
                    regions.append({"request_id": line["request_id"], "time": when, **region})
    page_columns = [f for f in PAGE_FIELDS if f != "regions"] + ["n_regions"]
    region_columns = ["request_id", "time", *REGION_FIELDS]
    frame = pd.DataFrame(pages, columns=page_columns).sort_values("time", kind="stable")
    return frame.reset_index(drop=True), pd.DataFrame(regions, columns=region_columns)


__all__ = [
    "PAGE_FIELDS",
    "REGION_FIELDS",
    "PageLogger",
    "PageRecord",
    "RegionRecord",
    "page_predictions_dir",
    "read_pages",
]
