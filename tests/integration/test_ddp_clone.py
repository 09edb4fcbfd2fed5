"""`torchrun --nproc_per_node=2 flywheel train` in a fresh clone: one rank runs DVC, one model.

The issue's case: a git clone of a small project (params.yaml, data.dvc, a DVC
remote), an empty DVC cache, `flywheel data ensure`, then two processes on CPU
(gloo) training without `--data-version`. The lineage check (`dvc status`, and
a commit to the cache when it lacks the folder) takes DVC's lock on the
repository, which gives up after a few seconds: only local rank 0 may run it,
the other rank takes its answer (`workflows.datasets.decide_once`). Rank 0
registers the model with the clone's data version as lineage.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from flywheel.config import EvaluateConfig, ModelConfig, Params, TrainConfig
from flywheel.data.versioning import data_version, track_dataset
from flywheel.demo.collect import collect_dataset
from flywheel.tracking import TAG_DATA_VERSION
from tests.support.plans import tiny_plan
from tests.support.processes import BIN, subprocess_env
from tests.support.project import PROJECT_ENV, make_git_dvc_repo

pytestmark = pytest.mark.slow

NAME = "test-ddp-clone"
PLAN = tiny_plan(3, 2, 1, seed=5, classes=("0", "1", "2"))
PARAMS = Params(
    data=PLAN,
    train=TrainConfig(
        experiment=NAME,
        seed=3,
        epochs=1,
        batch_size=16,
        model=ModelConfig(width=4, stages=2, embedding_dim=8),
    ),
    evaluate=EvaluateConfig(registered_model=NAME),
)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_torchrun_in_a_fresh_clone_checks_the_data_once_and_registers(tmp_path: Path) -> None:
    origin = make_git_dvc_repo(tmp_path / "origin", remote=tmp_path / "remote")
    (origin / "params.yaml").write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    collect_dataset(PLAN, origin / "data", progress=False)
    version = track_dataset(origin, PLAN, push=True)
    _git(origin, "add", "-A")
    _git(origin, "commit", "-q", "-m", "a tiny project")
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(origin), str(clone))
    assert not (clone / "data").exists()
    assert not (clone / ".dvc" / "cache").exists()  # the cache is empty: never committed

    store = f"sqlite:///{tmp_path}/mlflow.db"
    env = subprocess_env({"MLFLOW_TRACKING_URI": store, "OMP_NUM_THREADS": "1"})
    for key in PROJECT_ENV:
        if key != "MLFLOW_TRACKING_URI":
            env.pop(key, None)
    ensure = subprocess.run(
        [str(BIN / "flywheel"), "data", "ensure"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ensure.returncode == 0, ensure.stdout + ensure.stderr
    assert data_version(clone, PLAN) == version
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "--no-python"]
    done = subprocess.run(
        [*torchrun, "flywheel", "train"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert not re.search(r"acquire lock|LockError", output), output[-4000:]  # DVC's lock

    # Rank 0 decided for both: its answer, named after this launch, is the clone's version.
    (answer,) = (clone / ".flywheel" / "ranks").glob("lineage-*.json")
    assert yaml.safe_load(answer.read_text()) == {"answer": version}
    client = MlflowClient(store)
    (registered,) = client.search_model_versions(f"name = '{NAME}'")
    assert registered.tags[TAG_DATA_VERSION] == version
    assert client.get_run(registered.run_id).data.tags["flywheel.device"] == "cpu x2"
    assert f"registered {NAME} version 1 as candidate" in output
