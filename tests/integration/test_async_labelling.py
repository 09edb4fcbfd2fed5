"""Asynchronous labelling end to end without Label Studio: `flywheel label sync` below and above
`label.sync.min_completed` (a recording stand-in of the KFP API receives the update run), and the
`update` pipeline on the KFP local runner ending before the merge when too few are complete.

People's annotations arrive as Label Studio exports saved in the exports folder (the
`label-studio-export` labeller), the path Label Studio's own export takes; the live Label Studio
path is tests/integration/test_label_studio_live.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import DataPlan, LabelConfig, Params, SyncConfig
from flywheel.labeling import choice_result
from flywheel.workflows.label_sync import read_syncs
from pipelines.arguments import pipeline_arguments
from pipelines.catalog import get_pipeline
from pipelines.local import run_locally
from tests.support.kfp_api import kfp_stand_in

CLASSES = ("0", "1", "2")
NEEDED = 2


def _task(number: int, label: str | None = None) -> dict[str, Any]:
    """A queued task (`label` None) or its annotated export."""
    annotations = []
    if label is not None:
        annotations = [
            {
                "id": number,
                "completed_by": 1,
                "result": [choice_result(label, "label", "image")],
                "was_cancelled": False,
                "created_at": "2026-12-01T10:00:00",
                "updated_at": "2026-12-01T10:00:00",
            }
        ]
    data = {"image": f"/data/local-files/?d=r{number}.png", "request_id": f"r{number}", "index": 0}
    return {"id": number, "data": data, "annotations": annotations, "predictions": []}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose queue holds one sent batch of 3 tasks; one export labels one of them."""
    for name in ("FLYWHEEL_STATE_URL", "FLYWHEEL_KFP_TOKEN", "KF_PIPELINES_SA_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.config/kfp/context.json
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "project" / ".flywheel"))
    root = tmp_path / "project"
    labeling = root / ".flywheel" / "labeling"
    for folder in ("queue", "exports"):
        (labeling / folder).mkdir(parents=True)
    params = Params(
        data=DataPlan(classes=CLASSES),
        state={"url": str(root / ".flywheel")},  # type: ignore[arg-type]
        label=LabelConfig(
            labeler="label-studio-export",
            sync=SyncConfig(min_completed=NEEDED, experiment="labels"),
        ),
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    (labeling / "queue" / "b1.json").write_text(json.dumps([_task(n) for n in (1, 2, 3)]))
    (labeling / "exports" / "monday.json").write_text(json.dumps([_task(1, "2")]))
    return root


def _sync(root: Path, *args: str) -> Any:
    return CliRunner().invoke(
        app, ["label", "sync", "--params", str(root / "params.yaml"), *args], env={"COLUMNS": "200"}
    )


def test_sync_below_the_threshold_records_a_wait_and_starts_nothing(project: Path) -> None:
    with kfp_stand_in() as api:
        result = _sync(project, "--submit", "--host", api.url, "--out", str(project / "dist"))

    assert result.exit_code == 0, result.output
    assert "1 of 3 outstanding tasks complete (1 batch); 2 needed" in result.output
    assert "label sync HELD" in result.output
    assert api.calls("POST", "/runs") == []
    assert not (project / ".flywheel" / "ground_truth").exists()  # counting records nothing
    (decision,) = read_syncs(project / ".flywheel")
    assert (decision.action, decision.completed, decision.outstanding) == ("held", 1, 3)
    assert decision.run_id is None


def test_sync_above_the_threshold_submits_the_update_pipeline(project: Path) -> None:
    exports = project / ".flywheel" / "labeling" / "exports"
    (exports / "tuesday.json").write_text(json.dumps([_task(3, "0")]))  # a late annotation

    with kfp_stand_in(token="t0ken") as api:
        result = _sync(
            project,
            "--submit",
            "--host",
            api.url,
            "--token",
            "t0ken",
            "--namespace",
            "team",
            "--out",
            str(project / "dist"),
            "--set",
            "train.epochs=3",
        )

    assert result.exit_code == 0, result.output
    assert "2 of 3 outstanding tasks complete (1 batch); 2 needed" in result.output
    (experiment,) = api.calls("POST", "/experiments")
    assert experiment.body == {"display_name": "labels", "namespace": "team"}
    (run,) = api.calls("POST", "/runs")
    assert run.body["display_name"].startswith("update-sync-")
    assert run.body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "update"
    parameters = run.body["runtime_config"]["parameters"]
    assert parameters["epochs"] == 3
    assert (parameters["data_version"], parameters["repo"]) == ("", "")  # latest on the remote
    (decision,) = read_syncs(project / ".flywheel")
    assert (decision.action, decision.where, decision.namespace) == ("fired", "kfp", "team")
    assert decision.run_id is not None
    assert f"label sync FIRED: run {decision.run_id}" in result.output

    # The next sync, while that run has not merged yet: held by the cooldown, nothing sent.
    with kfp_stand_in(token="t0ken") as api:
        again = _sync(project, "--submit", "--host", api.url, "--token", "t0ken")
        assert api.calls("POST", "/runs") == []
    assert again.exit_code == 0, again.output
    assert re.search(rf"update run {decision.run_id} was submitted \d+ min ago", again.output)
    assert "label.sync.cooldown_minutes (120)" in again.output
    assert "label sync HELD" in again.output
    assert [d.action for d in read_syncs(project / ".flywheel")] == ["fired", "held"]


def test_sync_with_submit_needs_an_endpoint(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)

    result = _sync(project, "--submit")

    assert result.exit_code == 2
    assert "--submit submits through the KFP API" in " ".join(result.output.split())
    assert read_syncs(project / ".flywheel") == []


def test_the_update_pipeline_below_the_threshold_ends_without_training(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    params = Params.model_validate(yaml.safe_load((project / "params.yaml").read_text()))
    entry = get_pipeline("update")
    pipeline = entry.build(params, target="local")
    arguments = pipeline_arguments(params, [], data_version="", repo=str(project))

    run = run_locally(
        pipeline, arguments, name=entry.name, output_tasks=entry.outputs, caching=False
    )

    assert set(run.task_seconds) == {"collect-labels"}  # no merge, no training
    said = [e.text for e in run.events if e.kind == "message"]
    assert any("1 of 3 outstanding tasks complete (1 batch); 2 needed" in s for s in said), said
    assert said[-1].endswith(": wait")
    # What was read back is recorded: a later run counts it without its export.
    labels = project / ".flywheel" / "ground_truth"
    assert len(list(labels.glob("*.parquet"))) == 1


def test_sync_runs_the_update_here_and_records_a_run_that_failed(project: Path) -> None:
    """Above the threshold without --submit the update pipeline runs on the KFP local runner;
    here its merge step fails (the project has no DVC data), and the decision says so."""
    exports = project / ".flywheel" / "labeling" / "exports"
    (exports / "tuesday.json").write_text(json.dumps([_task(2, "1")]))

    result = _sync(project)

    assert result.exit_code == 1, result.output
    assert "running pipeline update on the KFP local runner" in result.output
    assert "✓ collect-labels" in result.output  # enough collected: the merge step ran
    assert "DataVersionError: no DVC remote" in result.output  # and said why it failed
    (decision,) = read_syncs(project / ".flywheel")
    assert (decision.action, decision.where, decision.completed) == ("failed", "local", 2)
    assert decision.reasons[-1] == "local: failed"
