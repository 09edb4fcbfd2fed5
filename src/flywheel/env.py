"""Process environment: telemetry off, the project root, the local state folder.

Called by entry points (the CLI, components, the service), never at import.
"""

from __future__ import annotations

import os
from pathlib import Path

from flywheel import __version__

TELEMETRY_OFF: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",  # Evidently, and MLflow's second switch
    "DVC_NO_ANALYTICS": "1",
    "BENTOML_DO_NOT_TRACK": "true",
    "GE_USAGE_STATISTICS_URL": "",  # Great Expectations 1.x sends none; belt and braces
}
"""Environment switches that keep every library from phoning home."""


def disable_telemetry() -> None:
    """Turn off MLflow, DVC, BentoML, Evidently and GX telemetry for this process and its children.

    Values already set by the user win (`setdefault`), except that nothing here
    ever turns telemetry *on*.
    """
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


CPU_SHARING: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
"""Environment that keeps PyTorch's CPU threads from spin-waiting on a shared machine.

PyTorch's CPU build runs its intra-op threads on GNU OpenMP, whose threads spin
after each parallel region before they sleep. On a machine with other
CPU-bound work (a CI runner, a laptop, a shared node) a spinning thread takes
the core from the one that has work, and every barrier waits for a
descheduled thread: one training step became 10-40x slower with 4 busy
processes on 2 cores (`benchmarks/training_overhead.py --busy 4`). `PASSIVE`
makes finished threads sleep at once; on an idle machine it costs nothing
measurable. OpenMP reads it once, when torch is imported: entry points set it
before that (`configure_process`), the image sets it in its environment.
"""


QUIET_OUTPUT: dict[str, str] = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
"""No library progress bars in the commands' output: MLflow draws one for every artifact
it downloads (a blessing, a reference profile), which lands between the tables."""


def configure_process() -> None:
    """What every entry point (the CLI, the service) sets up first, before torch is imported.

    Telemetry off (`disable_telemetry`), `CPU_SHARING` and `QUIET_OUTPUT`; values
    already set by the user win.
    """
    disable_telemetry()
    for key, value in {**CPU_SHARING, **QUIET_OUTPUT}.items():
        os.environ.setdefault(key, value)


HOME_ENV = "FLYWHEEL_HOME"
"""Moves the local state folder (`state_dir`)."""

PROJECT_FILE = "params.yaml"
"""The file that marks a project's root folder (the CLI runs every command there)."""


def find_project_root(start: Path) -> Path | None:
    """The nearest folder holding `params.yaml`: `start` itself or the first one above it.

    How git and DVC find their repository. None when no folder up to the
    filesystem's root holds one (`start` is outside any project).
    """
    for folder in (start, *start.parents):
        if (folder / PROJECT_FILE).is_file():
            return folder
    return None


def state_dir() -> Path:
    """Local state of the embedded default (MLflow store, GX context, Evidently workspace).

    `FLYWHEEL_HOME` moves it; the default is `.flywheel/` in the working
    directory, which the CLI sets to the project root before a command runs
    (so a relative `FLYWHEEL_HOME` is relative to the root too).
    """
    return Path(os.environ.get(HOME_ENV, ".flywheel"))


IMAGE_ENV = "FLYWHEEL_IMAGE"
IMAGE_REPO_ENV = "FLYWHEEL_IMAGE_REPO"
DEFAULT_IMAGE_REPO = "ghcr.io/flywheel-ml"
DEFAULT_IMAGE = f"{DEFAULT_IMAGE_REPO}/flywheel:{__version__}"
"""The container image of every pipeline step: the released image of this version."""


def component_image(repo: str | None = None) -> str:
    """The image the pipeline steps run in on a cluster.

    `FLYWHEEL_IMAGE` names it whole (pin a digest there, e.g.
    `registry.example/flywheel@sha256:...`); else `<repo>/flywheel:<version>`,
    the repository from `repo`, `FLYWHEEL_IMAGE_REPO` (the Makefile's
    `IMAGE_REPO`, where `make images` pushes) or `DEFAULT_IMAGE_REPO`. The local
    runner ignores the image.

    >>> component_image("registry.example/ml").startswith("registry.example/ml/flywheel:")
    True
    """
    if os.environ.get(IMAGE_ENV):
        return os.environ[IMAGE_ENV]
    chosen = (repo or os.environ.get(IMAGE_REPO_ENV) or DEFAULT_IMAGE_REPO).rstrip("/")
    return f"{chosen}/flywheel:{__version__}"


def tqdm_disable(progress: bool) -> bool | None:
    """tqdm's `disable` for a bar a caller asked for (`progress`): shown on a terminal only.

    None lets tqdm hide the bar when its output is not a TTY, so a log file
    (`make pages > log`, a CI job, a pod) gets no line per update.

    >>> tqdm_disable(False), tqdm_disable(True)
    (True, None)
    """
    return None if progress else True
