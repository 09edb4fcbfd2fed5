"""Whether the DVC remote holds every file of a data version, and a push that checks it did.

DVC's own `push` and `status --cloud` trust an index of what the remote holds
(`.dvc/tmp`: once a directory's `.dir` object is on the remote, every file of
it counts as there), so objects deleted from the remote, or a remote emptied
and refilled by hand, go unnoticed: `dvc status -c` is clean and `dvc push`
uploads nothing. Here every object of the version is looked up on the remote
itself (the remote object database's `oids_exist`, DVC's own lookup: a listing
for S3, a stat per file for a folder), and a push transfers exactly what that
lookup finds missing (`dvc_data`'s `transfer`, the code under `dvc push`,
without the index) and is then checked the same way.

A repository with no default DVC remote keeps its versions locally by design:
there is nothing to check against, and `check_remote` says so (None).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsspec.callbacks import Callback

from flywheel.config import DataPlan
from flywheel.data.versioning import DataVersionError, data_version
from flywheel.env import disable_telemetry
from flywheel.processes import fault_point

if TYPE_CHECKING:
    from dvc.repo import Repo

EXAMPLES = 5
"""How many missing paths a message names."""


@dataclass(frozen=True)
class RemoteCheck:
    """What the remote holds of one data version.

    Attributes:
        version: the data version (DVC's hash of the data folder).
        remote: the remote's URL.
        files: files in the version (0 when its file list, the `.dir` object, is nowhere).
        missing: paths (under the repository) of the files the remote lacks, sorted.
        listing_missing: the remote lacks the version's file list (`<version>.dir`).
        in_cache: this machine's DVC cache holds everything the remote lacks, so
            `flywheel data push` from here completes it.
    """

    version: str
    remote: str
    files: int
    missing: tuple[str, ...]
    listing_missing: bool
    in_cache: bool

    @property
    def complete(self) -> bool:
        """Whether the remote holds the whole version (another clone can pull it)."""
        return not self.missing and not self.listing_missing

    def describe(self) -> str:
        """One message: what the remote lacks, and how to put it right."""
        if self.complete:
            return (
                f"DVC remote {self.remote} holds all {self.files} files of data version "
                f"{self.version}"
            )
        if self.files == 0:
            lacks = f"the file list of data version {self.version} ({self.version}.dir)"
        elif not self.missing:
            lacks = f"the file list ({self.version}.dir) of data version {self.version}"
        else:
            shown = ", ".join(self.missing[:EXAMPLES])
            more = len(self.missing) - EXAMPLES
            lacks = (
                f"{len(self.missing)} of {self.files} files of data version {self.version} "
                f"({shown}{f', and {more} more' if more > 0 else ''})"
            )
        fix = (
            "this machine's DVC cache holds them: run `flywheel data push` (or rerun the "
            "interrupted command) to upload them"
            if self.in_cache
            else "this machine's DVC cache lacks them too: push that version from where it was "
            "recorded (`flywheel data push` there), or check out a version the remote holds "
            "(`flywheel data checkout latest`)"
        )
        return f"DVC remote {self.remote} lacks {lacks}, so no other clone can pull it; {fix}"


def check_remote(
    repo: str | Path, plan: DataPlan | None = None, version: str | None = None
) -> RemoteCheck | None:
    """Look up every file of `version` (default: what `data.dvc` records) on the default remote.

    Returns:
        What the remote holds; None when the repository has no default DVC remote.

    Raises:
        DataVersionError: the remote cannot be read (names it and why).
    """
    version = version or data_version(repo, plan)
    with _remote_odb(repo) as found:
        if found is None:
            return None
        dvc, odb = found
        return _check(dvc, odb, plan, version)


def push_version(
    repo: str | Path, plan: DataPlan | None = None, version: str | None = None
) -> RemoteCheck | None:
    """Upload what the remote lacks of a version, then check it all arrived.

    Args:
        repo: the repository (its default remote, its DVC cache).
        plan: the data plan (where `data.dvc` is).
        version: the version to push (default: the one `data.dvc` records); a
            new one is pushed before `data.dvc` names it (`flywheel.data.transaction`).

    Returns:
        The check after the push (complete); None when there is no default remote.

    Raises:
        DataVersionError: the remote cannot be reached or written, this machine's
            cache lacks files the remote lacks too, or the check after the push
            still finds files missing (each names the files and what to do).
    """
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.transfer import transfer

    version = version or data_version(repo, plan)
    with _remote_odb(repo) as found:
        if found is None:
            return None
        dvc, odb = found
        before = _check(dvc, odb, plan, version)
        if before.complete:
            return before
        if not before.in_cache:
            raise DataVersionError(before.describe())
        cache = dvc.cache.local
        try:
            result = transfer(
                cache,
                odb,
                [HashInfo("md5", f"{version}.dir")],
                jobs=None,
                dest_index=None,  # look on the remote itself: DVC's index may be wrong
                cache_odb=cache,
                shallow=False,  # every file of the folder, not only its listing
                callback=_FaultHalfway("track:pushing"),
            )
        except Exception as err:  # any driver error: name the remote, say why
            raise DataVersionError(
                f"pushing data version {version} to DVC remote {before.remote} failed: "
                f"{_first_line(err)}; the version is safe in this machine's DVC cache: run "
                "`flywheel data push` when the remote can be reached"
            ) from err
        if result.failed:
            raise DataVersionError(
                f"pushing data version {version} to DVC remote {before.remote}: "
                f"{len(result.failed)} objects failed to upload; run `flywheel data push` again"
            )
        fault_point("track:pushed")
        after = _check(dvc, odb, plan, version)
    if not after.complete:
        raise DataVersionError(f"after the push, {after.describe()}")
    return after


def _check(dvc: Repo, odb: Any, plan: DataPlan | None, version: str) -> RemoteCheck:
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    cache = dvc.cache.local
    root = Path(plan.root if plan is not None else "data").as_posix().rstrip("/")
    remote = dvc.cloud.get_remote()
    url = str(remote.fs.unstrip_protocol(remote.path))
    dir_oid = f"{version}.dir"
    try:
        listing_on_remote = bool(odb.oids_exist([dir_oid]))
        holder = cache if cache.exists(dir_oid) else odb if listing_on_remote else None
        if holder is None:
            return RemoteCheck(version, url, 0, (), True, False)
        tree = Tree.load(holder, HashInfo("md5", dir_oid))
        paths: dict[str, list[str]] = {}
        for key, _, info in tree:
            paths.setdefault(info.value, []).append(f"{root}/{'/'.join(key)}")
        on_remote = set(odb.oids_exist(set(paths)))
    except DataVersionError:
        raise
    except Exception as err:  # any driver error: name the remote, say why
        raise DataVersionError(f"DVC remote {url}: cannot be read: {_first_line(err)}") from err
    lacking = set(paths) - on_remote
    in_cache = lacking <= set(cache.oids_exist(lacking)) and (
        listing_on_remote or cache.exists(dir_oid)
    )
    missing = tuple(sorted(p for oid in lacking for p in paths[oid]))
    files = sum(len(p) for p in paths.values())
    return RemoteCheck(version, url, files, missing, not listing_on_remote, in_cache)


@contextmanager
def _remote_odb(repo: str | Path) -> Iterator[tuple[Repo, Any] | None]:
    """The repository (open) and its default remote's object database; None without a remote."""
    from dvc.repo import Repo

    disable_telemetry()
    with Repo(str(repo)) as dvc:
        if not dvc.config["core"].get("remote"):
            yield None
            return
        try:
            odb = dvc.cloud.get_remote_odb(None, "push")
        except Exception as err:  # a remote DVC cannot open: name it, say why
            raise DataVersionError(
                f"the default DVC remote of {repo} cannot be opened: {_first_line(err)}"
            ) from err
        yield dvc, odb


class _FaultHalfway(Callback):
    """A transfer's progress callback that reaches the fault point `step` once half is sent.

    The crash tests kill a push mid-way there; otherwise it only counts.
    """

    def __init__(self, step: str) -> None:
        super().__init__()
        self.step = step

    def call(self, *args: Any, **kwargs: Any) -> None:
        if self.size and self.value * 2 >= self.size:
            fault_point(self.step)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
