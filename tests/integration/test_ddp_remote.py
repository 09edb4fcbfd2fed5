"""The PyTorchJob's container (`torchrun ... flywheel train --data-version=...`) as a pod runs it.

The image's working directory (params.yaml and a DVC project whose committed
remote does not exist in a pod: no repository, no git, an empty DVC cache), the
DVC remote of the manifests' ConfigMap in a real S3-compatible store (moto
server on 127.0.0.1), MLflow in SQLite. Local rank 0 alone materialises the
version, the other rank waits for it; rank 0 registers the model as the
pipeline's train step does (`train_and_register`), with the data version it
trained on.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from mlflow import MlflowClient

from flywheel.config import EvaluateConfig, ModelConfig, Params, TrainConfig
from flywheel.data.remote import DataRemote
from flywheel.tracking import TAG_DATA_VERSION
from flywheel.workflows.datasets import materialise_once, ready_version
from tests.support.dvc_remote import publish_dataset, s3_server
from tests.support.k8s import argv, expand, find, render_overlay, resolve_env
from tests.support.plans import collect_plan, tiny_plan
from tests.support.processes import BIN, free_port, subprocess_env
from tests.support.project import dvc

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


def test_the_pytorchjob_container_materialises_once_and_registers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PyTorchJob's `pytorch` container, run as the Training Operator and the kubelet run it.

    Its own command and args (`$(VAR)`s expanded), the PET_* topology the
    operator sets (one pod, the gpu variant's nprocPerNode processes, on CPU:
    gloo), and only the environment the manifests give it: the local overlay's
    ConfigMap and Secret, with the S3 endpoint, the tracking store and the
    scratch folder swapped for this machine's. The data version is the
    manifest's default, `latest`: the one the laptop pushed.
    """
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the manifests cannot be rendered")
    docs = render_overlay("jobs-gpu") + render_overlay("local")
    job = find(docs, "PyTorchJob", "flywheel-train-ddp")
    (container,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    remote = urlsplit(find(docs, "ConfigMap", "flywheel-config")["data"]["FLYWHEEL_DVC_REMOTE"])
    pod = tmp_path / "app"  # the image's /app: params.yaml, a DVC project whose remote is not here
    pod.mkdir()
    (pod / "params.yaml").write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    dvc(pod, "init", "--no-scm", "-q")
    dvc(pod, "remote", "add", "-d", "local", "../.flywheel/dvc-remote")
    store = f"sqlite:///{tmp_path}/mlflow.db"
    with s3_server(bucket=remote.netloc) as s3:
        for key, value in s3.env(remote.path.strip("/")).items():  # the laptop's
            monkeypatch.setenv(key, value)
        version = publish_dataset(
            collect_plan(PLAN, tmp_path / "laptop-data" / "data").parent,
            PLAN,
            s3.remote(prefix=remote.path.strip("/")),
            tmp_path / "laptop",
        )
        env = resolve_env(
            container,
            docs,
            {
                "MLFLOW_TRACKING_URI": store,
                "FLYWHEEL_HOME": str(pod / ".flywheel"),
                "AWS_ENDPOINT_URL": s3.endpoint,
                "FLYWHEEL_PIPELINE_RUN_ID": job["metadata"]["name"],  # the downward API's
            },
        )
        operator = {  # what the Training Operator sets for torchrun
            "PET_NNODES": "1",
            "PET_NODE_RANK": "0",
            "PET_NPROC_PER_NODE": job["spec"]["nprocPerNode"],
            "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(free_port()),
        }
        command = [expand(word, env) for word in argv(container)]
        done = subprocess.run(
            [str(BIN / command[0]), *command[1:]],
            cwd=pod,
            env=subprocess_env({**env, **operator, "OMP_NUM_THREADS": "1"}),
            capture_output=True,
            text=True,
            timeout=480,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:]
    assert command[1:] == ["--no-python", "flywheel", "train", "--data-version=latest"]
    assert job["spec"]["nprocPerNode"] == "2"
    assert output.count(f"data version {version} materialised") == 1, output[-4000:]

    workspace = pod / ".flywheel" / "data" / "latest"
    assert ready_version(workspace) == version
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


def test_rank_0_clears_what_a_failed_attempt_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted container (restartPolicy OnFailure) finds its emptyDir as it was: a half
    workspace and the old attempt's failure. Rank 0 starts afresh; a waiting rank of the new
    launch ignores the old failure."""
    from flywheel.data.versioning import DataVersionError
    from flywheel.workflows.datasets import FAILED_FILE

    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / ".dvc").mkdir()  # half of an earlier init
    (workspace / f"{FAILED_FILE}-an-earlier-launch").write_text("S3 timed out")
    with pytest.raises(DataVersionError, match="did not appear"):  # not "S3 timed out"
        materialise_once(PARAMS, "0" * 32, workspace, local_rank=1, timeout_s=1)
    with s3_server() as s3:
        for key, value in s3.env(prefix=tmp_path.name).items():
            monkeypatch.setenv(key, value)
        version = publish_dataset(
            collect_plan(PLAN, tmp_path / "laptop-data" / "data").parent,
            PLAN,
            s3.remote(prefix=tmp_path.name),
            tmp_path / "laptop",
        )
        dataset = materialise_once(PARAMS, version, workspace, local_rank=0)

    assert (dataset / "manifest.csv").is_file()
    assert ready_version(workspace) == version
    assert not list(workspace.glob(f"{FAILED_FILE}*"))
    assert materialise_once(PARAMS, version, workspace, local_rank=1, timeout_s=1) == dataset
