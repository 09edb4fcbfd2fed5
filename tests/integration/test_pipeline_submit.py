"""`flywheel pipeline submit` against a recording stand-in of the KFP REST API.

The stand-in (tests/support/kfp_api.py) is a real HTTP server on 127.0.0.1 that
answers as the KFP API server does and records what kfp's own `kfp.Client`
sent: the namespace, the Authorization header, the run's parameters and the
pipeline spec. Each test starts and stops its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from flywheel.cli import app
from tests.support import REPO
from tests.support.kfp_api import KfpStandIn, kfp_stand_in
from tests.support.processes import free_port

PARAMS_FILE = REPO / "params.yaml"


@pytest.fixture(autouse=True)
def _no_kfp_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ~/.config/kfp/context.json of the person running the tests, no token in the env."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("FLYWHEEL_KFP_TOKEN", "KF_PIPELINES_SA_TOKEN_PATH", "FLYWHEEL_KFP_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)


def submit(api: KfpStandIn, out: Path, *extra: str) -> Any:
    """`flywheel pipeline submit training` to the stand-in, compiling into `out`."""
    args = ["pipeline", "submit", "training", "--host", api.url, "--out", str(out)]
    return CliRunner().invoke(app, [*args, "--params", str(PARAMS_FILE), *extra])


def test_a_run_reaches_the_users_namespace_with_the_token_parameters_and_spec(
    tmp_path: Path,
) -> None:
    with kfp_stand_in(token="t0ken-alice", multi_user=True) as api:
        result = submit(
            api,
            tmp_path,
            "--namespace",
            "kubeflow-user-alice",
            "--token",
            "t0ken-alice",
            "--run-name",
            "nightly",
            "--set",
            "train.epochs=2",
            "--set",
            "train.batch_size=64",
        )

    assert result.exit_code == 0, result.output
    assert "in namespace kubeflow-user-alice" in result.output
    assert api.requests
    assert {r.headers.get("authorization") for r in api.requests} == {"Bearer t0ken-alice"}
    (created,) = api.calls("POST", "/experiments")
    assert created.body == {"display_name": "flywheel", "namespace": "kubeflow-user-alice"}
    (run,) = api.calls("POST", "/runs")
    assert run.body["display_name"] == "nightly"
    assert run.body["experiment_id"] == next(iter(api.experiments))
    parameters = run.body["runtime_config"]["parameters"]
    assert parameters["epochs"] == 2
    assert parameters["overrides"] == ["train.batch_size=64"]
    assert parameters["repo"] == ""  # no repository in a pod: the data comes by hash
    assert len(parameters["data_version"]) == 32  # what data.dvc records
    documents = list(yaml.safe_load_all((tmp_path / "training.yaml").read_text()))
    assert run.body["pipeline_spec"]["pipeline_spec"] == documents[0]
    assert run.body["pipeline_spec"]["platform_spec"] == documents[1]


def test_the_token_file_is_read_before_each_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("projected-1\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))  # kfp's in-pod convention

    with kfp_stand_in(token="projected-1") as api:
        first = submit(api, tmp_path, "--namespace", "team")
        token.write_text("projected-2\n")  # the kubelet renewed it
        api.token = "projected-2"
        second = submit(api, tmp_path, "--namespace", "team")

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    headers = [r.headers.get("authorization") for r in api.requests]
    assert headers[0] == "Bearer projected-1"
    assert headers[-1] == "Bearer projected-2"
    assert len(api.calls("POST", "/runs")) == 2


def test_a_recurring_run_carries_the_schedule_and_namespace(tmp_path: Path) -> None:
    with kfp_stand_in() as api:
        result = submit(api, tmp_path, "--namespace", "team", "--recurring", "--cron", "0 * * * *")

    assert result.exit_code == 0, result.output
    (job,) = api.calls("POST", "/recurringruns")
    assert job.body["trigger"]["cron_schedule"]["cron"] == "0 0 * * * *"
    assert int(job.body["max_concurrency"]) == 1
    assert job.body["no_catchup"] is True
    assert job.body["experiment_id"] in api.experiments
    assert api.experiments[job.body["experiment_id"]]["namespace"] == "team"
    assert "authorization" not in api.requests[0].headers  # no credentials given, none sent


def test_placement_set_for_one_submission_is_in_the_spec_sent(tmp_path: Path) -> None:
    with kfp_stand_in() as api:
        result = submit(api, tmp_path, "--namespace", "team", "--gpus", "0")

    assert result.exit_code == 0, result.output
    (run,) = api.calls("POST", "/runs")
    executors = run.body["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    train = executors["exec-train-model"]["container"]
    assert "accelerator" not in train["resources"]
    assert train["resources"]["resourceCpuRequest"] == "4"


def test_a_refused_token_is_reported_with_the_servers_reason(tmp_path: Path) -> None:
    with kfp_stand_in(token="right") as api:
        result = submit(api, tmp_path, "--namespace", "team", "--token", "wrong")

    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert f"the KFP endpoint {api.url} refused the request: HTTP 401" in said
    assert not api.calls("POST", "/runs")


def test_multi_user_kubeflow_without_a_namespace_is_refused_before_creating_anything(
    tmp_path: Path,
) -> None:
    with kfp_stand_in(multi_user=True) as api:
        result = submit(api, tmp_path)

    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "is a multi-user install: give the Kubeflow profile namespace" in said
    assert not [r for r in api.requests if r.method == "POST"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--token", "a", "--token-file", "/nonexistent"], "not both"),
        (["--token-file", "/nonexistent/token"], "cannot read the KFP token file"),
        (["--token", " "], "the KFP token is empty"),
        (["--in-cluster"], "cannot read the KFP token file /var/run/secrets/kubeflow/pipelines/"),
    ],
)
def test_bad_credentials_are_named_before_anything_is_sent(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    with kfp_stand_in() as api:
        result = submit(api, tmp_path, "--namespace", "team", *extra)

    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not api.requests


def test_cli_submit_names_an_unreachable_endpoint(tmp_path: Path) -> None:
    with socket_closed_port() as port:
        result = CliRunner().invoke(
            app,
            [
                "pipeline",
                "submit",
                "training",
                "--host",
                f"http://127.0.0.1:{port}",
                "--out",
                str(tmp_path),
                "--set",
                "train.epochs=2",
                "--params",
                str(PARAMS_FILE),
            ],
        )

    assert result.exit_code == 2, result.output
    assert f"cannot reach the KFP endpoint http://127.0.0.1:{port}" in result.output
    assert (tmp_path / "training.yaml").is_file()  # compiled before submitting


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--recurring"], "--recurring and --cron go together"),
        (["--cron", "0 * * * *"], "--recurring and --cron go together"),
        (["--recurring", "--cron", "* * *"], "fields"),
        (["--set", "train.epochs=zero"], "train.epochs"),
    ],
)
def test_cli_submit_checks_its_options_before_contacting_anything(
    extra: list[str], message: str
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "submit",
            "training",
            "--host",
            "http://127.0.0.1:9",
            "--params",
            str(PARAMS_FILE),
            *extra,
        ],
    )

    assert result.exit_code == 2, result.output
    assert message in result.output


class socket_closed_port:
    """A localhost port nothing listens on (bound, then released)."""

    def __enter__(self) -> int:
        return free_port()

    def __exit__(self, *exc: object) -> None:
        return None
