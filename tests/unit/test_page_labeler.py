"""The page plan's labellers and asynchronous labelling without a server: saved page exports.

Page tasks are queued in the page queue as curation writes them; a person's
Label Studio export (JSON) of the page project is saved in `page-exports/`;
`count_completed` and `collect_labels` go through the page export labeller,
the labels travel as a page labels table, and settled pages stay settled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from flywheel.config import Params, parse_params
from flywheel.labeling import LabelerError, write_json_atomic
from flywheel.labeling.page_labeler import (
    PAGE_LABEL_COLUMNS,
    PageExportLabeler,
    PageStudioLabeler,
    page_exports_dir,
    page_labeler_for,
    page_labels_from_frame,
)
from flywheel.labeling.pages import PagePrediction, PredictedRegion, page_task, region_results
from flywheel.workflows.label_sync import (
    collect_labels,
    count_completed,
    settle_labels,
    sync_folders,
)
from flywheel.workflows.loop import LABELS_FILE
from tests.support.pages import tiny_page_plan

BOXES = [(10, 10, 60, 30), (20, 80, 90, 100)]


def _params(tmp_path: Path, labeler: str = "label-studio-export") -> Params:
    return parse_params(
        {
            "data": tiny_page_plan().model_dump(mode="json"),
            "state": {"url": str(tmp_path / "state")},
            "label": {"labeler": labeler, "sync": {"min_completed": 2}},
        }
    )


def _task(request_id: str) -> dict[str, Any]:
    prediction = PagePrediction(
        request_id,
        0,
        192,
        192,
        tuple(PredictedRegion(b, 0.7, "1", 0.5) for b in BOXES),
        "1",
        "1",
        image_path=f"/served/{request_id}.png",
    )
    return page_task(prediction, batch_id="b-1")


def _annotated(task: dict[str, Any], task_id: int, texts: list[str]) -> dict[str, Any]:
    result = [
        item
        for k, (box, text) in enumerate(zip(BOXES, texts, strict=True))
        for item in region_results(f"a{k}", box, text, 192, 192, box_name="label", to_name="image")
    ]
    annotation = {"id": task_id, "completed_by": 1, "result": result, "was_cancelled": False}
    return {**task, "id": task_id, "annotations": [annotation]}


def test_the_plan_picks_the_page_labeller_and_refuses_a_digits_one(tmp_path: Path) -> None:
    assert isinstance(page_labeler_for(_params(tmp_path)), PageExportLabeler)
    assert isinstance(page_labeler_for(_params(tmp_path, "label-studio")), PageStudioLabeler)
    with pytest.raises(LabelerError, match="not a page labeller"):
        page_labeler_for(_params(tmp_path, "flywheel.demo.oracle:LabelStudioOracle"))
    with pytest.raises(LabelerError, match="a page plan takes one of"):
        page_labeler_for(_params(tmp_path, "oracle"))
    with pytest.raises(LabelerError, match="not a page plan"):
        page_labeler_for(Params())


def test_saved_exports_are_collected_as_a_page_labels_table_and_settled_once(
    tmp_path: Path,
) -> None:
    params = _params(tmp_path)
    queue, merged = sync_folders(params)
    assert str(queue).endswith("page-queue")
    assert str(merged).endswith("page-merged")
    tasks = [_task(f"r-{n}") for n in range(3)]
    write_json_atomic(Path(str(queue)) / "b-1.json", tasks)
    assert count_completed(params).completed == 0

    export = [_annotated(tasks[0], 1, ["x+1", "2"]), _annotated(tasks[1], 2, ["y", "3-1"])]
    write_json_atomic(Path(str(page_exports_dir(params))) / "export-1.json", export)
    status = count_completed(params)
    assert (status.outstanding, status.completed, status.ready) == (3, 2, True)

    out = tmp_path / "labels"
    collected = collect_labels(params, labels_out=out)
    assert collected.ready
    frame = pd.read_parquet(out / LABELS_FILE)
    assert list(frame.columns) == list(PAGE_LABEL_COLUMNS)
    labels = {label.key: label for label in page_labels_from_frame(frame)}
    assert set(labels) == {("r-0", 0), ("r-1", 0)}
    assert [(r.box, r.latex) for r in labels[("r-1", 0)].regions] == [
        (BOXES[0], "y"),
        (BOXES[1], "3-1"),
    ]
    assert labels[("r-0", 0)].data["image_path"] == "/served/r-0.png"
    assert json.loads((out / "export-1.json").read_text())  # the export used is kept

    settle_labels(params, frame, "v2")
    after = count_completed(params)
    assert (after.outstanding, after.completed, after.ready) == (1, 0, False)
    again = collect_labels(params, labels_out=tmp_path / "again")
    assert not again.ready
    assert pd.read_parquet(tmp_path / "again" / LABELS_FILE).empty


def test_a_digits_labels_table_is_refused_for_a_page_plan() -> None:
    frame = pd.DataFrame({"request_id": ["r"], "index": [0], "label": ["3"]})
    with pytest.raises(ValueError, match="not a page labels table"):
        page_labels_from_frame(frame)


def _cli(tmp_path: Path, *args: str) -> Any:
    from typer.testing import CliRunner

    from flywheel.cli import app

    path = tmp_path / "pages.yaml"
    path.write_text(yaml.safe_dump(_params(tmp_path).model_dump(mode="json")))
    return CliRunner().invoke(app, [*args, "--params", str(path)], env={"COLUMNS": "200"})


def test_label_import_checks_a_page_export_and_saves_it_for_the_page_labeller(
    tmp_path: Path,
) -> None:
    params = _params(tmp_path)
    queue, _ = sync_folders(params)
    tasks = [_task(f"r-{n}") for n in range(2)]
    write_json_atomic(Path(str(queue)) / "b-1.json", tasks)
    export = tmp_path / "people.json"
    export.write_text(json.dumps([_annotated(tasks[0], 1, ["x+1", "2"])]))

    result = _cli(tmp_path, "label", "import", str(export))
    assert result.exit_code == 0, result.output
    assert "1 labelled pages" in result.output
    assert (Path(str(page_exports_dir(params))) / "people.json").is_file()
    assert count_completed(params).completed == 1

    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([_annotated(tasks[1], 2, ["x+1", "\\alpha"])]))
    refused = _cli(tmp_path, "label", "import", str(wrong))
    assert refused.exit_code == 2
    assert "alpha" in refused.output
    assert not (Path(str(page_exports_dir(params))) / "wrong.json").exists()


@pytest.mark.parametrize(
    ("command", "says"),
    [(("label", "oracle"), "page_oracle:PageStudioOracle"), (("data", "merge"), "label sync")],
)
def test_digits_only_commands_say_what_a_page_plan_takes(
    tmp_path: Path, command: tuple[str, ...], says: str
) -> None:
    result = _cli(tmp_path, *command)
    assert result.exit_code == 2
    assert says in result.output
