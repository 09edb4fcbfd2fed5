"""Data versions by hash against a real S3-compatible store (moto server on 127.0.0.1).

What a pod does with no repository and no git: materialise a version from the
DVC remote in an empty folder; what the flywheel pipeline's update step does:
merge into a version and push the new one, recorded as the latest; what a
laptop does: `flywheel data checkout VERSION`. Missing remotes and versions
fail at once, naming them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import Params
from flywheel.data.manifest import sha256_file
from flywheel.data.remote import (
    DataRemote,
    checkout_version,
    find_remote,
    init_workspace,
    latest_version,
    materialise,
)
from flywheel.data.versioning import (
    DataVersionError,
    data_version,
    ensure_dataset,
    track_dataset,
)
from flywheel.workflows.datasets import data_at_version
from tests.support.dvc_remote import S3Server, publish_dataset, s3_server
from tests.support.plans import collect_plan, tiny_plan
from tests.support.project import dvc, make_git_dvc_repo

pytestmark = pytest.mark.slow

PLAN = tiny_plan(3, 1, 1, seed=9, classes=("0", "1"))
PARAMS = Params(data=PLAN)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def pod_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """The environment a pod gets (remote, endpoint, credentials), a fresh working directory."""
    for key, value in s3.env(prefix=tmp_path.name).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return s3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return collect_plan(PLAN, tmp_path_factory.mktemp("collected") / "data")


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_a_version_materialises_by_hash_in_an_empty_folder(
    pod_env: S3Server, dataset: Path, tmp_path: Path
) -> None:
    remote = find_remote()
    version = publish_dataset(dataset.parent, PLAN, remote, tmp_path / "laptop")

    data_dir = materialise(version, tmp_path / "pod", PLAN, remote)

    assert remote.url.startswith("s3://")
    assert remote.endpoint_url == pod_env.endpoint
    assert _files(data_dir / PLAN.name) == _files(dataset)
    assert data_version(tmp_path / "pod", PLAN) == version
    assert not (tmp_path / "pod" / ".git").exists()
    latest = latest_version(remote, tmp_path / "pod")
    assert latest is not None
    assert latest.version == version
    record = json.loads(pod_env.read(f"{tmp_path.name}/flywheel/latest.json"))
    assert set(record) == {"version", "time", "who"}


def test_a_version_the_remote_lacks_is_named_at_once(
    pod_env: S3Server, dataset: Path, tmp_path: Path
) -> None:
    publish_dataset(dataset.parent, PLAN, find_remote(), tmp_path / "laptop")
    missing = "0123456789abcdef0123456789abcdef"

    with pytest.raises(DataVersionError, match=rf"s3://.*does not hold data version {missing}"):
        materialise(missing, tmp_path / "pod", PLAN)

    assert not (tmp_path / "pod" / "data").exists()


def test_a_missing_bucket_is_named(pod_env: S3Server, tmp_path: Path) -> None:
    remote = DataRemote("s3://no-such-bucket/dvc", pod_env.endpoint)

    with pytest.raises(DataVersionError, match=r"s3://no-such-bucket/dvc .*cannot be read"):
        materialise("0123456789abcdef0123456789abcdef", tmp_path / "pod", PLAN, remote)


def test_no_remote_at_all_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FLYWHEEL_DVC_REMOTE", raising=False)

    with pytest.raises(DataVersionError, match="FLYWHEEL_DVC_REMOTE is not set"):
        data_at_version(PARAMS, "", "", tmp_path / "scratch")


def test_without_a_version_a_pod_takes_the_latest(
    pod_env: S3Server, dataset: Path, tmp_path: Path
) -> None:
    version = publish_dataset(dataset.parent, PLAN, find_remote(), tmp_path / "laptop")

    data = data_at_version(PARAMS, "", "", tmp_path / "scratch")

    assert (data.version, data.provenance) == (version, "materialised")
    assert _files(data.dataset_dir) == _files(dataset)


def test_checkout_brings_a_version_to_a_laptop_and_records_it(
    pod_env: S3Server, dataset: Path, tmp_path: Path
) -> None:
    remote = find_remote()
    first = publish_dataset(dataset.parent, PLAN, remote, tmp_path / "cluster")
    (tmp_path / "cluster" / "data" / PLAN.name / "notes.txt").write_text("a second version\n")
    second = track_dataset(tmp_path / "cluster", PLAN, push=True)
    laptop = make_git_dvc_repo(tmp_path / "laptop", remote=tmp_path / "unused")
    dvc(laptop, "remote", "add", "-f", "-d", "s3", remote.url)
    dvc(laptop, "remote", "modify", "s3", "endpointurl", pod_env.endpoint)
    (laptop / "params.yaml").write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))

    assert checkout_version(laptop, PLAN, first) == first
    assert data_version(laptop, PLAN) == first
    assert _files(laptop / "data" / PLAN.name) == _files(dataset)
    assert ensure_dataset(PLAN, laptop) == ("present", first)

    result = CliRunner().invoke(
        app,
        [
            "data",
            "checkout",
            "latest",
            "--repo",
            str(laptop),
            "--params",
            str(laptop / "params.yaml"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert data_version(laptop, PLAN) == second
    assert (laptop / "data" / PLAN.name / "notes.txt").is_file()

    (laptop / "data" / PLAN.name / "mine.txt").write_text("unrecorded")
    with pytest.raises(DataVersionError, match="does not record"):
        checkout_version(laptop, PLAN, first)
    assert (laptop / "data" / PLAN.name / "mine.txt").read_text() == "unrecorded"
    assert data_version(laptop, PLAN) == second


def test_the_first_push_to_a_remote_records_the_latest_and_later_ones_say_they_do_not(
    pod_env: S3Server, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """infra/README's step 2 (`flywheel data push`) leaves a latest version runs given none take."""
    remote = find_remote()
    laptop = make_git_dvc_repo(tmp_path / "laptop", remote=tmp_path / "unused")
    dvc(laptop, "remote", "add", "-f", "-d", "s3", remote.url)
    dvc(laptop, "remote", "modify", "s3", "endpointurl", pod_env.endpoint)
    shutil.copytree(dataset.parent, laptop / "data")
    first = track_dataset(laptop, PLAN, push=False)
    (laptop / "params.yaml").write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    monkeypatch.chdir(laptop)

    def flywheel(*args: str) -> str:
        result = CliRunner().invoke(app, ["data", *args])
        assert result.exit_code == 0, result.output
        return result.output

    assert latest_version(remote, laptop) is None
    assert f"recorded {first} as the latest data version" in flywheel("push")
    assert first in flywheel("latest")
    assert data_at_version(PARAMS, "", "", tmp_path / "pod").version == first

    (laptop / "data" / PLAN.name / "notes.txt").write_text("a second version\n")
    second = track_dataset(laptop, PLAN, push=False)
    said = flywheel("push")
    assert f"the latest data version stays {first}" in said
    assert f"`flywheel data push --latest` makes it {second}" in said
    assert latest_version(remote, laptop).version == first  # type: ignore[union-attr]

    assert f"recorded {second} as the latest" in flywheel("push", "--latest")
    assert second in flywheel("latest")


