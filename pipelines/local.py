"""Running a pipeline on this machine with the KFP local runner (the embedded default).

`run_locally` runs a built pipeline through `kfp.local` with the subprocess
runner in this environment (`use_venv=False`: each step is a subprocess of this
interpreter, so the installed flywheel imports; nothing is pip-installed):

* outputs land under `<state>/kfp/outputs/<pipeline>-<timestamp>/<task>/<output>`,
  the cache under `<state>/kfp/cache` (keyed by the steps' inputs);
* the steps get this process's MLflow store, state folder and a run id through
  the environment (`local_run_environment`), so runs and models
  land where `flywheel models` and `mlflow ui` look, and carry the run id as
  lineage; each step's temporary folder goes under `<state>/kfp/tmp/<run id>`,
  removed afterwards (the runner leaves one `mktemp -d` folder per step);
* the runner's chatter (every step's executor input, in full) goes to
  `<state>/kfp/logs/<run id>.log`; what people need — which step runs, is cached,
  finished or failed, and the lines the steps print for people — is passed to
  `on_event` as it happens.
"""

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from flywheel.env import TELEMETRY_OFF, state_dir
from flywheel.storage import STATE_URL_ENV, is_url
from flywheel.tracking import PIPELINE_RUN_ID_ENV, resolve_tracking
from flywheel.workflows import LOG_PREFIX
from pipelines.step_server import shared_server, warm_steps

EventKind = Literal["start", "cached", "done", "failed", "message"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '(?P<task>[^']+)'")
_CACHED = re.compile(r"Task (?P<task>\S+) cache hit")
_FINISHED = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>SUCCESS|FAILURE)")
_IMAGE_WARNING = r"You may be attemping to run a task that uses custom or non-Python base image"
TAIL_LINES = 40
"""Lines of a failed step's log kept for the error."""


class PipelineRunError(RuntimeError):
    """A local pipeline run failed; names the failed step and what it raised.

    Attributes:
        task: the step that failed (None if the runner failed before any step).
        error: the exception the step raised (`Type: message`), when its log shows one.
        tail: the last lines that step printed.
        log: the full log of the run.
    """

    def __init__(
        self, message: str, *, task: str | None, error: str | None, tail: list[str], log: Path
    ) -> None:
        super().__init__(message)
        self.task = task
        self.error = error
        self.tail = tail
        self.log = log


def exception_message(lines: list[str]) -> str | None:
    """The exception at the end of a step's log (`Type: message`), without the traceback.

    >>> exception_message(["x", "    Traceback (most recent call last):",
    ...                    '      File "a.py", line 1, in f', "        raise E('no')",
    ...                    "    flywheel.workflows.errors.DataGateError: no"])
    'flywheel.workflows.errors.DataGateError: no'
    """
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("Traceback (most")]
    if not starts:
        return None
    head = lines[starts[-1]]
    indent = len(head) - len(head.lstrip())
    message = [
        line.strip()
        for line in lines[starts[-1] + 1 :]
        if line.strip() and len(line) - len(line.lstrip()) == indent
    ]
    return "\n".join(message) or None


@dataclass(frozen=True)
class TaskEvent:
    """Something the people watching a run should see.

    Attributes:
        kind: start, cached, done, failed (a step), or message (a line a step printed).
        task: the step.
        text: the message.
        seconds: a finished step's wall time.
    """

    kind: EventKind
    task: str
    text: str = ""
    seconds: float | None = None


def parse_runner_line(line: str, current: str | None) -> TaskEvent | None:
    """The event one line of the runner's output stands for, or None (chatter).

    Args:
        line: one line of output (colour codes are ignored).
        current: the step running when the line was printed (for step messages).

    >>> parse_runner_line("10:26:38 - INFO - Executing task \\x1b[96m'train-model'\\x1b[0m", None)
    TaskEvent(kind='start', task='train-model', text='', seconds=None)
    >>> parse_runner_line("    [flywheel] epoch 1/2: val_accuracy 0.5000", "train-model").text
    'epoch 1/2: val_accuracy 0.5000'
    """
    plain = _ANSI.sub("", line).strip()
    if match := _START.search(plain):
        return TaskEvent("start", match["task"])
    if match := _CACHED.search(plain):
        return TaskEvent("cached", match["task"])
    if match := _FINISHED.search(plain):
        return TaskEvent("done" if match["status"] == "SUCCESS" else "failed", match["task"])
    if plain.startswith(LOG_PREFIX) and current is not None:
        return TaskEvent("message", current, plain.removeprefix(LOG_PREFIX).strip())
    return None


