"""The configuration the service runs with, read when it is first needed, not at import.

BentoML reads the worker count from the service's decorator in every process
that loads the service, so the service is built on first access
(`serving.service`), from `service_params()`: `params.yaml` (the path in
`FLYWHEEL_PARAMS`, else `./params.yaml`, else defaults), read once per process.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from flywheel.config import Params, load_params, parse_params
from flywheel.config.overrides import parse_overrides
from flywheel.serving_api import PARAMS_ENV, SET_ENV


def read_service_params(environ: MutableMapping[str, str] | None = None) -> Params:
    """The configuration the service runs with: `$FLYWHEEL_PARAMS`, `./params.yaml`, or defaults.

    The `--set` pairs of `flywheel serve` (`$FLYWHEEL_SET`, one per line) apply on top.

    Raises:
        ConfigError: `FLYWHEEL_PARAMS` names a missing file, or the file or a pair is invalid.
    """
    env = os.environ if environ is None else environ
    overrides = parse_overrides(line for line in env.get(SET_ENV, "").splitlines() if line)
    explicit = env.get(PARAMS_ENV)
    if explicit:
        return load_params(explicit, overrides)
    if Path("params.yaml").is_file():
        return load_params("params.yaml", overrides)
    return parse_params({}, overrides)


@functools.cache
def service_params() -> Params:
    """`read_service_params()` once per process: the server process's composition root.

    Raises:
        ConfigError: as `read_service_params`.
    """
    return read_service_params()


def params_base(environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder of the params file the server reads (`$FLYWHEEL_PARAMS`), if set.

    A relative `serve.log.dir` is relative to it (the project root), not to the
    server's working directory (`flywheel.monitoring.prediction_log.predictions_dir`).
    """
    path = (os.environ if environ is None else environ).get(PARAMS_ENV)
    return Path(path).resolve().parent if path else None


__all__ = ["PARAMS_ENV", "SET_ENV", "params_base", "read_service_params", "service_params"]
