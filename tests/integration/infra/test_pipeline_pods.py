"""The compiled `training` and `flywheel` pipelines, every step run as its pod would run it.

Issue 12's proof without a cluster. Both pipelines are compiled with the CLI
(`flywheel pipeline compile --gpus 0`, from a folder holding only the project's
params.yaml); each task then runs its own `command` + `args` from the IR YAML
with the executor input the KFP driver builds (tests/support/pod_runs.py), in
an empty working directory with empty HOME, TMPDIR and FLYWHEEL_HOME, and only
the environment the manifests give it: the ConfigMap `flywheel-config` and the
Secret `flywheel-s3` of the rendered local overlay, with only the services'
addresses swapped for 127.0.0.1 ports. Buckets, prefixes, keys and every other
value are the manifests' own.

The services are real: PostgreSQL (Debian's server) as the MLflow server's
backend store, the MLflow server started with the Deployment's arguments and
environment, its artifacts and the DVC remote and the shared state in an S3
server (moto). They start once for the module:

1. `training`: a tiny dataset version is pushed to the DVC remote first, as a
   laptop does before a cluster run; the run registers and promotes version 1.
2. `flywheel`: `flywheel serve` with the serving Deployment's environment
   serves version 1 and logs the demo simulator's drifted traffic into the
   state bucket (the simulator's truth beside it, for the demo oracle that
   labels); then every step (monitor, curate, the labelling steps, the
   dataset update, the nested training) runs as a pod, and version 2 is
   registered on the new data version. The assertions are on effects (in the
   bucket, on the DVC remote, in PostgreSQL), not on how the steps are cut.

A step that reads the repository's files or a local state folder has none to
read and fails the test.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pandas as pd
import pytest
import requests
import yaml
from mlflow import MlflowClient

from flywheel.config import (
    CurateConfig,
    EvaluateConfig,
    GatesConfig,
    LabelConfig,
    MonitorConfig,
    Params,
    Scenario,
    TrainConfig,
)
from flywheel.data.remote import DataRemote
from flywheel.demo.server import start_server
from flywheel.labeling.server import Connection
from flywheel.labeling.studio import read_tasks, sdk_client
from flywheel.tracking import TAG_DATA_VERSION
from tests.support import REPO
from tests.support.dvc_remote import publish_dataset, s3_server
from tests.support.k8s import Doc, expand, find, resolve_env, secret_data
from tests.support.label_studio import label_studio_executable
from tests.support.label_studio_cluster import ClusterLabelStudio, cluster_label_studio, with_secret
from tests.support.plans import TINY_MODEL, collect_plan, tiny_plan
from tests.support.pod_runs import PodRun, PodRunner
from tests.support.postgres import Postgres, postgres_server
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
DRIFT = "handwritten_shadow_rotated"
DRIFTED_REQUESTS = 30
IMAGES_PER_REQUEST = 2
PARAMS = Params(
    data=PLAN,
    scenarios={
        "in_distribution": Scenario(),
        DRIFT: Scenario(
            mix={"handwritten/shadow": 0.5, "handwritten/rotated": 0.5},
            severity={"shadow": 1.6, "rotated": 1.6},
        ),
    },
    train=TrainConfig(
        experiment="pod-runs", seed=7, epochs=2, batch_size=16, patience=10, model=TINY_MODEL
    ),
    evaluate=EvaluateConfig(
        registered_model=MODEL, gates=GatesConfig(min_accuracy=0.0, min_slice_accuracy=None)
    ),
    monitor=MonitorConfig(min_window_size=DRIFTED_REQUESTS * IMAGES_PER_REQUEST),
    curate=CurateConfig(budget=16, strategy="margin"),
    # The demo's oracle annotating through the cluster's Label Studio, as a person would.
    label=LabelConfig(labeler="flywheel.demo.oracle:LabelStudioOracle"),
)
"""The one params.yaml of the project: compiled into both pipelines, baked into serving."""
GUIDE = "docs/labeling-guide.md"  # label.studio.guide, relative to the image's WORKDIR
STEPS = [
    "validate-data",
    "train-model",
    "find-champion",
    "evaluate-model",
    "condition-1/promote-model",
]


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

    def __init__(
        self,
        docs: list[Doc],
        s3: str,
        tracking: str,
        database: str,
        postgres: Postgres | None = None,
    ) -> None:
        self.docs = docs
        self.postgres = postgres
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

    def read(self, url: str) -> bytes:
        """The object at `url` (boto3, not the library's filesystem layer)."""
        parts = urlsplit(url)
        body: bytes = (
            self.client().get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))["Body"].read()
        )
        return body


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
            yield Cluster(docs, s3.endpoint, tracking, backend, postgres)
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
def packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`flywheel pipeline compile --gpus 0`: every pipeline, from a folder with only params.yaml."""
    folder = tmp_path_factory.mktemp("compile")
    (folder / "params.yaml").write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    done = subprocess.run(
        [str(BIN / "flywheel"), "pipeline", "compile", "--out", "dist", "--gpus", "0"],
        cwd=folder,
        # This checkout's library and pipelines (an editable install may map another's).
        env=subprocess_env({"PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return folder / "dist"


@pytest.fixture(scope="module")
def pod_run(
    cluster: Cluster, data_version: str, packages: Path, tmp_path_factory: pytest.TempPathFactory
) -> PodRun:
    runner = PodRunner(
        packages / "training.yaml",
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


# ------------------------------------------------------------------ the flywheel pipeline
#
# What a cluster holds when the hourly monitor finds drift: version 1 promoted by
# the training pipeline above (its reference profile on its run, in the bucket),
# drifted traffic answered by the serving pod and logged into the state bucket,
# the simulator's truth beside it (the demo oracle labels from it). Then every
# step of the compiled `flywheel` pipeline, nested training included, as a pod.
# Defined after the training tests on purpose: pytest runs a module's tests in
# order, so those read the registry before version 2 exists.


def _serving_environment(cluster: Cluster, home: Path) -> dict[str, str]:
    """The serving container's environment from the manifests; only services' hosts swapped."""
    (container,) = find(cluster.docs, "Deployment", "flywheel-serving")["spec"]["template"]["spec"][
        "containers"
    ]
    return resolve_env(container, cluster.docs, {**cluster.overrides, "FLYWHEEL_HOME": str(home)})


@dataclass(frozen=True)
class Traffic:
    """Drifted traffic served by version 1 and where its log and truth landed."""

    state: str  # the ConfigMap's FLYWHEEL_STATE_URL
    logged: list[str]  # keys of the prediction log in the bucket
    truth: list[str]  # keys of the simulator's truth


@pytest.fixture(scope="module")
def traffic(cluster: Cluster, pod_run: PodRun, tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    """`flywheel serve` as the serving pod runs it, drifted traffic from the demo's simulator."""
    assert pod_run.parameters["evaluate-model"]["Output"] is True  # version 1 in production
    folder = tmp_path_factory.mktemp("serving")
    params = folder / "params.yaml"  # the params.yaml baked into the serving image
    params.write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    (folder / "home").mkdir()
    state = cluster.config["FLYWHEEL_STATE_URL"]
    pod_env = _serving_environment(cluster, folder / "home")
    with start_server(params, env=pod_env, cwd=folder, log_path=folder / "server.log") as url:
        # A laptop with the bucket's keys sends the traffic; the truth goes beside the log.
        laptop = tmp_path_factory.mktemp("simulator")
        command = [str(BIN / "flywheel"), "simulate", "--scenario", DRIFT, "--url", url]
        size = ["--requests", str(DRIFTED_REQUESTS), "--images-per-request"]
        simulator = subprocess.run(
            [*command, *size, str(IMAGES_PER_REQUEST), "--seed", "1", "--params", str(params)],
            cwd=laptop,
            env=subprocess_env(
                {
                    "FLYWHEEL_STATE_URL": state,
                    "FLYWHEEL_HOME": str(laptop),
                    "AWS_ENDPOINT_URL": cluster.s3,
                    "AWS_ACCESS_KEY_ID": cluster.keys["access-key"],
                    "AWS_SECRET_ACCESS_KEY": cluster.keys["secret-key"],
                    "AWS_DEFAULT_REGION": cluster.config["AWS_DEFAULT_REGION"],
                }
            ),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert simulator.returncode == 0, simulator.stdout + simulator.stderr
    # the server flushed its log on shutdown
    return Traffic(
        state,
        logged=cluster.keys_under(f"{state}/predictions/model={MODEL}"),
        truth=cluster.keys_under(f"{state}/ground_truth"),
    )


@pytest.fixture(scope="module")
def label_studio(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterLabelStudio]:
    """Label Studio as its Deployment runs it (database in the tests' PostgreSQL), the token
    minted by the token Job's own commands (tests/support/label_studio_cluster.py)."""
    executable = label_studio_executable()
    if executable is None:
        pytest.skip(
            "Label Studio is not installed: `make label-studio` (or set FLYWHEEL_LABEL_STUDIO)"
        )
    assert cluster.postgres is not None
    folder = tmp_path_factory.mktemp("label-studio")
    with cluster_label_studio(
        cluster.docs, cluster.postgres, cluster.s3, executable, folder
    ) as server:
        yield server


@pytest.fixture(scope="module")
def flywheel_run(
    cluster: Cluster,
    data_version: str,
    traffic: Traffic,
    label_studio: ClusterLabelStudio,
    packages: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> PodRun:
    runner = PodRunner(
        packages / "flywheel.yaml",
        # The cluster after the token Job: its Secret holds the owner's token.
        manifests=with_secret(cluster.docs, label_studio.secret),
        overrides={**cluster.overrides, "LABEL_STUDIO_URL": label_studio.url},
        workdir=tmp_path_factory.mktemp("flywheel-pods"),
        run_id="pod-run-2",
        app_files={GUIDE: REPO / GUIDE},  # the work guide the image ships in /app
    )
    return runner.run({"data_version": data_version, "epochs": 1})


def test_the_serving_pod_logged_the_drifted_traffic_into_the_bucket(traffic: Traffic) -> None:
    assert sum(k.endswith(".parquet") for k in traffic.logged) >= 1
    assert sum(k.endswith(".png") for k in traffic.logged) == DRIFTED_REQUESTS * IMAGES_PER_REQUEST
    assert any("-simulator-" in k for k in traffic.truth)


def test_every_flywheel_step_passes_as_a_pod(flywheel_run: PodRun) -> None:
    # Every condition held (drifted, enough labels, blessed or not): nothing skipped but promotion.
    assert all(t.endswith("promote-model") for t in flywheel_run.skipped), flywheel_run.skipped
    ran = {label.rsplit("/", 1)[-1] for label in flywheel_run.tasks}
    assert {"monitor-drift", "curate-samples", "update-dataset"} <= ran, flywheel_run.seconds
    assert {"validate-data", "train-model", "evaluate-model"} <= ran, flywheel_run.seconds


def test_the_monitor_read_the_served_window_and_found_drift(
    cluster: Cluster, traffic: Traffic, flywheel_run: PodRun
) -> None:
    (monitor,) = _tasks(flywheel_run, "monitor-drift")
    assert flywheel_run.parameters[monitor]["Output"] is True
    metrics = flywheel_run.artifacts[monitor]["metrics"].metadata
    assert metrics["window_size"] == DRIFTED_REQUESTS * IMAGES_PER_REQUEST
    assert metrics["model_version"] == 1
    reports = cluster.keys_under(f"{traffic.state}/monitoring/reports")
    assert any(k.endswith(".html") for k in reports), reports


def test_curation_queued_a_batch_the_oracle_labelled(
    cluster: Cluster, traffic: Traffic, flywheel_run: PodRun
) -> None:
    queue = cluster.keys_under(f"{traffic.state}/labeling/queue")
    assert any(k.endswith(".json") for k in queue), queue
    # The oracle's answers, imported as a person's export is, into the bucket's ground truth.
    bucket = urlsplit(traffic.state).netloc
    answers = [
        pd.read_parquet(io.BytesIO(cluster.read(f"s3://{bucket}/{key}")))
        for key in cluster.keys_under(f"{traffic.state}/ground_truth")
        if "-oracle-" in key
    ]
    assert answers, "no labels imported"
    assert 0 < sum(len(a) for a in answers) <= PARAMS.curate.budget


def test_people_label_in_the_cluster_label_studio_with_images_from_the_bucket(
    cluster: Cluster, traffic: Traffic, label_studio: ClusterLabelStudio, flywheel_run: PodRun
) -> None:
    """Curation's tasks are in the project with the model's pre-annotation, their images in
    the state bucket as `s3://` URLs that Label Studio pre-signs; the oracle's annotations,
    submitted through the API, are the labels imported into the ground truth."""
    client = sdk_client(Connection(url=label_studio.url, token=label_studio.token))
    (project,) = [p for p in client.projects.list() if p.title == PARAMS.label.studio.project]
    assert project.id is not None
    tasks = read_tasks(client, int(project.id))
    bucket = urlsplit(traffic.state).netloc
    assert 0 < len(tasks) <= PARAMS.curate.budget
    for task in tasks:
        assert task["data"]["image"].startswith(f"s3://{bucket}/"), task["data"]
        assert task["predictions"], "the model's answer as a pre-annotation"
        (annotation,) = task["annotations"]
        assert not annotation["was_cancelled"]
    (storage,) = client.import_storage.s3.list(project=project.id)
    assert (storage.bucket, storage.presign) == (bucket, True)
    # What a person's browser does for one image: the resolve link, then the pre-signed URL.
    image = tasks[0]["data"]["image"]
    fileuri = base64.urlsafe_b64encode(image.encode()).decode()
    headers = client._client_wrapper.get_headers()  # the SDK's access token (from the PAT)
    response = requests.get(
        f"{label_studio.url}/tasks/{tasks[0]['id']}/resolve/?fileuri={fileuri}",
        headers=headers,
        allow_redirects=False,
        timeout=60,
    )
    assert response.status_code == 303, response.text[:500]
    presigned = response.headers["Location"]
    assert "X-Amz-Signature=" in presigned
    assert requests.get(presigned, timeout=60).content == cluster.read(image)
    # Read back through the API and recorded: the oracle's labels are exactly the project's.
    truth = {
        (str(r), int(i)): str(label)
        for key in cluster.keys_under(f"{traffic.state}/ground_truth")
        if "-oracle-" in key
        for r, i, label in pd.read_parquet(io.BytesIO(cluster.read(f"s3://{bucket}/{key}")))[
            ["request_id", "index", "label"]
        ].itertuples(index=False)
    }
    annotated = {
        (str(t["data"]["request_id"]), int(t["data"]["index"])): t["annotations"][0]["result"][0][
            "value"
        ]["choices"][0]
        for t in tasks
    }
    assert truth == annotated


def test_the_new_data_version_is_pushed_and_recorded_as_the_latest(
    cluster: Cluster, data_version: str, flywheel_run: PodRun
) -> None:
    new = _new_data_version(flywheel_run)
    assert new != data_version
    remote = cluster.config["FLYWHEEL_DVC_REMOTE"]
    digest = new.removesuffix(".dir")
    stored = cluster.keys_under(remote)
    assert any(k.endswith(f"/{digest[:2]}/{digest[2:]}.dir") for k in stored), stored[:20]
    latest = json.loads(cluster.read(f"{remote}/flywheel/latest.json"))
    assert latest["version"] == digest
    # The nested training validated exactly that version, with the labelled traffic merged.
    (validate,) = [t for t in _tasks(flywheel_run, "validate-data") if "/" in t]
    dataset = flywheel_run.artifacts[validate]["dataset"]
    assert dataset.metadata["data_version"] == new
    manifest = pd.read_csv(Path(dataset.uri) / "manifest.csv")
    production = manifest[manifest["source"] == "production"]
    assert 0 < len(production) <= PARAMS.curate.budget


def test_version_two_is_registered_in_postgres_with_the_new_data_version(
    cluster: Cluster, flywheel_run: PodRun
) -> None:
    new = _new_data_version(flywheel_run)
    (train,) = _tasks(flywheel_run, "train-model")
    model = flywheel_run.artifacts[train]["model"].metadata
    assert (model["name"], model["version"]) == (MODEL, "2")
    registry = MlflowClient(tracking_uri=cluster.database, registry_uri=cluster.database)
    version = registry.get_model_version(MODEL, "2")
    assert version.tags[TAG_DATA_VERSION] == new
    run = registry.get_run(version.run_id)
    assert run.data.tags[TAG_DATA_VERSION] == new
    assert run.data.tags["flywheel.pipeline_run_id"] == "pod-run-2"
    assert version.run_id == model["run_id"]
    # Its model and its run's artifacts (the reference profile the monitor will read) in the bucket.
    model_id = model["model_uri"].removeprefix("models:/")
    stored = cluster.keys_under(cluster.config["MLFLOW_ARTIFACTS_DESTINATION"])
    assert any(f"/{model_id}/" in k and k.endswith("/MLmodel") for k in stored), stored[:20]
    assert any(f"/{version.run_id}/artifacts/" in k for k in stored), stored[:20]


def _tasks(run: PodRun, step: str) -> list[str]:
    """The labels of the tasks that ran `step`, at any depth of nesting."""
    return [label for label in run.tasks if label.rsplit("/", 1)[-1] == step]


def _new_data_version(run: PodRun) -> str:
    """The version the step that made one output (the nested training's `data_version`)."""
    (update,) = _tasks(run, "update-dataset")
    version: str = run.parameters[update]["Output"]
    return version