class _RunLog(io.TextIOBase):
    """stdout during a run: everything to the log file, events to the watcher."""

    def __init__(self, file: TextIO, on_event: Callable[[TaskEvent], None] | None) -> None:
        self._file = file
        self._on_event = on_event
        self._partial = ""
        self.current: str | None = None
        self.started: dict[str, float] = {}
        self.cached: set[str] = set()
        self.seconds: dict[str, float] = {}
        self.failed: str | None = None
        self.lines: dict[str, list[str]] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._file.write(text)
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        self._file.flush()

    def _line(self, line: str) -> None:
        event = parse_runner_line(line, self.current)
        if event is None:
            if self.current is not None:
                kept = self.lines.setdefault(self.current, [])
                kept.append(_ANSI.sub("", line).rstrip())
                del kept[:-TAIL_LINES]
            return
        if event.kind == "start":
            self.current = event.task
            self.started[event.task] = time.perf_counter()
            self.lines[event.task] = []
        elif event.kind == "cached":
            self.cached.add(event.task)
        elif event.kind in ("done", "failed"):
            start = self.started.get(event.task)
            if start is not None:
                self.seconds[event.task] = time.perf_counter() - start
                event = TaskEvent(event.kind, event.task, seconds=self.seconds[event.task])
            if event.kind == "failed":
                self.failed = event.task
            self.current = None
        elif event.kind == "message":
            self.lines.setdefault(event.task, []).append(event.text)
        if self._on_event is not None:
            self._on_event(event)


@dataclass(frozen=True)
class OutputRecord:
    """One output of the run: which step made it, what it is, where it is.

    Attributes:
        output: the pipeline output's name.
        task: the step that produced it.
        kind: the artifact type (Dataset, Model, Metrics, ...) or `parameter`.
        location: the artifact's path, or the parameter's value.
        cached: the step was not run; the output is from an earlier run.
    """

    output: str
    task: str
    kind: str
    location: str
    cached: bool


@dataclass(frozen=True)
class LocalRun:
    """A finished local run.

    Attributes:
        pipeline: the pipeline's name.
        run_id: the run id the steps recorded as lineage.
        outputs: the pipeline's outputs (KFP artifacts, or parameter values).
        records: the same, for a table.
        cached: steps served from the cache.
        task_seconds: wall time of each step that ran.
        seconds: wall time of the whole run.
        log: the runner's full log.
        outputs_root: the runner's pipeline root (`<state>/kfp/outputs`).
        events: what `on_event` was given, in order.
    """

    pipeline: str
    run_id: str
    outputs: Mapping[str, Any]
    records: list[OutputRecord]
    cached: frozenset[str]
    task_seconds: Mapping[str, float]
    seconds: float
    log: Path
    outputs_root: Path
    events: list[TaskEvent] = field(default_factory=list)


def new_run_id(pipeline: str) -> str:
    """A run id for a local pipeline run: `<pipeline>-local-<UTC time>-<random>`.

    >>> new_run_id("training").startswith("training-local-")
    True
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{pipeline}-local-{stamp}-{uuid.uuid4().hex[:6]}"


def local_run_environment(*, run_id: str, tmp_dir: Path) -> dict[str, str]:
    """Environment for the local runner's step processes: this process's stores, as absolute paths.

    The steps are subprocesses: they must find the same MLflow store, GX context
    and DVC state as the process that launched them, whatever their working
    directory, and record the pipeline run as lineage. Telemetry stays off
    (values the user set win), output is unbuffered so logs stream, and
    temporary files go to `tmp_dir`, which the runner removes afterwards.
    """
    env = {key: os.environ.get(key, value) for key, value in TELEMETRY_OFF.items()}
    env.update(
        {
            "FLYWHEEL_HOME": str(state_dir().resolve()),
            "MLFLOW_TRACKING_URI": resolve_tracking().uri,
            PIPELINE_RUN_ID_ENV: run_id,
            "TMPDIR": str(tmp_dir.resolve()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    shared = os.environ.get(STATE_URL_ENV)
    if shared and not is_url(shared):  # a local shared-state folder: the same for every step
        env[STATE_URL_ENV] = str(Path(shared).resolve())
    return env


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration (the steps inherit them), then restore."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _log_records_to(stream: io.TextIOBase) -> Iterator[None]:
    """Send the root logger's records, INFO and up, to `stream` alone for the duration.

    The runner logs cache hits through the root logger outside its own logging
    set-up, where they would be dropped at the default WARNING level; handlers
    other libraries put on the root logger are set aside meanwhile, as the
    runner's own set-up does, so nothing reaches the terminal twice.
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
    level, handlers = root.level, root.handlers[:]
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers = handlers
        root.setLevel(level)


