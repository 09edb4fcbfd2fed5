"""Import your own images: an ImageFolder tree into the manifest format.

The input is the layout torchvision's `ImageFolder` reads: class folders,
`SRC/<label>/<image>.png|jpg|jpeg`, optionally inside split folders
`SRC/<split>/<label>/...` (the layouts `flywheel.data.inspect` accepts; a tree
without split folders is split per class by a stable hash). Every image goes
through the plan's pre-processing (`flywheel.data.preprocessing`: EXIF rotation
applied, transparent parts on white paper, grey or RGB as `data.channels` says,
resized to the `data.image_size` square with the filter training and serving
use), keeping its own levels and bit depth, then is written as
`data/<name>/images/<split>/<label>/<image_id>.png` with a manifest, exactly
like a collected dataset. An image of another size is resized and a warning
says how many were (an 8 × 8 tree imported with `image_size: 8` stays 8 × 8). A
dataset folder's own `images/` is such a tree, so exporting is a copy of that
folder.

The levels are checked against the plan's white level: a tree whose
brightest pixel is far below white (scikit-learn's digits use 0–16 of 0–255)
is refused until `data.white_level` says what white is, and with
`data.white_level` set a pixel above it is a problem of its file; either would
otherwise train on images that are nearly black or clipped.

The whole tree is checked before anything is written, and every problem is
reported at once (unknown split folders, labels outside the plan, unsupported
or undecodable files), so a user fixes the tree in one pass; nothing is
written unless every image imports. Hidden files (`.DS_Store`, ...) and plain
files at the top of the tree (a README) are skipped.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from flywheel.config import SPLITS, DataPlan, nfc
from flywheel.data.files import IMAGES_DIR, DatasetWriteError, encode_png, staged_dir
from flywheel.data.inspect import IMAGE_SUFFIXES, LOW_RANGE_FRACTION, assign_splits, scan_tree
from flywheel.data.manifest import manifest_frame, save_manifest
from flywheel.data.preprocessing import Preprocessing, PreprocessingError, bit_depth_white
from flywheel.env import tqdm_disable

__all__ = ["IMAGE_SUFFIXES", "DatasetImportError", "import_imagefolder"]

MAX_LISTED = 50
"""Problems listed in one error message; the exception keeps all of them."""

log = logging.getLogger(__name__)


class DatasetImportError(ValueError):
    """The ImageFolder tree cannot be imported; `problems` lists every reason, one per file."""

    def __init__(self, src: Path, problems: list[str]) -> None:
        self.src = src
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
        more = (
            f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        )
        super().__init__(
            f"cannot import {src}: {len(problems)} problem(s); nothing was written\n{shown}{more}"
        )


@dataclass(frozen=True)
class _Entry:
    """One image file of the tree and where it goes."""

    file: Path
    relpath: str  # of the file, relative to the tree root, POSIX
    split: str
    label: str
    style: str | None  # from a stratum folder; None: the `style` given


def _scan(src: Path, classes: tuple[str, ...]) -> tuple[list[_Entry], list[str]]:
    """List the tree's images and everything wrong with its layout (without decoding).

    Labels are compared in NFC and recorded as the plan spells them; a tree
    without split folders is split by `assign_splits` (stable per file).
    """
    layout = scan_tree(src)
    problems = list(layout.problems)
    spelling = {nfc(c): c for c in classes}
    unknown_labels: dict[str, set[str]] = {}
    entries: list[_Entry] = []
    for image in assign_splits(layout.images):
        split = str(image.split)
        if image.label not in spelling:
            unknown_labels.setdefault(image.label, set()).add(split)
            continue
        entries.append(_Entry(image.file, image.relpath, split, spelling[image.label], image.style))
    for label, splits in sorted(unknown_labels.items()):
        problems.append(
            f"label folder {label!r} (in {', '.join(s for s in SPLITS if s in splits)}) is not "
            f"a class of the plan {list(classes)}; rename it or add the class to params.yaml "
            "data.classes"
        )
    return entries, problems


@dataclass(frozen=True)
class _Loaded:
    """One decoded image's facts: its size before resizing, its brightest level, its white."""

    original_size: tuple[int, int]
    top_level: int
    full_white: int


def _load(file: Path, preprocessing: Preprocessing) -> tuple[Image.Image, _Loaded]:
    """Decode `file` and bring it to the plan's channels and size, at its own levels."""
    with Image.open(file) as opened:
        opened.load()
        converted = preprocessing.convert(opened)
    extrema = converted.getextrema()  # (min, max), or one pair per band
    pairs = extrema if isinstance(extrema[0], tuple) else (extrema,)
    top = max(int(high) for _, high in pairs)
    facts = _Loaded(converted.size, top, bit_depth_white(converted.mode))
    return preprocessing.resize(converted), facts


