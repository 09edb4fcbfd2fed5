"""Running on a Kubernetes cluster: per-step placement, compiling to IR YAML, submitting.

The pipelines are built for one of two targets. `local` (the KFP local runner)
gets no resource or Kubernetes settings: the runner ignores them and warns for
each. `cluster` gets them, from `ClusterSettings`, named after the objects
`infra/k8s` creates:

* every step takes the shared settings from the ConfigMap `flywheel-config`
  (`MLFLOW_TRACKING_URI`, `MLFLOW_S3_ENDPOINT_URL`, `FLYWHEEL_USER`), the S3
  credentials from the Secret `flywheel-s3` (DVC remote, MLflow artifacts) and,
  when the tracking server wants them, MLflow credentials from the optional
  Secret `flywheel-mlflow`, all as environment variables; and the KFP run id
  (the pod's `pipeline/runid` label, through the downward API) as
  `FLYWHEEL_PIPELINE_RUN_ID`, which training records as lineage — an
  environment variable, not an input, so it does not break caching;
* the training step runs in the CUDA build of the image, requests a GPU
  (accelerator type and count), CPU and memory, and is placed on GPU nodes by a
  node selector and a toleration of their taint.

Caching is decided by the pipelines (on for validation and training, off for the
steps that depend on the registry's state).
"""

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kfp import kubernetes
from kfp.dsl import PipelineTask

from flywheel.tracking import PIPELINE_RUN_ID_ENV

Target = Literal["local", "cluster"]

RUN_ID_FIELD_PATH = "metadata.labels['pipeline/runid']"
"""The KFP backend labels every pod of a run with the run's id."""


class ClusterError(RuntimeError):
    """The KFP endpoint cannot be reached or refused the request; the message says which."""


@dataclass(frozen=True)
class Toleration:
    """A toleration of a node taint (Kubernetes `tolerations[]`)."""

    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = "NoSchedule"


def _default_node_selector() -> dict[str, str]:
    return {"nvidia.com/gpu.present": "true"}  # set by NVIDIA GPU feature discovery


def _default_tolerations() -> tuple[Toleration, ...]:
    return (Toleration(key="nvidia.com/gpu"),)  # the usual taint of GPU node pools


def _default_config_keys() -> tuple[str, ...]:
    # FLYWHEEL_STATE_URL and AWS_ENDPOINT_URL: the shared state (prediction log, queue,
    # ground truth, Evidently workspace) the monitor, curate and label steps read and write.
    return (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_S3_ENDPOINT_URL",
        "FLYWHEEL_USER",
        "FLYWHEEL_STATE_URL",
        "AWS_ENDPOINT_URL",
    )


def _default_s3_keys() -> dict[str, str]:
    return {"access-key": "AWS_ACCESS_KEY_ID", "secret-key": "AWS_SECRET_ACCESS_KEY"}


def _default_mlflow_keys() -> dict[str, str]:
    return {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}


@dataclass(frozen=True)
class ClusterSettings:
    """Where and with what the steps run on the cluster.

    The ConfigMap and Secrets must exist in the namespace KFP runs the pipeline
    in (the Kubeflow profile's namespace), with a tracking URI that resolves from
    there (e.g. `http://flywheel-mlflow.flywheel.svc.cluster.local:5000`).

    Attributes:
        train_image: the training step's image; None: the CUDA build of the steps'
            image (`<image>-cuda`, what `make images` tags).
        accelerator: the training step's accelerator resource (`nvidia.com/gpu`).
        gpus: accelerators for the training step (it trains in one process).
        train_cpu: CPU request of the training step.
        train_memory: memory request of the training step.
        node_selector: node labels the training step requires.
        tolerations: taints the training step tolerates.
        config_map: the ConfigMap with the shared settings.
        config_keys: its keys, each exposed as the environment variable of the same name.
        s3_secret: the Secret with the S3 credentials.
        s3_keys: its keys → environment variables.
        mlflow_secret: the optional Secret with MLflow credentials (a server with auth).
        mlflow_keys: its keys → environment variables.
    """

    train_image: str | None = None
    accelerator: str = "nvidia.com/gpu"
    gpus: int = 1
    train_cpu: str = "4"
    train_memory: str = "16Gi"
    node_selector: dict[str, str] = field(default_factory=_default_node_selector)
    tolerations: tuple[Toleration, ...] = field(default_factory=_default_tolerations)
    config_map: str = "flywheel-config"
    config_keys: tuple[str, ...] = field(default_factory=_default_config_keys)
    s3_secret: str = "flywheel-s3"
    s3_keys: dict[str, str] = field(default_factory=_default_s3_keys)
    mlflow_secret: str = "flywheel-mlflow"
    mlflow_keys: dict[str, str] = field(default_factory=_default_mlflow_keys)

    def training_image(self, image: str) -> str:
        """The training step's image: `train_image`, else the CUDA build `<image>-cuda`.

        >>> ClusterSettings().training_image("ghcr.io/flywheel-ml/flywheel:0.1.0")
        'ghcr.io/flywheel-ml/flywheel:0.1.0-cuda'
        """
        if self.train_image:
            return self.train_image
        if "@" in image:  # a digest names one build: there is no "-cuda" of it
            return image
        return f"{image}-cuda"


