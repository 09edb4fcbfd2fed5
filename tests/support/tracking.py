"""MLflow for tests: a SQLite store selected through the environment.

Imported by `tests/conftest.py`, so by every test run: MLflow itself is
imported only when an experiment is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flywheel.tracking import configure_tracking, ensure_experiment


@contextmanager
def tracking_env(
    root: Path, *, home: Path | None = None, experiment: str | None = None, **env: str
) -> Iterator[str]:
    """A fresh SQLite store `root/mlflow.db`, selected as deployments select it: the environment.

    Sets `MLFLOW_TRACKING_URI` (and `FLYWHEEL_HOME` to `home`, and `env`) until
    the block ends; module-scoped fixtures hold it for their module.

    Args:
        root: the store's folder (artifacts go to `root/artifacts` once tracking is configured).
        home: the state folder, if the code under test writes one.
        experiment: when given, MLflow is pointed at the store (`configure_tracking`) and this
            experiment, created with the store's artifact root, is made the active one.
        env: further environment variables.

    Yields:
        The tracking URI.
    """
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        if home is not None:
            patch.setenv("FLYWHEEL_HOME", str(home))
        for key, value in env.items():
            patch.setenv(key, value)
        if experiment is not None:
            import mlflow

            config = configure_tracking()
            mlflow.set_experiment(experiment_id=ensure_experiment(experiment, config))
        yield uri
