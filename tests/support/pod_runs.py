"""A compiled pipeline's steps run as Kubeflow Pipelines would run them in pods, without a cluster.

What the KFP v2 driver and launcher do for each task, done here on this machine:

* the DAGs of the compiled IR YAML are walked in dependency order (nested DAGs,
  `dsl.If` conditions included), parameters resolved from the run's arguments,
  the pipeline's defaults and upstream outputs;
* each container task gets the executor input JSON the driver builds (parameter
  values, input artifacts with their URIs and the metadata their producers wrote,
  output artifact URIs, the executor output file), substituted for `{{$}}` in
  the step's own `command` + `args` from the YAML (the `sh -ec ... python3 -m
  kfp.dsl.executor_main` line), and nothing else;
* its environment is only what the platform spec gives it (the ConfigMap and
  Secret keys it names, read from the rendered manifests, the run id through the
  downward API) plus what the image sets (PATH, the installed library);
* it runs in an empty working directory of its own with an empty HOME and TMPDIR:
  nothing of the repository (params.yaml, data.dvc, a state folder) is there, so
  a step that needs anything but its inputs and the services fails the run.

Input artifacts are copied into the consuming step's folder (the launcher
downloads them), so a step cannot reach another step's scratch. Artifact URIs are
local paths (what the KFP local runner uses) instead of `s3://` URIs mapped to
`/s3/...` mounts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO
from tests.support.k8s import Doc, find, secret_data
from tests.support.processes import TELEMETRY_OFF

BIN = Path(sys.executable).parent
Spec = dict[str, Any]


@dataclass(frozen=True)
class ArtifactOut:
    """An artifact a task produced: where its file or folder is, its type and metadata."""

    uri: str
    schema_title: str
    metadata: dict[str, Any]


@dataclass
class PodRun:
    """What the run did: tasks in the order they ran, their seconds, skipped conditions, logs."""

    tasks: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, dict[str, ArtifactOut]] = field(default_factory=dict)


class StepFailed(AssertionError):
    """A step's process exited non-zero; the message holds the end of its output."""


