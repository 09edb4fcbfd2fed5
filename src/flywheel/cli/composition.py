"""Where the CLI, the composition root, reaches the folders beside the library.

`serving/` (the BentoML service) and `pipelines/` (the Kubeflow pipelines,
with `components/`) are top-level folders of the repository, not part of the
`flywheel` library, which never imports them. The CLI is the one place that
does: from an install that ships them, or from the checkout around `src/`
(the editable install maps only `src/`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from flywheel.cli.console import abort


def serving_root() -> Path:
    """The folder holding the `serving` package (installed, or beside `src/` in a checkout).

    Raises:
        typer.Exit: `serving/service.py` cannot be found.
    """
    import importlib.util

    spec = importlib.util.find_spec("serving")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).resolve().parents[1]
    checkout = Path(__file__).resolve().parents[3]  # <repo>/src/flywheel/cli/composition.py
    if (checkout / "serving" / "service.py").is_file():
        return checkout
    raise abort("the `serving` package is neither installed nor beside src/")


def import_pipelines() -> None:
    """Make `pipelines`/`components` importable when the editable install maps only src/."""
    import importlib.util

    if importlib.util.find_spec("pipelines") is not None:
        return
    checkout = Path(__file__).resolve().parents[3]  # <repo>/src/flywheel/cli/composition.py
    if (checkout / "pipelines" / "catalog.py").is_file():
        sys.path.insert(0, str(checkout))
        return
    raise abort("the `pipelines` package is neither installed nor beside src/")
