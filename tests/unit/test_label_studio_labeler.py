"""The Label Studio labeller's pure parts: connection file, executable, image URLs, resolution."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from flywheel.config import DataPlan, LabelConfig, Params, Strata
from flywheel.labeling import labeler_for
from flywheel.labeling.server import (
    Connection,
    LabelStudioError,
    connect,
    find_executable,
    read_connection,
    seed_database,
    write_connection,
)
from flywheel.labeling.studio import (
    LabelStudioLabeler,
    label_interface,
    local_image_url,
    read_guide,
    resolve_tasks,
)

PARAMS = Params(
    data=DataPlan(
        classes=("0", "1", "2"),
        image_size=16,
        strata=Strata(style=("a",), noise=("b",)),
        per_stratum={"train": 1, "val": 1, "test": 1},
    )
)


def test_the_connection_file_round_trips_and_only_its_owner_reads_it(tmp_path: Path) -> None:
    connection = Connection(url="http://127.0.0.1:1", token="t", members={"a@x": "u"})
    path = write_connection(connection, tmp_path / "c.json")
    assert read_connection(path) == connection
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_connection(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_text('{"nope": 1}')
    with pytest.raises(LabelStudioError, match="not a Label Studio connection file"):
        read_connection(tmp_path / "bad.json")


def test_no_server_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    with pytest.raises(LabelStudioError, match="flywheel label server"):
        connect()
    write_connection(Connection(url="http://127.0.0.1:9", token="t"))  # nothing listens there
    with pytest.raises(LabelStudioError, match="does not answer /health"):
        connect()


def test_a_missing_executable_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_LABEL_STUDIO", str(tmp_path / "nope"))
    with pytest.raises(LabelStudioError, match="nope: no such file"):
        find_executable(tmp_path)
    monkeypatch.delenv("FLYWHEEL_LABEL_STUDIO")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LabelStudioError, match="make label-studio"):
        find_executable(tmp_path)
    installed = tmp_path / ".label-studio" / "venv" / "bin" / "label-studio"
    installed.parent.mkdir(parents=True)
    installed.write_text("")
    assert find_executable(tmp_path) == installed


def test_a_new_data_folder_is_seeded_from_the_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLYWHEEL_LABEL_STUDIO_TEMPLATE", raising=False)
    executable = tmp_path / ".label-studio" / "venv" / "bin" / "label-studio"
    executable.parent.mkdir(parents=True)
    assert not seed_database(tmp_path / "data", executable)  # no template: migrations run
    (tmp_path / ".label-studio" / "template").mkdir()
    (tmp_path / ".label-studio" / "template" / "label_studio.sqlite3").write_bytes(b"db")
    (tmp_path / "data").mkdir()
    assert seed_database(tmp_path / "data", executable)
    assert not seed_database(tmp_path / "data", executable)  # never over a database


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("/elsewhere/a.png", "outside the server's LOCAL_FILES_DOCUMENT_ROOT"),
        ("/root/a.png", "directly in LOCAL_FILES_DOCUMENT_ROOT"),
    ],
)
def test_images_label_studio_cannot_serve_are_refused(image: str, message: str) -> None:
    with pytest.raises(LabelStudioError, match=message):
        local_image_url(image, Path("/root"))


def test_the_interface_and_the_guide_come_from_the_repository(tmp_path: Path) -> None:
    xml = label_interface(PARAMS)
    assert all(f'<Choice value="{c}"/>' in xml for c in PARAMS.data.classes)
    assert '<Choices name="label" toName="image"' in xml
    assert "<h1>Labelling guide</h1>" in read_guide(Path("docs/labeling-guide.md"))
    with pytest.raises(LabelStudioError, match=r"label\.studio\.guide"):
        read_guide(tmp_path / "missing.md")


def test_label_studio_is_a_built_in_labeller() -> None:
    assert type(labeler_for(LabelConfig(labeler="label-studio"))) is LabelStudioLabeler


def _task(task_id: int, *votes: tuple[int, str | None]) -> dict[str, Any]:
    return {
        "id": task_id,
        "data": {"request_id": f"r{task_id}", "index": 0, "batch_id": "b"},
        "annotations": [
            {
                "id": task_id * 10 + n,
                "completed_by": who,
                "was_cancelled": label is None,
                "created_at": f"2026-12-0{n + 1}T00:00:00Z",
                "updated_at": f"2026-12-0{n + 1}T00:00:00Z",
                "result": []
                if label is None
                else [
                    {
                        "from_name": "label",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": [label]},
                    }
                ],
            }
            for n, (who, label) in enumerate(votes)
        ],
    }


def test_undecided_tasks_are_held_back_and_skips_never_count() -> None:
    tasks = [
        _task(1, (1, "1"), (2, "1")),
        _task(2, (1, "0"), (2, "2")),  # a tie
        _task(3, (1, None)),  # skipped
        _task(4, (1, None), (2, "2")),  # skipped by one, labelled by another
        _task(5),  # open
        _task(6, (1, "1")),  # a request never served
    ]
    served = {(f"r{i}", 0) for i in range(1, 6)}
    labels, held = resolve_tasks(tasks, PARAMS, served, source="project 1")
    assert dict(zip(labels["request_id"], labels["label"], strict=True)) == {"r1": "1", "r4": "2"}
    assert len(held) == 2
    assert "tie" in held[0] or "r2" in held[0]
    assert "never served" in held[1]
