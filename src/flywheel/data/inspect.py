"""Look at an ImageFolder tree before anything is imported: its layout, classes and images.

`flywheel init` writes a plan from what this finds, and `flywheel data import`
reads the tree through the same `scan_tree`, so the two never disagree about
which files are images of which class and split. The layouts accepted:

- `TREE/<class>/<image>`: class folders only; `assign_splits` puts each image
  in train, val or test by a stable hash of its path, class by class
  (`DEFAULT_SPLIT_SHARES`), so a re-import gives the same split.
- `TREE/<split>/<class>/<image>`: a folder per split, `train`, `val` and `test`
  (`validation` and `valid` are read as `val`, `training`/`testing` as
  `train`/`test`); without a val folder, 15 % of each class's train images
  (stable per file) are the val split; a missing `test` is an error of `init`
  and an empty split for the data gate.
- `TREE/[<split>/]<stratum>/<class>/<image>`: either layout with a level of
  stratum folders above the classes (when every folder at that level holds
  folders only); a stratum folder's name is its images' `style` stratum.

Class names are Unicode-normalised to NFC (macOS writes folder names in NFD,
which differ invisibly from the same name typed in a plan). Hidden files and
plain files at the top of the tree (a README) are ignored; anything else that
is not an image where an image belongs is reported, naming the file.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from flywheel.config import SPLITS, nfc

__all__ = [
    "DEFAULT_SPLIT_SHARES",
    "IMAGE_SUFFIXES",
    "LOW_RANGE_FRACTION",
    "SPLIT_ALIASES",
    "ImageStats",
    "TreeImage",
    "TreeInspection",
    "TreeLayout",
    "assign_splits",
    "inspect_imagefolder",
    "measure_images",
    "nfc",
    "scan_tree",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg"})
"""File types read (case-insensitive)."""

SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
"""Split folder names accepted, and the split each one is."""

LOW_RANGE_FRACTION = 0.25
"""A tree whose brightest pixel is below this fraction of white is low-range (`white_level`)."""

DEFAULT_SPLIT_SHARES: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}
"""Shares of each class's images per split when the tree has no split folders."""


@dataclass(frozen=True)
class TreeImage:
    """One image file of the tree: where it is, its class and its split (None: not yet split)."""

    file: Path
    relpath: str  # relative to the tree root, POSIX
    label: str  # NFC
    split: str | None
    style: str | None = None  # from a stratum folder (NFC); None: the declared one


@dataclass(frozen=True)
class TreeLayout:
    """What `scan_tree` found: the images, and every file or folder out of place."""

    src: Path
    images: list[TreeImage]
    has_splits: bool
    classes: list[str]  # NFC, sorted, including empty ones
    styles: list[str]  # stratum folders found (NFC, sorted); empty: no stratum level
    empty_classes: list[str]  # class folders without an image (in some split)
    problems: list[str]  # one line per misplaced or unsupported file, naming it


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _split_layout(children: list[Path]) -> bool:
    """True when the tree has split folders (any top folder named as a split is one)."""
    return any(c.is_dir() and c.name.lower() in SPLIT_ALIASES for c in children)


def _scan_class(
    folder: Path,
    src: Path,
    split: str | None,
    images: list[TreeImage],
    problems: list[str],
    *,
    stratum: bool,
) -> int:
    """Add the images of one class folder; returns how many there were."""
    found = 0
    style = nfc(folder.parent.name) if stratum else None
    for file in _visible(folder):
        if file.is_dir():
            problems.append(f"{file}: a folder inside a class folder (expected images only)")
        elif file.suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(
                f"{file}: not an image file ({file.suffix or 'no suffix'}); "
                "convert it to PNG or JPEG or remove it"
            )
        else:
            label = nfc(folder.name)
            relpath = file.relative_to(src).as_posix()
            images.append(TreeImage(file, relpath, label, split, style))
            found += 1
    return found


def _stratum_level(folders: list[Path]) -> bool:
    """True when the would-be class folders all hold folders only: they are stratum folders."""
    contents = [_visible(f) for f in folders]
    return bool(folders) and all(c and all(p.is_dir() for p in c) for c in contents)


