"""Data versions by hash: the committed pointer, version strings, the latest record's shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flywheel.config import load_params
from flywheel.data.remote import DataRemote, bare, write_pointer
from flywheel.data.sync import RemoteCheck
from flywheel.data.versioning import META_KEY, DataVersionError, data_version

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_version_is_recorded_as_the_demo_generators() -> None:
    """A fresh clone without the remote may regenerate it (and only it) from the seed."""
    plan = load_params(REPO / "params.yaml").data
    meta = yaml.safe_load((REPO / "data.dvc").read_text())["meta"][META_KEY]

    assert meta == {"generator": plan.generator, "version": data_version(REPO, plan)}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("1B8E3C4E4650D921C59D28B119038207", "1b8e3c4e4650d921c59d28b119038207"),
        ("1b8e3c4e4650d921c59d28b119038207.dir", "1b8e3c4e4650d921c59d28b119038207"),
        (" 1b8e3c4e4650d921c59d28b119038207\n", "1b8e3c4e4650d921c59d28b119038207"),
    ],
)
def test_bare_accepts_a_dvc_directory_hash(given: str, expected: str) -> None:
    assert bare(given) == expected


@pytest.mark.parametrize("given", ["", "latest", "1b8e3c4e", "z" * 32, "untracked"])
def test_bare_refuses_what_is_not_a_hash(given: str) -> None:
    with pytest.raises(DataVersionError, match="not a DVC directory hash"):
        bare(given)


def test_a_written_pointer_reads_back_as_its_version(tmp_path: Path) -> None:
    plan = load_params(REPO / "params.yaml").data
    write_pointer(tmp_path, plan, "0123456789abcdef0123456789abcdef")

    assert data_version(tmp_path, plan) == "0123456789abcdef0123456789abcdef"


def test_only_s3_remotes_get_an_endpoint() -> None:
    assert DataRemote("s3://b/p", "http://127.0.0.1:9").config() == {
        "url": "s3://b/p",
        "endpointurl": "http://127.0.0.1:9",
    }
    assert DataRemote("/srv/dvc", "http://127.0.0.1:9").config() == {"url": "/srv/dvc"}


V = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("check", "says"),
    [
        (
            RemoteCheck(V, "s3://b/p", 4, (), False, True),
            [f"holds all 4 files of data version {V}"],
        ),
        (
            RemoteCheck(V, "s3://b/p", 9, tuple(f"data/{i}.png" for i in range(7)), False, True),
            [
                f"lacks 7 of 9 files of data version {V}",
                "data/0.png, data/1.png, data/2.png, data/3.png, data/4.png, and 2 more",
                "`flywheel data push`",
            ],
        ),
        (
            RemoteCheck(V, "/r", 3, ("data/a.png",), False, False),
            ["lacks 1 of 3 files", "cache lacks them too", "flywheel data checkout latest"],
        ),
        (RemoteCheck(V, "/r", 0, (), True, False), [f"lacks the file list of data version {V}"]),
        (RemoteCheck(V, "/r", 5, (), True, True), [f"lacks the file list ({V}.dir)"]),
    ],
)
def test_what_the_remote_lacks_is_counted_named_and_says_how_to_fix_it(
    check: RemoteCheck, says: list[str]
) -> None:
    message = check.describe()

    assert check.complete == (says[0].startswith("holds"))
    for part in says:
        assert part in message


def test_a_pointer_cut_off_mid_write_is_named(tmp_path: Path) -> None:
    (tmp_path / "data.dvc").write_text("outs:\n- md5: ")

    with pytest.raises(DataVersionError, match=r"data\.dvc: no `outs\[0\]\.md5`"):
        data_version(tmp_path)
