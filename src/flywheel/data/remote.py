"""Data versions by hash, without git: materialise any version from the DVC remote.

A pod has no git checkout, and the `data.dvc` baked into its image records the
version the image was built with, not the one a run asks for. So a step that
needs version `H` (DVC's hash of the data folder, the `md5` of the `.dir`
entry) builds a DVC project of its own in an empty folder (`dvc init
--no-scm`), points it at the remote, writes a `data.dvc` that records `H` and
pulls: exactly what `dvc pull` does in a clone, with DVC's own machinery.

The remote is `FLYWHEEL_DVC_REMOTE` (`s3://bucket/prefix`, or a folder) when
set, else the default remote of a repository's `.dvc/config`. An S3 remote's
endpoint (MinIO, any S3-compatible store) comes from `AWS_ENDPOINT_URL_S3`,
`AWS_ENDPOINT_URL` or `MLFLOW_S3_ENDPOINT_URL`, its credentials from the usual
`AWS_*` variables.

The latest version is recorded next to the data, in `<remote>/flywheel/latest.json`
(version, time, who), written in one atomic put, so a cluster job and a laptop
read the same answer.
"""

from __future__ import annotations

import getpass
import io
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from flywheel.config import DataPlan
from flywheel.data.versioning import DataVersionError, dvc_file
from flywheel.env import disable_telemetry

if TYPE_CHECKING:
    from dvc.repo import Repo

log = logging.getLogger(__name__)

REMOTE_ENV = "FLYWHEEL_DVC_REMOTE"
"""The DVC remote's URL where no repository names one (a pod): `s3://bucket/prefix` or a folder."""

ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
"""Where an S3 remote's endpoint URL is read from, first set wins (MinIO and other S3 stores)."""

REMOTE_NAME = "flywheel"
"""The remote's name in a materialised workspace's `.dvc/config`."""

LATEST_PATH = ("flywheel", "latest.json")
"""Where, under the remote's root, the latest data version is recorded."""


@dataclass(frozen=True)
class DataRemote:
    """A DVC remote: its URL, and for S3 the endpoint to reach it at (None: AWS itself)."""

    url: str
    endpoint_url: str | None = None

    def __str__(self) -> str:
        return self.url + (f" (endpoint {self.endpoint_url})" if self.endpoint_url else "")

    def config(self) -> dict[str, Any]:
        """The remote's section of a `.dvc/config`."""
        section: dict[str, Any] = {"url": self.url}
        if self.endpoint_url and self.url.startswith("s3://"):
            section["endpointurl"] = self.endpoint_url
        return section


def s3_endpoint() -> str | None:
    """The S3 endpoint URL the environment names (`ENDPOINT_ENVS`), None for AWS itself."""
    return next((os.environ[k] for k in ENDPOINT_ENVS if os.environ.get(k)), None)


def find_remote(repo: str | Path | None = None) -> DataRemote:
    """The DVC remote versions are read from and written to.

    A repository's default remote (`.dvc/config`, as `dvc pull` uses it) when
    `repo` is one and has a default remote, else `FLYWHEEL_DVC_REMOTE` (a pod:
    no repository).

    Raises:
        DataVersionError: neither names a remote.
    """
    if repo is not None and (Path(repo) / ".dvc").is_dir():
        with _open(repo) as dvc:
            name = dvc.config["core"].get("remote")
            section = dvc.config["remote"].get(name, {}) if name else {}
        if section.get("url"):
            return DataRemote(str(section["url"]), section.get("endpointurl"))
    if os.environ.get(REMOTE_ENV):
        return DataRemote(os.environ[REMOTE_ENV], s3_endpoint())
    where = f"{Path(repo) / '.dvc' / 'config'} has no default DVC remote and " if repo else ""
    raise DataVersionError(
        f"no DVC remote: {where}{REMOTE_ENV} is not set; set it to the remote holding the "
        "data versions (s3://bucket/prefix, or a folder), or `dvc remote add -d NAME URL`"
    )


def init_workspace(root: Path, remote: DataRemote) -> Path:
    """A DVC project without git at `root` (created; must be empty), its default remote `remote`.

    Raises:
        DataVersionError: `root` exists and is not empty (nothing in it is touched).
    """
    from dvc.repo import Repo

    disable_telemetry()
    if root.exists() and any(root.iterdir()):
        raise DataVersionError(f"{root}: not empty; a data version is materialised in an empty one")
    root.mkdir(parents=True, exist_ok=True)
    dvc = Repo.init(str(root), no_scm=True)
    try:
        with dvc.config.edit() as config:
            config["core"]["analytics"] = False
            config["core"]["remote"] = REMOTE_NAME
            config["remote"][REMOTE_NAME] = remote.config()
    finally:
        dvc.close()
    return root


