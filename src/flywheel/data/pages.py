"""Formula-page datasets: the on-disk layout, its writers and its readers.

A page dataset is what the page plan (`data.pages`) asks for: grey pages of
several expressions, each expression a box with its LaTeX transcript. The
detector reads the boxes, the recogniser reads the crops. **This layout is a
contract**: the detector and recogniser tasks are written against it, so a
change here is a change to theirs.

```
<root>/<name>/                      e.g. data-pages/pages/ (tracked by data-pages.dvc)
  manifest.csv                      one row per page (PAGE_COLUMNS)
  images/<split>/<image_id>.png     the pages: 8-bit grey ("L"), image_size × image_size
  annotations.json                  COCO: every box of every page
  labels/<image_id>.txt             YOLO: one line per box, `0 cx cy w h`, normalised to [0, 1]
  crops.csv                         one row per box: the recognition dataset (CROP_COLUMNS)
  crops/<split>/<crop_id>.png       the box cut out of its page, `crop_padding` px around it
```

* `manifest.csv` columns: `image_id` (unique), `path` (relative to the dataset
  folder), `split` (train | val | test, or holdout:
  merged production pages only, `flywheel.labeling.page_merge`), the strata `level`, `writing`,
  `noise`, `sha256` of the PNG bytes, `width`, `height`, `n_boxes`, and
  `glyphs`: the source glyph ids drawn on the page, space-separated and
  sorted (`sklearn_digits:<row>`, `writer:<k>`, `mathtext:<fontset>`); no glyph
  id may appear in two splits.
* `annotations.json` is COCO object detection: `images` (`id` an integer,
  `file_name` = the manifest's `path`, `width`, `height`, and `name` = the
  manifest's `image_id`), `annotations` (`id`, `image_id` = the image's
  integer id, `category_id` 1, `bbox` `[x, y, w, h]` in pixels, integers,
  top-left origin, tight around the expression's ink, `area` = w·h,
  `iscrowd` 0, `latex` the transcript, `region` its 0-based index on the
  page, `crop_id`), `categories` = `[{"id": 1, "name": "formula"}]`.
  Annotations are in page order, then region order.
* `labels/<image_id>.txt` holds the same boxes, in region order, as YOLO lines
  with six decimals; a page with no box has an empty file.
* `crops.csv` columns: `crop_id` (`<image_id>-r<region:02d>`), `path`,
  `page_id`, `region`, `split`, `latex`, the strata, `width`, `height`,
  `sha256`.

Readers: `load_page_manifest`, `load_boxes` (COCO boxes per image_id),
`load_crops`. Writers: `save_page_manifest`, `write_annotations`,
`write_yolo_labels`, `crop_regions` (the recognition dataset from the
ground-truth boxes: the collector calls it, and so can anyone who labelled
real pages in this layout) with `crop_box`, the one definition of a crop.
`tokenize` is the one way a transcript is split into vocabulary tokens.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from flywheel.config import PRODUCTION_SOURCE
from flywheel.data.files import IMAGES_DIR, encode_png
from flywheel.data.manifest import MANIFEST_NAME, ManifestError

ANNOTATIONS_NAME = "annotations.json"
LABELS_DIR = "labels"
CROPS_NAME = "crops.csv"
CROPS_DIR = "crops"
PAGE_ENTRIES: frozenset[str] = frozenset(
    {MANIFEST_NAME, IMAGES_DIR, ANNOTATIONS_NAME, LABELS_DIR, CROPS_NAME, CROPS_DIR}
)
"""Everything a page dataset folder holds (and all that the collector may replace)."""

FORMULA_CATEGORY: dict[str, Any] = {"id": 1, "name": "formula"}
"""The one COCO category; YOLO class 0."""

STRATA_COLUMNS: tuple[str, ...] = ("level", "writing", "noise")


def is_production_page(ids: pd.Series) -> np.ndarray:
    """Which page (or crop `page_id`) ids name a merged production page, `production-…`
    (`flywheel.labeling.merge.production_image_id`), as a boolean array.

    >>> is_production_page(pd.Series(["train-high-00001", "production-page-3-0"])).tolist()
    [False, True]
    """
    return ids.astype(str).str.startswith(f"{PRODUCTION_SOURCE}-").to_numpy()


PAGE_COLUMNS: dict[str, str] = {
    "image_id": "str",
    "path": "str",
    "split": "str",
    "level": "str",
    "writing": "str",
    "noise": "str",
    "sha256": "str",
    "width": "int64",
    "height": "int64",
    "n_boxes": "int64",
    "glyphs": "str",
}
"""Page manifest column -> pandas dtype, in file order."""

CROP_COLUMNS: dict[str, str] = {
    "crop_id": "str",
    "path": "str",
    "page_id": "str",
    "region": "int64",
    "split": "str",
    "latex": "str",
    "level": "str",
    "writing": "str",
    "noise": "str",
    "width": "int64",
    "height": "int64",
    "sha256": "str",
}
"""Crops manifest column -> pandas dtype, in file order."""

_TOKEN = re.compile(r"\\[A-Za-z]+|\S")


class PageDataError(ManifestError):
    """A page dataset file is missing or does not follow the layout; the message names it."""


@dataclass(frozen=True)
class Region:
    """One ground-truth expression on a page: its box (pixels, top-left origin) and transcript."""

    image_id: str
    region: int
    x: int
    y: int
    w: int
    h: int
    latex: str

    @property
    def crop_id(self) -> str:
        """`<image_id>-r<region:02d>`: the crop's id in `crops.csv`."""
        return crop_id(self.image_id, self.region)

    def xyxy(self) -> tuple[int, int, int, int]:
        """The box as (x0, y0, x1, y1), x1/y1 exclusive."""
        return self.x, self.y, self.x + self.w, self.y + self.h


