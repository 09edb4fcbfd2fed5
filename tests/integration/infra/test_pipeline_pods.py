"""The compiled `training` pipeline, every step run as its pod would run it, against real services.

Issue 12's proof without a cluster. The pipeline is compiled with the CLI
(`flywheel pipeline compile training --gpus 0`); each task then runs its own
`command` + `args` from the IR YAML with the executor input the KFP driver
builds (tests/support/pod_runs.py), in an empty working directory with empty
HOME, TMPDIR and FLYWHEEL_HOME, and only the environment the manifests give it:
the ConfigMap `flywheel-config` and the Secret `flywheel-s3` of the rendered
local overlay, with only the services' addresses swapped for 127.0.0.1 ports.
Buckets, prefixes, keys and every other value are the manifests' own.

The services are real: PostgreSQL (Debian's server) as the MLflow server's
backend store, the MLflow server started with the Deployment's arguments and
environment, its artifacts and the DVC remote and the shared state in an S3
server (moto). A tiny dataset version is pushed to the DVC remote first, as a
laptop does before a cluster run. A step that reads the repository's files or
a local state folder has none to read and fails the test.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
import yaml
from mlflow import MlflowClient

from flywheel.config import EvaluateConfig, GatesConfig, Params, TrainConfig
from flywheel.data.remote import DataRemote
from flywheel.tracking import TAG_DATA_VERSION
from tests.support import REPO
from tests.support.dvc_remote import publish_dataset, s3_server
from tests.support.k8s import Doc, expand, find, resolve_env, secret_data
from tests.support.plans import TINY_MODEL, collect_plan, tiny_plan
from tests.support.pod_runs import PodRun, PodRunner
from tests.support.postgres import postgres_server
from tests.support.processes import (
    BIN,
    free_port,
    replace_flag,
    stop,
    subprocess_env,
    wait_until_up,
)

pytestmark = pytest.mark.slow

MODEL = "pod-digits"
PLAN = tiny_plan(10, 4, 4)
PARAMS = Params(
    data=PLAN,
    train=TrainConfig(
        experiment="pod-runs", seed=7, epochs=2, batch_size=16, patience=10, model=TINY_MODEL
    ),
    evaluate=EvaluateConfig(
        registered_model=MODEL, gates=GatesConfig(min_accuracy=0.0, min_slice_accuracy=None)
    ),
)
STEPS = ["validate-data", "train-model", "evaluate-model", "condition-1/promote-model"]


def _start_mlflow(
    docs: list[Doc], backend: str, s3_endpoint: str, folder: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """`mlflow server` as the Deployment starts it; only the database's and S3's hosts swapped."""
    (container,) = find(docs, "Deployment", "flywheel-mlflow")["spec"]["template"]["spec"][
        "containers"
    ]
    env = resolve_env(
        container,
        docs,
        {"MLFLOW_BACKEND_STORE_URI": backend, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint},
    )
    port = free_port()
    args = [expand(a, env) for a in container["args"]]
    args = replace_flag(replace_flag(args, "--port", str(port)), "--workers", "1")
    args = replace_flag(args, "--host", "127.0.0.1")
    log = folder / "mlflow-server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server", *args],
            cwd=folder,
            env=subprocess_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_up(server, f"http://127.0.0.1:{port}/health", log, timeout=180)
    except BaseException:
        stop(server)
        raise
    return server, f"http://127.0.0.1:{port}"


class Cluster:
    """The services a run talks to, on 127.0.0.1, and what the pods' environment says of them."""

    def __init__(self, docs: list[Doc], s3: str, tracking: str, database: str) -> None:
        self.docs = docs
        self.s3 = s3
        self.tracking = tracking
        self.database = database  # the registry's PostgreSQL, as MLflow's store URI
        self.config = find(docs, "ConfigMap", "flywheel-config")["data"]
        self.keys = secret_data(find(docs, "Secret", "flywheel-s3"))

    @property
    def overrides(self) -> dict[str, str]:
        """Only the services' addresses: everything else is the manifests' value."""
        return {
            "MLFLOW_TRACKING_URI": self.tracking,
            "MLFLOW_S3_ENDPOINT_URL": self.s3,
            "AWS_ENDPOINT_URL": self.s3,
        }

    def client(self) -> boto3.client:  # type: ignore[valid-type]
        return boto3.client(
            "s3",
            endpoint_url=self.s3,
            aws_access_key_id=self.keys["access-key"],
            aws_secret_access_key=self.keys["secret-key"],
            region_name=self.config["AWS_DEFAULT_REGION"],
        )

    def keys_under(self, url: str) -> list[str]:
        parts = urlsplit(url)
        pages = self.client().get_paginator("list_objects_v2")
        return [
            obj["Key"]
            for page in pages.paginate(Bucket=parts.netloc, Prefix=parts.path.lstrip("/"))
            for obj in page.get("Contents", [])
        ]