def write_pointer(repo: Path, plan: DataPlan, version: str) -> Path:
    """Write `<repo>/<data root>.dvc` recording `version` (what `dvc add` would have written)."""
    path = dvc_file(repo, plan)
    out = {"md5": f"{bare(version)}.dir", "hash": "md5", "path": Path(plan.root).name}
    path.write_text(yaml.safe_dump({"outs": [out]}, sort_keys=False))
    return path


def bare(version: str) -> str:
    """A data version without DVC's `.dir` suffix, checked to be an md5 hex digest.

    >>> bare("1b8e3c4e4650d921c59d28b119038207.dir")
    '1b8e3c4e4650d921c59d28b119038207'

    Raises:
        DataVersionError: not 32 hexadecimal digits.
    """
    digest = version.strip().removesuffix(".dir")
    if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest.lower()):
        raise DataVersionError(
            f"data version {version!r}: not a DVC directory hash (32 hex digits, e.g. the "
            "md5 in data.dvc)"
        )
    return digest.lower()


def check_version(repo: str | Path, version: str, remote: DataRemote) -> None:
    """Fail at once unless `remote` holds version `version` (its `.dir` manifest).

    Raises:
        DataVersionError: the remote cannot be reached (names it and why), or
            does not hold the version (names both).
    """
    with _open(repo) as dvc:
        try:
            odb = dvc.cloud.get_remote_odb()
            found = odb.exists(f"{bare(version)}.dir")
            root = dvc.cloud.get_remote()
            exists = found or root.fs.exists(root.path)
        except DataVersionError:
            raise
        except Exception as err:  # any driver error: name the remote, say why
            raise DataVersionError(
                f"DVC remote {remote}: cannot be read: {_first_line(err)}"
            ) from err
    if not exists:
        raise DataVersionError(
            f"DVC remote {remote}: cannot be read: no such folder or bucket (or nothing was "
            f"ever pushed to it), so it cannot hold data version {bare(version)}"
        )
    if not found:
        raise DataVersionError(
            f"DVC remote {remote} does not hold data version {bare(version)}: push it from "
            "where it was recorded (`dvc push`), or ask for a version the remote has "
            "(the latest: `flywheel data latest`)"
        )


def materialise(version: str, root: Path, plan: DataPlan, remote: DataRemote | None = None) -> Path:
    """Bring data version `version` from the remote into the empty folder `root`.

    `root` becomes a DVC project without git whose `data.dvc` records the
    version; its data folder (`plan.root`) holds exactly that version.

    Returns:
        The data folder.

    Raises:
        DataVersionError: no remote configured, the remote unreadable or without
            the version, or `root` not empty.
    """
    remote = remote or find_remote()
    init_workspace(root, remote)
    write_pointer(root, plan, version)
    check_version(root, version, remote)
    with _open(root) as dvc, _quiet_dvc():
        try:
            dvc.pull(targets=[str(dvc_file(root, plan))])
        except Exception as err:  # DVC raises many kinds; all mean "not restored"
            raise DataVersionError(
                f"DVC remote {remote}: pulling data version {bare(version)} failed: "
                f"{_first_line(err)}{_lacking(root, plan, version)}"
            ) from err
    return root / plan.root


def _lacking(root: Path, plan: DataPlan, version: str) -> str:
    """What the remote lacks of `version` (files counted and named), to explain a failed pull."""
    from flywheel.data.sync import check_remote

    try:
        check = check_remote(root, plan, version)
    except DataVersionError as err:
        return f" ({err})"
    return "" if check is None or check.complete else f"; {check.describe()}"


