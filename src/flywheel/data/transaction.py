"""Data versions as transactions: a merge or a track that `kill -9` cannot leave half done.

A new data version takes several writes: the merged images and manifest, the
switch of the data folder, `dvc add` (the cache, then `data.dvc`), the push
and the latest-version record next to the remote. A process killed between
any two of them must leave something the next command recognises and puts
right. The protocol:

1. **Build beside.** A merge builds the new dataset folder in
   `<repo>/.dvc/tmp/flywheel/staging/<id>/<name>` (git ignores `.dvc/tmp`):
   every file of the current version hard-linked (no bytes copied, the same
   inodes, so DVC does not hash them again), the new images and manifest
   written as new files, the whole checked by the data gate. A kill here
   leaves the data folder untouched; the next command removes the copy.
2. **Intent.** `journal.json` (written whole, atomically) records the
   operation, the version and `data.dvc` text before, whether to push, and
   for a merge the staged folder and its manifest's SHA-256.
3. **Switch.** The staged folder and the dataset folder trade places in one
   `renameat2(RENAME_EXCHANGE)` (Linux); where the kernel or filesystem
   cannot, two renames through `<staged>.old`, which recovery also knows.
4. **Add.** `dvc add` writes the cache and the new `data.dvc` text; when the
   version is to be pushed, that text goes into the journal (`pending`: the
   commit point) and `data.dvc` is put back as it was, so it never names a
   version the remote does not hold. Before the commit point, recovery
   *undoes* (the old folder is swapped back, the old `data.dvc` text
   restored) and a rerun merges again; after it, recovery *finishes*.
5. **Push and verify.** Every file of the version is uploaded from the cache
   and then looked up on the remote (`flywheel.data.sync`). Only then is the
   pending text written into `data.dvc` (atomically), the latest-version
   record written, and the journal and the staged (old) folder removed.

A kill after the commit point is finished by pushing the pending version
forward, not by undoing it: the data folder already is that version and the
local cache holds every file of it (`dvc add` put them there), while going back
would throw away a merge that passed the data gate. A push that fails for
another reason (the remote unreachable) keeps the journal and `data.dvc` as it
was, so the next data command tries again and records the version once it is
pushed. (A kill in the instant between `dvc add` writing `data.dvc` and the
journal's note is finished the same way, from `data.dvc`'s text.)
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from flywheel.config import DataPlan
from flywheel.data.versioning import DataVersionError, data_version, dvc_file, version_in
from flywheel.processes import fault_point

log = logging.getLogger(__name__)

WORK_DIR = Path(".dvc") / "tmp" / "flywheel"
"""Under the repository: the journal and the staged folders (git ignores `.dvc/tmp`)."""

JOURNAL = "journal.json"
STAGING = "staging"
ASIDE = ".old"
"""Suffix of the old folder during a two-rename switch (no `RENAME_EXCHANGE`)."""

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@dataclass(frozen=True)
class Journal:
    """An operation on the data version in flight (`journal.json`).

    Attributes:
        op: `track` or `merge`.
        before: the version `data.dvc` recorded before (None: there was none).
        pointer: `data.dvc`'s text before (None: there was none).
        push: whether the new version is to be pushed and verified.
        pid: the process that started it.
        started: when (UTC, ISO 8601).
        dataset: a merge's dataset folder, relative to the repository.
        staged: a merge's staged folder, relative to the repository.
        manifest_sha256: the SHA-256 of the merged manifest (tells the folders apart).
        pending: `data.dvc`'s new text, written there once the new version is pushed
            and verified (None: `dvc add` has not run, or nothing is to be pushed).
    """

    op: str
    before: str | None
    pointer: str | None
    push: bool
    pid: int
    started: str
    dataset: str | None = None
    staged: str | None = None
    manifest_sha256: str | None = None
    pending: str | None = None


def work_dir(repo: str | Path) -> Path:
    """The repository's transaction folder (journal, staged copies)."""
    return Path(repo) / WORK_DIR


