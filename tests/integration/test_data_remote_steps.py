"""The flywheel pipeline's data steps as pods run them: no repository, the DVC remote in S3.

`update_dataset` with repo '' merges labels into the latest version recorded
next to the remote (materialised by hash in an empty folder), pushes the new
version and returns its hash; `validate_data` (the nested training's first
step) then materialises exactly that hash in another empty folder. The remote
is a real S3-compatible server (moto, 127.0.0.1).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.config import DataPlan, Params, Scenario, Strata
from flywheel.data.manifest import load_manifest
from flywheel.data.remote import find_remote, latest_version
from flywheel.data.versioning import DataVersionError
from flywheel.workflows import LABELS_FILE, update_dataset, validate_data
from tests.support.dvc_remote import S3Server, publish_dataset, s3_server
from tests.support.labeling import serve_collected_batch
from tests.support.plans import collect_plan

pytestmark = pytest.mark.slow

PLAN = DataPlan(
    seed=11,
    classes=("0", "1", "2", "3"),
    image_size=16,
    strata=Strata(style=("handwritten", "printed"), noise=("clean", "shadow")),
    per_stratum={"train": 8, "val": 4, "test": 4},  # as test_merge: balanced per class
)
DRIFT = Scenario(mix={"handwritten/shadow": 0.8, "printed/clean": 0.2}, severity={"shadow": 1.5})


@pytest.fixture
def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A pod's environment: the S3 remote, its endpoint and credentials, an empty cwd."""
    with s3_server() as s3:
        # moto keeps one in-memory store per process: a prefix per test keeps tests apart
        for key, value in s3.env(prefix=tmp_path.name).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "state"))
        (tmp_path / "cwd").mkdir()
        monkeypatch.chdir(tmp_path / "cwd")
        yield s3


def test_update_pushes_a_new_version_that_training_materialises(
    pod: S3Server, tmp_path: Path
) -> None:
    first = publish_dataset(
        collect_plan(PLAN, tmp_path / "collected" / "data").parent,
        PLAN,
        find_remote(),
        tmp_path / "laptop",
    )
    params = Params(data=PLAN, serve={"log": {"dir": tmp_path / "log"}})  # type: ignore[arg-type]
    truth = serve_collected_batch(
        PLAN,
        20,
        tmp_path / "log",
        tmp_path / "state" / "ground_truth",
        seed=3,
        scenario=DRIFT,
        work_dir=tmp_path,
    )
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    truth[["request_id", "index", "label"]].to_parquet(labels_dir / LABELS_FILE, index=False)

    new = update_dataset(params, "", labels_dir)  # '' version: the latest, `first`

    assert new != first
    assert len(new) == 32
    latest = latest_version(find_remote(), tmp_path / "laptop")
    assert latest is not None
    assert latest.version == new
    result = validate_data(
        params,
        "",
        expected_version=new,
        dataset_out=tmp_path / "out" / "dataset",
        docs_out=tmp_path / "out" / "docs",
    )
    assert (result.data_version, result.provenance) == (new, "materialised")
    merged = load_manifest(result.exported_dir)
    assert (merged["source"] == "production").sum() > 0
    assert not list((tmp_path / "cwd").iterdir())  # no step wrote into its working directory


def test_without_anything_recorded_the_update_step_says_so(pod: S3Server, tmp_path: Path) -> None:
    with pytest.raises(DataVersionError, match="records no latest one"):
        update_dataset(Params(data=PLAN), "", tmp_path)