def checkout_version(repo: str | Path, plan: DataPlan, version: str) -> str:
    """Bring data version `version` (or `latest`) into `repo`'s data folder; `data.dvc` records it.

    Nothing unrecorded is lost: what a killed `track` or `merge` left is put
    right first (`flywheel.data.transaction.recover`), a data folder with
    changes `data.dvc` does not record is refused, and a failed pull puts the
    old `data.dvc` back.

    Returns:
        The version now checked out.

    Raises:
        DataVersionError: no remote, the version missing from it (or no latest
            recorded), unrecorded changes in the data folder.
    """
    from flywheel.data.versioning import is_clean, recover_interrupted

    repo = Path(repo)
    done = recover_interrupted(repo, plan)  # a killed track or merge: undone or finished first
    if done is not None:
        log.warning("%s", done)
    remote = find_remote(repo)
    if version == "latest":
        latest = latest_version(remote, repo)
        if latest is None:
            raise DataVersionError(f"DVC remote {remote} records no latest data version")
        version = latest.version
    version = bare(version)
    check_version(repo, version, remote)
    data_dir, pointer = repo / plan.root, dvc_file(repo, plan)
    if data_dir.exists() and any(data_dir.iterdir()) and not is_clean(repo, plan):
        raise DataVersionError(
            f"{data_dir}/ holds changes that {pointer.name} does not record: record them with "
            "`flywheel data track` (or move the folder away) before checking out another version"
        )
    before = pointer.read_text() if pointer.is_file() else None
    meta = (yaml.safe_load(before) if before else None) or {}
    meta["outs"] = [{"md5": f"{version}.dir", "hash": "md5", "path": Path(plan.root).name}]
    pointer.write_text(yaml.safe_dump(meta, sort_keys=False))
    try:
        with _open(repo) as dvc, _quiet_dvc():
            dvc.pull(targets=[str(pointer)], force=True)
            dvc.commit(str(pointer), force=True)  # size and file count, as `dvc add` writes them
    except Exception as err:  # DVC raises many kinds; all mean "not there"
        if before is None:
            pointer.unlink()
        else:
            pointer.write_text(before)
        raise DataVersionError(
            f"DVC remote {remote}: pulling data version {version} failed: {_first_line(err)}"
        ) from err
    return version


@dataclass(frozen=True)
class LatestVersion:
    """The latest data version recorded next to the remote: which, when and by whom."""

    version: str
    time: str
    who: str


def latest_version(remote: DataRemote, workspace: str | Path) -> LatestVersion | None:
    """The latest version recorded in `<remote>/flywheel/latest.json`; None when none is.

    Args:
        remote: the remote.
        workspace: a DVC project whose default remote is `remote` (DVC opens the
            remote's filesystem from its configuration).

    Raises:
        DataVersionError: the record cannot be read or parsed (names it).
    """
    with _remote_fs(workspace) as (fs, path):
        try:
            raw = fs.cat_file(path)
        except FileNotFoundError:
            return None
        except Exception as err:  # a driver error: name the object, say why
            raise DataVersionError(
                f"{path} on {remote}: cannot be read: {_first_line(err)}"
            ) from err
    try:
        record = json.loads(raw)
        return LatestVersion(bare(record["version"]), str(record["time"]), str(record["who"]))
    except (ValueError, KeyError, TypeError) as err:
        raise DataVersionError(f"{path} on {remote}: not a latest-version record: {err}") from err


def record_latest(workspace: str | Path, version: str, who: str | None = None) -> LatestVersion:
    """Record `version` as the latest in `<remote>/flywheel/latest.json` (one atomic put).

    Args:
        workspace: a DVC project whose default remote is the one to record at.
        version: the data version (pushed already).
        who: recorded as its author (default: `FLYWHEEL_USER`, else the login name).
    """
    now = datetime.now(UTC).isoformat(timespec="seconds")
    latest = LatestVersion(bare(version), now, who or _who())
    with _remote_fs(workspace) as (fs, path):
        fs.upload_fobj(io.BytesIO(json.dumps(asdict(latest)).encode()), path)
    return latest


@contextmanager
def _remote_fs(workspace: str | Path) -> Iterator[tuple[Any, str]]:
    """The default remote's filesystem (DVC's, S3 or local) and the latest-record path on it."""
    with _open(workspace) as dvc:
        remote = dvc.cloud.get_remote()
        yield remote.fs, remote.fs.join(remote.path, *LATEST_PATH)


@contextmanager
def _open(repo: str | Path) -> Iterator[Repo]:
    from dvc.repo import Repo

    disable_telemetry()
    with Repo(str(repo)) as dvc:
        yield dvc


@contextmanager
def _quiet_dvc() -> Iterator[None]:
    """DVC lists every file it could not fetch: errors are reported once, by the caller."""
    quiet = [logging.getLogger(name) for name in ("dvc", "dvc_data")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _who() -> str:
    """Who records a version: `FLYWHEEL_USER` (as the registry records it), else the login name."""
    try:
        return os.environ.get("FLYWHEEL_USER") or getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