def configure_step(
    task: PipelineTask, *, image: str, target: Target, settings: ClusterSettings
) -> PipelineTask:
    """Give a step its image and, on a cluster, its settings, credentials and run id.

    Locally only the image is set (and ignored by the subprocess runner), so the
    local runner has no settings to warn about.
    """
    task.set_container_image(image)
    if target == "cluster":
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
        kubernetes.use_field_path_as_env(
            task, env_name=PIPELINE_RUN_ID_ENV, field_path=RUN_ID_FIELD_PATH
        )
    return task


def request_gpu(
    task: PipelineTask, *, image: str, target: Target, settings: ClusterSettings
) -> PipelineTask:
    """On a cluster: the CUDA image, the accelerator, CPU and memory, and the GPU nodes."""
    if target != "cluster":
        return task
    task.set_container_image(settings.training_image(image))
    task.set_accelerator_type(settings.accelerator)
    task.set_accelerator_limit(settings.gpus)
    task.set_cpu_request(settings.train_cpu)
    task.set_memory_request(settings.train_memory)
    for key, value in settings.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in settings.tolerations:
        kubernetes.add_toleration(
            task,
            key=toleration.key,
            operator=toleration.operator,
            value=toleration.value,
            effect=toleration.effect,
        )
    return task


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


@dataclass(frozen=True)
class Submission:
    """What `submit` created on the KFP endpoint.

    Attributes:
        kind: `run` or `recurring run`.
        id: its id.
        url: where the KFP UI shows it.
    """

    kind: str
    id: str
    url: str


def submit(
    package: Path,
    *,
    host: str,
    experiment: str,
    run_name: str,
    arguments: dict[str, Any],
    namespace: str | None = None,
    cron: str | None = None,
) -> Submission:
    """Submit a compiled pipeline to a KFP endpoint: one run, or a recurring run on a cron schedule.

    Args:
        package: the compiled IR YAML.
        host: the KFP API endpoint, e.g. `http://localhost:8080` (a port-forward of
            `svc/ml-pipeline-ui`) or the Kubeflow gateway.
        experiment: the KFP experiment (created if missing).
        run_name: the run's (or recurring run's) name.
        arguments: pipeline arguments.
        namespace: the Kubeflow profile namespace (multi-user installs).
        cron: a schedule in KFP's six-field form (`kfp_cron`); None
            submits a single run.

    Raises:
        ClusterError: the endpoint cannot be reached or refused the request.
    """
    import kfp

    try:
        with warnings.catch_warnings():  # "only works with KFP v2.0.0-beta.2 and later": noted
            warnings.simplefilter("ignore", FutureWarning)
            client = kfp.Client(host=host, namespace=namespace or "kubeflow")
    except Exception as err:  # the client wraps connection failures in several types
        raise ClusterError(f"cannot reach the KFP endpoint {host}: {_first_line(err)}") from None
    try:
        if cron is None:
            run = client.create_run_from_pipeline_package(
                str(package),
                arguments=arguments,
                run_name=run_name,
                experiment_name=experiment,
                namespace=namespace,
            )
            return Submission("run", run.run_id, f"{host.rstrip('/')}/#/runs/details/{run.run_id}")
        exp = client.create_experiment(experiment, namespace=namespace)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=run_name,
            cron_expression=cron,
            pipeline_package_path=str(package),
            params=arguments,
            max_concurrency=1,
            no_catchup=True,
        )
        job_id = job.recurring_run_id
        return Submission(
            "recurring run", job_id, f"{host.rstrip('/')}/#/recurringrun/details/{job_id}"
        )
    except Exception as err:  # kfp_server_api raises ApiException; transport errors vary
        raise ClusterError(
            f"the KFP endpoint {host} refused the request: {_first_line(err)}"
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
