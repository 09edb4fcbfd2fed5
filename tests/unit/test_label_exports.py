"""Label import as Label Studio writes it: JSON, JSON_MIN, pre-1.0, stock template, annotators.

The files under `tests/fixtures/label_studio/` were written by a real Label
Studio 1.23.2 server (`tests/support/label_studio.py` made them: project
`agree` with the plan's labelling config, project `split` with the stock
image-classification template's control `choice`; three annotators). The
`completions` file is the `agree` JSON export with its list renamed as Label
Studio before 1.0 named it.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from flywheel.config import LabelConfig
from flywheel.labeling import LabelImportError, import_labels, parse_export, read_labels
from tests.support.label_studio import CLASSES

FIXTURES = Path(__file__).parents[1] / "fixtures" / "label_studio"
SERVED = {(f"req-{i}", 0) for i in range(6)}
AGREED = {("req-0", 0): "grün blatt", ("req-1", 0): "Élan"}


def _labels(path: Path, **options: str) -> dict[tuple[str, int], str]:
    parsed = parse_export(
        json.loads(path.read_text(encoding="utf-8")),
        CLASSES,
        from_name="label",
        source=path.name,
        served=SERVED,
        **options,  # type: ignore[arg-type]
    )
    return {
        (r, i): label
        for r, i, label in zip(
            parsed.labels["request_id"], parsed.labels["index"], parsed.labels["label"], strict=True
        )
    }


@pytest.fixture
def completions(tmp_path: Path) -> Path:
    """The `agree` JSON export as Label Studio wrote it before 1.0: `completions`."""
    tasks = json.loads((FIXTURES / "agree-json.json").read_text(encoding="utf-8"))
    for task in tasks:
        task["completions"] = task.pop("annotations")
    path = tmp_path / "pre-1.0.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["agree-json.json", "agree-json-min.json"])
def test_json_and_json_min_exports_give_the_same_labels(name: str) -> None:
    # req-0: two annotators agree; req-1: 2 of 3 say Élan; req-2 cancelled; req-3 open.
    assert _labels(FIXTURES / name) == AGREED


def test_the_pre_1_0_completions_format(completions: Path) -> None:
    assert _labels(completions) == AGREED


def test_the_stock_templates_control_is_found(tmp_path: Path) -> None:
    """The stock template names its control `choice`; label.from_name is `label`."""
    for name in ("split-json.json", "split-json-min.json"):
        assert _labels(FIXTURES / name, annotators="latest") == {
            ("req-4", 0): "Élan",  # the later of the two annotators
            ("req-5", 0): "7",
        }


@pytest.mark.parametrize(
    ("name", "rule", "message"),
    [
        ("split-json.json", "majority", r"request req-4 index 0\): the annotators are split"),
        ("split-json-min.json", "majority", r"req-4 .*no majority"),
        ("agree-json.json", "unanimous", r"request req-1 index 0\): the annotators disagree"),
    ],
)
def test_annotators_who_disagree_are_refused_by_the_rule(
    name: str, rule: str, message: str
) -> None:
    with pytest.raises(LabelImportError, match=message):
        _labels(FIXTURES / name, annotators=rule)


def test_import_records_nfc_labels_and_refuses_unserved_requests(tmp_path: Path) -> None:
    cfg = LabelConfig()
    gt = tmp_path / "gt"
    with pytest.raises(LabelImportError, match=r"2 labels are for requests that were never served"):
        import_labels(FIXTURES / "agree-json.json", CLASSES, cfg, served={("req-9", 0)}, gt_root=gt)
    assert not gt.exists()

    result = import_labels(
        FIXTURES / "agree-json-min.json", CLASSES, cfg, served=SERVED, gt_root=gt
    )

    assert result.written == 2
    assert result.unlabelled == ("4",)  # the open task; JSON_MIN leaves the cancelled one out
    assert all(unicodedata.is_normalized("NFC", label) for label in read_labels(gt)["label"])


def test_a_label_outside_the_classes_is_named() -> None:
    with pytest.raises(LabelImportError, match=r"label 'Élan' is not one of the classes"):
        parse_export(
            json.loads((FIXTURES / "agree-json.json").read_text(encoding="utf-8")),
            ("grün blatt", "7"),
            from_name="label",
            served=SERVED,
        )


def test_a_decomposed_label_is_the_plans_class(tmp_path: Path) -> None:
    text = (FIXTURES / "agree-json.json").read_text(encoding="utf-8")
    path = tmp_path / "nfd.json"
    path.write_text(unicodedata.normalize("NFD", text), encoding="utf-8")
    assert _labels(path) == AGREED


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", "no label to import: it holds no task"),
        (
            json.dumps([{"id": 1, "data": {"request_id": "req-0", "index": 0}, "annotations": []}]),
            "no label to import: none of its 1 tasks has an annotation",
        ),
    ],
    ids=["empty", "unannotated"],
)
def test_an_export_that_yields_no_label_is_an_error(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "export.json"
    path.write_text(content)
    with pytest.raises(LabelImportError, match=message):
        import_labels(path, CLASSES, LabelConfig(), served=SERVED, gt_root=tmp_path / "gt")


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_a_csv_export_is_named_and_the_json_export_suggested(tmp_path: Path, suffix: str) -> None:
    """Label Studio's CSV export, saved as .csv or misnamed .json."""
    path = tmp_path / f"export{suffix}"
    path.write_bytes((FIXTURES / "agree-csv.csv").read_bytes())
    with pytest.raises(LabelImportError, match=r"CSV.*Export → JSON \(or JSON-MIN\)"):
        import_labels(path, CLASSES, LabelConfig(), served=SERVED, gt_root=tmp_path / "gt")
