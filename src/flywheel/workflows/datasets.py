"""The data a step works on: the version it is given, brought from the DVC remote by hash.

A pipeline step on a cluster has no repository: it gets a data version (the
DVC directory hash) as a parameter and materialises exactly that version from
the remote in an empty folder (`flywheel.data.remote.materialise`). On a
laptop, a step given the repository whose `data.dvc` records the version uses
that folder as it always did (kept, pulled or regenerated).

Under `torchrun` (or a PyTorchJob) the processes of one machine share a
filesystem: only local rank 0 materialises, the others wait for its
`READY_FILE` (or its `FAILED_FILE`, whose reason they raise) with a timeout;
`decide_once` is the same protocol for any one answer (the lineage check of a
repository's data folder, which runs DVC under a lock).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.config import Params
from flywheel.workflows.output import say

if TYPE_CHECKING:
    from flywheel.data.remote import DataRemote

READY_FILE = ".flywheel-ready"
"""Written by the materialising rank into the workspace when the data is in place."""

FAILED_FILE = ".flywheel-failed"
"""Written by the materialising rank when it could not; holds the reason."""

WAIT_TIMEOUT_ENV = "FLYWHEEL_DATA_WAIT_S"
DEFAULT_WAIT_S = 1800.0
"""How long the other ranks wait for the data (a large version from a slow remote)."""

LATEST = "latest"
"""The version a job given none trains on: the latest recorded next to the DVC remote."""


@dataclass(frozen=True)
class DataAtVersion:
    """A data version on disk.

    Attributes:
        version: the DVC data version.
        provenance: present, pulled, regenerated, collected (a repository's
            folder) or materialised (from the remote, by hash).
        repo: the DVC project holding it (the repository, or a workspace).
        dataset_dir: the plan's dataset folder inside it.
    """

    version: str
    provenance: str
    repo: Path
    dataset_dir: Path


def data_at_version(params: Params, version: str, repo: str | Path, scratch: Path) -> DataAtVersion:
    """The data at `version`: the repository's, when it records that version, else from the remote.

    In a repository, what a killed `track` or `merge` left is put right first
    (and said), and the repository's version must be held whole by its
    default DVC remote (`ensure_dataset` checks it file by file): a step never
    records lineage to a version another machine could not pull.

    Args:
        params: the configuration (`data`).
        version: the data version asked for; '' means what the repository's
            `data.dvc` records, or without a repository the latest recorded
            next to the remote.
        repo: the repository root holding `data.dvc`; '' for none (a pod).
        scratch: an empty (or missing) folder to materialise into.

    Raises:
        flywheel.data.versioning.DataVersionError: no remote, the version
            missing from it (or files of it: counted and named), unrecorded
            changes in the repository's folder.
    """
    from flywheel.data.remote import bare, find_remote, materialise
    from flywheel.data.versioning import (
        data_version,
        dvc_file,
        ensure_dataset,
        recover_interrupted,
    )

    plan = params.data
    if repo and dvc_file(repo, plan).is_file():
        done = recover_interrupted(repo, plan)  # a killed track or merge: undone or finished
        if done is not None:
            say(done)
        recorded = data_version(repo, plan)
        if not version or bare(version) == recorded:
            provenance, recorded = ensure_dataset(plan, repo)
            return DataAtVersion(recorded, provenance, Path(repo), Path(repo) / plan.dataset_dir)
    remote = find_remote(repo or None)
    version = version or latest_or_fail(params, remote, scratch)
    materialise(version, scratch, plan, remote)
    return DataAtVersion(bare(version), "materialised", scratch, scratch / plan.dataset_dir)


def latest_or_fail(params: Params, remote: DataRemote, scratch: Path) -> str:
    """The latest version recorded next to `remote` (read through a throw-away workspace).

    Raises:
        flywheel.data.versioning.DataVersionError: none recorded.
    """
    import shutil

    from flywheel.data.remote import init_workspace, latest_version
    from flywheel.data.versioning import DataVersionError

    probe = scratch.with_name(scratch.name + "-latest")
    try:
        latest = latest_version(remote, init_workspace(probe, remote))
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if latest is None:
        raise DataVersionError(
            f"no data version given, and the DVC remote {remote} records no latest one "
            "(flywheel/latest.json): pass the version, or push one with `flywheel data track`"
        )
    say(f"latest data version {latest.version} (recorded {latest.time} by {latest.who})")
    return latest.version


def materialise_once(
    params: Params,
    version: str,
    workspace: Path,
    *,
    local_rank: int,
    timeout_s: float | None = None,
) -> Path:
    """Data version `version` in `workspace`, materialised by local rank 0 only; the dataset folder.

    Rank 0 materialises (from `FLYWHEEL_DVC_REMOTE`, else the default remote of
    the working directory's DVC project, into `workspace`, emptied first of
    what an attempt that never became READY left) and then writes
    `READY_FILE`; on failure it writes `FAILED_FILE`, suffixed with the launch
    (`launch_key`), with the reason and raises. Every other rank waits for one
    of the two (polling twice a second) and raises the reason, or a timeout
    naming the folder, after `timeout_s` (default `FLYWHEEL_DATA_WAIT_S`, else
    30 minutes). A workspace already READY at this version is used as it is (a
    restarted job).

    `version` may be `LATEST`: rank 0 alone reads the latest version recorded
    next to the remote (a PyTorchJob or Katib trial given no version), so the
    ranks of one machine never train on two versions; `ready_version` then
    says which it was.

    Raises:
        flywheel.data.versioning.DataVersionError: the data could not be
            materialised (on every rank), or it did not appear in time.
    """
    from flywheel.data.remote import REMOTE_ENV, bare, find_remote, materialise

    wanted = None if version == LATEST else bare(version)
    # Named after this launch: a restarted container finds its emptyDir as the failed
    # attempt left it, and its waiting ranks must not raise that attempt's reason.
    ready, failed = workspace / READY_FILE, workspace / f"{FAILED_FILE}-{launch_key()}"
    dataset_dir = workspace / params.data.dataset_dir
    if _ready_at(ready, wanted):
        return dataset_dir
    if local_rank == 0:
        if workspace.exists():  # not READY: what a failed or killed attempt left
            shutil.rmtree(workspace)
        try:
            # A pod's image holds a .dvc/config of its own: the environment's remote wins.
            remote = find_remote(None if os.environ.get(REMOTE_ENV) else Path.cwd())
            chosen = wanted or latest_or_fail(params, remote, workspace)
            materialise(chosen, workspace, params.data, remote)
        except Exception as err:
            workspace.mkdir(parents=True, exist_ok=True)
            failed.write_text(str(err))
            raise
        _write_atomically(ready, {"version": chosen})
        say(f"data version {chosen} materialised in {workspace}")
        return dataset_dir
    _wait_for(
        lambda: _ready_at(ready, wanted),
        failed,
        timeout_s,
        what=f"data version {wanted or LATEST} did not appear in {workspace}",
        doer="local rank 0 could not materialise",
        hint="local rank 0 materialises it",
    )
    return dataset_dir


def ready_version(workspace: Path) -> str | None:
    """The data version a materialised `workspace` holds (its `READY_FILE`); None when not ready."""
    try:
        version = json.loads((workspace / READY_FILE).read_text()).get("version")
    except (FileNotFoundError, ValueError):
        return None
    return version if isinstance(version, str) else None


def decide_once(
    answer: Path, decide: Callable[[], str], *, local_rank: int, timeout_s: float | None = None
) -> str:
    """`decide()` run by local rank 0 alone; every other rank of the machine gets its answer.

    For what must not run on every rank at once: DVC's lock on a repository
    gives up after a few seconds, so N ranks checking (and committing to the
    cache) the same data folder fail at random. Rank 0 writes the answer to the
    file `answer` (or, when `decide` raises, the reason next to it, which the
    others raise); the others poll for it as `materialise_once`'s ranks do. The
    file must name this launch (`launch_key`): an answer left by an earlier
    launch would be taken as this one's.

    Raises:
        flywheel.data.versioning.DataVersionError: on a waiting rank, what
            `decide` raised on rank 0, or no answer in time. On rank 0, what
            `decide` raises.
    """
    failed = answer.with_name(answer.name + ".failed")
    if local_rank == 0:
        answer.parent.mkdir(parents=True, exist_ok=True)
        try:
            value = decide()
        except Exception as err:
            failed.write_text(str(err))
            raise
        _write_atomically(answer, {"answer": value})
        return value
    _wait_for(
        answer.is_file,
        failed,
        timeout_s,
        what=f"local rank 0 wrote no answer to {answer}",
        doer="local rank 0 failed",
        hint="it decides for every rank of the machine",
    )
    return str(json.loads(answer.read_text())["answer"])


def launch_key() -> str:
    """What names one `torchrun` launch on this machine, the same in each of its local ranks.

    torchrun's agent is the parent of every local rank: its process id, with the
    rendezvous run id and the restart count, tells this launch (and a restart
    of it) from any earlier one on the machine.
    """
    run = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"{run}-{os.getppid()}-{restart}"


def _write_atomically(path: Path, content: dict[str, str]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(content))
    partial.replace(path)  # atomic: a waiting rank never reads half of it


def _wait_for(
    done: Callable[[], bool],
    failed: Path,
    timeout_s: float | None,
    *,
    what: str,
    doer: str,
    hint: str,
) -> None:
    """Poll `done` twice a second until true; raise rank 0's reason (`failed`), or time out."""
    from flywheel.data.versioning import DataVersionError

    limit = timeout_s if timeout_s is not None else _wait_limit()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if failed.is_file():
            raise DataVersionError(f"{doer}: {failed.read_text()}")
        if done():
            return
        time.sleep(0.5)
    raise DataVersionError(
        f"{what} within {limit:.0f} s ({hint}; raise {WAIT_TIMEOUT_ENV} for a slow remote)"
    )


def _ready_at(ready: Path, version: str | None) -> bool:
    """READY at `version`; at any version when None (`LATEST`: rank 0 chose it)."""
    found = ready_version(ready.parent)
    return found is not None and (version is None or found == version)


def _wait_limit() -> float:
    raw = os.environ.get(WAIT_TIMEOUT_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_WAIT_S
    except ValueError:
        return DEFAULT_WAIT_S
