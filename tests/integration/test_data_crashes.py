"""`kill -9` at every step of a data merge and a track, then the next command puts it right.

Each case runs `flywheel data merge|track` as a real process (forked from a
warm one: `tests/support/forked_cli.py`) that SIGKILLs itself at one step
(`flywheel.processes.fault_point`: between two writes, or half-way through the
images or the push), in a copy of one git + DVC repository whose default
remote is a real folder. Then it checks what the kill left: the data folder is
the old version or the new one, file for file, never a mix; `data.dvc` names
the old version (the merge is undone by the next command) or the new one (the
next command pushes and verifies it). The next command is `flywheel data
ensure` or the rerun itself, and after the rerun every case has converged to
what an uninterrupted merge makes: the same data version, every file of it on
the remote (looked up there, not in DVC's index), recorded as the latest,
nothing pending.
"""

from __future__ import annotations

import json
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from flywheel.config import DataPlan, Params, Strata, load_params
from flywheel.data.ground_truth import write_ground_truth
from flywheel.data.manifest import sha256_file
from flywheel.data.sync import check_remote
from flywheel.data.transaction import JOURNAL, STAGING, unpushed, work_dir
from flywheel.data.versioning import DataVersionError, data_version, ensure_dataset, is_clean
from flywheel.processes import FAULT_ENV
from flywheel.workflows.datasets import data_at_version
from tests.support.forked_cli import run_forked
from tests.support.labeling import serve_collected_batch
from tests.support.processes import subprocess_env
from tests.support.project import make_git_dvc_repo

PLAN = DataPlan(
    seed=11,
    classes=("0", "1", "2", "3"),
    image_size=16,
    strata=Strata(style=("handwritten", "printed"), noise=("clean", "shadow")),
    per_stratum={"train": 8, "val": 4, "test": 4},
    generator="flywheel.demo.collect:collect_dataset",
)
LABELLED = 12
"""Production images labelled, all merged by one merge."""

REMOVED = "removed the unfinished copy that an interrupted merge was building"
UNDID = "undid an interrupted merge"
FINISHED = "finished an interrupted merge"
MERGE_STEPS = (  # (step, what the next command says it did)
    ("merge:copying", REMOVED),  # half the images written into the copy beside data/
    ("merge:staged", REMOVED),  # the copy built and gated, nothing recorded
    ("merge:intent", UNDID),  # the journal written
    ("merge:switched", UNDID),  # data/ switched to the merged folder; data.dvc still old
    ("track:added", FINISHED),  # dvc add ran, its data.dvc text in the journal; nothing pushed
    ("track:pushing", FINISHED),  # half the files pushed
)
"""A merge's own steps; after `dvc add` it runs the same code as a track (`finish`), whose
every step `TRACK_STEPS` kills (without the data gate's cost)."""
SWITCH = 3
"""From `MERGE_STEPS[SWITCH]` on, data/ is the merged folder when the process dies."""
TRACK_STEPS = (
    pytest.param(0, "track:added"),  # dvc add ran, its data.dvc text in the journal; no push
    pytest.param(1, "track:pushing"),  # half the files pushed
    pytest.param(2, "track:pushed", marks=pytest.mark.slow),  # not yet checked on the remote
    pytest.param(3, "track:verified", marks=pytest.mark.slow),  # the latest not yet recorded
)


@dataclass(frozen=True)
class Template:
    """The project every case copies, at its first version (pushed)."""

    root: Path
    old: str
    old_tree: dict[str, str]


@dataclass(frozen=True)
class World:
    """The template and the version an uninterrupted merge makes of it."""

    template: Path
    old: str
    old_tree: dict[str, str]
    new: str
    new_tree: dict[str, str]


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path → SHA-256): what 'the same version' means."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _copy(template: Path, to: Path) -> Path:
    """A copy of the project whose DVC remote is its own copy of the remote folder."""
    shutil.copytree(template, to, symlinks=True)
    config = to / "repo" / ".dvc" / "config"
    config.write_text(config.read_text().replace(str(template), str(to)))
    return to


