"""Writing a dataset folder: atomic replacement and byte-stable PNG files.

Shared by everything that writes a dataset version (the importer, the merge,
the demo's collector): a dataset is written into a hidden sibling folder and
renamed into place, so a killed run never leaves half a dataset, and only a
folder that holds nothing but `manifest.csv` and `images/` is ever replaced.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from flywheel.data.manifest import MANIFEST_NAME

__all__ = ["IMAGES_DIR", "DatasetWriteError", "encode_png", "staged_dir"]

IMAGES_DIR = "images"
"""Image folder inside a dataset or batch folder."""


class DatasetWriteError(ValueError):
    """A dataset folder cannot be written: the target is not flywheel's to replace."""


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes that depend on the pixels only: no metadata, no timestamp, fixed compression."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


@contextlib.contextmanager
def staged_dir(
    target: Path, entries: frozenset[str] = frozenset({MANIFEST_NAME, IMAGES_DIR})
) -> Iterator[Path]:
    """An empty hidden sibling of `target` to fill; on success it replaces `target` whole.

    On an exception (or a kill) `target` is left as it was; leftovers of a
    killed run (`.<name>.partial-*`, `.<name>.old-*`) are removed by the next
    run. Two runs writing the same target at once are not supported.

    Args:
        target: the dataset folder to replace.
        entries: the names a folder of this kind holds (a page dataset has more
            than `manifest.csv` and `images/`); anything else makes it not ours.

    Raises:
        DatasetWriteError: `target` exists and is not a folder of only
            `entries`, with a `manifest.csv` (it is never deleted then).
    """
    target = Path(target)
    _check_replaceable(target, entries)
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in [
        *target.parent.glob(f".{target.name}.partial-*"),
        *target.parent.glob(f".{target.name}.old-*"),
    ]:
        shutil.rmtree(leftover, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield stage
        if target.exists():
            old = target.parent / f".{target.name}.old-{stage.name.rsplit('-', 1)[-1]}"
            target.rename(old)
            stage.rename(target)
            shutil.rmtree(old)
        else:
            stage.rename(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already after a successful swap


def _check_replaceable(target: Path, allowed: frozenset[str]) -> None:
    """Refuse to replace anything but an empty folder or one written by flywheel."""
    if not target.exists():
        return
    if not target.is_dir():
        raise DatasetWriteError(f"{target} exists and is not a folder; move it away first")
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return
    unexpected = [e for e in entries if e not in allowed]
    if unexpected or MANIFEST_NAME not in entries:
        what = f"holds {unexpected[:10]}" if unexpected else f"has no {MANIFEST_NAME}"
        raise DatasetWriteError(
            f"{target} {what}: it is not a dataset written by flywheel, so it is not replaced. "
            "Move it away, or choose another data.root / data.name."
        )
