"""`torchrun --nproc_per_node=2 flywheel train --data-version H` as a PyTorchJob pod runs it.

An empty working directory (params.yaml only: no repository, no git, an empty
DVC cache), the DVC remote in a real S3-compatible store (moto server on
127.0.0.1), MLflow in SQLite. Local rank 0 alone materialises the version, the
other rank waits for it; rank 0 registers the model as the pipeline's train
step does (`train_and_register`), with the data version it was given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from flywheel.config import EvaluateConfig, ModelConfig, Params, TrainConfig
from flywheel.data.remote import DataRemote
from flywheel.tracking import TAG_DATA_VERSION
from flywheel.workflows.datasets import READY_FILE, materialise_once
from tests.support.dvc_remote import publish_dataset, s3_server
from tests.support.plans import collect_plan, tiny_plan

pytestmark = pytest.mark.slow

PLAN = tiny_plan(4, 2, 1, seed=5, classes=("0", "1", "2"))
NAME = "test-ddp-remote"
PARAMS = Params(
    data=PLAN,
    train=TrainConfig(
        experiment="test-ddp-remote",
        seed=3,
        epochs=1,
        batch_size=16,
        model=ModelConfig(width=4, stages=2, embedding_dim=8),
    ),
    evaluate=EvaluateConfig(registered_model=NAME),
)


def test_torchrun_materialises_once_and_registers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with s3_server() as s3:
        for key, value in s3.env(prefix=tmp_path.name).items():
            monkeypatch.setenv(key, value)
        version = publish_dataset(
            collect_plan(PLAN, tmp_path / "laptop-data" / "data").parent,
            PLAN,
            s3.remote(prefix=tmp_path.name),
            tmp_path / "laptop",
        )
        pod = tmp_path / "pod"
        pod.mkdir()
        (pod / "params.yaml").write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
        store = f"sqlite:///{tmp_path}/mlflow.db"
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": store,
            "FLYWHEEL_HOME": str(pod / ".flywheel"),
            "OMP_NUM_THREADS": "1",
        }
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        train = ["-m", "flywheel.cli", "train", "--data-version", version]
        done = subprocess.run(
            [*torchrun, "--nproc_per_node=2", *train],
            cwd=pod,
            env=env,
            capture_output=True,
            text=True,
            timeout=480,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:]
        assert output.count(f"data version {version} materialised") == 1, output[-4000:]

    workspace = pod / ".flywheel" / "data" / version
    assert (workspace / READY_FILE).is_file()
    assert not list(pod.glob(".git*"))
    client = MlflowClient(store)
    registered = client.get_model_version_by_alias(NAME, "candidate")
    assert str(registered.version) == "1"
    assert registered.tags[TAG_DATA_VERSION] == version
    run = client.get_run(registered.run_id)
    assert run.data.tags[TAG_DATA_VERSION] == version
    assert run.data.tags["flywheel.device"] == "cpu x2"
    assert f"registered {NAME} version 1 as candidate" in output


def test_a_waiting_rank_raises_what_rank_0_could_not_do(tmp_path: Path) -> None:
    """Rank 0 fails (no such version): the other rank gets its reason at once, not a timeout."""
    from flywheel.data.versioning import DataVersionError

    missing = "0123456789abcdef0123456789abcdef"
    with s3_server() as s3, pytest.MonkeyPatch.context() as patch:
        for key, value in s3.env(prefix=tmp_path.name).items():
            patch.setenv(key, value)
        with pytest.raises(DataVersionError, match=r"cannot be read|does not hold"):
            materialise_once(PARAMS, missing, tmp_path / "ws", local_rank=0)
        with pytest.raises(
            DataVersionError, match=f"local rank 0 could not materialise: .*{missing}"
        ):
            materialise_once(PARAMS, missing, tmp_path / "ws", local_rank=1, timeout_s=5)


def test_a_waiting_rank_times_out_with_a_clear_error(tmp_path: Path) -> None:
    from flywheel.data.versioning import DataVersionError

    version = "0123456789abcdef0123456789abcdef"
    with pytest.raises(DataVersionError, match=rf"did not appear in {tmp_path / 'ws'} within 1 s"):
        materialise_once(PARAMS, version, tmp_path / "ws", local_rank=1, timeout_s=1)
    assert DataRemote("s3://b").config() == {"url": "s3://b"}


def test_rank_0_takes_the_environments_remote_over_the_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/app in the image holds a .dvc/config whose local remote does not exist in a pod."""
    from tests.support.project import dvc

    app = tmp_path / "app"
    app.mkdir()
    dvc(app, "init", "--no-scm", "-q")
    dvc(app, "remote", "add", "-d", "local", "../.flywheel/dvc-remote")
    with s3_server() as s3:
        for key, value in s3.env(prefix=tmp_path.name).items():
            monkeypatch.setenv(key, value)
        version = publish_dataset(
            collect_plan(PLAN, tmp_path / "laptop-data" / "data").parent,
            PLAN,
            s3.remote(prefix=tmp_path.name),
            tmp_path / "laptop",
        )
        monkeypatch.chdir(app)

        dataset = materialise_once(PARAMS, version, tmp_path / "ws", local_rank=0)

    assert (dataset / "manifest.csv").is_file()