def _flywheel(project: Path, *args: str, fault: str | None = None) -> tuple[int, str]:
    """`flywheel ARGS --repo … --params …` as a real process in `project`; its status and output."""
    env = subprocess_env({"FLYWHEEL_HOME": str(project / "state"), "COLUMNS": "400"})
    env.pop(FAULT_ENV, None)
    if fault is not None:
        env[FAULT_ENV] = fault
    log = project / f"{len(list(project.glob('*.log')))}-{'-'.join(args)}.log"
    code = run_forked(
        [*args, "--repo", str(project / "repo"), "--params", str(project / "params.yaml")],
        env,
        project,
        log,
    )
    return code, " ".join(log.read_text().split())


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """A repository at its first version (pushed), 12 labelled production images to merge."""
    base = tmp_path_factory.mktemp("data-crashes")
    template = base / "template"
    template.mkdir()
    log = base / "log"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLYWHEEL_HOME", str(template / "state"))
        repo = make_git_dvc_repo(template / "repo", remote=template / "remote")
        ensure_dataset(PLAN, repo)
        truth = serve_collected_batch(
            PLAN, LABELLED, log, template / "state" / "ground_truth", seed=3, work_dir=base
        )
    labels = truth[["request_id", "index", "label"]].assign(origin="oracle")
    write_ground_truth(labels, template / "state" / "ground_truth")
    params = Params(data=PLAN, serve={"log": {"dir": log}})  # type: ignore[arg-type]
    (template / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return Template(template, data_version(repo, PLAN), _tree(repo / "data"))


@pytest.fixture(scope="module")
def world(template: Template) -> World:
    """What an uninterrupted merge makes of the template: every killed merge must end there."""
    reference = _copy(template.root, template.root.with_name("reference"))
    code, out = _flywheel(reference, "data", "merge")
    assert code == 0, out
    assert f"{LABELLED} merged" in out
    return World(
        template.root,
        template.old,
        template.old_tree,
        data_version(reference / "repo", PLAN),
        _tree(reference / "repo" / "data"),
    )


def _latest(project: Path) -> str:
    return str(json.loads((project / "remote" / "flywheel" / "latest.json").read_text())["version"])


def _check_converged(project: Path, version: str, tree: dict[str, str]) -> None:
    """data/ is `version` file for file, data.dvc records it, the remote holds all of it."""
    repo = project / "repo"
    assert data_version(repo, PLAN) == version
    assert _tree(repo / "data") == tree
    assert is_clean(repo, PLAN)
    check = check_remote(repo, PLAN)
    assert check is not None
    assert check.complete, check.describe()
    assert check.files == len(tree)
    assert _latest(project) == version
    assert not (work_dir(repo) / JOURNAL).exists()
    staging = work_dir(repo) / STAGING
    assert not staging.exists() or not any(staging.iterdir())


@pytest.mark.slow  # a real process per step, and the data gate on every merge
@pytest.mark.parametrize(
    ("i", "step", "said"), [pytest.param(i, *s, id=s[0]) for i, s in enumerate(MERGE_STEPS)]
)
def test_a_merge_killed_at_each_step_is_undone_or_finished(
    world: World, tmp_path: Path, i: int, step: str, said: str
) -> None:
    project = _copy(world.template, tmp_path / "case")
    repo = project / "repo"

    code, out = _flywheel(project, "data", "merge", fault=step)

    assert code == -signal.SIGKILL, (step, code, out)
    left = _tree(repo / "data")
    assert left in (world.old_tree, world.new_tree), f"{step}: data/ is half merged"
    assert left == (world.old_tree if i < SWITCH else world.new_tree)
    undone = said != FINISHED
    # data.dvc names the new version only once the remote holds all of it
    assert data_version(repo, PLAN) == world.old

    if i % 2 == 0:  # any data command puts it right first: here `flywheel data ensure`
        code, out = _flywheel(project, "data", "ensure")
        assert code == 0, out
        assert said in out
        if undone:
            assert said == REMOVED or f"back at data version {world.old}" in out
            assert _tree(repo / "data") == world.old_tree
            assert data_version(repo, PLAN) == world.old
        else:
            _check_converged(project, world.new, world.new_tree)
    code, out = _flywheel(project, "data", "merge")  # the rerun of the interrupted command
    assert code == 0, out
    if i % 2 == 1:
        assert said in out
    merged = f"{LABELLED} merged" if undone else "0 merged"
    assert f"{LABELLED} labelled images: {merged}" in out

    _check_converged(project, world.new, world.new_tree)
    code, out = _flywheel(project, "data", "merge")  # and a further one changes nothing
    assert code == 0, out
    assert f"data version unchanged: {world.new}" in out


@pytest.mark.parametrize(("i", "step"), TRACK_STEPS)
def test_a_track_killed_before_its_push_was_verified_is_finished(
    template: Template, tmp_path: Path, i: int, step: str
) -> None:
    project = _copy(template.root, tmp_path / "case")
    repo = project / "repo"
    added = repo / "data" / PLAN.name / "notes"
    added.mkdir()
    for n in range(8):
        (added / f"{n}.txt").write_text(f"note {n}\n")

    code, out = _flywheel(project, "data", "track", fault=step)

    assert code == -signal.SIGKILL, (step, code, out)
    # `dvc add` ran: from here on it is finished; data.dvc names it once it is pushed
    assert data_version(repo, PLAN) == template.old
    version = unpushed(repo)  # the version data.dvc will name once it is pushed
    assert version is not None
    assert version != template.old
    next_command = ("data", "ensure") if i % 2 == 0 else ("data", "track")
    code, out = _flywheel(project, *next_command)
    assert code == 0, out
    assert "finished an interrupted track (process " in out
    assert f"data version {version}" in out
    _check_converged(project, version, _tree(repo / "data"))


def test_ensure_names_the_files_the_remote_lacks_and_push_restores_them(
    template: Template, tmp_path: Path
) -> None:
    """Objects deleted from the remote: DVC's own status is clean; ensure and the data step not."""
    from dvc.repo import Repo

    project = _copy(template.root, tmp_path / "case")
    repo = project / "repo"
    objects = sorted(
        p
        for p in (project / "remote" / "files").rglob("*")
        if p.is_file() and not p.name.endswith(".dir")
    )
    for gone in objects[:3]:
        gone.unlink()
    with Repo(str(repo)) as dvc:  # DVC trusts its index of the remote: it sees nothing amiss
        assert dvc.status(targets=[str(repo / "data.dvc")], cloud=True) == {}

    code, out = _flywheel(project, "data", "ensure")

    assert code == 2, out
    assert f"lacks 3 of {len(template.old_tree)} files of data version {template.old}" in out
    check = check_remote(repo, PLAN)
    assert check is not None
    assert len(check.missing) == 3
    assert all(path in out for path in check.missing)
    assert "`flywheel data push`" in out
    with pytest.raises(DataVersionError, match=rf"lacks 3 of {len(template.old_tree)} files"):
        data_at_version(load_params(project / "params.yaml"), "", repo, tmp_path / "scratch")

    code, out = _flywheel(project, "data", "push")
    assert code == 0, out
    assert f"holds all {len(template.old_tree)} files of data version {template.old}" in out
    assert all(p.is_file() for p in objects[:3])
    code, out = _flywheel(project, "data", "ensure")
    assert code == 0, out
    assert f"holds all {len(template.old_tree)} files" in out


def test_a_clone_that_cannot_pull_is_told_which_files_the_remote_lacks(
    template: Template, tmp_path: Path
) -> None:
    """No local copy at all: the pull fails, and the error counts and names what is missing."""
    project = _copy(template.root, tmp_path / "case")
    repo = project / "repo"
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["generator"] = None  # real data: never regenerated
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    objects = sorted(p for p in (project / "remote" / "files").rglob("*") if p.is_file())
    for gone in [p for p in objects if not p.name.endswith(".dir")][:2]:
        gone.unlink()

    code, out = _flywheel(project, "data", "ensure")

    assert code == 2, out
    assert f"lacks 2 of {len(template.old_tree)} files of data version {template.old}" in out
    assert "this machine's DVC cache lacks them too" in out
    assert not (repo / "data").exists()


def test_a_track_whose_push_fails_records_the_version_once_a_later_push_succeeds(
    template: Template, tmp_path: Path
) -> None:
    """An unreachable remote: data.dvc keeps the old version; the next data command pushes."""
    project = _copy(template.root, tmp_path / "case")
    repo = project / "repo"
    (repo / "data" / PLAN.name / "notes.txt").write_text("a second version\n")
    config = repo / ".dvc" / "config"
    reachable = config.read_text()
    config.write_text(reachable.replace(str(project / "remote"), "/dev/null/remote"))

    code, out = _flywheel(project, "data", "track")

    assert code == 1, out
    assert "its push failed (the warning above says why), so data.dvc does not record it" in out
    assert "/dev/null/remote" in out  # the warning: which remote, and why
    assert data_version(repo, PLAN) == template.old
    assert unpushed(repo) is not None

    config.write_text(reachable)
    code, out = _flywheel(project, "data", "push")

    assert code == 0, out
    assert "finished an interrupted track (process " in out
    version = data_version(repo, PLAN)
    assert version != template.old
    _check_converged(project, version, _tree(repo / "data"))
