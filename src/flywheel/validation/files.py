"""Image-file checks: does each manifest row's file exist, decode, and match the manifest and plan.

Against the manifest: its size and hash. Against the plan (`FilePlan`): its
channels (grey `L` or `RGB`, as `data.channels` says), its bit depth (16-bit
grey only where `data.white_level` is above 255) and its levels (no pixel
above `data.white_level`), so that an RGB file copied into a grey dataset, or
a 16-bit scan into an 8-bit one, is a named failure rather than a silent
conversion at training time.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

FILE_OK = "ok"
"""`file_status` of a file that exists, decodes, and matches the manifest's size and hash."""

IMPORT_GROUP = "import:"
"""How `flywheel data import` starts a row's `group`: the file's path in the user's tree follows."""

PARALLEL_MIN_FILES = 5_000
"""Below this many files a process pool costs more to start than it saves."""


HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
"""PIL modes of 16-bit grey files (PNG opens them as `I;16`)."""


@dataclass(frozen=True)
class FilePlan:
    """What the plan says every image file is: its channels and its white level.

    Attributes:
        channels: 1 = grey (`L`, or 16-bit grey where `white_level` > 255), 3 = `RGB`.
        white_level: the level that is white; None = 255 (8-bit files).
    """

    channels: int = 1
    white_level: int | None = None

    @property
    def sixteen_bit(self) -> bool:
        """Whether the plan has 16-bit grey files (a white level above 255)."""
        return self.white_level is not None and self.white_level > 255

    def problem(self, image: Image.Image) -> str | None:
        """Why a decoded file is not what the plan says (channels, depth, levels); None: it is."""
        deep = image.mode in HIGH_DEPTH_MODES
        if self.channels == 3 and image.mode != "RGB":
            what = "16-bit grey" if deep else f"grey ({image.mode})" if image.mode == "L" else None
            return f"channels: {what or image.mode} image where the plan has RGB (data.channels: 3)"
        if self.channels == 1 and not deep and image.mode != "L":
            return f"channels: {image.mode} image where the plan has grey (data.channels: 1)"
        if deep and not self.sixteen_bit:
            return (
                f"bit depth: 16-bit image ({image.mode}) where the plan has 8-bit "
                f"(data.white_level {self.white_level or 'unset'}; set it to the 16-bit white)"
            )
        if not deep and self.sixteen_bit:
            return f"bit depth: 8-bit image where the plan has 16-bit (white {self.white_level})"
        white = self.white_level or 255
        extrema = image.getextrema()
        pairs = extrema if isinstance(extrema[0], tuple) else (extrema,)
        top = max(int(high) for _, high in pairs)
        if top > white:
            return f"levels: a pixel of level {top} is above data.white_level {white}"
        return None


def check_file(
    path: Path,
    *,
    sha256: str | None,
    width: int | None,
    height: int | None,
    plan: FilePlan | None = None,
) -> str:
    """Open one image file and say whether it is what the manifest row and the plan claim.

    Checks, in order: the file can be read, it decodes completely (a truncated
    PNG fails here), its size is the manifest's `width`×`height`, its bytes hash
    to the manifest's `sha256`, and (with `plan`) its channels, bit depth and
    levels are the plan's (`FilePlan.problem`). Manifest values that are
    missing are not compared (the not-null rules flag those rows).

    Returns:
        `"ok"`, `"missing"`, `"undecodable: <reason>"`,
        `"size WxH != manifest WxH"`, `"sha256 mismatch"`, or
        `"channels: ..."`, `"bit depth: ..."`, `"levels: ..."` (`FilePlan.problem`).
    """
    try:
        data = path.read_bytes()
    except OSError:
        return "missing"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size = image.size
            problem = plan.problem(image) if plan is not None else None
    except UnidentifiedImageError:
        return "undecodable: not an image file"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"undecodable: {err}"
    if width is not None and height is not None and size != (width, height):
        return f"size {size[0]}x{size[1]} != manifest {width}x{height}"
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        return "sha256 mismatch"
    return problem or FILE_OK


