"""A production model in a throwaway folder: the set-up of the serving benchmark and load drivers.

`benchmarks/serving.py` (measures) and the load drivers `tests/load/` (fuzz,
soak: they check) each serve one model from a temporary folder: either the
small CNN of params.yaml trained briefly into a temporary MLflow store and
promoted, or the production version of an existing store (`--tracking-uri`).

    with open_sandbox(args, "flywheel-serving-soak-") as box:
        params = box.serve_params(args.params, args.workers)
        with start_server(params, env=box.server_env()) as url:
            ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from flywheel.serving_api import ADMIN_TOKEN_ENV

Say = Callable[[str], object]
"""Where progress messages go (`print`, or a rich console's `print`)."""


class SandboxError(RuntimeError):
    """No model to serve: no dataset to train one on, or no production version in the store."""


@dataclass(frozen=True)
class Sandbox:
    """A temporary folder and the production model to serve from it.

    Attributes:
        workdir: the folder (the MLflow store when trained here, logs, state, predictions).
        tracking_uri: the MLflow store that holds the model.
        model_name: the registered model.
        version: its production version.
    """

    workdir: Path
    tracking_uri: str
    model_name: str
    version: str

    def server_env(self, admin_token: str | None = None) -> dict[str, str]:
        """The environment `flywheel serve` needs here: the store, the state folder, the token."""
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri, "FLYWHEEL_HOME": str(self.state_dir)}
        if admin_token:
            env[ADMIN_TOKEN_ENV] = admin_token
        return env

    @property
    def state_dir(self) -> Path:
        """The server's state folder (`FLYWHEEL_HOME`)."""
        return self.workdir / "state"

    def serve_params(self, params: Path, workers: int) -> Path:
        """params.yaml for the server: `params` with this model, `workers` and the log here."""
        raw = yaml.safe_load(params.read_text()) or {}
        raw.setdefault("evaluate", {})["registered_model"] = self.model_name
        serve = raw.setdefault("serve", {})
        serve["workers"] = workers
        serve["log"] = {**serve.get("log", {}), "dir": str(self.workdir / "predictions")}
        path = self.workdir / "params.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path


def add_sandbox_arguments(parser: argparse.ArgumentParser, params: Path) -> None:
    """The options that choose the model and the servers (`open_sandbox` reads them).

    Args:
        parser: the script's parser.
        params: the default `--params` (the checkout's params.yaml).
    """
    parser.add_argument("--params", type=Path, default=params)
    parser.add_argument(
        "--tracking-uri", help="Use this MLflow store's production model (default: train one)."
    )
    parser.add_argument("--model", help="Registered model (default: evaluate.registered_model).")
    parser.add_argument("--epochs", type=int, default=2, help="Training epochs of the temp model.")
    parser.add_argument("--workers", type=int, default=1, help="Worker processes per server.")
    parser.add_argument("--keep", action="store_true", help="Keep the temp folder (logs).")


@contextmanager
def open_sandbox(args: argparse.Namespace, prefix: str, say: Say = print) -> Iterator[Sandbox]:
    """A temporary folder with the model to serve (`add_sandbox_arguments`' options).

    Telemetry is turned off and OpenMP set to share the CPU first
    (`configure_process`); the folder is removed at the end unless `--keep`.

    Raises:
        SandboxError: see `prepare_model`.
    """
    from flywheel.env import configure_process

    configure_process()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        uri, name, version = prepare_model(
            workdir,
            args.params,
            tracking_uri=args.tracking_uri,
            model=args.model,
            epochs=args.epochs,
            say=say,
        )
        yield Sandbox(workdir, uri, name, version)
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def prepare_model(
    workdir: Path,
    params_path: Path,
    *,
    tracking_uri: str | None = None,
    model: str | None = None,
    epochs: int = 2,
    say: Say = print,
) -> tuple[str, str, str]:
    """The tracking URI, model name and production version: `tracking_uri`'s, or trained.

    Sets `MLFLOW_TRACKING_URI` in this process to the store.

    Raises:
        SandboxError: `tracking_uri`'s model has no production version, or there is no
            dataset to train on.
    """
    from flywheel.config import load_params
    from flywheel.registry import version_for_alias

    if not tracking_uri:
        return train_model(workdir, params_path, epochs, say)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    name = model or load_params(params_path).evaluate.registered_model
    version = version_for_alias(name, "production")
    if version is None:
        raise SandboxError(f"{name!r} has no production version in {tracking_uri}")
    return tracking_uri, name, version


def train_model(
    workdir: Path, params_path: Path, epochs: int, say: Say = print
) -> tuple[str, str, str]:
    """Train the small CNN of params.yaml briefly into a temp store and promote it.

    Returns:
        The tracking URI, the registered model name and the production version.

    Raises:
        SandboxError: params.yaml's dataset is not there.
    """
    from flywheel import registry
    from flywheel.config import load_params
    from flywheel.evaluation import evaluate_candidate
    from flywheel.modeling.training import train
    from flywheel.tracking import configure_tracking

    uri = f"sqlite:///{workdir}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    overrides = {
        "train.epochs": epochs,
        "train.model.name": "small_cnn",
        "evaluate.gates.min_accuracy": 0.0,  # a serving benchmark: any model will do
        "evaluate.gates.min_slice_accuracy": None,
    }
    params = load_params(params_path, overrides)
    dataset = params.data.dataset_dir
    if not (dataset / "manifest.csv").is_file():
        raise SandboxError(f"no dataset at {dataset}: run `flywheel data ensure` first")
    configure_tracking()
    say(f"training {params.train.model.name} for {epochs} epochs into {uri}")
    result = train(params, dataset, out_dir=workdir / "train", log_model=True, progress=False)
    assert result.model_uri is not None
    name = params.evaluate.registered_model
    version = registry.register(result.model_uri, name)
    outcome = evaluate_candidate(name, version, dataset, params.evaluate, progress=False)
    registry.promote(name, version, reason="serving benchmark")
    report = outcome.report
    say(f"{name} version {version}: test {report.primary_metric} {report.primary():.3f}")
    return uri, name, version


def sample_image(params_path: Path) -> np.ndarray:
    """A test image of the dataset `(S, S)` uint8, or a synthetic one when there is none."""
    from PIL import Image

    from flywheel.config import load_params
    from flywheel.data.manifest import load_manifest

    data = load_params(params_path).data
    try:
        manifest = load_manifest(data.dataset_dir)
        row = manifest[manifest["split"] == "test"].iloc[0]
        return np.asarray(Image.open(data.dataset_dir / row["path"]).convert("L"))
    except (OSError, IndexError, ValueError):
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (data.image_size, data.image_size), dtype=np.uint8)


__all__ = [
    "Sandbox",
    "SandboxError",
    "add_sandbox_arguments",
    "open_sandbox",
    "prepare_model",
    "sample_image",
    "train_model",
]
