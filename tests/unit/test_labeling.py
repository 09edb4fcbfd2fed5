"""Label Studio formats: labelling config, reading exports, refusing bad labels; ground truth."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flywheel.config import DataPlan, LabelConfig, Params
from flywheel.data.ground_truth import (
    GroundTruthError,
    latest_per_key,
    read_ground_truth,
    write_ground_truth,
)
from flywheel.demo.oracle import OracleLabeler, answer_tasks
from flywheel.labeling import (
    LABEL_COLUMNS,
    LabelerError,
    LabelImportError,
    LabelStudioExportLabeler,
    QueueError,
    import_labels,
    label_config_xml,
    labeler_for,
    parse_export,
    queue_batches,
    read_batch,
    read_labels,
)
from tests.support.labeling import random_images, write_prediction_log

CLASSES = ("0", "1", "2")
CFG = LabelConfig()
SERVED = {("r1", 0), ("r2", 0)}


def _task(
    task_id: int, request_id: str, index: int, *annotations: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": task_id,
        "data": {
            "image": f"/data/local-files/?d={request_id}.png",
            "request_id": request_id,
            "index": index,
        },
        "annotations": list(annotations),
        "predictions": [],
    }


def _annotation(
    *choices: str, at: str = "2026-11-23T10:00:00", cancelled: bool = False, control: str = "label"
) -> dict[str, Any]:
    return {
        "id": 1,
        "completed_by": 1,
        "result": [
            {
                "id": "x",
                "from_name": control,
                "to_name": "image",
                "type": "choices",
                "value": {"choices": list(choices)},
            }
        ],
        "was_cancelled": cancelled,
        "created_at": at,
        "updated_at": at,
    }


def test_the_labelling_config_is_xml_with_one_choice_per_class() -> None:
    root = ET.fromstring(label_config_xml(["0", "1", "<&>"], "label", "image"))
    [image] = root.iter("Image")
    [choices] = root.iter("Choices")
    assert (image.get("name"), image.get("value")) == ("image", "$image")
    assert (choices.get("name"), choices.get("toName"), choices.get("choice")) == (
        "label",
        "image",
        "single",
    )
    assert [c.get("value") for c in choices.iter("Choice")] == ["0", "1", "<&>"]


def test_parse_export_reads_one_label_per_task() -> None:
    tasks = [
        _task(1, "r1", 0, _annotation("2")),
        _task(
            2,
            "r2",
            3,
            _annotation("1", at="2026-11-23T10:00"),
            _annotation("0", at="2026-11-23T11:00"),
        ),
        _task(3, "r3", 0, _annotation("1", cancelled=True)),
        _task(4, "r4", 0),
        _task(5, "r5", 0, _annotation("1", control="comment")),
    ]

    parsed = parse_export(tasks, CLASSES, from_name="label")

    assert parsed.labels[["request_id", "index", "label", "task_id"]].values.tolist() == [
        ["r1", 0, "2", "1"],
        ["r2", 3, "0", "2"],  # the later annotation wins
    ]
    assert parsed.unlabelled == ("3", "4", "5")  # cancelled, none, other control only


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ({"tasks": []}, "a list of tasks"),
        (
            [_task(7, "r1", 0, _annotation("9"))],
            r"export.json: task 7 \(request r1 index 0\): label '9' is not one of",
        ),
        ([_task(8, "r1", 0, _annotation("1", "2"))], "task 8 .*exactly one choice"),
        ([_task(9, "r1", 0, _annotation())], "task 9 .*exactly one choice"),
        ([{"id": 4, "data": {"image": "x.png"}, "annotations": []}], "task 4: data.request_id"),
        ([{"data": {"request_id": "r", "index": "one"}}], r"task #0 \(no id\): data.request_id"),
        (
            [_task(1, "r1", 0, _annotation("1")), _task(2, "r1", 0, _annotation("2"))],
            "task 2 .*labels it '2', but task 1 labels the same image '1'",
        ),
        (["not a task"], "task #0 is not an object"),
    ],
    ids=[
        "not-a-list",
        "unknown-label",
        "two-choices",
        "no-choice",
        "no-key",
        "bad-index",
        "conflicting-duplicate",
        "not-an-object",
    ],
)
def test_a_bad_export_is_refused_naming_the_task(tasks: Any, message: str) -> None:
    with pytest.raises(LabelImportError, match=message):
        parse_export(tasks, CLASSES, from_name="label", source="export.json")


def test_a_wrong_label_writes_nothing(tmp_path: Path) -> None:
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps([_task(1, "r1", 0, _annotation("1")), _task(2, "r2", 0, _annotation("cat"))])
    )

    with pytest.raises(LabelImportError, match=r"task 2 .*'cat' is not one of"):
        import_labels(export, CLASSES, CFG, served=SERVED, gt_root=tmp_path / "gt")

    assert not (tmp_path / "gt").exists()  # nothing half-written: not even the good task
    assert read_labels(tmp_path / "gt").empty


@pytest.mark.parametrize(
    ("content", "message"), [(None, "no such file"), ("{not json", "not a JSON file")]
)
def test_unreadable_exports(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "export.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(LabelImportError, match=message):
        import_labels(path, CLASSES, CFG, served=SERVED, gt_root=tmp_path / "gt")


def test_import_is_idempotent_and_a_relabel_wins(tmp_path: Path) -> None:
    export = tmp_path / "export.json"
    gt = tmp_path / "gt"
    export.write_text(
        json.dumps([_task(1, "r1", 0, _annotation("1")), _task(2, "r2", 0, _annotation("2"))])
    )

    first = import_labels(export, CLASSES, CFG, served=SERVED, gt_root=gt)
    again = import_labels(export, CLASSES, CFG, served=SERVED, gt_root=gt)
    export.write_text(json.dumps([_task(1, "r1", 0, _annotation("0", at="2026-11-24T00:00"))]))
    relabel = import_labels(export, CLASSES, CFG, served=SERVED, gt_root=gt)

    assert (first.written, again.written, again.unchanged, relabel.written) == (2, 0, 2, 1)
    assert again.file is None
    assert len(list(gt.glob("*.parquet"))) == 2
    labels = read_labels(gt).set_index("request_id")["label"].to_dict()
    assert labels == {"r1": "0", "r2": "2"}
    assert set(read_ground_truth(gt)["origin"]) == {"label-studio"}


def test_the_oracle_answers_what_it_knows_as_an_export() -> None:
    tasks = [_task(1, "r1", 0), _task(2, "r2", 1)]
    export, answered = answer_tasks(
        tasks, {("r1", 0): "2"}, from_name="label", to_name="image", answered_at="2026-11-23T10:00"
    )
    assert answered == 1
    parsed = parse_export(export, CLASSES, from_name="label")
    assert parsed.labels[["request_id", "label"]].values.tolist() == [["r1", "2"]]
    assert parsed.unlabelled == ("2",)


# ------------------------------------------------------------------ labellers


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("label-studio-export", LabelStudioExportLabeler),
        ("flywheel.labeling.label_studio:LabelStudioExportLabeler", LabelStudioExportLabeler),
        ("flywheel.demo.oracle:OracleLabeler", OracleLabeler),
    ],
)
def test_the_labeller_comes_from_configuration(name: str, expected: type) -> None:
    assert type(labeler_for(LabelConfig(labeler=name))) is expected


def test_the_default_labeller_is_the_label_studio_import() -> None:
    assert isinstance(labeler_for(LabelConfig()), LabelStudioExportLabeler)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("oracle", "expected one of \\['label-studio', 'label-studio-export'\\] or a class path"),
        ("flywheel.nowhere:Labeler", "cannot import flywheel.nowhere:Labeler"),
        ("flywheel.labeling:read_labels", "not a concrete subclass"),
        ("flywheel.labeling:Labeler", "not a concrete subclass"),
    ],
)
def test_an_unusable_labeller_is_named(name: str, message: str) -> None:
    with pytest.raises(LabelerError, match=message):
        labeler_for(LabelConfig(labeler=name))


def test_the_export_labeller_imports_the_exports_holding_queued_tasks(tmp_path: Path) -> None:
    queue, exports, out, gt = (tmp_path / d for d in ("queue", "exports", "out", "gt"))
    queue.mkdir()
    exports.mkdir()
    (queue / "b1.json").write_text(json.dumps([_task(1, "r1", 0), _task(2, "r2", 0)]))
    (exports / "a.json").write_text(json.dumps([_task(1, "r1", 0, _annotation("2"))]))
    (exports / "b.json").write_text(
        json.dumps([_task(1, "r1", 0, _annotation("1")), _task(9, "r9", 0, _annotation("0"))])
    )
    (exports / "other.json").write_text(json.dumps([_task(5, "r5", 0, _annotation("0"))]))
    # r9 was served (it is in the prediction log) but not queued.
    write_prediction_log(
        tmp_path / "log", random_images(1), np.array([[0.2, 0.3, 0.5]]), CLASSES, request_ids=["r9"]
    )
    params = Params(data=DataPlan(classes=CLASSES), serve={"log": {"dir": tmp_path / "log"}})  # type: ignore[arg-type]
    labeler = LabelStudioExportLabeler(source=exports)

    result = labeler.label(params, queue, export_dir=out, gt_root=gt)

    # r1 is relabelled by the later export; r9 is not queued; r2 is not labelled yet.
    assert result.labels[["request_id", "index", "label"]].values.tolist() == [["r1", 0, "1"]]
    assert result.exports == (out / "a.json", out / "b.json")
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json"]
    assert result.summary.startswith("1 of 2 queued tasks labelled in 2 Label Studio exports")
    labels = read_labels(gt).set_index("request_id")["label"].to_dict()
    assert labels == {"r1": "1", "r9": "0"}  # whole exports are imported
    assert len(read_ground_truth(gt)) == 2  # r1 once: the later export's label
    assert set(read_ground_truth(gt)["origin"]) == {"label-studio"}

    again = labeler.label(params, queue, export_dir=out, gt_root=gt)
    assert again.summary.endswith("(0 new labels)")
    assert len(list(gt.glob("*.parquet"))) == 1  # one file per run; nothing new the second time

    # An export labelling a request never served (neither queued nor logged) is refused whole.
    (exports / "c.json").write_text(
        json.dumps([_task(1, "r1", 0, _annotation("0")), _task(7, "r7", 0, _annotation("0"))])
    )
    with pytest.raises(LabelImportError, match=r"c\.json: 1 labels .*never served.*r7#0"):
        labeler.label(params, queue, export_dir=out, gt_root=gt)
    assert read_labels(gt).set_index("request_id")["label"].to_dict() == labels


def test_the_export_labeller_with_no_exports_labels_nothing(tmp_path: Path) -> None:
    (tmp_path / "queue").mkdir()
    (tmp_path / "queue" / "b1.json").write_text(json.dumps([_task(1, "r1", 0)]))
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "project-1.csv").write_text("id,label\n1,0\n")
    result = LabelStudioExportLabeler(source=tmp_path / "exports").label(
        Params(data=DataPlan(classes=CLASSES)),
        tmp_path / "queue",
        export_dir=tmp_path / "out",
        gt_root=tmp_path / "gt",
    )
    assert result.labels.empty
    assert list(result.labels.columns) == list(LABEL_COLUMNS)
    assert result.exports == ()
    assert "ignored 1 CSV/TSV exports (project-1.csv): flywheel reads Label Studio's JSON" in (
        result.summary
    )


def test_the_export_labeller_refuses_a_broken_export(tmp_path: Path) -> None:
    (tmp_path / "queue").mkdir()
    (tmp_path / "queue" / "b1.json").write_text(json.dumps([_task(1, "r1", 0)]))
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "x.json").write_text("{not json")
    with pytest.raises(LabelImportError, match=r"x\.json: not a JSON file"):
        LabelStudioExportLabeler(source=tmp_path / "exports").label(
            Params(data=DataPlan(classes=CLASSES)),
            tmp_path / "queue",
            export_dir=tmp_path / "out",
            gt_root=tmp_path / "gt",
        )


def test_queue_batches_and_a_missing_batch(tmp_path: Path) -> None:
    (tmp_path / "b1.json").write_text(json.dumps([_task(1, "r1", 0)]))
    (tmp_path / "bad.json").write_text(json.dumps([{"data": {}}]))
    assert queue_batches(tmp_path, "b1") == [tmp_path / "b1.json"]
    with pytest.raises(QueueError, match="no queue batch 'b9'"):
        queue_batches(tmp_path, "b9")
    with pytest.raises(QueueError, match=r"task 0 has no data\.request_id"):
        read_batch(tmp_path / "bad.json")


# ----------------------------------------------------------------- ground truth


def _rows(origin: str, labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(len(labels))],
            "index": [0] * len(labels),
            "label": labels,
            "origin": [origin] * len(labels),
        }
    )


def test_ground_truth_files_are_appended_never_rewritten(tmp_path: Path) -> None:
    first = write_ground_truth(_rows("simulator", ["1", "2"]).assign(style="printed"), tmp_path)
    second = write_ground_truth(_rows("oracle", ["7"]), tmp_path)

    assert first is not None
    assert second is not None
    assert first != second
    assert sorted(tmp_path.glob("*.parquet")) == [first, second]  # name order is write order
    frame = read_ground_truth(tmp_path)
    assert frame["origin"].tolist() == ["simulator", "simulator", "oracle"]
    assert frame["style"].tolist()[:2] == ["printed", "printed"]
    assert frame["index"].dtype == "int64"
    assert read_ground_truth(tmp_path, origins=["oracle"])["label"].tolist() == ["7"]
    assert write_ground_truth(_rows("oracle", []), tmp_path) is None


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (_rows("human", ["1"]), "unknown origin"),
        (_rows("oracle", ["1"]).drop(columns="label"), "need the columns"),
        (pd.concat([_rows("oracle", ["1"])] * 2), "repeat a key"),
        (_rows("oracle", ["1"]).assign(request_id=""), "no request_id"),
    ],
)
def test_ground_truth_rows_must_meet_the_contract(
    rows: pd.DataFrame, message: str, tmp_path: Path
) -> None:
    with pytest.raises(GroundTruthError, match=message):
        write_ground_truth(rows, tmp_path)
    assert not list(tmp_path.glob("*"))


def test_latest_label_per_key_wins(tmp_path: Path) -> None:
    write_ground_truth(_rows("oracle", ["1", "2"]), tmp_path)
    write_ground_truth(_rows("label-studio", ["5"]), tmp_path)
    latest = latest_per_key(read_ground_truth(tmp_path)).set_index("request_id")
    assert latest["label"].to_dict() == {"r0": "5", "r1": "2"}
    assert latest.loc["r0", "origin"] == "label-studio"


def test_an_empty_store_reads_as_an_empty_table(tmp_path: Path) -> None:
    frame = read_ground_truth(tmp_path / "missing")
    assert frame.empty
    assert {"request_id", "index", "label", "origin", "recorded_at"} <= set(frame.columns)