_FileRow = tuple[str | None, str | None, int | None, int | None]  # path, sha256, width, height


def _check_rows(
    dataset_dir: Path, rows: Sequence[_FileRow], plan: FilePlan | None = None
) -> list[str]:
    """`check_file` for a chunk of manifest rows; the unit of work of the process pool."""
    out: list[str] = []
    for rel, sha, width, height in rows:
        if rel is None:
            out.append("missing: no path")
            continue
        parts = PurePosixPath(rel)
        if parts.is_absolute() or ".." in parts.parts:
            out.append("path outside the dataset folder")
            continue
        out.append(
            check_file(dataset_dir / parts, sha256=sha, width=width, height=height, plan=plan)
        )
    return out


def _column_or_none(manifest: pd.DataFrame, column: str) -> list[Any]:
    """A manifest column as Python objects with missing values (or a missing column) as None."""
    if column not in manifest:
        return [None] * len(manifest)
    values = manifest[column].astype(object)
    return values.where(values.notna(), None).tolist()


def _default_workers() -> int:
    """CPUs this process may use (its affinity mask: containers and taskset set it), at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS and Windows have no affinity mask
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def check_image_files(
    dataset_dir: str | Path,
    manifest: pd.DataFrame,
    *,
    workers: int | None = None,
    chunk_size: int = 1_000,
    min_parallel: int = PARALLEL_MIN_FILES,
    progress: bool = True,
    plan: FilePlan | None = None,
) -> pd.Series:
    """Check every row's image file (`check_file`), in parallel for large datasets.

    Files are checked in chunks by a process pool (decoding and hashing are
    CPU-bound, so threads would serialise on the GIL); below `min_parallel`
    files, or with `workers=1`, in this process.

    Args:
        dataset_dir: the folder `path` is relative to.
        manifest: rows with `path`, `sha256`, `width`, `height` (missing columns count as missing).
        workers: processes to use; default: usable CPUs, at most 8.
        chunk_size: rows per task handed to a worker.
        min_parallel: fewest files worth starting a process pool for.
        progress: show a progress bar (on stderr, when it is a terminal).
        plan: channels and white level every file must have (None: not checked).

    Returns:
        `file_status` per row, aligned with `manifest.index`: `ok`, or why
        not (`check_file`), followed by `(imported from <file>)` where the
        row's `group` names the user's file it was imported from.
    """
    dataset_dir = Path(dataset_dir)
    widths, heights = _column_or_none(manifest, "width"), _column_or_none(manifest, "height")
    rows: list[_FileRow] = list(
        zip(
            _column_or_none(manifest, "path"),
            _column_or_none(manifest, "sha256"),
            [None if w is None else int(w) for w in widths],
            [None if h is None else int(h) for h in heights],
            strict=True,
        )
    )
    chunks = [rows[i : i + chunk_size] for i in range(0, len(rows), chunk_size)]
    workers = workers or _default_workers()
    results: list[list[str]] = [[] for _ in chunks]
    bar = tqdm(
        total=len(rows), desc="check image files", unit="file", disable=None if progress else True
    )
    with bar:
        if workers <= 1 or len(rows) < min_parallel:
            for i, chunk in enumerate(chunks):
                results[i] = _check_rows(dataset_dir, chunk, plan)
                bar.update(len(chunk))
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
                futures = {
                    pool.submit(_check_rows, dataset_dir, chunk, plan): i
                    for i, chunk in enumerate(chunks)
                }
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    bar.update(len(chunks[i]))
    origins = [
        g[len(IMPORT_GROUP) :] if isinstance(g, str) and g.startswith(IMPORT_GROUP) else None
        for g in _column_or_none(manifest, "group")
    ]
    statuses = [status for chunk in results for status in chunk]
    return pd.Series(
        [
            status if status == FILE_OK or origin is None else f"{status} (imported from {origin})"
            for status, origin in zip(statuses, origins, strict=True)
        ],
        index=manifest.index,
        name="file_status",
        dtype=object,
    )
