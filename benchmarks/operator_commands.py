"""Wall time of the operator commands (`rollback`, `promote`, `models`) against Python's start-up.

A rollback is what an operator runs during an incident, so its wall time
matters. Each command runs as a fresh process, as a person would run it,
against a local SQLite store (a temp folder) holding one registered model with
two blessed versions; the baseline, measured in the same run, is a bare Python
start-up (`python -c pass`). Reported per command: median and best wall time
over `--repeat` runs, the ratio of the median to the baseline's median, and,
from one `python -X importtime` run of each command, the seconds spent
importing (all of it, and MLflow's share: none since the registry is reached
through `flywheel.registry.access`; the commands' versions have local model
files, as in the embedded store, so `flywheel models` checks them without MLflow).

    .venv/bin/python benchmarks/operator_commands.py --repeat 3  # 2 min at load 8 on 2 cores
    .venv/bin/python benchmarks/operator_commands.py --repeat 9
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

MODEL = "bench-model"


def _env(store: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
        "FLYWHEEL_HOME": str(store / "home"),
        "FLYWHEEL_USER": "bench",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
    }


def _bless(name: str, version: str, champion: str | None) -> None:
    from flywheel import registry

    blessing = registry.Blessing(
        candidate_uri=registry.model_uri(name, version),
        champion_version=champion,
        gates=(registry.GateResult("min_accuracy", 0.9, 0.8, ">=", True),),
        split="test",
        evaluated_at=registry.utc_now(),
    )
    registry.record_blessing(name, version, blessing)


def _model_files(folder: Path) -> str:
    """A model's files as `flywheel models` checks them: an MLmodel and a pt2 archive."""
    (folder / "data").mkdir(parents=True)
    mlmodel = f"artifact_path: {folder.as_uri()}\nflavors:\n  pytorch:\n    model_data: data\n"
    (folder / "MLmodel").write_text(mlmodel)
    with zipfile.ZipFile(folder / "data" / "model.pt2", "w") as archive:
        archive.writestr("model/version", "1")
    return folder.as_uri()


def _prepare(store: Path) -> None:
    """One model, versions 1 and 2 blessed, 2 in production and 1 previous (in this process).

    The versions' files are local, as in the embedded store (`flywheel models` checks them).
    """
    os.environ.update(_env(store))
    from mlflow import MlflowClient

    from flywheel import registry

    client = MlflowClient()
    client.create_registered_model(MODEL)
    for i in (1, 2):
        client.create_model_version(MODEL, _model_files(store / "artifacts" / str(i)))
    _bless(MODEL, "1", None)
    registry.promote(MODEL, "1", reason="bench set-up")
    _bless(MODEL, "2", "1")
    registry.promote(MODEL, "2", reason="bench set-up")


def _timed(args: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(args, env=env, cwd=cwd, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - started


def _import_seconds(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(all imports, MLflow's) in seconds, from one `-X importtime` run.

    MLflow's share is every module imported under an `mlflow` module (its own
    and what it pulls in: pandas, SQLAlchemy, FastAPI, …), wherever it was
    first imported from.
    """
    done = subprocess.run(
        [args[0], "-X", "importtime", *args[1:]],
        env=env,
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    entries = []
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \| ( *)(\S+)$", line)
        if match is not None:
            entries.append((int(match.group(1)), len(match.group(2)), match.group(3)))
    total = mlflow = 0
    stack: list[tuple[int, bool]] = []  # (depth, inside mlflow), parents first
    for own, depth, module in reversed(entries):  # reversed post-order: parents first
        while stack and stack[-1][0] >= depth:
            stack.pop()
        inside = (stack[-1][1] if stack else False) or module.split(".")[0] == "mlflow"
        stack.append((depth, inside))
        total += own
        mlflow += own if inside else 0
    return total / 1e6, mlflow / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (median kept)")
    args = parser.parse_args()

    py = sys.executable
    cli = [py, "-m", "flywheel.cli"]
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp:
        store = Path(tmp)
        _prepare(store)
        env = _env(store)
        from flywheel import registry

        state = {"other": "1"}

        def before_promote() -> None:
            """Pick the version not in production and bless it against production (untimed)."""
            production = registry.version_for_alias(MODEL, "production")
            state["other"] = "1" if production == "2" else "2"
            _bless(MODEL, state["other"], production)

        commands: list[tuple[str, Callable[[], list[str]], Callable[[], None] | None]] = [
            ("python -c pass (baseline)", lambda: [py, "-c", "pass"], None),
            ("flywheel --help", lambda: [*cli, "--help"], None),
            ("flywheel rollback", lambda: [*cli, "rollback", "-m", MODEL, "-r", "bench"], None),
            (
                "flywheel promote",
                lambda: [*cli, "promote", state["other"], "-m", MODEL, "-r", "bench"],
                before_promote,
            ),
            ("flywheel models", lambda: [*cli, "models", "-m", MODEL], None),
        ]
        rows = []
        for label, argv, prepare in commands:
            times = []
            for _ in range(args.repeat + 1):
                if prepare is not None:
                    prepare()
                times.append(_timed(argv(), env, store))
            if prepare is not None:
                prepare()
            imports = _import_seconds(argv(), env, store)
            # the first run warms the page cache and is dropped
            rows.append((label, statistics.median(times[1:]), min(times[1:]), imports))

    baseline = rows[0][1]
    table = Table(title=f"operator commands, local SQLite store, median of {args.repeat}")
    for column in ("command", "median s", "best s", "× python start-up", "imports s", "mlflow s"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for label, median, best, (imports, mlflow) in rows:
        table.add_row(
            label,
            f"{median:.2f}",
            f"{best:.2f}",
            f"{median / baseline:.1f}",
            f"{imports:.2f}",
            f"{mlflow:.2f}",
        )
    Console().print(table)
    load = os.getloadavg()[0]
    print(f"load average (1 min) at the end: {load:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