def crop_id(image_id: str, region: int) -> str:
    """The id of a page's region crop.

    >>> crop_id("train-high-printed-clean-00003", 2)
    'train-high-printed-clean-00003-r02'
    """
    return f"{image_id}-r{region:02d}"


def tokenize(latex: str) -> list[str]:
    """Split a transcript into tokens: a backslash command or one non-space character.

    >>> tokenize(r"\\frac{1}{2}+x^{2}")
    ['\\\\frac', '{', '1', '}', '{', '2', '}', '+', 'x', '^', '{', '2', '}']
    >>> tokenize("12 + 7")
    ['1', '2', '+', '7']
    """
    return _TOKEN.findall(latex)


def pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    """IoU of every pair of boxes given as rows (x, y, w, h); the diagonal is 0.

    >>> pairwise_iou(np.array([[0, 0, 2, 2], [1, 0, 2, 2], [5, 5, 1, 1]])).round(3).tolist()
    [[0.0, 0.333, 0.0], [0.333, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (N, 4)
    x0, y0 = b[:, 0], b[:, 1]
    x1, y1 = x0 + b[:, 2], y0 + b[:, 3]
    iw = np.clip(np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]), 0, None)
    ih = np.clip(np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]), 0, None)
    inter = iw * ih  # (N, N)
    area = np.clip(b[:, 2], 0, None) * np.clip(b[:, 3], 0, None)
    union = area[:, None] + area[None] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    np.fill_diagonal(iou, 0.0)
    return iou


# ------------------------------------------------------------------------ writing


def _frame(rows: Sequence[Mapping[str, object]], columns: dict[str, str], key: str) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=list(columns)).astype(columns)
    return frame.sort_values(key, kind="stable").reset_index(drop=True)


def page_manifest_frame(rows: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """Rows as a page manifest: schema columns and dtypes, sorted by image_id."""
    return _frame(rows, PAGE_COLUMNS, "image_id")


def _save_csv(frame: pd.DataFrame, path: Path, columns: dict[str, str], key: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = frame[list(columns)].sort_values(key, kind="stable")
    tmp = path.with_suffix(".csv.tmp")
    ordered.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(path)
    return path


def save_page_manifest(frame: pd.DataFrame, dataset_dir: str | Path) -> Path:
    """Write `manifest.csv` in schema order, sorted by image_id, byte-stable."""
    return _save_csv(frame, Path(dataset_dir) / MANIFEST_NAME, PAGE_COLUMNS, "image_id")


def coco_document(manifest: pd.DataFrame, regions: Iterable[Region]) -> dict[str, Any]:
    """The COCO detection document of a page dataset (see the module docstring).

    Args:
        manifest: the page manifest; its row order (image_id order) gives the integer ids.
        regions: every region of every page.

    Raises:
        PageDataError: a region names a page the manifest does not hold.
    """
    ids = {str(name): i + 1 for i, name in enumerate(manifest["image_id"])}
    images = [
        {
            "id": ids[str(row.image_id)],
            "file_name": str(row.path),
            "width": int(row.width),
            "height": int(row.height),
            "name": str(row.image_id),
        }
        for row in manifest.itertuples(index=False)
    ]
    annotations: list[dict[str, Any]] = []
    for r in sorted(regions, key=lambda r: (ids.get(r.image_id, 0), r.region)):
        if r.image_id not in ids:
            raise PageDataError(f"region {r.crop_id}: page {r.image_id!r} is not in the manifest")
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": ids[r.image_id],
                "category_id": FORMULA_CATEGORY["id"],
                "bbox": [r.x, r.y, r.w, r.h],
                "area": r.w * r.h,
                "iscrowd": 0,
                "latex": r.latex,
                "region": r.region,
                "crop_id": r.crop_id,
            }
        )
    return {
        "info": {"description": "flywheel formula pages", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": [FORMULA_CATEGORY],
    }


def write_annotations(
    manifest: pd.DataFrame, regions: Iterable[Region], dataset_dir: str | Path
) -> Path:
    """Write `annotations.json` (COCO), with sorted keys: byte-stable for DVC."""
    path = Path(dataset_dir) / ANNOTATIONS_NAME
    text = json.dumps(coco_document(manifest, regions), indent=1, sort_keys=True)
    path.write_text(text + "\n")
    return path


def yolo_lines(regions: Iterable[Region], width: int, height: int) -> str:
    """A page's regions as YOLO lines: `0 cx cy w h`, normalised, six decimals.

    >>> print(yolo_lines([Region("p", 0, 10, 20, 30, 40, "1")], 100, 200), end="")
    0 0.250000 0.200000 0.300000 0.200000
    """
    lines = [
        f"0 {(r.x + r.w / 2) / width:.6f} {(r.y + r.h / 2) / height:.6f} "
        f"{r.w / width:.6f} {r.h / height:.6f}\n"
        for r in sorted(regions, key=lambda r: r.region)
    ]
    return "".join(lines)


def write_yolo_labels(
    manifest: pd.DataFrame, regions: Iterable[Region], dataset_dir: str | Path
) -> Path:
    """Write `labels/<image_id>.txt` for every page of the manifest (empty: no box)."""
    folder = Path(dataset_dir) / LABELS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    by_page: dict[str, list[Region]] = {}
    for r in regions:
        by_page.setdefault(r.image_id, []).append(r)
    for row in manifest.itertuples(index=False):
        text = yolo_lines(by_page.get(str(row.image_id), []), int(row.width), int(row.height))
        (folder / f"{row.image_id}.txt").write_text(text)
    return folder


def crop_box(
    box: tuple[int, int, int, int], padding: int, width: int, height: int
) -> tuple[int, int, int, int] | None:
    """The rectangle of a page that a region's crop takes: the box grown by `padding`, clipped.

    The one definition of a crop. `crop_regions` cuts the recogniser's dataset
    with it and the page pipeline (`flywheel.tasks.page_pipeline`) cuts a
    detector's boxes with it, so the recogniser reads the same kind of crop in
    training, in evaluation of the pair and in serving.

    Args:
        box: `(x0, y0, x1, y1)` in pixels, x1/y1 exclusive (`Region.xyxy`).
        padding: pixels added on each side.
        width, height: the page's size.

    Returns:
        `(x0, y0, x1, y1)` for `PIL.Image.crop`, or None when nothing of the
        grown box lies on the page.

    >>> crop_box((10, 5, 30, 15), 2, 31, 100)
    (8, 3, 31, 17)
    >>> crop_box((40, 5, 50, 15), 2, 31, 100) is None
    True
    """
    x0, y0 = max(box[0] - padding, 0), max(box[1] - padding, 0)
    x1, y1 = min(box[2] + padding, width), min(box[3] + padding, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def crop_regions(
    dataset_dir: str | Path, padding: int = 2, *, out_dir: str | Path | None = None
) -> pd.DataFrame:
    """Cut every ground-truth box out of its page: the recogniser's dataset.

    Reads the page manifest and `annotations.json` of `dataset_dir`, writes
    `crops/<split>/<crop_id>.png` and `crops.csv` into `out_dir` (default the
    dataset folder itself). A crop is the box grown by `padding` pixels on each
    side, clipped to the page (`crop_box`).

    Returns:
        The crops manifest (CROP_COLUMNS), sorted by crop_id.

    Raises:
        PageDataError: a file of the layout is missing or malformed, or a box
            lies outside its page.
    """
    dataset_dir = Path(dataset_dir)
    out = Path(out_dir) if out_dir is not None else dataset_dir
    manifest = load_page_manifest(dataset_dir).set_index("image_id", drop=False)
    rows: list[dict[str, object]] = []
    for image_id, regions in load_boxes(dataset_dir).items():
        page = manifest.loc[image_id]
        image_path = dataset_dir / str(page["path"])
        try:
            with Image.open(image_path) as opened:
                image = opened.convert("L")
        except OSError as err:
            raise PageDataError(f"{image_path}: cannot open the page: {err}") from None
        for r in regions:
            rectangle = crop_box(r.xyxy(), padding, image.width, image.height)
            if rectangle is None:
                raise PageDataError(f"{ANNOTATIONS_NAME}: box of {r.crop_id} is outside its page")
            x0, y0, x1, y1 = rectangle
            data = encode_png(image.crop(rectangle))
            relpath = f"{CROPS_DIR}/{page['split']}/{r.crop_id}.png"
            (out / relpath).parent.mkdir(parents=True, exist_ok=True)
            (out / relpath).write_bytes(data)
            rows.append(
                {
                    "crop_id": r.crop_id,
                    "path": relpath,
                    "page_id": image_id,
                    "region": r.region,
                    "split": page["split"],
                    "latex": r.latex,
                    **{c: page[c] for c in STRATA_COLUMNS},
                    "width": x1 - x0,
                    "height": y1 - y0,
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
    crops = _frame(rows, CROP_COLUMNS, "crop_id")
    _save_csv(crops, out / CROPS_NAME, CROP_COLUMNS, "crop_id")
    return crops


# ------------------------------------------------------------------------ reading


def _read_csv(path: Path, columns: dict[str, str], what: str) -> pd.DataFrame:
    if not path.is_file():
        raise PageDataError(f"{path}: no {what} (collect or ensure the page dataset first)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise PageDataError(f"{path}: not a readable CSV table: {err}") from None
    for column, dtype in columns.items():
        if dtype == "int64" and column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def load_page_manifest(dataset_dir: str | Path) -> pd.DataFrame:
    """Read a page `manifest.csv` (text columns stay text; integers as nullable Int64).

    Columns outside the schema are kept, so validation can name them.

    Raises:
        PageDataError: the file is missing or not a CSV table.
    """
    return _read_csv(Path(dataset_dir) / MANIFEST_NAME, PAGE_COLUMNS, "page manifest")


def load_crops(dataset_dir: str | Path) -> pd.DataFrame:
    """Read `crops.csv`, the recognition dataset (paths relative to `dataset_dir`).

    Raises:
        PageDataError: the file is missing or not a CSV table.
    """
    return _read_csv(Path(dataset_dir) / CROPS_NAME, CROP_COLUMNS, "crops manifest")


def load_coco(dataset_dir: str | Path) -> dict[str, Any]:
    """`annotations.json` as parsed JSON, checked to have the COCO lists.

    Raises:
        PageDataError: missing, not JSON, or without `images`/`annotations` lists.
    """
    path = Path(dataset_dir) / ANNOTATIONS_NAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise PageDataError(f"{path}: no COCO annotations") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PageDataError(f"{path}: not JSON: {err}") from None
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), list) for k in ("images", "annotations")
    ):
        raise PageDataError(f"{path}: not a COCO document (needs `images` and `annotations`)")
    return doc


def load_boxes(dataset_dir: str | Path) -> dict[str, list[Region]]:
    """Every page's ground-truth regions from `annotations.json`, keyed by image_id.

    Pages without boxes map to an empty list; regions are in region order.

    Raises:
        PageDataError: the file is missing or an entry is malformed (named by
            its annotation id).
    """
    doc = load_coco(dataset_dir)
    names: dict[int, str] = {}
    boxes: dict[str, list[Region]] = {}
    for image in doc["images"]:
        try:
            names[int(image["id"])] = str(image["name"])
        except (KeyError, TypeError, ValueError):
            raise PageDataError(f"{ANNOTATIONS_NAME}: malformed image entry {image!r}") from None
        boxes[str(image["name"])] = []
    for ann in doc["annotations"]:
        try:
            x, y, w, h = (round(float(v)) for v in ann["bbox"])
            region = Region(
                image_id=names[int(ann["image_id"])],
                region=int(ann["region"]),
                x=x,
                y=y,
                w=w,
                h=h,
                latex=str(ann["latex"]),
            )
        except (KeyError, TypeError, ValueError):
            raise PageDataError(
                f"{ANNOTATIONS_NAME}: annotation {ann.get('id', '?')!r} is malformed "
                "(needs image_id of a listed image, bbox [x, y, w, h], region, latex)"
            ) from None
        boxes[region.image_id].append(region)
    for regions in boxes.values():
        regions.sort(key=lambda r: r.region)
    return boxes
