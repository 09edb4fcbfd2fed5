"""The CLI finds `serving/` and `pipelines/` installed, or in the checkout around src/."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer

from flywheel.cli import composition

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def nothing_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serving` and `pipelines` are not importable; sys.path is restored afterwards."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("serving", "pipelines") else real(name, *a),
    )
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_the_checkout_is_the_repository_root() -> None:
    assert composition.CHECKOUT == REPO
    assert composition.serving_root() == REPO  # found installed or on the path: the same folder


@pytest.mark.usefixtures("nothing_installed")
def test_without_an_install_both_come_from_the_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for path in ("serving/service.py", "pipelines/catalog.py"):
        (tmp_path / path).parent.mkdir()
        (tmp_path / path).write_text("")
    monkeypatch.setattr(composition, "CHECKOUT", tmp_path)

    assert composition.serving_root() == tmp_path
    composition.import_pipelines()
    assert sys.path[0] == str(tmp_path)


@pytest.mark.usefixtures("nothing_installed")
@pytest.mark.parametrize(
    ("find", "package"),
    [(composition.serving_root, "serving"), (composition.import_pipelines, "pipelines")],
)
def test_neither_installed_nor_in_the_checkout_exits_2_naming_the_package(
    find: Callable[[], object],
    package: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(composition, "CHECKOUT", tmp_path)

    with pytest.raises(typer.Exit) as caught:
        find()

    assert caught.value.exit_code == 2
    assert capsys.readouterr().err == (
        f"error: the `{package}` package is neither installed nor beside src/\n"
    )
