"""`flywheel monitor` (exit status, JSON, an empty window, the CronJob's no-argument run) and
`flywheel reference`, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.monitoring import load_reference
from flywheel.monitoring.features import FEATURE_COLUMNS
from flywheel.monitoring.workspace import open_workspace
from tests.support.monitoring_stack import DRIFT, HOURS, MODEL, PARAMS, WINDOW, Traffic, hour

pytestmark = pytest.mark.slow


def _params_file(tmp_path: Path) -> Path:
    raw = PARAMS.model_dump(mode="json")
    raw["monitor"]["workspace"] = str(tmp_path / "evidently")  # windows other tests monitored
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(("h", "status"), [(HOURS["in_distribution"][1], 0), (HOURS[DRIFT][1], 1)])
def test_cli_exit_status_and_json(traffic: Traffic, tmp_path: Path, h: int, status: int) -> None:
    since, until = hour(h)

    result = CliRunner().invoke(
        app,
        [
            "monitor",
            "--since",
            since.isoformat(),
            "--until",
            until.isoformat(),
            "--json",
            "--params",
            str(_params_file(tmp_path)),
        ],
    )

    assert result.exit_code == status, result.output
    out = json.loads(result.stdout)
    assert out["drift"] is bool(status)
    assert out["window_size"] == WINDOW
    assert set(out["features"]) == set(FEATURE_COLUMNS)
    assert Path(out["report_path"]).is_file()


def test_cli_a_window_already_monitored_is_named_not_checked_again(
    traffic: Traffic, tmp_path: Path
) -> None:
    since, until = hour(HOURS[DRIFT][0])
    window = ["--since", since.isoformat(), "--until", until.isoformat()]
    params = ["--params", str(_params_file(tmp_path))]
    workspace = tmp_path / "evidently"

    first = CliRunner().invoke(app, ["monitor", *window, "--json", *params])
    again = CliRunner().invoke(app, ["monitor", *window, *params])
    as_json = CliRunner().invoke(app, ["monitor", *window, "--json", *params])

    assert first.exit_code == 1, first.output  # drift
    report, project = (json.loads(first.stdout)[k] for k in ("report_path", "project_id"))
    assert again.exit_code == 1  # the verdict recorded for the window
    said = " ".join(again.output.split())
    assert "is already monitored (DRIFT)" in said
    assert f"report {report}" in said
    assert "--force" in said
    document = json.loads(as_json.stdout)
    assert document["already_monitored"] is True
    assert document["drift"] is True
    assert document["report"] == report
    assert len(open_workspace(workspace).list_runs(project)) == 1  # nothing written again

    forced = CliRunner().invoke(app, ["monitor", *window, "--force", "--json", *params])

    assert forced.exit_code == 1, forced.output
    assert len(open_workspace(workspace).list_runs(project)) == 2


def test_cli_exits_2_with_the_reason_when_the_window_is_empty(
    traffic: Traffic, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "monitor",
            "--since",
            "2020-01-01",
            "--until",
            "2020-01-02",
            "--params",
            str(_params_file(tmp_path)),
        ],
    )

    assert result.exit_code == 2
    assert "no predictions" in result.output


def test_cli_with_no_arguments_reads_the_last_window_hours(
    traffic: Traffic, tmp_path: Path
) -> None:
    """What the cluster's CronJob runs: `flywheel monitor`, state under $FLYWHEEL_HOME."""
    result = CliRunner().invoke(app, ["monitor", "--params", str(_params_file(tmp_path))])

    assert result.exit_code == 2  # the test traffic is from 2021: older than 24 h
    assert "no predictions" in result.output
    assert str(traffic.log_dir) in result.output.replace("\n", "")


def test_cli_reference_profiles_a_registered_version_after_the_fact(
    version: str, dataset: Path, tmp_path: Path
) -> None:
    before = load_reference(MODEL, version)

    result = CliRunner().invoke(
        app,
        [
            "reference",
            "--version",
            version,
            "--dataset",
            str(dataset),
            "--params",
            str(_params_file(tmp_path)),
        ],
    )

    assert result.exit_code == 0, result.output
    assert f"reference profile of {len(before)} images" in result.output
    pd.testing.assert_frame_equal(load_reference(MODEL, version), before)  # deterministic
