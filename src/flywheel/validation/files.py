"""Image-file checks: does each manifest row's file exist, decode, and match its size and hash."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

FILE_OK = "ok"
"""`file_status` of a file that exists, decodes, and matches the manifest's size and hash."""

PARALLEL_MIN_FILES = 5_000
"""Below this many files a process pool costs more to start than it saves."""


def check_file(path: Path, *, sha256: str | None, width: int | None, height: int | None) -> str:
    """Open one image file and say whether it is what the manifest row claims.

    Checks, in order: the file can be read, it decodes completely (a truncated
    PNG fails here), its size is the manifest's `width`×`height`, its bytes hash
    to the manifest's `sha256`. Manifest values that are missing are not compared
    (the not-null rules flag those rows).

    Returns:
        `"ok"`, `"missing"`, `"undecodable: <reason>"`,
        `"size WxH != manifest WxH"` or `"sha256 mismatch"`.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return "missing"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size = image.size
    except UnidentifiedImageError:
        return "undecodable: not an image file"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"undecodable: {err}"
    if width is not None and height is not None and size != (width, height):
        return f"size {size[0]}x{size[1]} != manifest {width}x{height}"
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        return "sha256 mismatch"
    return FILE_OK


_FileRow = tuple[str | None, str | None, int | None, int | None]  # path, sha256, width, height


def _check_rows(dataset_dir: Path, rows: Sequence[_FileRow]) -> list[str]:
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
        out.append(check_file(dataset_dir / parts, sha256=sha, width=width, height=height))
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

    Returns:
        `file_status` per row, aligned with `manifest.index`.
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
                results[i] = _check_rows(dataset_dir, chunk)
                bar.update(len(chunk))
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
                futures = {
                    pool.submit(_check_rows, dataset_dir, chunk): i
                    for i, chunk in enumerate(chunks)
                }
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    bar.update(len(chunks[i]))
    return pd.Series(
        [status for chunk in results for status in chunk],
        index=manifest.index,
        name="file_status",
        dtype=object,
    )
