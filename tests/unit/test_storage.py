"""flywheel.storage: one set of operations over a local folder and a URL (fsspec's memory://)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from flywheel import storage
from flywheel.config import ConfigError, parse_params


@pytest.fixture(params=["local", "url"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> storage.Location:
    """A fresh folder: a local Path, or a URL in fsspec's in-process memory filesystem."""
    if request.param == "local":
        return tmp_path / "state"
    return f"memory://flywheel-tests/{uuid.uuid4().hex}"


def test_write_read_list_and_remove_the_same_way_everywhere(root: storage.Location) -> None:
    first = storage.join(root, "queue", "b-1.json")
    second = storage.join(root, "queue", "b-2.json")

    assert storage.glob(storage.join(root, "queue"), "*.json") == []
    assert not storage.exists(first)
    storage.write_bytes(second, b"2")
    storage.write_bytes(first, b"1")

    assert storage.glob(storage.join(root, "queue"), "*.json") == [first, second]
    assert storage.read_bytes(first) == b"1"
    assert storage.is_file(first)
    assert not storage.is_file(storage.join(root, "queue"))
    assert storage.modified(first) > 0
    assert storage.files_exist([first, storage.join(root, "queue", "b-3.json"), second]) == [
        True,
        False,
        True,
    ]
    storage.remove(first)
    storage.remove(first)  # gone already: not an error
    assert storage.glob(storage.join(root, "queue"), "*.json") == [second]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(first)


def test_a_local_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    storage.write_bytes(tmp_path / "a" / "x.json", b"{}")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://bucket/state", "s3://bucket/state"),
        ("s3://bucket/state/", "s3://bucket/state"),
        ("memory://x/y", "memory://x/y"),
        ("file:///srv/state", Path("/srv/state")),
        ("relative/state", Path("relative/state")),
        (Path("p"), Path("p")),
    ],
)
def test_as_location(text: str | Path, expected: storage.Location) -> None:
    assert storage.as_location(text) == expected


def test_state_url_env_wins_over_params_over_the_state_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    monkeypatch.delenv(storage.STATE_URL_ENV, raising=False)
    assert storage.state_url() == tmp_path
    assert storage.state_url("s3://b/p") == "s3://b/p"
    monkeypatch.setenv(storage.STATE_URL_ENV, "s3://env/p")
    assert storage.state_url("s3://b/p") == "s3://env/p"


def test_a_blank_state_url_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"state\.url"):
        parse_params({"state": {"url": "  "}})


@pytest.mark.parametrize("text", ["s3:/bucket/state", "s3:bucket", "gs:/b"])
def test_a_url_missing_a_slash_is_refused_not_taken_for_a_folder(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="missing a slash"):
        parse_params({"state": {"url": text}})
    monkeypatch.setenv(storage.STATE_URL_ENV, text)
    with pytest.raises(storage.StorageError, match=f"{storage.STATE_URL_ENV}: '{text}'"):
        storage.state_url()