def scan_tree(src: Path) -> TreeLayout:
    """List an ImageFolder tree's images by class and split, without decoding them.

    Raises:
        FileNotFoundError: `src` is not a folder.
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder")
    children = _visible(src)
    has_splits = _split_layout(children)
    images: list[TreeImage] = []
    problems: list[str] = []
    counts: dict[str, int] = {}
    groups: list[tuple[Path, str | None]] = []
    if has_splits:
        seen: dict[str, Path] = {}
        for folder in (c for c in children if c.is_dir()):
            if folder.name.lower() not in SPLIT_ALIASES:
                problems.append(
                    f"{folder}: unknown split folder {folder.name!r} beside split folders "
                    f"(expected {', '.join(SPLITS)}; `validation` is read as val)"
                )
                continue
            split = SPLIT_ALIASES[folder.name.lower()]
            if split in seen:
                problems.append(f"{folder}: a second folder for split {split!r} ({seen[split]})")
                continue
            seen[split] = folder
            for child in _visible(folder):
                if child.is_dir():
                    groups.append((child, split))
                else:
                    problems.append(
                        f"{child}: a file directly in a split folder; move it into its class folder"
                    )
    else:
        groups = [(c, None) for c in children if c.is_dir()]
    stratum = _stratum_level([folder for folder, _ in groups])
    if stratum:
        groups = [(c, s) for folder, s in groups for c in _visible(folder)]
    empty: set[str] = set()
    for folder, group_split in groups:
        n = _scan_class(folder, src, group_split, images, problems, stratum=stratum)
        label = nfc(folder.name)
        counts[label] = counts.get(label, 0) + n
        if n == 0:
            empty.add(label)
    return TreeLayout(
        src=src,
        images=images,
        has_splits=has_splits,
        classes=sorted(counts),
        styles=sorted({nfc(folder.parent.name) for folder, _ in groups}) if stratum else [],
        empty_classes=sorted(empty),
        problems=problems,
    )


def _rank_key(relpath: str) -> str:
    return hashlib.sha256(relpath.encode()).hexdigest()


def assign_splits(
    images: list[TreeImage], shares: dict[str, float] | None = None
) -> list[TreeImage]:
    """Give every image a split: per stratum and class, by a stable hash of its path.

    Images without a split (a tree of class folders) are cut in the shares'
    proportions (rounded, train taking the rest); when split folders hold no
    validation images at all (only `train/` and `test/`), the `val` share of
    each class's train images becomes the val split. Every split gets every
    class that has enough images, and the same files always land in the same
    split, whatever else the tree holds.
    """
    shares = shares or DEFAULT_SPLIT_SHARES
    carve_val = bool(images) and all(i.split not in (None, "val") for i in images)
    groups: dict[tuple[str | None, str | None, str], list[TreeImage]] = {}
    for image in images:
        if image.split is None or (carve_val and image.split == "train"):
            groups.setdefault((image.split, image.style, image.label), []).append(image)
    assigned = {id(i): i for i in images}
    for (split, _, _), members in groups.items():
        ordered = sorted(members, key=lambda i: _rank_key(i.relpath))
        cuts = ("test", "val") if split is None else ("val",)
        bounds = itertools.accumulate(round(len(ordered) * shares[c]) for c in cuts)
        edges = list(zip(cuts, bounds, strict=True))
        for rank, image in enumerate(ordered):
            chosen = next((c for c, edge in edges if rank < edge), "train")
            assigned[id(image)] = replace(image, split=chosen)
    return [assigned[id(i)] for i in images]


@dataclass
class ImageStats:
    """What the images are like: sizes, colour and pixel values (`measure_images`)."""

    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)  # (width, height) -> count
    colour: int = 0  # images whose channels differ somewhere
    grey: int = 0
    low: float | None = None  # smallest pixel value seen, in the file's own units
    high: float | None = None  # largest
    full_white: int = 255  # the largest bit depth's white: 65535 once a 16-bit image is seen
    undecodable: list[str] = field(default_factory=list)  # "file: reason"

    @property
    def common_size(self) -> tuple[int, int] | None:
        """The most common (width, height); the larger one on a tie, so nothing is shrunk."""
        if not self.sizes:
            return None
        return max(self.sizes, key=lambda s: (self.sizes[s], s[0] * s[1]))

    @property
    def white_level(self) -> int | None:
        """The level that is white, when the data is low-range (None: the bit depth's full range).

        A tree whose brightest pixel is below `LOW_RANGE_FRACTION` of its bit
        depth's white (scikit-learn's digits: 16 of 255) is low-range: its
        brightest level is taken as white, so that it trains at full contrast
        and the brightness augmentation is checked against its real range.
        """
        if self.high is None or self.high <= 0:
            return None  # no image, or all black: the import refuses that as such
        return int(self.high) if self.high < LOW_RANGE_FRACTION * self.full_white else None

    @property
    def channels(self) -> int:
        """3 when any image has colour, else 1."""
        return 3 if self.colour else 1


def _pixels(file: Path) -> np.ndarray:
    """The decoded pixels, (H, W) or (H, W, C), EXIF rotation applied, alpha dropped."""
    with Image.open(file) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in {"RGBA", "LA"}:
        image = image.convert(image.mode[:-1])
    if image.mode == "CMYK":
        image = image.convert("RGB")
    return np.asarray(image)


def measure_images(files: list[Path]) -> ImageStats:
    """Decode every file and measure sizes, grey or colour, and the range of pixel values."""
    stats = ImageStats()
    for file in files:
        try:
            pixels = _pixels(file)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            reason = "not an image" if isinstance(err, UnidentifiedImageError) else err
            stats.undecodable.append(f"{file}: cannot decode ({reason})")
            continue
        stats.sizes[(pixels.shape[1], pixels.shape[0])] += 1
        is_colour = pixels.ndim == 3 and bool((pixels != pixels[..., :1]).any())
        stats.colour += is_colour
        stats.grey += not is_colour
        if pixels.dtype.itemsize > 1:  # 16-bit grey (`I;16` reads as uint16, `I` as int32)
            stats.full_white = 65535
        low, high = float(pixels.min()), float(pixels.max())
        stats.low = low if stats.low is None else min(stats.low, low)
        stats.high = high if stats.high is None else max(stats.high, high)
    return stats


@dataclass(frozen=True)
class TreeInspection:
    """An ImageFolder tree, looked at: layout, images per split and class, what they are like."""

    layout: TreeLayout
    images: list[TreeImage]  # every image, with its split (assigned where the tree has none)
    stats: ImageStats

    @property
    def classes(self) -> list[str]:
        """Classes that have images (NFC, sorted)."""
        return sorted({i.label for i in self.images})

    def style_counts(self) -> dict[str, dict[str, int]]:
        """Images per split and stratum folder: `{split: {style: n}}` (empty without strata)."""
        table = {s: dict.fromkeys(self.layout.styles, 0) for s in SPLITS}
        for image in self.images:
            if image.style is not None:
                table[str(image.split)][image.style] += 1
        return table

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class: `{split: {class: n}}`, every split and class present."""
        table = {s: dict.fromkeys(self.classes, 0) for s in SPLITS}
        for image in self.images:
            table[str(image.split)][image.label] += 1
        return table

    @property
    def problems(self) -> list[str]:
        """Everything odd, one line each, naming the file or folder."""
        empty = [
            f"{self.layout.src}: class folder {c!r} holds no image"
            for c in self.layout.empty_classes
        ]
        return [*self.layout.problems, *empty, *self.stats.undecodable]


def inspect_imagefolder(src: Path) -> TreeInspection:
    """Scan an ImageFolder tree, split it where it has no split folders, and measure its images.

    Raises:
        FileNotFoundError: `src` is not a folder.
    """
    layout = scan_tree(src)
    images = assign_splits(layout.images)
    return TreeInspection(layout, images, measure_images([i.file for i in images]))
