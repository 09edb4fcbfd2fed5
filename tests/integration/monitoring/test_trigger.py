"""`flywheel monitor --trigger` against a recording stand-in of the KFP REST API: the guard's
decision on a real drift verdict, the run kfp's own client sends when it fires, nothing sent
when it holds back or sees no drift, every decision in the state store; exit 0 throughout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.storage import state_url
from flywheel.workflows.trigger import read_decisions, triggers_dir
from tests.support.kfp_api import KfpStandIn, kfp_stand_in
from tests.support.monitoring_stack import DRIFT, HOURS, PARAMS, WINDOW, Traffic, hour

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_kfp_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ~/.config/kfp/context.json, no KFP settings of the person running the tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in (
        "FLYWHEEL_KFP_TOKEN",
        "KF_PIPELINES_SA_TOKEN_PATH",
        "FLYWHEEL_KFP_NAMESPACE",
        "KF_PIPELINES_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)


def _params_file(tmp_path: Path) -> Path:
    raw = PARAMS.model_dump(mode="json")
    raw["monitor"]["workspace"] = str(tmp_path / "evidently")  # windows other tests monitored
    raw["monitor"]["trigger"] = {
        "cooldown_hours": 12,
        "max_runs_per_day": 2,
        "min_window_size": WINDOW,
        "budget": 5.0,  # below the cycle's 8.0: the run is told to spend at most 5.0
        "budget_days": 30,
        "experiment": "drift-triggered",
    }
    raw["curate"]["cost"] = {"per_cycle": 8.0}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _monitor(api: KfpStandIn, tmp_path: Path, h: int, *extra: str) -> dict[str, object]:
    since, until = hour(h)
    args = ["monitor", "--trigger", "--host", api.url, "--namespace", "team", "--json"]
    result = CliRunner().invoke(
        app,
        [
            *args,
            "--since",
            since.isoformat(),
            "--until",
            until.isoformat(),
            "--out",
            str(tmp_path / "compiled"),
            "--params",
            str(_params_file(tmp_path)),
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output  # a drift is a verdict, not a failure
    document: dict[str, object] = json.loads(result.stdout)
    return document


def test_trigger_submits_exactly_when_the_guard_fires(traffic: Traffic, tmp_path: Path) -> None:
    state = state_url(PARAMS.state.url)
    shutil.rmtree(Path(str(triggers_dir(state))), ignore_errors=True)  # this test's history

    with kfp_stand_in(token="t0ken") as api:
        calm = _monitor(api, tmp_path, HOURS["in_distribution"][1], "--token", "t0ken")
        assert api.calls("POST", "/runs") == []  # no drift: nothing submitted

        first = _monitor(api, tmp_path, HOURS[DRIFT][1], "--token", "t0ken")
        (run,) = api.calls("POST", "/runs")  # drift, the guard allows: one run

        second = _monitor(api, tmp_path, HOURS[DRIFT][0], "--token", "t0ken")
        assert len(api.calls("POST", "/runs")) == 1  # drift again, within the cooldown

    assert calm["drift"] is False
    assert calm["trigger"]["action"] == "none"  # type: ignore[index]
    assert first["drift"] is True
    fired = first["trigger"]
    assert fired["action"] == "fired"  # type: ignore[index]
    assert fired["window_size"] == WINDOW  # type: ignore[index]
    assert fired["budget_left"] == 5.0  # type: ignore[index]

    # What kfp's client sent: the curation pipeline (it ends when the batch is sent; the
    # update pipeline merges later), in the namespace, with the token, the experiment of
    # monitor.trigger, and the labelling budget left as the run's cap.
    assert {r.headers.get("authorization") for r in api.requests} == {"Bearer t0ken"}
    (experiment,) = api.calls("POST", "/experiments")
    assert experiment.body == {"display_name": "drift-triggered", "namespace": "team"}
    assert run.body["display_name"].startswith("curation-drift-")
    assert run.body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "curation"
    parameters = run.body["runtime_config"]["parameters"]
    assert parameters["overrides"] == ["curate.cost.per_cycle=5.0"]
    assert set(parameters) == {"params", "overrides"}  # no data version: nothing is merged

    held = second["trigger"]
    assert held["action"] == "held"  # type: ignore[index]
    assert held["reasons"][0].startswith("cooldown: last fired 0.0 h ago")  # type: ignore[index]
    assert held["run_id"] is None  # type: ignore[index]

    # The state store holds the three decisions, in order.
    recorded = read_decisions(state)
    assert [d.action for d in recorded] == ["none", "fired", "held"]
    assert recorded[1].namespace == "team"
    assert recorded[1].run_id is not None


def test_a_refused_submission_is_recorded_and_fails_the_command(
    traffic: Traffic, tmp_path: Path
) -> None:
    state = state_url(PARAMS.state.url)
    shutil.rmtree(Path(str(triggers_dir(state))), ignore_errors=True)
    since, until = hour(HOURS[DRIFT][1])

    with kfp_stand_in(token="right") as api:
        result = CliRunner().invoke(
            app,
            [
                "monitor",
                "--trigger",
                "--host",
                api.url,
                "--token",
                "wrong",
                "--since",
                since.isoformat(),
                "--until",
                until.isoformat(),
                "--out",
                str(tmp_path / "compiled"),
                "--params",
                str(_params_file(tmp_path)),
            ],
        )

    assert result.exit_code == 2, result.output
    assert "the triggered run was not submitted" in result.output
    (decision,) = read_decisions(state)
    assert decision.action == "failed"
    # kfp's client refuses at its health check (401) and says so only as failed attempts.
    assert f"cannot reach the KFP endpoint {api.url} with a bearer token" in decision.reasons[-1]


def test_without_trigger_a_drift_still_exits_1(traffic: Traffic, tmp_path: Path) -> None:
    """The demo's `flywheel monitor`: unchanged, and no decision recorded."""
    state = state_url(PARAMS.state.url)
    shutil.rmtree(Path(str(triggers_dir(state))), ignore_errors=True)
    since, until = hour(HOURS[DRIFT][1])
    result = CliRunner().invoke(
        app,
        [
            "monitor",
            "--since",
            since.isoformat(),
            "--until",
            until.isoformat(),
            "--params",
            str(_params_file(tmp_path)),
        ],
    )
    assert result.exit_code == 1, result.output
    assert read_decisions(state) == []
