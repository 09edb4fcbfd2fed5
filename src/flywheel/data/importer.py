"""Import your own images: an ImageFolder tree into the manifest format.

The input is the layout torchvision's `ImageFolder` reads: class folders,
`SRC/<label>/<image>.png|jpg|jpeg`, optionally inside split folders
`SRC/<split>/<label>/...` (the layouts `flywheel.data.inspect` accepts; a tree
without split folders is split per class by a stable hash). Every image is made grayscale
(transparent parts on white paper, EXIF rotation applied) and resized to the
plan's `image_size` square, then written as `data/<name>/images/<split>/<label>/
<image_id>.png` with a manifest, exactly like a collected dataset. A dataset
folder's own `images/` is such a tree, so exporting is a copy of that folder.

The whole tree is checked before anything is written, and every problem is
reported at once (unknown split folders, labels outside the plan, unsupported
or undecodable files), so a user fixes the tree in one pass; nothing is
written unless every image imports. Hidden files (`.DS_Store`, ...) and plain
files at the top of the tree (a README) are skipped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from flywheel.config import SPLITS, DataPlan
from flywheel.data.files import IMAGES_DIR, DatasetWriteError, encode_png, staged_dir
from flywheel.data.inspect import IMAGE_SUFFIXES, assign_splits, nfc, scan_tree
from flywheel.data.manifest import manifest_frame, save_manifest

__all__ = ["IMAGE_SUFFIXES", "DatasetImportError", "import_imagefolder"]

MAX_LISTED = 50
"""Problems listed in one error message; the exception keeps all of them."""


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


def _load_gray(file: Path, size: int) -> Image.Image:
    """Decode an image as grayscale "L" of size × size: EXIF orientation applied, alpha on white."""
    with Image.open(file) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    gray = image.convert("L")
    return gray.resize((size, size), Image.Resampling.LANCZOS)  # a copy when already that size


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
        plan: the data plan (classes, image size, default root).
        name: dataset folder name.
        style: the `style` stratum of every image not in a stratum folder.
        noise: the `noise` stratum of every image.
        root: folder that holds the dataset folder; default `plan.root`.
        progress: show a progress bar.

    Returns:
        The manifest, as written to `<root>/<name>/manifest.csv`.

    Raises:
        DatasetImportError: the tree is missing or malformed, has labels outside
            the plan, or holds files that cannot be decoded (all listed), or the
            target folder holds files flywheel did not write.
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
    rows: list[dict[str, object]] = []
    bad_files: list[str] = []
    try:
        with staged_dir(target) as stage:
            for folder in sorted({(e.split, e.label) for e in entries}):
                (stage / IMAGES_DIR / folder[0] / folder[1]).mkdir(parents=True, exist_ok=True)
            counters = dict.fromkeys(SPLITS, 0)
            for entry in tqdm(entries, desc=f"import {src.name}", unit="img", disable=not progress):
                try:
                    image = _load_gray(entry.file, plan.image_size)
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
            if bad_files:
                raise DatasetImportError(src, bad_files)
            manifest = manifest_frame(rows)
            save_manifest(manifest, stage)
    except DatasetWriteError as err:  # the target folder is not ours to replace
        raise DatasetImportError(src, [str(err)]) from None
    return manifest