def load_package(path: Path) -> tuple[Spec, Spec]:
    """The pipeline spec and the Kubernetes platform spec of a compiled IR YAML file."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    spec = docs[0]
    platform = docs[1]["platforms"]["kubernetes"] if len(docs) > 1 else {}
    return spec, platform


def step_environment(
    executor: str, platform: Spec, manifests: list[Doc], overrides: Mapping[str, str], run_id: str
) -> dict[str, str]:
    """The environment the platform spec gives `executor`'s pod, resolved from the manifests.

    ConfigMap keys come from the rendered ConfigMap (then `overrides`: in-cluster
    service addresses swapped for local ones, the emptyDir's path); Secret keys
    from the rendered Secret; an optional Secret (or key) that is not rendered is left out,
    as the kubelet does. A required one that is missing fails.
    """
    config = platform.get("deploymentSpec", {}).get("executors", {}).get(executor, {})
    env: dict[str, str] = {}
    for source in config.get("configMapAsEnv", []):
        data = find(manifests, "ConfigMap", source["configMapName"])["data"]
        for entry in source["keyToEnv"]:
            key = entry["configMapKey"]
            assert key in data, f"{executor}: ConfigMap {source['configMapName']} has no {key}"
            env[entry["envVar"]] = data[key]
    for source in config.get("secretAsEnv", []):
        secrets = [
            d
            for d in manifests
            if d["kind"] == "Secret" and d["metadata"]["name"] == source["secretName"]
        ]
        if not secrets:
            assert source.get("optional"), f"{executor}: Secret {source['secretName']} missing"
            continue
        data = secret_data(secrets[0])
        for entry in source["keyToEnv"]:
            if entry["secretKey"] not in data:  # the kubelet leaves an optional key out
                assert source.get("optional"), f"{executor}: {source['secretName']} lacks a key"
                continue
            env[entry["envVar"]] = data[entry["secretKey"]]
    for entry in config.get("fieldPathAsEnv", []):
        assert entry["fieldPath"] == "metadata.labels['pipeline/runid']", entry
        env[entry["name"]] = run_id
    for key, value in overrides.items():
        if key in env:
            env[key] = value
    return env


class PodRunner:
    """Runs a compiled pipeline's tasks as pods would (see the module docstring)."""

    def __init__(
        self,
        package: Path,
        *,
        manifests: list[Doc],
        overrides: Mapping[str, str],
        workdir: Path,
        run_id: str = "pod-run-1",
        timeout: float = 1200,
        app_files: Mapping[str, Path] | None = None,
    ) -> None:
        self.spec, self.platform = load_package(package)
        self.manifests = manifests
        self.overrides = dict(overrides)
        self.workdir = workdir
        self.run_id = run_id
        self.timeout = timeout
        self.app_files = dict(app_files or {})  # what the image's WORKDIR (/app) holds
        self.result = PodRun()

    def run(self, arguments: Mapping[str, Any]) -> PodRun:
        """Run the root DAG with `arguments` over the pipeline's parameter defaults."""
        root = self.spec["root"]
        params = {
            name: spec.get("defaultValue")
            for name, spec in root.get("inputDefinitions", {}).get("parameters", {}).items()
        }
        unknown = set(arguments) - set(params)
        assert not unknown, f"no such pipeline parameters: {sorted(unknown)}"
        params.update(arguments)
        self._dag(root["dag"], params, {}, prefix="")
        return self.result

    # ------------------------------------------------------------------ DAGs

    def _dag(
        self,
        dag: Spec,
        params: dict[str, Any],
        artifacts: dict[str, ArtifactOut],
        prefix: str,
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, ArtifactOut]]]:
        tasks: dict[str, Spec] = dag["tasks"]
        out_params: dict[str, dict[str, Any]] = {}
        out_artifacts: dict[str, dict[str, ArtifactOut]] = {}
        done: set[str] = set()
        while len(done) < len(tasks):
            ready = [
                name
                for name, task in tasks.items()
                if name not in done and set(task.get("dependentTasks", [])) <= done
            ]
            assert ready, f"a cycle among {sorted(set(tasks) - done)}"
            for name in sorted(ready):
                done.add(name)
                task = tasks[name]
                label = f"{prefix}{name}"
                inputs = task.get("inputs", {})
                task_params = {
                    key: self._parameter(ref, params, out_params)
                    for key, ref in inputs.get("parameters", {}).items()
                }
                task_artifacts = {
                    key: self._artifact(ref, artifacts, out_artifacts)
                    for key, ref in inputs.get("artifacts", {}).items()
                }
                if None in task_artifacts.values() or not self._triggered(task, task_params):
                    self.result.skipped.append(label)
                    continue
                component = self.spec["components"][task["componentRef"]["name"]]
                if "dag" in component:
                    inner_params, inner_artifacts = self._dag(
                        component["dag"], task_params, task_artifacts, prefix=f"{label}/"
                    )
                    out_params[name], out_artifacts[name] = self._dag_outputs(
                        component["dag"], inner_params, inner_artifacts
                    )
                else:
                    out_params[name], out_artifacts[name] = self._container(
                        label, component, task_params, task_artifacts
                    )
        return out_params, out_artifacts

    @staticmethod
    def _parameter(ref: Spec, params: dict[str, Any], outputs: dict[str, dict[str, Any]]) -> Any:
        if "componentInputParameter" in ref:
            return params[ref["componentInputParameter"]]
        if "taskOutputParameter" in ref:
            source = ref["taskOutputParameter"]
            return outputs.get(source["producerTask"], {}).get(source["outputParameterKey"])
        if "runtimeValue" in ref:
            return ref["runtimeValue"]["constant"]
        raise AssertionError(f"unsupported parameter reference {ref}")

    @staticmethod
    def _artifact(
        ref: Spec, artifacts: dict[str, ArtifactOut], outputs: dict[str, dict[str, ArtifactOut]]
    ) -> ArtifactOut | None:
        if "componentInputArtifact" in ref:
            return artifacts.get(ref["componentInputArtifact"])
        source = ref["taskOutputArtifact"]
        return outputs.get(source["producerTask"], {}).get(source["outputArtifactKey"])

    @staticmethod
    def _triggered(task: Spec, params: dict[str, Any]) -> bool:
        """A `dsl.If` condition (`inputs.parameter_values['x'] == value`), evaluated."""
        condition = task.get("triggerPolicy", {}).get("condition")
        if not condition:
            return True
        match = re.fullmatch(r"inputs\.parameter_values\['([^']+)'\] (==|!=) (.+)", condition)
        assert match, f"unsupported condition {condition!r}"
        key, op, literal = match.groups()
        expected = json.loads(literal.replace("'", '"'))
        actual = params[key]
        return (actual == expected) if op == "==" else (actual != expected)

    @staticmethod
    def _dag_outputs(
        dag: Spec, params: dict[str, dict[str, Any]], artifacts: dict[str, dict[str, ArtifactOut]]
    ) -> tuple[dict[str, Any], dict[str, ArtifactOut]]:
        outputs = dag.get("outputs", {})
        out_params = {
            key: params.get(sel["valueFromParameter"]["producerSubtask"], {}).get(
                sel["valueFromParameter"]["outputParameterKey"]
            )
            for key, sel in outputs.get("parameters", {}).items()
        }
        out_artifacts: dict[str, ArtifactOut] = {}
        for key, sel in outputs.get("artifacts", {}).items():
            (selector,) = sel["artifactSelectors"]
            found = artifacts.get(selector["producerSubtask"], {}).get(
                selector["outputArtifactKey"]
            )
            if found is not None:
                out_artifacts[key] = found
        return out_params, out_artifacts

    # ------------------------------------------------------------------ one pod

    def _container(
        self,
        label: str,
        component: Spec,
        params: dict[str, Any],
        artifacts: dict[str, ArtifactOut],
    ) -> tuple[dict[str, Any], dict[str, ArtifactOut]]:
        executor = component["executorLabel"]
        container = self.spec["deploymentSpec"]["executors"][executor]["container"]
        pod = self.workdir / label.replace("/", "__")
        folders = {name: pod / name for name in ("cwd", "home", "tmp", "scratch", "in", "out")}
        for folder in folders.values():
            folder.mkdir(parents=True)
        for relative, source in self.app_files.items():
            (folders["cwd"] / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, folders["cwd"] / relative)
        executor_input = self._executor_input(component, params, artifacts, folders)
        argv = [
            arg.replace("{{$}}", json.dumps(executor_input))
            for arg in [*container["command"], *container.get("args", [])]
        ]
        assert not any("{{$" in a for a in argv), f"{label}: an unresolved placeholder in {argv}"
        env = step_environment(
            executor,
            self.platform,
            self.manifests,
            self.overrides,
            self.run_id,
        )
        env = {**image_environment(folders["home"], folders["tmp"], folders["scratch"]), **env}
        started = time.monotonic()
        done = subprocess.run(
            argv,
            cwd=folders["cwd"],
            env=env,
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
        )
        self.result.seconds[label] = time.monotonic() - started
        (pod / "log.txt").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise StepFailed(
                f"{label} exited {done.returncode}:\n{(done.stdout + done.stderr)[-6000:]}"
            )
        self.result.tasks.append(label)
        return self._outputs(label, component, executor_input)

    def _executor_input(
        self,
        component: Spec,
        params: dict[str, Any],
        artifacts: dict[str, ArtifactOut],
        folders: dict[str, Path],
    ) -> Spec:
        """The executor input the KFP driver writes for a container task."""
        inputs_in: Spec = {"parameterValues": params, "artifacts": {}}
        for key, artifact in artifacts.items():
            local = folders["in"] / key
            source = Path(artifact.uri)
            if source.is_dir():
                shutil.copytree(source, local)
            elif source.exists():
                shutil.copy2(source, local)
            inputs_in["artifacts"][key] = {
                "artifacts": [
                    {
                        "name": key,
                        "type": {"schemaTitle": artifact.schema_title},
                        "uri": str(local),
                        "metadata": artifact.metadata,
                    }
                ]
            }
        definitions = component.get("outputDefinitions", {})
        outputs: Spec = {
            "parameters": {
                key: {"outputFile": str(folders["out"] / "parameters" / key)}
                for key in definitions.get("parameters", {})
            },
            "artifacts": {
                key: {
                    "artifacts": [
                        {
                            "name": key,
                            "type": {"schemaTitle": spec["artifactType"]["schemaTitle"]},
                            "uri": str(folders["out"] / "artifacts" / key),
                            "metadata": {},
                        }
                    ]
                }
                for key, spec in definitions.get("artifacts", {}).items()
            },
            "outputFile": str(folders["out"] / "executor_output.json"),
        }
        (folders["out"] / "parameters").mkdir()
        (folders["out"] / "artifacts").mkdir()
        return {"inputs": inputs_in, "outputs": outputs}

    def _outputs(
        self, label: str, component: Spec, executor_input: Spec
    ) -> tuple[dict[str, Any], dict[str, ArtifactOut]]:
        """Read back what the executor wrote, as the launcher records it."""
        outputs = executor_input["outputs"]
        written: Spec = {}
        output_file = Path(outputs["outputFile"])
        if output_file.exists():
            written = json.loads(output_file.read_text())
        params: dict[str, Any] = dict(written.get("parameterValues", {}))
        for key, spec in outputs["parameters"].items():
            if key not in params and Path(spec["outputFile"]).exists():
                params[key] = json.loads(Path(spec["outputFile"]).read_text())
        declared = component.get("outputDefinitions", {}).get("parameters", {})
        missing = set(declared) - set(params)
        assert not missing, f"{label}: no value for output parameters {sorted(missing)}"
        artifacts: dict[str, ArtifactOut] = {}
        for key, spec in outputs["artifacts"].items():
            (declared_artifact,) = spec["artifacts"]
            updated = written.get("artifacts", {}).get(key, {}).get("artifacts", [{}])[0]
            uri = updated.get("uri", declared_artifact["uri"])
            artifacts[key] = ArtifactOut(
                uri=uri,
                schema_title=declared_artifact["type"]["schemaTitle"],
                metadata=dict(updated.get("metadata", {})),
            )
        self.result.parameters[label] = params
        self.result.artifacts[label] = artifacts
        return params, artifacts


def image_environment(home: Path, tmp: Path, scratch: Path) -> dict[str, str]:
    """What the component image's own ENV (infra/docker/Dockerfile) gives every container.

    The image has the library installed and its interpreter first on PATH; here
    that is this venv's interpreter with the checkout's `src` (the library only,
    not the repository root: no `pipelines`, no `components`, no params.yaml).
    HOME and TMPDIR are empty folders of the step's own; `FLYWHEEL_HOME` (the
    image's /var/lib/flywheel, the container's writable layer) another.
    """
    return {
        **TELEMETRY_OFF,
        "FLYWHEEL_HOME": str(scratch),
        "OMP_WAIT_POLICY": "PASSIVE",
        "PATH": f"{BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": str(REPO / "src"),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
