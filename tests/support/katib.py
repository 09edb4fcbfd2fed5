"""Katib's admission rules, trial pod wrapping and metrics parsing, ported for offline checks.

Mirrors kubeflow/katib **v0.17.0** (commit 5723604d419c5ba5bf01240b7be5ebf55aaee0bc),
the oldest release the GPU jobs support (`infra/k8s/jobs/gpu`: Katib >= 0.17).
Paths below are in that tree.

* `katib_admission_errors`: the Experiment validating webhook,
  pkg/webhook/v1beta1/experiment/validator/validator.go (ValidateExperiment:
  name, trial counts; validateObjective, validateAlgorithm, validateResumePolicy,
  validateParameters, validateTrialTemplate, validateMetricsCollector's kind and
  filter rules); an algorithm counts as known when the default KatibConfig runs
  a suggestion service for it (`KATIB_ALGORITHMS`,
  manifests/v1beta1/installs/katib-standalone/katib-config.yaml), and TPE
  settings are checked as the hyperopt suggestion service checks them
  (`TPE_SETTINGS`, pkg/suggestion/v1beta1/hyperopt/service.py,
  `_validate_tpe_setting`). The primary-container check is the pod webhook's
  (wrapWorkerContainer). v0.17 stops at the first error; this port lists them
  all, as the webhook does from v0.18 (field.ErrorList).
* `katib_wrapped_command`: wrapWorkerContainer, pkg/webhook/v1beta1/pod/utils.go
  (StdOut collector, no early stopping).
* `katib_parse_metrics`, `KATIB_DEFAULT_FILTER`: parseLogsInTextFormat and
  newObservationLog (pkg/metricscollector/v1beta1/file-metricscollector/
  file-metricscollector.go) and DefaultFilter
  (pkg/metricscollector/v1beta1/common/const.go).
* `TRIAL_PARAMETER`, `META_REFERENCE`, `substitute_trial_parameters`: the
  trial template placeholders (pkg/controller.v1beta1/consts/const.go) and the
  controller's substitution in the template's JSON text (applyParameters,
  pkg/controller.v1beta1/experiment/manifest/generator.go). `sample_assignment`
  is ours: the values a first trial could get.

Not ported: the rules for edits of a running Experiment, early stopping,
nasConfig, the configMap trial source, the metrics sources of the File,
TensorFlowEvent, PrometheusMetric and Custom collectors, and the trial Job's
conversion to batch/v1 (the tests validate the substituted Job against the
Kubernetes schema instead). Rules added in v0.18 are not here either: names of
at most 40 characters, `feasibleSpace.distribution` values, and both `min` and
`max` for int and double parameters (v0.17 wants one of the two). One rule is
stricter than upstream's: the name pattern must match the whole name (Katib's
regex has no end anchor, so it checks the first character only).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from tests.support.k8s import Doc, argv

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
    """The Experiment validating webhook's verdict, ported from Katib v0.17.0's Go source.

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
