"""Submitting a compiled pipeline to a Kubeflow Pipelines endpoint, authenticated.

Kubeflow's multi-user installs put the KFP API behind an authenticating proxy
and a profile namespace per user: a run is created in the user's namespace, and
every request carries `Authorization: Bearer <token>`. The token is one of:

* a token given as such (`--token`, `$FLYWHEEL_KFP_TOKEN`): for example
  `kubectl create token default-editor -n <profile namespace> --audience pipelines.kubeflow.org`
  from a laptop, or an identity provider's access token;
* a file that holds one (`--token-file`, `$KF_PIPELINES_SA_TOKEN_PATH`), read
  again before every request: a projected service-account token inside a pod
  (`--in-cluster` takes the path Kubeflow projects it to,
  `/var/run/secrets/kubeflow/pipelines/token`), which the kubelet renews.

Everything goes through kfp's own `kfp.Client` (`existing_token`, or its
`ServiceAccountTokenVolumeCredentials` for a file), so what reaches the server
is what the SDK sends.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.cluster import ClusterError

IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubeflow/pipelines/token")
"""Where Kubeflow projects the pipelines service-account token (audience pipelines.kubeflow.org)."""


@dataclass(frozen=True)
class Credentials:
    """How `submit` authenticates to the KFP API; neither: no Authorization header.

    Attributes:
        token: a bearer token.
        token_file: a file holding a bearer token, re-read before each request.
    """

    token: str | None = None
    token_file: Path | None = None

    def __post_init__(self) -> None:
        if self.token is not None and self.token_file is not None:
            raise ClusterError("give a token or a token file, not both")
        if self.token is not None and not self.token.strip():
            raise ClusterError("the KFP token is empty")

    def describe(self) -> str:
        """What authenticates, for messages (never the token itself)."""
        if self.token is not None:
            return "a bearer token"
        if self.token_file is not None:
            return f"the token in {self.token_file}"
        return "no credentials"

    def client_arguments(self) -> dict[str, Any]:
        """`kfp.Client` keyword arguments for these credentials.

        Raises:
            ClusterError: the token file is missing, unreadable or empty.
        """
        if self.token is not None:
            return {"existing_token": self.token.strip()}
        if self.token_file is None:
            return {}
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        try:
            readable = self.token_file.read_text().strip()
        except OSError as err:
            raise ClusterError(
                f"cannot read the KFP token file {self.token_file}: {err.strerror or err}"
            ) from None
        if not readable:
            raise ClusterError(f"the KFP token file {self.token_file} is empty")
        return {"credentials": ServiceAccountTokenVolumeCredentials(path=str(self.token_file))}


@dataclass(frozen=True)
class Submission:
    """What `submit` created on the KFP endpoint.

    Attributes:
        kind: `run` or `recurring run`.
        id: its id.
        url: where the KFP UI shows it.
        namespace: the namespace it was created in ('' on a single-user install).
    """

    kind: str
    id: str
    url: str
    namespace: str = ""


def connect(host: str, credentials: Credentials, namespace: str | None) -> Any:
    """A `kfp.Client` for `host`, authenticated, in `namespace`.

    On a multi-user install (the server says so) a namespace is required: the
    one given, else the pod's own when running in a pod (kfp reads it).

    Raises:
        ClusterError: the endpoint cannot be reached, refuses the credentials, or
            is multi-user and no namespace is known.
    """
    import kfp

    try:
        with warnings.catch_warnings():  # "only works with KFP v2.0.0-beta.2 and later": noted
            warnings.simplefilter("ignore", FutureWarning)
            # Without a namespace the client asks the server whether it is
            # multi-user and, if so, takes the pod's namespace when in a pod.
            client = kfp.Client(
                host=host, namespace=namespace or "kubeflow", **credentials.client_arguments()
            )
        multi_user = (
            not namespace
            and not client.get_user_namespace()
            and bool(client.get_kfp_healthz(sleep_duration=1).multi_user)
        )
    except ClusterError:
        raise
    except Exception as err:  # the client wraps connection failures in several types
        raise ClusterError(
            f"cannot reach the KFP endpoint {host} with {credentials.describe()}: "
            f"{_first_line(err)}"
        ) from None
    if multi_user:
        raise ClusterError(
            f"the KFP endpoint {host} is a multi-user install: give the Kubeflow profile "
            "namespace to submit in (--namespace)"
        )
    return client


def submit(
    package: Path,
    *,
    host: str,
    experiment: str,
    run_name: str,
    arguments: dict[str, Any],
    namespace: str | None = None,
    cron: str | None = None,
    credentials: Credentials | None = None,
) -> Submission:
    """Submit a compiled pipeline to a KFP endpoint: one run, or a recurring run on a cron schedule.

    Args:
        package: the compiled IR YAML.
        host: the KFP API endpoint, e.g. `http://localhost:8080` (a port-forward of
            `svc/ml-pipeline-ui`), the Kubeflow gateway, or in a pod
            `http://ml-pipeline.kubeflow.svc.cluster.local:8888`.
        experiment: the KFP experiment (created if missing, in the namespace).
        run_name: the run's (or recurring run's) name.
        arguments: pipeline arguments.
        namespace: the Kubeflow profile namespace (multi-user installs).
        cron: a schedule in KFP's six-field form (`kfp_cron`); None
            submits a single run.
        credentials: how to authenticate (None: not at all).

    Raises:
        ClusterError: the endpoint cannot be reached or refused the request.
    """
    credentials = credentials or Credentials()
    client = connect(host, credentials, namespace)
    where = client.get_user_namespace() or ""
    base = host.rstrip("/")
    # kfp prints "Experiment/Run details" links to stdout: keep stdout for the
    # command's own output (e.g. `flywheel monitor --trigger --json`).
    with contextlib.redirect_stdout(sys.stderr):
        return _create(client, package, base, where, experiment, run_name, arguments, cron, host)


def _create(
    client: Any,
    package: Path,
    base: str,
    where: str,
    experiment: str,
    run_name: str,
    arguments: dict[str, Any],
    cron: str | None,
    host: str,
) -> Submission:
    try:
        if cron is None:
            run = client.create_run_from_pipeline_package(
                str(package),
                arguments=arguments,
                run_name=run_name,
                experiment_name=experiment,
                namespace=where or None,
            )
            return Submission("run", run.run_id, f"{base}/#/runs/details/{run.run_id}", where)
        exp = client.create_experiment(experiment, namespace=where or None)
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
        return Submission("recurring run", job_id, f"{base}/#/recurringrun/details/{job_id}", where)
    except Exception as err:  # kfp_server_api raises ApiException; transport errors vary
        raise ClusterError(f"the KFP endpoint {host} refused the request: {_reason(err)}") from None


def _reason(err: BaseException) -> str:
    """The server's reason: an ApiException's status and message, else the first line."""
    status = getattr(err, "status", None)
    body = getattr(err, "body", None)
    if status is not None:
        detail = body.decode() if isinstance(body, bytes) else (body or "")
        return f"HTTP {status} {getattr(err, 'reason', '')}: {detail.strip()[:300]}".strip()
    return _first_line(err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