def _level_problems(loaded: dict[Path, _Loaded], plan: DataPlan) -> list[str]:
    """The files whose levels the plan's white level would darken or clip."""
    if plan.white_level is not None:
        return [
            f"{file}: a pixel of level {item.top_level} is above data.white_level "
            f"{plan.white_level} (it would be clipped); raise data.white_level"
            for file, item in loaded.items()
            if item.top_level > plan.white_level
        ]
    if not loaded:
        return []
    brightest = max(loaded.values(), key=lambda item: item.top_level / item.full_white)
    top, full = brightest.top_level, brightest.full_white
    if top >= LOW_RANGE_FRACTION * full:
        return []
    if top == 0:
        return ["every image is black (all pixels 0): there is nothing to learn from"]
    return [
        f"the images use levels 0-{top} of 0-{full}: as they are they would train nearly "
        f"black (and brightness augmentation would wipe them out); set data.white_level: {top} "
        f"(--set data.white_level={top}) so that {top} is white, or data.white_level: {full} "
        "to keep them as dark as they are"
    ]


def _report_resized(loaded: dict[Path, _Loaded], size: int, resample: str) -> None:
    resized = [(f, item) for f, item in loaded.items() if item.original_size != (size, size)]
    if resized:
        file, item = resized[0]
        width, height = item.original_size
        log.warning(
            "resized %d of %d images to %d x %d (data.image_size) with %s, e.g. %s (%d x %d)",
            len(resized),
            len(loaded),
            size,
            size,
            resample,
            file,
            width,
            height,
        )


def import_imagefolder(
    src: Path,
    plan: DataPlan,
    *,
    name: str,
    style: str = "unknown",
    noise: str = "unknown",
    root: Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Import an ImageFolder tree as the dataset `<root>/<name>/`, replacing it whole.

    Every image becomes its own group (`import:<path in the tree>`) with
    `source` = "import" and the given stratum values; whether the result
    covers the plan's strata and counts is the validation gate's question.

    Args:
        src: the tree, `src/[<split>/]<label>/*.png|jpg|jpeg` (`flywheel.data.inspect`).
        plan: the data plan (classes, image size, channels, white level, default root).
        name: dataset folder name.
        style: the `style` stratum of every image not in a stratum folder.
        noise: the `noise` stratum of every image.
        root: folder that holds the dataset folder; default `plan.root`.
        progress: show a progress bar.

    Returns:
        The manifest, as written to `<root>/<name>/manifest.csv`.

    Raises:
        DatasetImportError: the tree is missing or malformed, has labels outside
            the plan, holds files that cannot be decoded or whose levels do not
            fit the plan's white level (all listed), or the target folder holds
            files flywheel did not write.
    """
    src = Path(src)
    if not src.is_dir():
        raise DatasetImportError(src, [f"{src}: not a folder"])
    bad_names = [
        f"{what} {value!r}: must be a non-empty name without '/'"
        for what, value in (("name", name), ("style", style), ("noise", noise))
        if not value or "/" in value or value in {".", ".."}
    ]
    if bad_names:
        raise DatasetImportError(src, bad_names)
    entries, problems = _scan(src, plan.classes)
    if problems:
        raise DatasetImportError(src, problems)
    if not entries:
        raise DatasetImportError(
            src, [f"{src}: no images found (expected [<split>/]<label>/*.png|jpg|jpeg)"]
        )

    target = Path(root if root is not None else plan.root) / name
    preprocessing = Preprocessing.from_plan(plan)
    rows: list[dict[str, object]] = []
    bad_files: list[str] = []
    loaded: dict[Path, _Loaded] = {}
    try:
        with staged_dir(target) as stage:
            for folder in sorted({(e.split, e.label) for e in entries}):
                (stage / IMAGES_DIR / folder[0] / folder[1]).mkdir(parents=True, exist_ok=True)
            counters = dict.fromkeys(SPLITS, 0)
            for entry in tqdm(
                entries, desc=f"import {src.name}", unit="img", disable=tqdm_disable(progress)
            ):
                try:
                    image, loaded[entry.file] = _load(entry.file, preprocessing)
                except PreprocessingError as err:
                    bad_files.append(f"{entry.file}: {err}")
                    continue
                except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                    reason = "not an image" if isinstance(err, UnidentifiedImageError) else err
                    bad_files.append(f"{entry.file}: cannot decode ({reason})")
                    continue
                if bad_files:  # keep checking the rest, but stop writing
                    continue
                entry_style = entry.style or style
                image_id = f"{entry.split}-{entry_style}-{noise}-{counters[entry.split]:05d}"
                counters[entry.split] += 1
                relpath = f"{IMAGES_DIR}/{entry.split}/{entry.label}/{image_id}.png"
                data = encode_png(image)
                (stage / relpath).write_bytes(data)
                rows.append(
                    {
                        "image_id": image_id,
                        "path": relpath,
                        "label": entry.label,
                        "split": entry.split,
                        "style": entry_style,
                        "noise": noise,
                        "source": "import",
                        "group": f"import:{entry.relpath}",
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "width": image.width,
                        "height": image.height,
                    }
                )
            bad_files += _level_problems(loaded, plan)
            if bad_files:
                raise DatasetImportError(src, bad_files)
            _report_resized(loaded, plan.image_size, preprocessing.resample)
            manifest = manifest_frame(rows)
            save_manifest(manifest, stage)
    except DatasetWriteError as err:  # the target folder is not ours to replace
        raise DatasetImportError(src, [str(err)]) from None
    return manifest
