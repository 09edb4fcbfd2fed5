"""The serving image's Python requirements: the lock's pins for what the service needs.

`bentoml build` installs `serving/requirements.txt` into the Bento's image. It
is derived, not written by hand: every distribution in the dependency closure
of `SERVICE_REQUIREMENTS` (the packages the service and the library modules it
imports use directly), each pinned to its version in the lock,
`requirements/constraints.txt`. So the image gets exactly the versions the
tests ran with, and none of the training, validation, monitoring or pipeline
packages (DVC, Great Expectations, Evidently, KFP).

The closure is read from the installed distributions' metadata
(`Requires-Dist`, markers evaluated for Linux / CPython 3.11, extras only where
a requirement asks for them), so deriving needs no network. torch keeps the
lock's CPU build (`+cpu`), which lives on PyTorch's index, not PyPI: the
bentofile adds that index (`python.extra_index_url`).

    python -m serving.requirements          # rewrite serving/requirements.txt
    python -m serving.requirements --check  # exit 1 when it is stale
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "constraints.txt"
OUTPUT = Path(__file__).resolve().parent / "requirements.txt"
SERVICE_REQUIREMENTS: tuple[str, ...] = (
    "bentoml",  # the server
    "mlflow",  # the registry client and the pt2 model loader (SQLite stores need full mlflow)
    "torch",  # runs the exported program
    "numpy",
    "pandas",  # flywheel.monitoring.features, flywheel.monitoring.prediction_log
    "pillow",  # image decoding
    "pydantic",  # flywheel.config, the API models
    "pyyaml",  # params.yaml
    "filelock",  # flywheel.registry
    "python-multipart",  # the request guard's multipart check
    "prometheus-client",  # the service's metrics
    "starlette",  # the request guard's responses
    "fastapi",  # the raw-image route (`/predict_image`), mounted into the BentoML app
    "s3fs",  # the prediction log in object storage (flywheel.storage, FLYWHEEL_STATE_URL)
    "lxml",  # the Swagger page without BentoML's tag manager (serving.offline_docs)
)
"""What the service and the library modules it imports use directly (their own deps follow)."""
FREEZE_OMITS = frozenset({"pip", "setuptools", "wheel"})
"""Packages `pip freeze` (hence the lock) never lists."""
_ENVIRONMENT = {
    "implementation_name": "cpython",
    "platform_system": "Linux",
    "sys_platform": "linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "platform_python_implementation": "CPython",
}


class RequirementsError(RuntimeError):
    """A needed distribution is not installed or not in the lock."""


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """The lock's pins: canonical name → the `name==version` line as written."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            pins[canonicalize_name(line.split("==", 1)[0])] = line
    return pins


def closure(roots: Iterable[str]) -> set[str]:
    """Canonical names of `roots` and everything they require, from installed metadata.

    Raises:
        RequirementsError: a required distribution is not installed.
    """
    names: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()  # a package again with other extras
    pending: list[tuple[str, frozenset[str]]] = [(r, frozenset()) for r in roots]
    while pending:
        name, extras = pending.pop()
        key = canonicalize_name(name)
        if (key, extras) in visited:
            continue
        visited.add((key, extras))
        names.add(key)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            raise RequirementsError(f"{name} is required but not installed") from None
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or any(
                _applies(requirement.marker, extra) for extra in (extras or {""})
            ):
                pending.append((requirement.name, frozenset(requirement.extras)))
    return names


def _applies(marker: Marker, extra: str) -> bool:
    return marker.evaluate({**_ENVIRONMENT, "extra": extra})


def render(names: Iterable[str], pins: Mapping[str, str]) -> str:
    """The requirements file: a header, then one pinned line per distribution, sorted.

    `pip freeze` leaves out `FREEZE_OMITS` (torch needs setuptools at run time):
    those are pinned to the installed version.

    Raises:
        RequirementsError: a distribution has no pin in the lock.
    """
    pins = {
        **{n: f"{n}=={metadata.version(n)}" for n in FREEZE_OMITS if n in names},
        **pins,
    }
    missing = sorted(n for n in names if n not in pins)
    if missing:
        raise RequirementsError(f"not in {LOCK.name}: {', '.join(missing)} (run `make lock`)")
    header = (
        "# Generated by `python -m serving.requirements` from requirements/constraints.txt:\n"
        "# the serving image's packages (serving/requirements.py says how). Do not edit.\n"
    )
    return header + "".join(f"{pins[n]}\n" for n in sorted(names))


def main(argv: list[str] | None = None) -> int:
    """Write (or with `--check`, compare) serving/requirements.txt; 1 when stale."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Only check that it is current.")
    args = parser.parse_args(argv)
    text = render(closure(SERVICE_REQUIREMENTS), read_lock())
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.is_file() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run `python -m serving.requirements`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT} ({text.count('==')} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
