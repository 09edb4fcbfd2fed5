"""The cluster infrastructure (`infra/`), checked offline for real: the fixtures of its tests.

Nothing under tests/integration/infra/ needs a cluster or a Docker engine:

* test_manifests.py: both kustomize overlays (the services) and both jobs variants
  (Katib, PyTorchJob) rendered with `kubectl kustomize`,
  built-in objects validated against the Kubernetes API schemas, and what the
  platform promises (GPUs where training runs, zero-downtime serving, non-root
  pods, Secrets, the one image constant, Services, references, every `flywheel
  ...` command against the real CLI);
* test_custom_resources.py: the Katib Experiment and the PyTorchJob against
  their schemas and the admission rules of Katib's and the Training Operator's
  webhooks (ported: tests/support/katib.py, tests/support/training_operator.py),
  and the Experiment as the twin of `params.yaml: tune`;
* test_images.py: the Dockerfile (hadolint, its stages, its /app without git)
  and `make images`;
* test_cluster_runs.py: real processes started as the manifests start them
  (the MLflow server, the Evidently UI, a Katib trial);
* test_readme.py: the commands of infra/README.md's walkthrough against the
  rendered manifests (names, ports, the DVC remote, the KFP API, the settings
  copied into the runs' namespace, run offline);
* test_pipeline_pods.py: every step of the compiled `training` and `flywheel`
  pipelines run as its pod would run it (tests/support/pod_runs.py), against
  PostgreSQL, the MLflow server and an S3 server on 127.0.0.1.
"""

from __future__ import annotations

import shutil

import pytest

from tests.support.k8s import RENDERINGS, Doc, render_overlay


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Doc]]:
    """Every overlay and jobs variant, rendered once for the session (tests mutate deep copies)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the kustomize overlays cannot be rendered")
    return {name: render_overlay(name) for name in RENDERINGS}
