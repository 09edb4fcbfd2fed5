"""Real processes started as the manifests start them, on this machine instead of a cluster.

The MLflow server and the Evidently UI, started with the manifests' arguments,
answer as the cluster will ask them; a Katib trial (the exact shell command
Katib's webhook builds) trains on a tiny dataset and reports its objective
through Katib's log parser (ported, tests/support/katib.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow import MlflowClient

from flywheel.config import ModelConfig, Params, TrainConfig
from flywheel.tracking import TAG_DATA_VERSION
from tests.support.dvc_remote import CREDENTIALS, publish_dataset, s3_server
from tests.support.k8s import Doc, expand, find, pod_specs, resolve_env
from tests.support.katib import (
    katib_parse_metrics,
    katib_wrapped_command,
    sample_assignment,
    substitute_trial_parameters,
)
from tests.support.object_store import ObjectStore, object_store
from tests.support.plans import tiny_plan
from tests.support.postgres import postgres_server
from tests.support.processes import (
    BIN,
    free_port,
    http_get,
    replace_flag,
    stop,
    subprocess_env,
    wait_until_up,
)
from tests.support.project import make_project

__all__ = ["object_store"]  # the fixture, found by pytest under its name


@pytest.mark.slow
def test_mlflow_server_as_deployed_answers_the_in_cluster_name(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """`mlflow server` with the Deployment's arguments and environment, on a real PostgreSQL.

    The backend store URI is the manifest's, assembled from the Secret as the
    kubelet does, with only the Service's host swapped for the local server
    (its role and database created as the Secret names them). Artifacts go to
    a folder, the port is free and one worker serves (two CPU cores). MLflow 3
    refuses Host headers it does not know; the cluster calls it by the Service
    name.
    """
    docs = rendered["local"]
    pod = find(docs, "Deployment", "flywheel-mlflow")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    as_deployed = urlsplit(resolve_env(container, docs, {})["MLFLOW_BACKEND_STORE_URI"])
    assert (as_deployed.scheme, as_deployed.hostname) == (
        "postgresql+psycopg2",
        "flywheel-postgres",
    )
    with postgres_server() as postgres:
        database, role = as_deployed.path.lstrip("/"), as_deployed.username
        postgres.createdb(database, owner=role)
        local = f"{role}:{as_deployed.password}@{postgres.host}:{postgres.port}"
        env = resolve_env(
            container,
            docs,
            {
                "MLFLOW_BACKEND_STORE_URI": as_deployed._replace(netloc=local).geturl(),
                "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
            },
        )
        _serve_and_probe(container, docs, env, tmp_path)


def _serve_and_probe(container: Doc, docs: list[Doc], env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    args = [expand(a, env) for a in container["args"]]
    args = replace_flag(replace_flag(args, "--port", str(port)), "--workers", "1")
    args = replace_flag(args, "--host", "127.0.0.1")
    assert container["command"] == ["mlflow", "server"]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server", *args],
            cwd=tmp_path,
            env=subprocess_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        probe = container["readinessProbe"]["httpGet"]["path"]
        wait_until_up(server, f"http://127.0.0.1:{port}{probe}", log, timeout=120)
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5"
        in_cluster = urlsplit(
            find(docs, "ConfigMap", "flywheel-config")["data"]["MLFLOW_TRACKING_URI"]
        )
        # Generous: the first queries after start can take seconds on a busy machine.
        status, body = http_get(api, host=in_cluster.netloc, timeout=60)
        assert status == 200, body[:300]
        assert "experiments" in json.loads(body)
        assert (
            http_get(
                api, host=f"{in_cluster.hostname}.flywheel.svc.cluster.local:5000", timeout=60
            )[0]
            == 200
        )
        assert http_get(api, host="rebinding.example.com:5000", timeout=60)[0] == 403
        # Kubelet probes come with the pod IP as Host: the health path must not care.
        health = f"http://127.0.0.1:{port}{probe}"
        assert http_get(health, host="10.244.1.7:5000", timeout=60)[0] == 200
    finally:
        stop(server)


@pytest.mark.slow
def test_evidently_ui_as_deployed_serves_the_workspace_in_the_object_store(
    rendered: dict[str, list[Doc]], object_store: ObjectStore, tmp_path: Path
) -> None:
    """The Deployment's command, arguments and environment (the local overlay's Secret), with
    only the in-cluster endpoint and the state URL pointed at the S3 server the test runs."""
    docs = rendered["local"]
    (container,) = find(docs, "Deployment", "flywheel-evidently")["spec"]["template"]["spec"][
        "containers"
    ]
    state = object_store.prefix("evidently-deployed")
    env = resolve_env(
        container,
        docs,
        {"FLYWHEEL_STATE_URL": state, "AWS_ENDPOINT_URL": object_store.endpoint},
    )
    port = free_port()
    args = [expand(a, env) for a in container["args"]]
    assert f"--workspace={state}/evidently" in args
    args = replace_flag(replace_flag(args, "--port", str(port)), "--host", "127.0.0.1")
    log = tmp_path / "ui.log"
    with log.open("wb") as out:
        ui = subprocess.Popen(
            [str(BIN / container["command"][0]), *container["command"][1:], *args],
            cwd=tmp_path,
            env=subprocess_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        for probe in ("readinessProbe", "livenessProbe"):
            path = container[probe]["httpGet"]["path"]
            wait_until_up(ui, f"http://127.0.0.1:{port}{path}", log, timeout=90)
        assert http_get(f"http://127.0.0.1:{port}/api/projects")[0] == 200
    finally:
        stop(ui)
    assert object_store.keys(f"{state}/evidently") == [], "an empty workspace stays empty"


TINY_PLAN = tiny_plan(10, 4, 1)
TINY_PARAMS = Params(
    data=TINY_PLAN,
    train=TrainConfig(
        experiment="test-infra", seed=7, epochs=30, batch_size=16,
        model=ModelConfig(width=8, stages=3, embedding_dim=16),
    ),
)  # fmt: skip


@pytest.mark.slow
def test_katib_trial_trains_and_reports_its_objective(
    rendered: dict[str, list[Doc]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One trial, end to end, as Katib runs it in the component image's /app.

    The trial parameters are substituted, the primary container's command is
    wrapped the way Katib's pod webhook wraps it (one `sh -c` line, output to
    the metrics file) and its `$(VAR)`s expanded as the kubelet does, and the
    metrics file is parsed the way Katib's collector parses it. Data: the
    latest version in the ConfigMap's DVC remote (an S3 server), which the trial
    materialises with the Secret's keys; /app holds params.yaml (a tiny plan) and
    a data.dvc of its own that the trial must not use (the image's).
    """
    docs = rendered["jobs-gpu"] + rendered["gpu"]  # the trial reads the services' ConfigMap
    experiment = find(docs, "Experiment", "flywheel-tune")
    values = sample_assignment(experiment)
    trial = substitute_trial_parameters(experiment, values)
    ((_, pod),) = pod_specs(trial)
    primary = next(
        c
        for c in pod["containers"]
        if c["name"] == trial["spec"]["trialTemplate"]["primaryContainerName"]
    )
    # The image's /app: params.yaml, and the data version data.dvc records (no git).
    app_dir, _ = make_project(tmp_path / "app", TINY_PARAMS)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    remote = urlsplit(find(docs, "ConfigMap", "flywheel-config")["data"]["FLYWHEEL_DVC_REMOTE"])
    metrics_file = tmp_path / "katib" / "metrics.log"
    metrics_file.parent.mkdir()

    with s3_server(bucket=remote.netloc) as s3:
        for key, value in s3.env(remote.path.strip("/")).items():  # the laptop's
            monkeypatch.setenv(key, value)
        version = publish_dataset(
            app_dir / "data", TINY_PLAN, s3.remote(remote.path.strip("/")), tmp_path / "laptop"
        )
        env = resolve_env(  # the Secret's keys: any will do for the S3 server
            primary,
            docs,
            {
                "MLFLOW_TRACKING_URI": store,
                "FLYWHEEL_HOME": str(tmp_path / "state"),
                "AWS_ENDPOINT_URL": s3.endpoint,
                **CREDENTIALS,
            },
        )
        command = [expand(a, env) for a in katib_wrapped_command(primary, metrics_file)]
        done = subprocess.run(
            command,
            cwd=app_dir,
            env=subprocess_env(env),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    log = metrics_file.read_text()
    assert "--data-version=latest" in command[-1]
    assert f"data version {version} materialised" in log, log[-3000:]
    assert done.returncode == 0, log[-3000:] + done.stderr
    assert [p.read_text().strip() for p in metrics_file.parent.glob("*.pid")] == ["completed"]
    objective = experiment["spec"]["objective"]
    filters = experiment["spec"]["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"]
    observed = katib_parse_metrics(log.split("\n"), [objective["objectiveMetricName"]], filters)
    assert observed[0][1] != "unavailable", log[-3000:]
    assert all(0.0 <= float(value) <= 1.0 for _, value in observed)

    # The run it logged: in the Katib experiment, named after the trial, the trial's values.
    client = MlflowClient(store)
    katib_experiment = client.get_experiment_by_name("flywheel-katib")
    assert katib_experiment is not None
    (run,) = client.search_runs([katib_experiment.experiment_id])
    assert run.data.tags["flywheel.pipeline_run_id"] == values["trialName"]
    assert float(run.data.params["train.lr"]) == float(values["lr"])
    assert run.data.params["train.epochs"] == "4"
    assert run.data.tags[TAG_DATA_VERSION] == version
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert max(m.value for m in history) == pytest.approx(float(observed[0][1]), abs=1e-4)