def read_journal(repo: str | Path) -> Journal | None:
    """The operation in flight; None when none is.

    Raises:
        DataVersionError: the journal is not one (names it; remove it once the
            data folder and `data.dvc` are checked by hand).
    """
    path = work_dir(repo) / JOURNAL
    try:
        return Journal(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:
        raise DataVersionError(
            f"{path}: not a data transaction journal ({err}); check data/ and data.dvc "
            "(`dvc status`), then remove it"
        ) from err


def begin(repo: str | Path, plan: DataPlan | None, op: str, *, push: bool, **merge: str) -> Journal:
    """Record the intent of `op` (the journal), before the first write it makes to the data."""
    pointer = dvc_file(repo, plan)
    text = pointer.read_text() if pointer.is_file() else None
    journal = Journal(
        op=op,
        before=_recorded(repo, plan),
        pointer=text,
        push=push,
        pid=os.getpid(),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        **merge,
    )
    _write_journal(repo, journal)
    return journal


def _write_journal(repo: str | Path, journal: Journal) -> None:
    _write_atomic(work_dir(repo) / JOURNAL, json.dumps(asdict(journal), indent=2).encode())


def end(repo: str | Path) -> None:
    """The operation is complete: remove the journal, and staged folders no live process builds."""
    (work_dir(repo) / JOURNAL).unlink(missing_ok=True)
    staging = work_dir(repo) / STAGING
    for folder in staging.iterdir() if staging.is_dir() else []:
        if not _alive(_pid_of(folder)):  # this process's, or a dead one's
            shutil.rmtree(folder, ignore_errors=True)


def stage_copy(dataset_dir: Path, work: Path) -> Path:
    """A copy of `dataset_dir` to build the next version in: `work/staging/<id>/<name>`.

    Files are hard links to the current ones (no bytes copied; a plain copy
    where the filesystem has no hard links), so a writer must replace a file
    (write a new one, rename it over), never write into one.
    """
    staged = work / STAGING / f"{os.getpid()}-{uuid.uuid4().hex}" / dataset_dir.name
    staged.parent.mkdir(parents=True)
    shutil.copytree(dataset_dir, staged, symlinks=True, copy_function=_link_or_copy)
    return staged


def discard(staged: Path) -> None:
    """Remove a staged folder (its `<pid>-<id>` parent), and the staging folders left empty."""
    shutil.rmtree(staged.parent, ignore_errors=True)
    for folder in (staged.parent.parent, staged.parent.parent.parent):  # staging/, its work dir
        try:
            folder.rmdir()
        except OSError:  # not empty (a journal, another staged copy): keep it
            break


def switch(target: Path, staged: Path) -> None:
    """Make `staged` the folder at `target`, and `target`'s old content the staged folder.

    One atomic `renameat2(RENAME_EXCHANGE)` where Linux and the filesystem
    allow it; elsewhere `target` → `<staged>.old`, `staged` → `target`, then
    `<staged>.old` → `staged` (a kill in between is undone by `recover`).
    """
    if _exchange(target, staged):
        return
    aside = staged.with_name(staged.name + ASIDE)
    os.rename(target, aside)
    os.rename(staged, target)
    os.rename(aside, staged)


def manifest_sha256(dataset_dir: Path) -> str | None:
    """The SHA-256 of a dataset folder's manifest; None when it has none."""
    from flywheel.data.manifest import manifest_path

    try:
        return hashlib.sha256(manifest_path(dataset_dir).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def recover(repo: str | Path, plan: DataPlan | None = None) -> str | None:
    """Put right what a killed track or merge left; say what was done (None: nothing to do).

    Before `data.dvc` names the new version, the operation is undone: the old
    dataset folder back in place, `data.dvc`'s old text back, staged copies
    removed. After, it is finished: the version pushed and verified (when the
    operation was to push), the latest-version record written.

    Raises:
        DataVersionError: the pending version could not be pushed or verified
            (the journal stays: the next command tries again).
    """
    repo = Path(repo)
    journal = read_journal(repo)
    staging = work_dir(repo) / STAGING
    if journal is not None and _alive(journal.pid, journal.started):
        raise DataVersionError(
            f"another flywheel process ({journal.pid}, started {journal.started}) is changing "
            f"the data version ({journal.op}); wait for it to end, then run this again"
        )
    if journal is None:
        leftovers = [
            p for p in (staging.iterdir() if staging.is_dir() else []) if not _alive(_pid_of(p))
        ]
        if not leftovers:
            return None
        for folder in leftovers:
            shutil.rmtree(folder, ignore_errors=True)
        return (
            f"removed the unfinished copy that an interrupted merge was building in {staging} "
            f"({len(leftovers)} folder(s)); {_root(plan)}/ was never changed by it"
        )
    recorded = _recorded(repo, plan)
    who = f"process {journal.pid}, started {journal.started}"
    if journal.pending is not None:  # past the commit point: push, then record
        version = version_in(journal.pending, JOURNAL)
        pushed = _push_and_record(repo, plan, version, journal.pending)
        end(repo)
        return f"finished an interrupted {journal.op} ({who}): data version {version}{pushed}"
    if recorded is None or recorded == journal.before:  # `dvc add` did not record it: undo
        if journal.op == "merge":
            _swap_back(repo, journal)
        _restore_pointer(repo, plan, journal)
        end(repo)
        if journal.op == "merge":
            return (
                f"undid an interrupted merge ({who}): {_root(plan)}/ is back at data version "
                f"{journal.before}, unchanged; run `flywheel data merge` again to merge"
            )
        return (
            f"an interrupted `flywheel data track` ({who}) recorded nothing; data.dvc still "
            f"records {journal.before}"
        )
    # killed between `dvc add` writing data.dvc and the journal's note of it
    pointer = dvc_file(repo, plan).read_text()
    pushed = _push_and_record(repo, plan, recorded, pointer) if journal.push else ""
    end(repo)
    return f"finished an interrupted {journal.op} ({who}): data version {recorded}{pushed}"


def commit_merge(
    repo: str | Path, plan: DataPlan, dataset_dir: Path, staged: Path, *, push: bool
) -> str:
    """Make the staged (merged, gated) folder the dataset and record it: a new data version.

    Journals the intent, switches the folders atomically, `dvc add`s the data
    root, then pushes and verifies (`finish`). A kill at any step is put right
    by the next command (`recover`).

    Returns:
        The new data version.
    """
    from dvc.repo import Repo

    from flywheel.env import disable_telemetry

    repo = Path(repo)
    begin(
        repo,
        plan,
        "merge",
        push=push,
        dataset=os.path.relpath(dataset_dir, repo),
        staged=os.path.relpath(staged, repo),
        manifest_sha256=manifest_sha256(staged) or "",
    )
    fault_point("merge:intent")
    switch(dataset_dir, staged)
    fault_point("merge:switched")
    disable_telemetry()
    with Repo(str(repo)) as dvc:
        dvc.add(str(repo / plan.root))
    version = data_version(repo, plan)
    finish(repo, plan, version, push=push)
    return version


def finish(repo: Path, plan: DataPlan | None, version: str, *, push: bool) -> str:
    """After `dvc add`: push and verify (when asked), then record the version in `data.dvc`.

    `data.dvc`'s new text waits in the journal while the version is pushed
    (module doc); a push that fails keeps it there, and `data.dvc` as it was
    (the next data command tries again), and is a warning here: the version is
    in the data folder and safe in the local cache.

    Returns:
        What happened to the push, for the caller's message ('' without a push).
    """
    if not push:
        fault_point("track:added")
        end(repo)
        return ""
    journal = read_journal(repo)
    pending = dvc_file(repo, plan).read_text()
    if journal is not None:
        _write_journal(repo, replace(journal, pending=pending))  # the commit point
        _restore_pointer(repo, plan, journal)  # data.dvc names no version the remote lacks
    fault_point("track:added")
    try:
        pushed = _push_and_record(repo, plan, version, pending)
    except DataVersionError as err:
        log.warning(
            "data version %s is in the data folder but not pushed, so data.dvc does not record "
            "it yet (the next data command, e.g. `flywheel data push`, pushes and records it): %s",
            version,
            err,
        )
        for folder in (work_dir(repo) / STAGING).glob(f"{os.getpid()}-*"):  # no undo needs it now
            shutil.rmtree(folder, ignore_errors=True)
        return f"; NOT pushed, so not recorded in data.dvc yet: {err}"
    end(repo)
    return pushed


def _push_and_record(repo: Path, plan: DataPlan | None, version: str, pointer: str) -> str:
    """Push `version` and check it on the remote, then write `pointer` into data.dvc."""
    from flywheel.data.remote import record_latest
    from flywheel.data.sync import push_version

    check = push_version(repo, plan, version)
    if check is None:
        _write_atomic(dvc_file(repo, plan), pointer.encode())
        return " (no DVC remote: kept locally)"
    fault_point("track:verified")
    _write_atomic(dvc_file(repo, plan), pointer.encode())
    try:
        record_latest(repo, version)
    except Exception as err:  # the version is pushed; only the note is lost
        log.warning("data version %s pushed, but not recorded as the latest: %s", version, err)
    return f", pushed: {check.describe()} (checked on the remote)"


def _swap_back(repo: Path, journal: Journal) -> None:
    """Put the old dataset folder back in place, from wherever a killed switch left it."""
    if journal.dataset is None or journal.staged is None:
        return
    target, staged = repo / journal.dataset, repo / journal.staged
    aside = staged.with_name(staged.name + ASIDE)
    if not target.exists() and aside.exists():  # killed between two renames
        os.rename(aside, target)
    elif target.exists() and manifest_sha256(target) == journal.manifest_sha256:
        if aside.exists():  # a two-rename switch killed before its last rename
            os.rename(target, staged)
            os.rename(aside, target)
        elif staged.exists():
            switch(target, staged)  # staged holds the old version: trade back


def _restore_pointer(repo: Path, plan: DataPlan | None, journal: Journal) -> None:
    pointer = dvc_file(repo, plan)
    current = pointer.read_text() if pointer.is_file() else None
    if current == journal.pointer:
        return
    if journal.pointer is None:
        pointer.unlink(missing_ok=True)
    else:
        _write_atomic(pointer, journal.pointer.encode())


def unpushed(repo: str | Path) -> str | None:
    """The version a track or merge put into the data folder but has not pushed (so data.dvc
    does not record it yet); None when there is none.

    Raises:
        DataVersionError: the journal is not one (see `read_journal`).
    """
    journal = read_journal(repo)
    return (
        None if journal is None or journal.pending is None else version_in(journal.pending, JOURNAL)
    )


def _recorded(repo: str | Path, plan: DataPlan | None) -> str | None:
    """The version `data.dvc` names; None when there is none or it cannot be read."""
    try:
        return data_version(repo, plan)
    except DataVersionError:  # none, or half written by a killed `dvc add`
        return None


def _alive(pid: int, since: str | None = None) -> bool:
    """Whether process `pid` runs (not a zombie, not this one, started by `since` if given)."""
    import psutil

    if pid in (0, os.getpid()):
        return False
    try:
        process = psutil.Process(pid)
        if (
            since is not None
            and process.create_time() > datetime.fromisoformat(since).timestamp() + 1
        ):
            return False  # the PID was reused by a later process
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:  # gone, or not ours to see
        return False


def _pid_of(staged_parent: Path) -> int:
    """The process that made a staging folder (`<pid>-<id>`); 0 when the name says none."""
    head = staged_parent.name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def _exchange(a: Path, b: Path) -> bool:
    """`renameat2(a, b, RENAME_EXCHANGE)`; False where the kernel, libc or filesystem lack it."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, f"exchanging {a} and {b}: {os.strerror(code)}")


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:  # no hard links here (another filesystem, FAT): copy
        shutil.copy2(src, dst)
    return dst


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: a temporary file, flushed to disk, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _root(plan: DataPlan | None) -> str:
    return Path(plan.root if plan is not None else "data").as_posix()
