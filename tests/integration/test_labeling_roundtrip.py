"""The labelling loop through the CLI: curate → Label Studio tasks → export → import; the oracle.

Real components throughout: images from the collector, the serving prediction
logger writing the log, Parquet ground truth, the `flywheel` CLI in process.
Label Studio itself is not run: its JSON formats are (a task file it imports,
an export it writes, built here the way Label Studio builds one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import DataPlan, Strata
from flywheel.data.ground_truth import read_ground_truth
from flywheel.labeling import parse_export, read_batch, read_labels
from tests.support.labeling import serve_collected_batch

PLAN = DataPlan(
    classes=("0", "1", "2", "3"),
    image_size=16,
    strata=Strata(style=("handwritten", "printed"), noise=("clean", "shadow")),
    per_stratum={"train": 8, "val": 4, "test": 4},
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A params.yaml, a prediction log of 40 collected images, and the simulator's truth."""
    state = tmp_path / "state"
    monkeypatch.setenv("FLYWHEEL_HOME", str(state))
    params = {
        "data": PLAN.model_dump(mode="json"),
        "serve": {"log": {"dir": str(tmp_path / "log")}},
        "label": {"dir": str(tmp_path / "labeling")},
        "curate": {"budget": 10, "strategy": "margin"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    serve_collected_batch(
        PLAN, 40, tmp_path / "log", state / "ground_truth", seed=1, work_dir=tmp_path
    )
    return tmp_path


@dataclass
class Ran:
    """A CLI run: its exit code and its output with line wrapping undone (Rich wraps at 80)."""

    exit_code: int
    output: str


def _invoke(project: Path, *args: str) -> Ran:
    result = CliRunner().invoke(app, [*args, "--params", str(project / "params.yaml")])
    return Ran(result.exit_code, " ".join(result.output.split()))


def _label_studio_export(
    tasks: list[dict[str, Any]], labels: dict[int, str]
) -> list[dict[str, Any]]:
    """What Label Studio exports after people labelled some tasks (`position -> label`)."""
    exported = []
    for position, task in enumerate(tasks):
        annotations = []
        if position in labels:
            annotations.append(
                {
                    "id": 100 + position,
                    "completed_by": 1,
                    "result": [
                        {
                            "id": f"r{position}",
                            "from_name": "label",
                            "to_name": "image",
                            "type": "choices",
                            "origin": "manual",
                            "value": {"choices": [labels[position]]},
                        }
                    ],
                    "was_cancelled": False,
                    "ground_truth": False,
                    "created_at": "2026-11-23T10:00:00.000000Z",
                    "updated_at": "2026-11-23T10:00:00.000000Z",
                    "lead_time": 3.2,
                }
            )
        exported.append({"id": 1 + position, **task, "annotations": annotations})
    return exported


def test_curate_export_import_round_trip(project: Path) -> None:
    curated = _invoke(project, "curate")
    assert curated.exit_code == 0, curated.output
    [batch] = sorted((project / "labeling" / "queue").glob("*.json"))
    tasks = read_batch(batch)
    assert len(tasks) == 10
    truth = read_ground_truth(project / "state" / "ground_truth").set_index(["request_id", "index"])
    given = {
        i: str(truth.loc[(t["data"]["request_id"], t["data"]["index"]), "label"])
        for i, t in enumerate(tasks)
        if i != 3  # a task nobody labelled
    }
    export = project / "export.json"
    export.write_text(json.dumps(_label_studio_export(tasks, given)))

    imported = _invoke(project, "label", "import", str(export))
    assert imported.exit_code == 0, imported.output
    assert "9 new or changed labels recorded" in imported.output
    assert "1 tasks without a label" in imported.output

    labels = read_labels(project / "state" / "ground_truth")
    assert set(labels["origin"]) == {"label-studio"}
    recorded = {(r, i): label for r, i, label in labels[["request_id", "index", "label"]].values}
    expected = {
        (tasks[i]["data"]["request_id"], tasks[i]["data"]["index"]): label
        for i, label in given.items()
    }
    assert recorded == expected

    again = _invoke(project, "label", "import", str(export))
    assert "0 new or changed labels recorded, 9 already known" in again.output

    # The next batch leaves out what is labelled and what is queued.
    curated = _invoke(project, "curate")
    assert curated.exit_code == 0, curated.output
    # Not `max()` of the names: two batches made in the same second sort by their random suffix.
    [newest] = set((project / "labeling" / "queue").glob("*.json")) - {batch}
    keys = {(t["data"]["request_id"], t["data"]["index"]) for t in read_batch(newest)}
    assert not keys & {(t["data"]["request_id"], t["data"]["index"]) for t in tasks}


def test_a_wrong_label_is_rejected_cleanly(project: Path) -> None:
    assert _invoke(project, "curate").exit_code == 0
    [batch] = sorted((project / "labeling" / "queue").glob("*.json"))
    tasks = read_batch(batch)
    export = project / "export.json"
    export.write_text(json.dumps(_label_studio_export(tasks, {0: "1", 1: "seven"})))

    result = _invoke(project, "label", "import", str(export))

    assert result.exit_code == 2
    assert "task 2" in result.output
    assert "'seven' is not one of the classes" in result.output
    assert "Traceback" not in result.output
    assert read_labels(project / "state" / "ground_truth").empty  # not even task 1's label


def test_the_oracle_labels_through_the_same_import(project: Path) -> None:
    assert _invoke(project, "curate").exit_code == 0
    [batch] = sorted((project / "labeling" / "queue").glob("*.json"))

    answered = _invoke(project, "label", "oracle", "--batch", batch.stem)

    assert answered.exit_code == 0, answered.output
    assert "oracle answered 10 of 10 pending tasks" in answered.output
    [export] = sorted((project / "labeling" / "exports").glob("*.json"))
    raw = json.loads(export.read_text())
    parsed = parse_export(raw, PLAN.classes, from_name="label")  # a Label Studio export
    assert len(parsed.labels) == 10
    labels = read_labels(project / "state" / "ground_truth")
    assert set(labels["origin"]) == {"oracle"}
    truth = read_ground_truth(project / "state" / "ground_truth", origins=["simulator"])
    joined = labels.merge(truth, on=["request_id", "index"], suffixes=("", "_truth"))
    assert len(joined) == 10
    assert (joined["label"] == joined["label_truth"]).all()

    # Everything is labelled now: the oracle has nothing left to do.
    again = _invoke(project, "label", "oracle")
    assert "nothing to label" in again.output


def test_the_oracle_leaves_tasks_it_has_no_truth_for(project: Path) -> None:
    assert _invoke(project, "curate").exit_code == 0
    [batch] = sorted((project / "labeling" / "queue").glob("*.json"))
    tasks = read_batch(batch)
    tasks[0]["data"]["request_id"] = "from-real-traffic"  # the simulator never sent it
    batch.write_text(json.dumps(tasks))

    answered = _invoke(project, "label", "oracle")

    assert "oracle answered 9 of 10 pending tasks (1 without truth)" in answered.output
    labels = read_labels(project / "state" / "ground_truth")
    assert "from-real-traffic" not in set(labels["request_id"])
    assert isinstance(labels, pd.DataFrame)


def test_an_unknown_batch_is_a_clear_error(project: Path) -> None:
    result = _invoke(project, "label", "oracle", "--batch", "nope")
    assert result.exit_code == 2
    assert "no queue batch 'nope'" in result.output
