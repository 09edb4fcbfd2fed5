"""Where shared state lives: a local folder, or object storage behind a URL (one fsspec layer).

The state that several processes share — the prediction log, the Evidently
workspace and HTML reports, the labelling queue and exports, the ground truth
— lives under one root, the *state URL*:

* `FLYWHEEL_STATE_URL` (a pod's environment) wins, then `state.url` in
  `params.yaml`, else the local state folder (`flywheel.env.state_dir()`,
  `.flywheel/`): the embedded default, unchanged.
* `s3://bucket/prefix` (MinIO, Ceph, any S3-compatible store) goes through
  fsspec and s3fs, configured the usual way: `AWS_ENDPOINT_URL`,
  `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, or
  fsspec's own `FSSPEC_S3_<OPTION>` variables (`FSSPEC_S3_ENDPOINT_URL`, ...).
  Any other fsspec protocol (`gs://`, `az://`, `memory://`) works the same
  way where its driver is installed.

A *location* is a `Path` for a local folder (every local code path stays
pathlib, exactly as before) or a `str` URL; `join`, `glob`, `read_bytes`,
`write_bytes` and friends take either. Object stores have no rename and no
append, so every write here puts a whole object (a PUT is atomic: readers see
the old object or the new one, never a part); locally a write goes to a
temporary sibling and is renamed into place, to the same effect.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING

from flywheel.config.state import check_location
from flywheel.env import state_dir

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

STATE_URL_ENV = "FLYWHEEL_STATE_URL"
"""The environment variable that puts the shared state at a URL (a pod's ConfigMap sets it)."""

Location = Path | str
"""A local folder or file (`Path`), or an object-store URL (`str`, `s3://bucket/key`)."""


class StorageError(OSError):
    """A state location that cannot be used: no driver for its URL, or the store failed.

    An `OSError`, as a local file's failure is, so that callers handle both
    alike; the message names the location.
    """


@contextmanager
def reported(location: Location) -> Iterator[None]:
    """Errors of an object store (botocore, aiohttp: not `OSError`s) as a `StorageError`."""
    try:
        yield
    except OSError:
        raise
    except Exception as err:  # any driver's failure; the location is what the user can act on
        raise StorageError(f"{location}: {type(err).__name__}: {err}") from err


def is_url(location: Location | str) -> bool:
    """Whether a location is a remote URL rather than a local path (`file://` counts as local).

    >>> is_url("s3://bucket/state"), is_url("/srv/state"), is_url(Path("state"))
    (True, False, False)
    """
    if isinstance(location, Path):
        return False
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme not in ("", "file", "local")


def as_location(text: Location) -> Location:
    """A location from configuration text: a URL stays a string, anything else is a `Path`.

    >>> as_location("s3://bucket/state/"), as_location("file:///srv/state").as_posix()
    ('s3://bucket/state', '/srv/state')
    """
    if isinstance(text, Path):
        return text
    if is_url(text):
        return text.rstrip("/")
    return Path(text.removeprefix("file://"))


def state_url(configured: str | None = None) -> Location:
    """The root of the shared state: `FLYWHEEL_STATE_URL`, else `configured`, else `state_dir()`.

    Args:
        configured: `params.state.url`, where the caller has the params.
    """
    text = os.environ.get(STATE_URL_ENV) or configured
    if not text:
        return state_dir()
    try:
        return as_location(check_location(text))
    except ValueError as err:
        source = STATE_URL_ENV if os.environ.get(STATE_URL_ENV) else "state.url"
        raise StorageError(f"{source}: {err}") from None


def join(location: Location, *parts: str) -> Location:
    """`location / part / ...`, keeping its kind.

    >>> join("s3://bucket/state", "predictions", "m")
    's3://bucket/state/predictions/m'
    >>> join(Path("state"), "predictions").as_posix()
    'state/predictions'
    """
    if isinstance(location, Path):
        return location.joinpath(*parts)
    return posixpath.join(location.rstrip("/"), *parts)


def name(location: Location) -> str:
    """The last component of a location.

    >>> name("s3://bucket/q/batch-1.json")
    'batch-1.json'
    """
    return location.name if isinstance(location, Path) else posixpath.basename(location)


def parent(location: Location) -> Location:
    """The folder that holds a location."""
    if isinstance(location, Path):
        return location.parent
    return posixpath.dirname(location.rstrip("/"))


def filesystem(location: Location) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of a location and the path in it (no protocol).

    Raises:
        StorageError: the URL's protocol has no installed driver.
    """
    import fsspec

    try:
        return fsspec.core.url_to_fs(str(location))
    except (ImportError, ValueError) as err:
        raise StorageError(f"cannot open the state location {location}: {err}") from None


def _url(fs: AbstractFileSystem, path: str) -> str:
    return str(fs.unstrip_protocol(path))


def glob(folder: Location, pattern: str) -> list[Location]:
    """The entries of `folder` that match `pattern` (`*` within one level), sorted by name.

    Listings of object stores are not cached between calls: another process
    (a serving pod) may have written since.
    """
    if isinstance(folder, Path):
        return sorted(folder.glob(pattern))
    with reported(folder):
        fs, path = filesystem(folder)
        fs.invalidate_cache(path)
        base = path.rstrip("/") + "/"
        found = []
        for match in fs.glob(base + pattern):
            # Spelled like `folder` (fsspec may normalise the path), so names compare equal.
            found.append(
                join(folder, match[len(base) :]) if match.startswith(base) else _url(fs, match)
            )
        return sorted(found)


def exists(location: Location) -> bool:
    """Whether a file or a folder (a prefix that holds objects) exists there."""
    if isinstance(location, Path):
        return location.exists()
    with reported(location):
        fs, path = filesystem(location)
        fs.invalidate_cache(path)
        return bool(fs.exists(path))


def is_file(location: Location) -> bool:
    """Whether a file (an object) exists there."""
    if isinstance(location, Path):
        return location.is_file()
    with reported(location):
        fs, path = filesystem(location)
        fs.invalidate_cache(path)
        return bool(fs.isfile(path))


def files_exist(locations: Sequence[Location]) -> list[bool]:
    """Whether each file exists, in order; one listing per folder of objects, not one call each."""
    listed: dict[str, set[str]] = {}
    out = []
    for location in locations:
        if isinstance(location, Path):
            out.append(location.is_file())
            continue
        folder = str(parent(location))
        if folder not in listed:
            listed[folder] = {str(p) for p in glob(folder, "*")}
        out.append(location in listed[folder])
    return out


def make_dirs(location: Location) -> None:
    """Create a local folder and its parents; object stores have no folders (nothing to do)."""
    if isinstance(location, Path):
        location.mkdir(parents=True, exist_ok=True)


def read_bytes(location: Location) -> bytes:
    """The whole content of a file.

    Raises:
        FileNotFoundError: nothing there.
    """
    if isinstance(location, Path):
        return location.read_bytes()
    with reported(location):
        fs, path = filesystem(location)
        return bytes(fs.cat_file(path))


def write_bytes(location: Location, data: bytes) -> Location:
    """Write a file whole or not at all; readers never see a part of it.

    Locally: a temporary sibling renamed into place (the folder is created).
    Remotely: one PUT of the whole object.
    """
    if isinstance(location, Path):
        location.parent.mkdir(parents=True, exist_ok=True)
        tmp = location.with_name(f".{location.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, location)
        return location
    with reported(location):
        fs, path = filesystem(location)
        fs.pipe_file(path, data)
        return location


def write_files(files: Mapping[Location, bytes]) -> None:
    """Write several files, each whole (as `write_bytes`); an object store's puts go at once.

    One fsspec `pipe` per store sends them concurrently: a writer with many small
    objects (a page and its crops) waits for about one round trip, not one each.
    A failure may leave some written and others not; each that is, is whole.
    """
    stores: dict[int, tuple[AbstractFileSystem, dict[str, bytes], Location]] = {}
    for location, data in files.items():
        if isinstance(location, Path):
            write_bytes(location, data)
            continue
        with reported(location):
            fs, path = filesystem(location)
        stores.setdefault(id(fs), (fs, {}, location))[1][path] = data
    for fs, batch, first in stores.values():
        with reported(first):
            fs.pipe(batch)


def remove(location: Location) -> None:
    """Delete a file; a missing one is not an error."""
    if isinstance(location, Path):
        location.unlink(missing_ok=True)
        return
    with reported(location):
        fs, path = filesystem(location)
        with suppress(FileNotFoundError):
            fs.rm_file(path)


def modified(location: Location) -> float:
    """When a file was last written, as a POSIX timestamp (seconds)."""
    if isinstance(location, Path):
        return location.stat().st_mtime
    with reported(location):
        fs, path = filesystem(location)
        return float(fs.modified(path).timestamp())


@contextmanager
def open_binary(location: Location) -> Iterator[IO[bytes]]:
    """A file opened for reading bytes (random access: Parquet readers seek)."""
    if isinstance(location, Path):
        with location.open("rb") as handle:
            yield handle
        return
    with reported(location):
        fs, path = filesystem(location)
        opened = fs.open(path, "rb")
    with opened as handle:
        yield handle


__all__ = [
    "STATE_URL_ENV",
    "Location",
    "StorageError",
    "as_location",
    "check_location",
    "exists",
    "files_exist",
    "filesystem",
    "glob",
    "is_file",
    "is_url",
    "join",
    "make_dirs",
    "modified",
    "name",
    "open_binary",
    "parent",
    "read_bytes",
    "remove",
    "reported",
    "state_url",
    "write_bytes",
    "write_files",
]