def run_locally(
    pipeline: Any,
    arguments: Mapping[str, Any],
    *,
    name: str,
    output_tasks: Mapping[str, str],
    caching: bool = True,
    run_id: str | None = None,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> LocalRun:
    """Run a built pipeline with the KFP local runner; return where its outputs landed.

    Args:
        pipeline: a `@dsl.pipeline` built for the `local` target.
        arguments: its arguments.
        name: its name (for the run id).
        output_tasks: pipeline output → producing step (`pipelines.catalog`).
        caching: reuse the outputs of steps whose inputs did not change (steps
            that opt out, like evaluation and promotion, always run).
        run_id: the run id the steps record (default: `new_run_id`).
        on_event: called for each step start/cache hit/finish/failure and each
            line a step prints for people.

    Raises:
        PipelineRunError: a step failed (names it, with the end of its log).
    """
    from kfp import local

    run_id = run_id or new_run_id(name)
    root = (state_dir() / "kfp").resolve()
    tmp_dir = root / "tmp" / run_id
    log_path = root / "logs" / f"{run_id}.log"
    for folder in (tmp_dir, log_path.parent, root / "outputs", root / "cache"):
        folder.mkdir(parents=True, exist_ok=True)
    env = local_run_environment(run_id=run_id, tmp_dir=tmp_dir)
    events: list[TaskEvent] = []

    def record(event: TaskEvent) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    started = time.perf_counter()
    saved_tempdir = tempfile.tempdir
    steps = shared_server()
    with (
        log_path.open("w") as log_file,
        _environment(env),
        warnings.catch_warnings(),
        warm_steps(steps),
    ):
        # The image is for clusters; the subprocess runner warns about any non-Python one.
        warnings.filterwarnings("ignore", message=_IMAGE_WARNING, category=RuntimeWarning)
        run_log = _RunLog(log_file, record)
        log_file.write(
            "steps start cold, each a new process (FLYWHEEL_COLD_STEPS is set)\n"
            if steps is None
            else f"steps are forked from the step server in {steps.folder} (imports paid once; "
            "FLYWHEEL_COLD_STEPS=1 starts each cold)\n"
        )
        local.init(
            runner=local.SubprocessRunner(use_venv=False),
            pipeline_root=str(root / "outputs"),
            enable_caching=caching,
            cache_root=str(root / "cache"),
            raise_on_error=True,
        )
        try:
            with contextlib.redirect_stdout(run_log), _log_records_to(run_log):
                task = pipeline(**arguments)
        except RuntimeError as err:
            failed = run_log.failed
            tail = run_log.lines.get(failed, []) if failed else []
            raise PipelineRunError(
                f"pipeline {name!r} failed at step {failed!r}" if failed else str(err),
                task=failed,
                error=exception_message(tail),
                tail=tail,
                log=log_path,
            ) from None
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            # Anything in this process that asked for a temporary folder during the
            # run cached TMPDIR (the run's folder, now gone): forget it.
            tempfile.tempdir = saved_tempdir
    outputs = dict(task.outputs)
    order = [*output_tasks, *(o for o in outputs if o not in output_tasks)]
    records = [
        _record(output, outputs[output], output_tasks.get(output, "?"), run_log.cached)
        for output in order
        if output in outputs
    ]
    return LocalRun(
        pipeline=name,
        run_id=run_id,
        outputs=outputs,
        records=records,
        cached=frozenset(run_log.cached),
        task_seconds=dict(run_log.seconds),
        seconds=time.perf_counter() - started,
        log=log_path,
        outputs_root=root / "outputs",
        events=events,
    )


def _record(output: str, value: Any, task: str, cached: set[str]) -> OutputRecord:
    from kfp import dsl

    if isinstance(value, dsl.Artifact):
        return OutputRecord(output, task, type(value).__name__, value.path, task in cached)
    return OutputRecord(output, task, "parameter", repr(value), task in cached)
