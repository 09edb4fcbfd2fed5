"""The composition root's reach beyond the library: the `serving` and `pipelines` folders.

`serving/` (the BentoML service) and `pipelines/` (the Kubeflow pipelines, with
`components/`) are top-level folders of the repository, not part of the
`flywheel` library, which never imports them. The CLI is the one place that
does, and this module is the one place that finds them: installed (a wheel
ships them as top-level packages), or in the checkout around `src/` (an
editable install maps only `src/`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from flywheel.cli.console import abort

CHECKOUT = Path(__file__).resolve().parents[3]
"""The repository root, when running from a checkout: <repo>/src/flywheel/cli/composition.py."""


def _in_checkout(package: str, module: str) -> Path:
    """The checkout, when it holds `<package>/<module>`.

    Raises:
        typer.Exit: it does not (status 2; the error names the package).
    """
    if (CHECKOUT / package / module).is_file():
        return CHECKOUT
    raise abort(f"the `{package}` package is neither installed nor beside src/")


def serving_root() -> Path:
    """The folder holding the `serving` package, for `bentoml serve --working-dir`.

    Raises:
        typer.Exit: `serving/service.py` cannot be found.
    """
    spec = importlib.util.find_spec("serving")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).resolve().parents[1]
    return _in_checkout("serving", "service.py")


def import_pipelines() -> None:
    """Make `pipelines` and `components` importable: put the checkout on `sys.path` if need be.

    Raises:
        typer.Exit: `pipelines/catalog.py` cannot be found.
    """
    if importlib.util.find_spec("pipelines") is None:
        sys.path.insert(0, str(_in_checkout("pipelines", "catalog.py")))
