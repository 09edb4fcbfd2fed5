"""Builders the tests share: projects, data plans, MLflow stores, prediction logs, clusters.

Plain functions and context managers, imported as `tests.support.<module>` (the
repository root is on `sys.path`, see `pythonpath` in pyproject.toml). The
fixtures built from them live in `tests/conftest.py` and in the conftest.py of
a suite's folder (tests/integration/infra/, registry/, monitoring/). No module
here is named `test_*`: pytest collects no tests from them, only their doctests
(`--doctest-modules`).

Modules:
    project: a tiny flywheel project in a DVC repository, a git + DVC repository.
    plans: the tiny data plan and model the training tests share, a plan's dataset collected.
    tracking: a SQLite MLflow store selected through the environment.
    models: a small model logged to MLflow as training logs it.
    labeling: a real prediction log and the simulator's truth, written without a server.
    processes: servers on a free port, HTTP probes, `make`, the environment they run in.
    k8s: the kustomize overlays rendered and walked, built-in objects validated.
    schemas: the Katib Experiment and the PyTorchJob validated against infra/k8s/schemas/.
    katib: Katib's admission rules, trial pod wrapping and metrics parsing (Katib v0.17.0).
    training_operator: the PyTorchJob admission rules (Training Operator v1.8.0).
    dockerfile: infra/docker/Dockerfile read as stages and instructions.
    kfp_backend: what a KFP backend of a given version accepts, from its protos (kfp_protos/).
    kfp_api: a recording stand-in of the KFP REST API on 127.0.0.1.
    registry_store: the registry tests' dataset shape, gates, store handle, blessings.
    monitoring_stack: the monitoring stack tests' params, traffic windows, fixture handles.
    evaluation: evaluation reports from hand-made class probabilities, through the real task.
    browser: headless Chromium over the DevTools protocol: a page's requests, styles, PNG.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository root (params.yaml, infra/, the Makefile)."""
