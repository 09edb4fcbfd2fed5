"""Data versions with DVC: `data.dvc` tracks `data/`; its hash is the data version.

The data version recorded as lineage on every run and model is the `md5` of
the `data` output in `data.dvc` (DVC's hash of the whole folder). These
functions use DVC's Python API (`dvc.repo.Repo`), the same code the `dvc`
command runs.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Literal

import yaml

from flywheel.config import DataPlan
from flywheel.env import disable_telemetry

log = logging.getLogger(__name__)

Provenance = Literal["present", "pulled", "regenerated", "collected"]


class DataVersionError(RuntimeError):
    """The data cannot be brought to, or read as, a recorded DVC version."""


def dvc_file(repo: str | Path, plan: DataPlan | None = None) -> Path:
    """`<repo>/<data root>.dvc`, the pointer file that git tracks."""
    root = plan.root if plan is not None else Path("data")
    return Path(repo) / f"{Path(root).as_posix().rstrip('/')}.dvc"


def data_version(repo: str | Path = ".", plan: DataPlan | None = None) -> str:
    """The data version: DVC's hash of the data folder, as recorded in `data.dvc`.

    Raises:
        DataVersionError: no `data.dvc`, or it holds no hash.
    """
    path = dvc_file(repo, plan)
    try:
        meta = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DataVersionError(
            f"{path}: not found; run `flywheel data track` to version data/"
        ) from None
    try:
        md5: str = meta["outs"][0]["md5"]
    except (TypeError, KeyError, IndexError):
        raise DataVersionError(f"{path}: no `outs[0].md5`; is it a DVC pointer file?") from None
    return md5.removesuffix(".dir")


def is_clean(repo: str | Path = ".", plan: DataPlan | None = None) -> bool:
    """True when the data folder is exactly what `data.dvc` records (and is in the cache).

    A folder that matches but is missing from the local cache (a fresh clone
    that regenerated it) is committed to the cache on the way: DVC can only
    compare against hashes it has seen.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    disable_telemetry()
    target = dvc_file(repo, plan)
    if not target.is_file() or not (Path(repo) / _root(plan)).exists():
        return False
    with Repo(str(repo)) as dvc:
        status = dvc.status(targets=[str(target)])
        if not status:
            return True
        if _only_not_in_cache(status):
            try:
                dvc.commit(str(target), force=False)  # caches it if, and only if, it matches
            except DvcException:
                return False
            return not dvc.status(targets=[str(target)])
    return False


def ensure_dataset(plan: DataPlan, repo: str | Path = ".") -> tuple[Provenance, str]:
    """Make the data folder match `data.dvc`, losing nothing that is not recorded.

    In order: keep it if it already matches; `dvc pull` it from the default
    remote; regenerate it from the plan's seed (the demo dataset is
    deterministic) and check it against the recorded hash, then push it so the
    next clone can pull. With no `data.dvc` at all, the plan's dataset is
    collected and tracked as the first version.

    Returns:
        How the data got there, and the data version.

    Raises:
        DataVersionError: the folder holds changes `data.dvc` does not record
            (they are left untouched), or the regenerated data does not match
            the recorded hash.
    """
    from flywheel.demo.collect import collect_dataset

    repo = Path(repo)
    data_dir = repo / _root(plan)
    if not dvc_file(repo, plan).is_file():
        collect_dataset(plan, root=data_dir)
        return "collected", track_dataset(repo, plan, push=True)
    if data_dir.exists() and any(data_dir.iterdir()):
        if is_clean(repo, plan):
            return "present", data_version(repo, plan)
        raise DataVersionError(
            f"{data_dir}/ holds changes that {dvc_file(repo, plan).name} does not record. "
            "Record them with `flywheel data track`, or move the folder away to get "
            "the recorded version back."
        )
    if _pull(repo, plan) and is_clean(repo, plan):
        return "pulled", data_version(repo, plan)
    shutil.rmtree(data_dir, ignore_errors=True)  # a failed pull may leave a partial folder
    collect_dataset(plan, root=data_dir)
    if not is_clean(repo, plan):
        raise DataVersionError(
            f"data regenerated from seed {plan.seed} does not match "
            f"{dvc_file(repo, plan).name} ({data_version(repo, plan)}): the plan, the "
            "generator or a library that writes the images changed. Record the new "
            "data with `flywheel data track` if that was intended."
        )
    _push(repo, plan)
    return "regenerated", data_version(repo, plan)


def track_dataset(
    repo: str | Path = ".", plan: DataPlan | None = None, *, push: bool = True
) -> str:
    """`dvc add` the data folder (a new version when it changed) and optionally push it.

    Returns:
        The new data version.
    """
    from dvc.repo import Repo

    disable_telemetry()
    with Repo(str(repo)) as dvc:
        dvc.add(str(Path(repo) / _root(plan)))
    if push:
        _push(repo, plan)
    return data_version(repo, plan)


def _root(plan: DataPlan | None) -> Path:
    return Path(plan.root) if plan is not None else Path("data")


def _only_not_in_cache(status: dict[str, list[Any]]) -> bool:
    changes = [change for entries in status.values() for change in entries]
    return bool(changes) and all(
        isinstance(change, dict)
        and set(change) == {"changed outs"}
        and set(change["changed outs"].values()) == {"not in cache"}
        for change in changes
    )


def _pull(repo: Path, plan: DataPlan) -> bool:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    disable_telemetry()
    # A remote without the data makes DVC list every missing file: keep it quiet.
    quiet = [logging.getLogger(name) for name in ("dvc", "dvc_data")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        with Repo(str(repo)) as dvc:
            dvc.pull(targets=[str(dvc_file(repo, plan))])
    except DvcException as err:
        log.info("dvc pull did not restore the data: %s", str(err).splitlines()[0])
        return False
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    return True


def _push(repo: str | Path, plan: DataPlan | None) -> bool:
    """Push the recorded version to the default remote; a failure is a warning, not a loss."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    disable_telemetry()
    try:
        with Repo(str(repo)) as dvc:
            dvc.push(targets=[str(dvc_file(repo, plan))])
    except DvcException as err:
        log.warning(
            "dvc push to the default remote failed (the data stays in the local cache): %s", err
        )
        return False
    return True
