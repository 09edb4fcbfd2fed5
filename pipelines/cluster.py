"""Running on a Kubernetes cluster: per-step resources and placement, compiling to IR YAML.

The pipelines are built for one of two targets. `local` (the KFP local runner)
gets no resource or Kubernetes settings: the runner ignores them and warns for
each. `cluster` gets them, from `ClusterSettings`, named after the objects
`infra/k8s` creates:

* every step asks for CPU and memory (requests and limits, params.yaml
  `cluster.steps`), runs on the nodes `cluster.placement` names, takes the
  shared settings from the ConfigMap `flywheel-config` (`MLFLOW_TRACKING_URI`,
  `MLFLOW_S3_ENDPOINT_URL`, `FLYWHEEL_USER`, the state URL, the S3 endpoint and
  region, the DVC remote `FLYWHEEL_DVC_REMOTE`), the S3 credentials from the Secret
  `flywheel-s3` (DVC remote, MLflow artifacts) and, when the tracking server
  wants them, MLflow credentials from the optional Secret `flywheel-mlflow`, the
  Label Studio server (`LABEL_STUDIO_URL`, the ConfigMap) and its token from the
  optional Secret `flywheel-label-studio-token` (which the token Job writes), all
  as environment variables; and the KFP run id (the pod's `pipeline/runid`
  label, through the downward API) as `FLYWHEEL_PIPELINE_RUN_ID`, which training
  records as lineage — an environment variable, not an input, so it does not
  break caching;
* the training step has resources of its own (`cluster.train`): GPUs of the
  configured resource name, in the CUDA build of the image, on the nodes its
  placement names (a node selector, tolerations of their taints); or, with
  `gpus: 0`, the CPU build placed like every other step.

The compiled spec needs a KFP backend of at least `MIN_KFP_BACKEND`. Caching is
decided by the pipelines (on for validation and training, off for the steps that
depend on the registry's state). Submitting is `pipelines.submission`.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kfp import kubernetes
from kfp.dsl import PipelineTask

from flywheel.config import ClusterConfig, Placement, Resources
from flywheel.tracking import PIPELINE_RUN_ID_ENV

Target = Literal["local", "cluster"]

MIN_KFP_BACKEND = "2.15.0"
"""The oldest Kubeflow Pipelines backend that runs the compiled spec.

