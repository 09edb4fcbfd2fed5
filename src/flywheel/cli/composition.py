"""The composition root's reach beyond the library: `serving`, `pipelines`, `components`.

`serving/` (the BentoML service) and `pipelines/` (the Kubeflow pipelines, with
`components/`) are top-level folders of the repository, installed with the
library as packages of their own: a wheel ships them, and the editable install
maps exactly these packages (hatch's `dev-mode-exact`, an import hook; nothing
else of the checkout lands on `sys.path`). The `flywheel` library never imports
them (an import contract in `make lint`); the CLI does, through this module.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from flywheel.cli.console import abort


def require(package: str) -> ModuleType:
    """Import `package` (`serving` or `pipelines`), installed with the library.

    Raises:
        typer.Exit: it is not installed (status 2; the error names it and the fix).
    """
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as err:
        if err.name != package:  # the package is there; something it imports is not
            raise
        raise abort(
            f"the `{package}` package is not installed: install flywheel with it "
            "(`pip install -e .` in the checkout, or the wheel)"
        ) from None


def serving_root() -> Path:
    """The folder holding the `serving` package, for `bentoml serve --working-dir`.

    Raises:
        typer.Exit: `serving` is not installed.
    """
    origin = require("serving").__file__
    assert origin is not None  # a regular package, not a namespace one
    return Path(origin).resolve().parents[1]
