"""Local pipeline steps forked from one warm interpreter, instead of each started cold.

The KFP local runner (`SubprocessRunner`) starts every step as a new Python
process that runs `python -m kfp.dsl.executor_main` on the component's source;
each then imports what it uses — torch, MLflow, Great Expectations, Evidently —
which on 2 cores is 3–8 s per step, most of a small step's time. Here one
*step server* (`python -m pipelines.step_server SOCKET`) imports those once;
each step is then a process forked from it that runs the same executor, with
the same executor input, the step's own environment, working directory and
temporary folder, and its output streamed back line by line as the runner
streams a subprocess's. What a step does and writes is unchanged: only the
imports are paid once per server instead of once per step.

* `StepServer.start()` starts the server (it imports in the background, while the
  pipeline is built and its first steps' inputs are prepared);
  `StepServer.run(full_command, env)` runs one step there, or returns None when
  the command is not a lightweight Python component's (the caller then starts it
  cold, as KFP does);
* `warm_steps(server)` makes the runner's subprocess call go through `run` for
  the duration (`kfp.local.subprocess_task_handler.run_local_subprocess`, the one
  function `SubprocessTaskHandler` starts a step with; kfp is pinned);
* a forked step starts as a new process would: the server's exit handlers,
  signal handlers and temporary-folder choice are not inherited, its own exit
  handlers run when it ends, and it dies with the server (as the server dies
  with the process that started it: `flywheel.processes.die_with_parent`).

The server holds no open store, file or connection when it forks (it only
imports), and imports no module that starts a thread of its own. `FLYWHEEL_COLD_STEPS=1` turns
the whole thing off (every step started cold, as KFP does).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import logging
import os
import runpy
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

COLD_ENV = "FLYWHEEL_COLD_STEPS"
"""Set to 1 to start every local step cold, as KFP's subprocess runner does."""

EXECUTOR_MODULE = "kfp.dsl.executor_main"

PRELOAD = (
    EXECUTOR_MODULE,
    "flywheel.workflows",
    # training, evaluation, registration: torch.export loads dynamo, sympy and networkx
    "torch",
    "torch.export",
    "torch._dynamo",  # loaded by torch.export.load, with inductor, sympy and onnx
    "torch._inductor",
    "torch.onnx",
    "torch.distributed",
    "sympy",
    "mlflow",
    "mlflow.pytorch",
    "mlflow.pyfunc",
    "mlflow.tracing",
    "opentelemetry.sdk.trace",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "alembic",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "mpl_toolkits.mplot3d",
    "sklearn.metrics",
    "sklearn.cluster",
    # the data gate and data versions
    "great_expectations",
    "dvc.repo",
    "dvc_data.hashfile",
    "scmrepo.git",
    "dulwich",
    "networkx",
    "PIL.PngImagePlugin",
    "PIL.JpegImagePlugin",
    # monitoring
    "evidently",
    "evidently.ui",
    "evidently.sdk",
    "plotly.graph_objs",
    # flywheel's own
    "flywheel.validation",
    "flywheel.evaluation",
    "flywheel.monitoring",
    "flywheel.curation",
    "flywheel.labeling",
    "flywheel.modeling",
    "flywheel.registry",
)
"""What the server imports before it forks any step: the libraries the steps import."""

READY_TIMEOUT_S = 300.0
"""How long a step waits for the server's imports before it is started cold instead."""

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!Q")


# ------------------------------------------------------------- the runner's side


def executor_call(full_command: list[str]) -> tuple[str, list[str]] | None:
    """The component source and executor arguments of a lightweight component's command.

    KFP compiles a lightweight Python component (`install_kfp_package=False`) to
    `sh -ec '<write $0 to a file; python3 -m kfp.dsl.executor_main ... "$@">' SOURCE ARGS...`;
    anything else (a container component, a pip install first) is None.

    >>> executor_call(["sh", "-ec", "... python3 -m kfp.dsl.executor_main ...", "def f(): ...",
    ...                "--executor_input", "{}", "--function_to_execute", "f"])
    ('def f(): ...', ['--executor_input', '{}', '--function_to_execute', 'f'])
    >>> executor_call(["sh", "-c", "pip install x", "sh", "-ec", "..."]) is None
    True
    """
    if len(full_command) < 4 or full_command[:2] != ["sh", "-ec"]:
        return None
    if f"-m {EXECUTOR_MODULE}" not in full_command[2] or "pip install" in full_command[2]:
        return None
    return full_command[3], full_command[4:]