kfp-kubernetes (2.15 and later) writes the field `optional` on every Secret and
ConfigMap environment reference, and the optional MLflow Secret needs it; a
driver older than 2.15 refuses the whole step ("unknown field optional",
kubeflow/pipelines#12495). The tests parse every compiled executor with the
protos of this version (tests/support/kfp_backend.py).
"""

RUN_ID_FIELD_PATH = "metadata.labels['pipeline/runid']"
"""The KFP backend labels every pod of a run with the run's id."""


class ClusterError(RuntimeError):
    """The KFP endpoint cannot be reached or refused the request; the message says which."""


def _default_config_keys() -> tuple[str, ...]:
    # FLYWHEEL_STATE_URL and AWS_ENDPOINT_URL: the shared state (prediction log, queue,
    # ground truth, Evidently workspace) the monitor, curate and label steps read and write.
    # FLYWHEEL_DVC_REMOTE: where validation materialises the data version by hash and the
    # update step pushes a new one (a pod has no repository whose .dvc/config names it).
    # AWS_DEFAULT_REGION: the S3 clients' signing region (MinIO, any S3-compatible store).
    return (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_S3_ENDPOINT_URL",
        "FLYWHEEL_USER",
        "FLYWHEEL_STATE_URL",
        "AWS_ENDPOINT_URL",
        "AWS_DEFAULT_REGION",
        "FLYWHEEL_DVC_REMOTE",
        "LABEL_STUDIO_URL",  # the `label-studio` labeller's server (flywheel.labeling.server)
    )


def _default_s3_keys() -> dict[str, str]:
    return {"access-key": "AWS_ACCESS_KEY_ID", "secret-key": "AWS_SECRET_ACCESS_KEY"}


def _default_label_studio_keys() -> dict[str, str]:
    return {"token": "LABEL_STUDIO_API_KEY"}


def _default_mlflow_keys() -> dict[str, str]:
    return {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}


@dataclass(frozen=True)
class ClusterSettings:
    """Where and with what the steps run on the cluster.

    The ConfigMap and Secrets must exist in the namespace KFP runs the pipeline
    in (the Kubeflow profile's namespace), with a tracking URI that resolves from
    there (e.g. `http://flywheel-mlflow.flywheel.svc.cluster.local:5000`).

    Attributes:
        placement: resources, GPUs and nodes of the steps (params.yaml `cluster`).
        train_image: the training step's image; None: the CUDA build of the steps'
            image (`<image>-cuda`, what `make images` tags) when it has GPUs, the
            steps' image when it trains on CPU.
        config_map: the ConfigMap with the shared settings.
        config_keys: its keys, each exposed as the environment variable of the same name.
        s3_secret: the Secret with the S3 credentials.
        s3_keys: its keys → environment variables.
        mlflow_secret: the optional Secret with MLflow credentials (a server with auth).
        mlflow_keys: its keys → environment variables.
        label_studio_secret: the optional Secret with Label Studio's access token.
        label_studio_keys: its keys → environment variables.
    """

    placement: ClusterConfig = field(default_factory=ClusterConfig)
    train_image: str | None = None
    config_map: str = "flywheel-config"
    config_keys: tuple[str, ...] = field(default_factory=_default_config_keys)
    s3_secret: str = "flywheel-s3"
    s3_keys: dict[str, str] = field(default_factory=_default_s3_keys)
    mlflow_secret: str = "flywheel-mlflow"
    mlflow_keys: dict[str, str] = field(default_factory=_default_mlflow_keys)
    label_studio_secret: str = "flywheel-label-studio-token"
    label_studio_keys: dict[str, str] = field(default_factory=_default_label_studio_keys)

    def training_image(self, image: str) -> str:
        """The training step's image: `train_image`, else the CUDA build `<image>-cuda` for GPUs.

        >>> ClusterSettings().training_image("ghcr.io/flywheel-ml/flywheel:0.1.0")
        'ghcr.io/flywheel-ml/flywheel:0.1.0-cuda'
        """
        if self.train_image:
            return self.train_image
        if self.placement.train.gpus == 0:  # CPU training: the CPU build
            return image
        if "@" in image:  # a digest names one build: there is no "-cuda" of it
            return image
        return f"{image}-cuda"


def configure_step(
    task: PipelineTask,
    *,
    image: str,
    target: Target,
    settings: ClusterSettings,
    training: bool = False,
) -> PipelineTask:
    """Give a step its image and, on a cluster, its resources, nodes, credentials and run id.

    Locally only the image is set (and ignored by the subprocess runner), so the
    local runner has no settings to warn about. On a cluster every step asks for
    CPU and memory; the training step (`training`) its own resources, GPUs and
    nodes from `settings.placement.train`.
    """
    if target != "cluster":
        task.set_container_image(image)
        return task
    cluster = settings.placement
    if training:
        task.set_container_image(settings.training_image(image))
        _set_resources(task, cluster.train.resources)
        if cluster.train.gpus:
            task.set_accelerator_type(cluster.train.accelerator)
            task.set_accelerator_limit(cluster.train.gpus)
            _set_placement(task, cluster.train.placement)
        else:  # on CPU: placed like every other step
            _set_placement(task, cluster.placement)
    else:
        task.set_container_image(image)
        _set_resources(task, cluster.steps)
        _set_placement(task, cluster.placement)
    kubernetes.use_config_map_as_env(
        task,
        config_map_name=settings.config_map,
        config_map_key_to_env={key: key for key in settings.config_keys},
    )
    kubernetes.use_secret_as_env(
        task, secret_name=settings.s3_secret, secret_key_to_env=dict(settings.s3_keys)
    )
    kubernetes.use_secret_as_env(
        task,
        secret_name=settings.mlflow_secret,
        secret_key_to_env=dict(settings.mlflow_keys),
        optional=True,
    )
    kubernetes.use_secret_as_env(  # optional: the export labeller needs no server
        task,
        secret_name=settings.label_studio_secret,
        secret_key_to_env=dict(settings.label_studio_keys),
        optional=True,
    )
    kubernetes.use_field_path_as_env(
        task, env_name=PIPELINE_RUN_ID_ENV, field_path=RUN_ID_FIELD_PATH
    )
    return task


def uncached_step(
    image: str, target: Target, settings: ClusterSettings
) -> Callable[[PipelineTask], PipelineTask]:
    """The loop's steps placed as `configure_step` places them, uncached: they read moving state."""

    def step(task: PipelineTask) -> PipelineTask:
        configure_step(task, image=image, target=target, settings=settings)
        return task.set_caching_options(False)

    return step


def _set_resources(task: PipelineTask, resources: Resources) -> None:
    task.set_cpu_request(resources.cpu)
    task.set_memory_request(resources.memory)
    if resources.cpu_limit is not None:
        task.set_cpu_limit(resources.cpu_limit)
    if resources.memory_limit is not None:
        task.set_memory_limit(resources.memory_limit)


def _set_placement(task: PipelineTask, placement: Placement) -> None:
    for key, value in placement.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in placement.tolerations:
        kubernetes.add_toleration(
            task,
            key=toleration.key,
            operator=toleration.operator,
            value=toleration.value,
            effect=toleration.effect,
        )


def kfp_cron(expression: str) -> str:
    """A cron expression as Kubeflow Pipelines wants it: six fields, seconds first.

    Standard five-field expressions get `0` seconds in front.

    >>> kfp_cron("0 * * * *")
    '0 0 * * * *'

    Raises:
        ValueError: neither five nor six fields.
    """
    fields = expression.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise ValueError(
        f"cron expression {expression!r} has {len(fields)} fields; give five "
        "(minute hour day month weekday, e.g. '0 * * * *') or six (seconds first)"
    )


def compile_pipeline(pipeline: Any, package: Path) -> Path:
    """Write a built pipeline as Kubeflow Pipelines IR YAML (what the KFP UI and API accept)."""
    from kfp import compiler

    package.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(package))
    return package
