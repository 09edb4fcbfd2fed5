"""Local pipeline steps forked from the warm step server behave as the cold processes KFP starts.

A pipeline of small lightweight components, run by `pipelines.local.run_locally`
(the KFP local runner) twice: through the step server, and cold
(`FLYWHEEL_COLD_STEPS=1`, every step a new `python -m kfp.dsl.executor_main`).
Each step reports where it ran and what it saw; the outputs, the environment,
the working directory, the temporary folder, exit handlers and failures must be
the same either way, and only the warm steps are children of the server.
"""

# no `from __future__ import annotations`: KFP reads the components' annotations as types

import os
import threading
import time
from pathlib import Path

import pytest
from kfp import dsl

from flywheel.workflows import DEFAULT_IMAGE
from pipelines import step_server
from pipelines.local import PipelineRunError, run_locally

pytestmark = pytest.mark.slow  # a pipeline run per case


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def report(marker: str) -> str:
    """Where this step runs and what it sees, as JSON; an exit handler writes `marker`."""
    import atexit
    import json
    import os
    import sys
    import tempfile
    from pathlib import Path

    atexit.register(lambda: Path(marker).write_text("exit handler ran"))
    print("[flywheel] reporting", flush=True)
    return json.dumps(
        {
            "parent": os.getppid(),
            "pid": os.getpid(),
            "cwd": os.getcwd(),
            "tmp": tempfile.gettempdir(),
            "run_id": os.environ.get("FLYWHEEL_PIPELINE_RUN_ID", ""),
            "kfp_runtime": os.environ.get("_KFP_RUNTIME", ""),
            "argv0": sys.argv[0],
            "torch_loaded": "torch" in sys.modules,
        }
    )


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def fail(seconds: float) -> str:
    """Sleep `seconds`, then fail with a ValueError."""
    import time

    time.sleep(seconds)
    raise ValueError(f"boom after {seconds} s")


@dsl.pipeline(name="probe")
def probe(marker: str) -> str:
    return report(marker=marker).output


@dsl.pipeline(name="failing")
def failing(seconds: float) -> str:
    return fail(seconds=seconds).output


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _probe(state: Path, name: str) -> dict[str, object]:
    import json

    run = run_locally(
        probe, {"marker": str(state / name)}, name="probe", output_tasks={}, caching=False
    )
    assert (state / name).read_text() == "exit handler ran"
    assert any(e.kind == "message" and e.text == "reporting" for e in run.events)
    seen: dict[str, object] = json.loads(run.outputs["Output"])
    assert seen["run_id"] == run.run_id
    return seen


def test_a_warm_step_sees_what_a_cold_one_does_and_is_forked_from_the_server(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = _probe(state, "warm")
    server = step_server.shared_server()
    assert server is not None
    assert server.alive
    assert warm["parent"] == server.pid
    assert warm["torch_loaded"]  # imported once, by the server

    monkeypatch.setenv(step_server.COLD_ENV, "1")
    cold = _probe(state, "cold")

    assert cold["parent"] != server.pid
    assert not cold["torch_loaded"]
    for key in ("cwd", "kfp_runtime", "argv0"):
        assert warm[key] == cold[key], key
    assert warm["cwd"] == str(state)
    assert warm["kfp_runtime"] == "true"
    for seen in (warm, cold):  # each run's own temporary folder, removed afterwards
        assert str(seen["tmp"]).startswith(str(state / "state" / "kfp" / "tmp"))


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_a_failing_step_is_named_with_its_exception(
    state: Path, monkeypatch: pytest.MonkeyPatch, cold: bool
) -> None:
    if cold:
        monkeypatch.setenv(step_server.COLD_ENV, "1")
    with pytest.raises(PipelineRunError) as failed:
        run_locally(failing, {"seconds": 0.0}, name="failing", output_tasks={}, caching=False)
    assert failed.value.task == "fail"
    assert failed.value.error == "ValueError: boom after 0.0 s"


def test_a_step_whose_server_dies_fails_and_the_next_run_starts_another(state: Path) -> None:
    server = step_server.shared_server()
    assert server is not None

    def kill_when_the_step_runs() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any((state / "state" / "kfp" / "tmp").glob("*/tmp*/ephemeral_component.py")):
                time.sleep(0.5)
                os.kill(server.pid, 9)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_the_step_runs)
    killer.start()
    with pytest.raises(PipelineRunError) as failed:
        run_locally(failing, {"seconds": 60.0}, name="failing", output_tasks={}, caching=False)
    killer.join()
    assert failed.value.task == "fail"
    assert any("the step server ended before the step did" in line for line in failed.value.tail)

    again = _probe(state, "after")
    restarted = step_server.shared_server()
    assert restarted is not None
    assert restarted.pid != server.pid
    assert again["parent"] == restarted.pid