def test_a_failed_pull_of_real_data_is_an_error_not_a_regeneration(
    pod_env: S3Server, dataset: Path, tmp_path: Path
) -> None:
    """A version the generator did not make is not regenerated; names it and its remote."""
    generated = PLAN.model_copy(update={"generator": "flywheel.demo.collect:collect_dataset"})
    repo = make_git_dvc_repo(tmp_path / "repo", remote=tmp_path / "remote")
    shutil.copytree(dataset.parent, repo / "data")
    version = track_dataset(repo, generated, push=False)  # real data: recorded, never pushed
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")

    with pytest.raises(DataVersionError, match=rf"{version} .*{tmp_path / 'remote'}") as err:
        ensure_dataset(generated, repo)

    assert "generator" not in str(err.value).split("--regenerate")[0]
    assert not (repo / "data").exists()


def test_objects_deleted_from_the_bucket_are_named_and_pushed_again(
    pod_env: S3Server, dataset: Path, tmp_path: Path
) -> None:
    """DVC's index trusts the pushed `.dir`; the check and the push look in the bucket itself."""
    from flywheel.data.sync import check_remote, push_version

    workspace = tmp_path / "ws"
    version = publish_dataset(dataset, PLAN, pod_env.remote(tmp_path.name), workspace)
    files = [k for k in pod_env.keys(f"{tmp_path.name}/files/") if not k.endswith(".dir")]
    pod_env.delete(files[:2])

    check = check_remote(workspace, PLAN)
    assert check is not None
    assert (len(check.missing), check.in_cache, check.complete) == (2, True, False)
    with pytest.raises(DataVersionError, match=rf"lacks 2 of {check.files} files of data version "):
        ensure_dataset(PLAN, workspace)
    with pytest.raises(DataVersionError, match=rf"failed: .*lacks 2 of {check.files} files"):
        materialise(version, tmp_path / "pod", PLAN)  # a pod asking for it by hash

    pushed = push_version(workspace, PLAN)

    assert pushed is not None
    assert pushed.complete, pushed.describe()
    assert set(files) <= set(pod_env.keys(f"{tmp_path.name}/files/"))
    assert ensure_dataset(PLAN, workspace) == ("present", version)


def test_the_workspace_is_a_dvc_project_without_git(tmp_path: Path) -> None:
    root = init_workspace(tmp_path / "ws", DataRemote("s3://b/p", "http://127.0.0.1:1"))

    config = (root / ".dvc" / "config").read_text()
    assert "no_scm = True" in config
    assert "endpointurl = http://127.0.0.1:1" in config
    with pytest.raises(DataVersionError, match="not empty"):
        init_workspace(root, DataRemote("s3://b/p"))