class StepServer:
    """One warm interpreter that local pipeline steps are forked from (module doc)."""

    def __init__(self, folder: Path | None = None) -> None:
        """A server whose socket lives in `folder` (default: a new folder under /tmp, short
        enough for a socket's path; removed by `stop`)."""
        short = "/tmp" if os.path.isdir("/tmp") else None
        self.folder = folder or Path(tempfile.mkdtemp(prefix="flywheel-steps-", dir=short))
        self.socket_path = self.folder / "steps.sock"
        self._process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None

    def start(self) -> StepServer:
        """Start the server process; it imports `PRELOAD`, then listens."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.started_at = time.perf_counter()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.step_server", str(self.socket_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.folder / "server.log").open("wb"),
            start_new_session=True,  # a Ctrl-C reaches the runner, which stops it
        )
        return self

    @property
    def alive(self) -> bool:
        """The server process is running."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id (every warm step's parent); None before `start`."""
        return None if self._process is None else self._process.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Wait until the server's imports are done (it listens); the seconds since `start`."""
        deadline = time.monotonic() + timeout
        while self.alive and not self.socket_path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the step server did not finish its imports in {timeout} s")
            time.sleep(0.05)
        if not self.alive:
            raise RuntimeError(f"the step server ended (its log: {self.folder}/server.log)")
        assert self.started_at is not None
        return time.perf_counter() - self.started_at

    def stop(self) -> None:
        """Stop the server (its running step, if any, dies with it) and remove its socket."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def _connect(self) -> socket.socket | None:
        """A connection to the server once its imports are done; None if it is gone."""
        try:
            self.wait_ready()
        except (TimeoutError, RuntimeError):
            return None
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(self.socket_path))
        except OSError:
            conn.close()
            return None
        return conn

    def run(self, full_command: list[str], env: Mapping[str, str]) -> int | None:
        """Run one step forked from the server, its output printed line by line.

        Args:
            full_command: the step's command as the subprocess runner would start it.
            env: the step's whole environment.

        Returns:
            Its exit status (negative: the signal that ended it), or None when it
            was not run here (not a lightweight component, or no server).
        """
        call = executor_call(full_command)
        if call is None:
            return None
        conn = self._connect()
        if conn is None:
            log.warning("the step server is not running: this step starts cold")
            return None
        source, args = call
        request = json.dumps({"source": source, "args": args, "env": dict(env), "cwd": os.getcwd()})
        read_end, write_end = os.pipe()
        with conn:
            try:
                socket.send_fds(conn, [b"S"], [write_end])
            finally:
                os.close(write_end)
            body = request.encode()
            conn.sendall(_LENGTH.pack(len(body)) + body)
            with os.fdopen(read_end, encoding="utf-8", errors="replace") as output:
                for line in output:
                    print(line, end="")
            print("\n")  # as kfp's run_local_subprocess: the step's output ends
            reply = b"".join(iter(lambda: conn.recv(4096), b""))
        try:
            return int(json.loads(reply)["status"])
        except (ValueError, KeyError):
            print(f"the step server ended before the step did (its log: {self.folder}/server.log)")
            return 1


@contextlib.contextmanager
def warm_steps(server: StepServer | None) -> Iterator[None]:
    """Route the KFP subprocess runner's steps through `server` for the duration."""
    if server is None:
        yield
        return
    from kfp.local import subprocess_task_handler as handler

    cold = handler.run_local_subprocess

    def run_local_subprocess(
        full_command: list[str], env_vars: dict[str, str] | None = None
    ) -> int:
        status = server.run(full_command, {**os.environ, **(env_vars or {})})
        return cold(full_command, env_vars) if status is None else status

    handler.run_local_subprocess = run_local_subprocess
    try:
        yield
    finally:
        handler.run_local_subprocess = cold


_server: StepServer | None = None
_lock = threading.Lock()


def shared_server() -> StepServer | None:
    """This process's step server (started on first use, stopped at exit); None when turned off."""
    global _server
    if os.environ.get(COLD_ENV, "") not in ("", "0"):
        return None
    with _lock:
        if _server is None or not _server.alive:
            _server = StepServer().start()
            atexit.register(_server.stop)
        return _server


# ------------------------------------------------------------- the server's side


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the runner closed the connection mid-request")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _step(request: dict[str, Any], output_fd: int) -> int:
    """In the forked child: become the step's process, run the executor, return its status."""
    from flywheel.processes import die_with_parent

    die_with_parent()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    atexit._clear()  # the server's exit handlers are not the step's
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.close(output_fd)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ["_KFP_RUNTIME"] = "true"
    os.chdir(request["cwd"])
    tempfile.tempdir = None  # chosen again from this step's TMPDIR
    program = Path(tempfile.mkdtemp()) / "ephemeral_component.py"
    program.write_text(request["source"])
    sys.argv = [EXECUTOR_MODULE, "--component_module_path", str(program), *request["args"]]
    status = 0
    try:
        runpy.run_module(EXECUTOR_MODULE, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        if isinstance(done.code, int):
            status = done.code
        elif done.code is not None:
            print(done.code, file=sys.stderr)
            status = 1
    except BaseException:
        traceback.print_exc()
        status = 1
    try:
        atexit._run_exitfuncs()  # what the step registered, as at a process's exit
        logging.shutdown()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return status


def serve(socket_path: Path) -> None:
    """Import `PRELOAD`, then fork one step per connection, one at a time, until terminated."""
    from flywheel.env import configure_process
    from flywheel.processes import die_with_parent

    die_with_parent()
    configure_process()
    for module in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    listening = socket_path.with_name(socket_path.name + ".new")
    with contextlib.suppress(OSError):
        listening.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(listening))
    listener.listen(8)
    os.rename(listening, socket_path)  # the socket's path exists once it accepts: ready
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                _, fds, _, _ = socket.recv_fds(conn, 1, 1)
                (size,) = _LENGTH.unpack(_recv_exactly(conn, _LENGTH.size))
                request = json.loads(_recv_exactly(conn, size))
            except (OSError, ValueError, ConnectionError):
                continue
            if len(fds) != 1:
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                conn.close()
                os._exit(_step(request, fds[0]))
            os.close(fds[0])
            _, wait_status = os.waitpid(pid, 0)
            with contextlib.suppress(OSError):
                conn.sendall(
                    json.dumps({"status": os.waitstatus_to_exitcode(wait_status)}).encode()
                )


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