@pytest.fixture(scope="module")
def cluster(
    rendered: dict[str, list[Doc]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """PostgreSQL, the S3 server with the ConfigMap's buckets, the MLflow server as deployed."""
    docs = rendered["local"]
    folder = tmp_path_factory.mktemp("services")
    config = find(docs, "ConfigMap", "flywheel-config")["data"]
    (mlflow_container,) = find(docs, "Deployment", "flywheel-mlflow")["spec"]["template"]["spec"][
        "containers"
    ]
    as_deployed = urlsplit(resolve_env(mlflow_container, docs, {})["MLFLOW_BACKEND_STORE_URI"])
    with s3_server(bucket="flywheel-pods") as s3, postgres_server() as postgres:
        probe = Cluster(docs, s3.endpoint, "", "")
        for bucket in config["FLYWHEEL_BUCKETS"].split():  # what the bucket Job creates
            probe.client().create_bucket(Bucket=bucket)
        role, database = as_deployed.username, as_deployed.path.lstrip("/")
        postgres.createdb(database, owner=role)
        netloc = f"{role}:{as_deployed.password}@{postgres.host}:{postgres.port}"
        backend = as_deployed._replace(netloc=netloc).geturl()
        server, tracking = _start_mlflow(docs, backend, s3.endpoint, folder)
        try:
            yield Cluster(docs, s3.endpoint, tracking, backend)
        finally:
            stop(server)


@pytest.fixture(scope="module")
def data_version(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny dataset pushed to the ConfigMap's DVC remote, as a laptop pushes it."""
    folder = tmp_path_factory.mktemp("laptop")
    source = collect_plan(PLAN, folder / "collected")
    patch = pytest.MonkeyPatch()
    patch.setenv("AWS_ACCESS_KEY_ID", cluster.keys["access-key"])
    patch.setenv("AWS_SECRET_ACCESS_KEY", cluster.keys["secret-key"])
    patch.setenv("AWS_DEFAULT_REGION", cluster.config["AWS_DEFAULT_REGION"])
    try:
        remote = DataRemote(cluster.config["FLYWHEEL_DVC_REMOTE"], cluster.s3)
        yield publish_dataset(source.parent, PLAN, remote, folder / "workspace")
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`flywheel pipeline compile training --gpus 0`, from a folder holding only params.yaml."""
    folder = tmp_path_factory.mktemp("compile")
    (folder / "params.yaml").write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    done = subprocess.run(
        [str(BIN / "flywheel"), "pipeline", "compile", "training", "--out", "dist", "--gpus", "0"],
        cwd=folder,
        env=subprocess_env({"PYTHONPATH": str(REPO / "src")}),  # this checkout's library
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return folder / "dist" / "training.yaml"


@pytest.fixture(scope="module")
def pod_run(
    cluster: Cluster, data_version: str, package: Path, tmp_path_factory: pytest.TempPathFactory
) -> PodRun:
    runner = PodRunner(
        package,
        manifests=cluster.docs,
        overrides=cluster.overrides,
        workdir=tmp_path_factory.mktemp("pods"),
    )
    return runner.run({"data_version": data_version})


def test_every_step_passes_as_a_pod(pod_run: PodRun) -> None:
    assert pod_run.tasks == STEPS, pod_run.seconds
    assert pod_run.parameters["evaluate-model"]["Output"] is True
    assert not pod_run.skipped


def test_model_is_registered_in_postgres_with_the_data_version(
    cluster: Cluster, data_version: str, pod_run: PodRun
) -> None:
    model = pod_run.artifacts["train-model"]["model"].metadata
    assert (model["name"], model["version"]) == (MODEL, "1")
    # Read straight from the PostgreSQL database, not through the server.
    registry = MlflowClient(tracking_uri=cluster.database, registry_uri=cluster.database)
    version = registry.get_model_version(MODEL, "1")
    assert version.tags[TAG_DATA_VERSION] == data_version
    assert str(registry.get_model_version_by_alias(MODEL, "production").version) == "1"
    run = registry.get_run(version.run_id)
    assert run.data.tags[TAG_DATA_VERSION] == data_version
    assert run.data.tags["flywheel.pipeline_run_id"] == "pod-run-1"


def test_artifacts_are_in_the_bucket(cluster: Cluster, pod_run: PodRun) -> None:
    stored = cluster.keys_under(cluster.config["MLFLOW_ARTIFACTS_DESTINATION"])
    assert any(key.endswith("MLmodel") for key in stored), stored[:20]
    assert cluster.keys_under(cluster.config["FLYWHEEL_DVC_REMOTE"]), "the data version"
