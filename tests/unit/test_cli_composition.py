"""The CLI imports `serving/` and `pipelines/` as installed packages, or says how to get them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer

from flywheel.cli import composition

REPO = Path(__file__).resolve().parents[2]


def test_the_service_is_served_from_the_repository_root() -> None:
    assert composition.serving_root() == REPO


def test_the_install_maps_the_three_packages_and_nothing_else_of_the_checkout(
    tmp_path: Path,
) -> None:
    # A fresh interpreter outside the checkout, without pytest's `pythonpath`.
    probe = (
        "import importlib.util as u, sys\n"
        "for name in ('serving', 'pipelines', 'components'):\n"
        "    print(name, u.find_spec(name).origin)\n"
        "print('tests', u.find_spec('tests') is not None)\n"
        "print('path', any(p.rstrip('/') == sys.argv[1] for p in sys.path))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(REPO)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()

    assert out[:3] == [
        f"{name} {REPO / name / '__init__.py'}" for name in ("serving", "pipelines", "components")
    ]
    assert out[3:] == ["tests False", "path False"]


@pytest.mark.parametrize("package", ["serving", "pipelines"])
def test_a_package_not_installed_exits_2_naming_it(
    package: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # what `import` sees when it is absent

    with pytest.raises(typer.Exit) as caught:
        composition.require(package)

    assert caught.value.exit_code == 2
    assert capsys.readouterr().err.startswith(f"error: the `{package}` package is not installed")
