"""What a Kubeflow Pipelines backend of a given version accepts, read from its own protos.

The backend's API server and driver read a compiled pipeline with protobuf's
JSON parser, which refuses a field its proto does not know: that is how a KFP
2.14 driver fails on the `optional` field of a Secret env ("unknown field
optional", kubeflow/pipelines#12495). `kfp_protos/` holds, in protobuf text
format, the file descriptors of the protos each release builds with:
`pipeline_spec.proto` (kfp-pipeline-spec) and `kubernetes_executor_config.proto`
(kfp-kubernetes; the backend and this SDK share version numbers and the proto).
They were taken from the PyPI wheels of those versions (the generated
`*_pb2.py` modules' serialized descriptors, without source info), so the tests
need no network.

`spec_errors` parses every executor of a compiled package, as the driver does,
against the protos of one version and says what it would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    json_format,
    message_factory,
    struct_pb2,
    text_format,
)
from google.rpc import status_pb2

PROTOS = Path(__file__).parent / "kfp_protos"
PIPELINE_SPEC_VERSION = "2.15.0"
"""The pipeline_spec.proto the checks use (the oldest backend flywheel states it supports)."""


def _file(name: str) -> descriptor_pb2.FileDescriptorProto:
    return text_format.Parse((PROTOS / name).read_text(), descriptor_pb2.FileDescriptorProto())


def _pool(kubernetes_version: str) -> descriptor_pool.DescriptorPool:
    """A pool holding the well-known protos, pipeline_spec and one kubernetes_executor_config."""
    pool = descriptor_pool.DescriptorPool()
    for module in (any_pb2, duration_pb2, struct_pb2, status_pb2):  # dependencies first
        known = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(known)
        pool.Add(known)
    pool.Add(_file(f"pipeline_spec-{PIPELINE_SPEC_VERSION}.txtpb"))
    pool.Add(_file(f"kubernetes_executor_config-{kubernetes_version}.txtpb"))
    return pool


def available_versions() -> list[str]:
    """The kfp-kubernetes versions whose proto is stored here."""
    prefix = "kubernetes_executor_config-"
    return sorted(p.name[len(prefix) : -len(".txtpb")] for p in PROTOS.glob(f"{prefix}*.txtpb"))


def spec_errors(documents: list[Mapping[str, Any]], version: str) -> list[str]:
    """What a backend of `version` refuses in a compiled package (its YAML documents).

    Checks the pipeline spec as a `PipelineSpec`, each container executor as a
    `PipelineDeploymentConfig.ExecutorSpec` and each Kubernetes executor config as
    a `KubernetesExecutorConfig`, with unknown fields refused. Returns one line
    per refusal; empty: accepted.
    """
    pool = _pool(version)
    executor = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("ml_pipelines.PipelineDeploymentConfig.ExecutorSpec")
    )
    k8s = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("kfp_kubernetes.KubernetesExecutorConfig")
    )
    pipeline = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("ml_pipelines.PipelineSpec")
    )
    spec, platform = documents[0], documents[1] if len(documents) > 1 else {}
    errors = _parse(spec, pipeline, "pipeline spec")
    for name, body in spec["deploymentSpec"]["executors"].items():
        errors += _parse(body, executor, f"pipeline spec executor {name}")
    kubernetes = platform.get("platforms", {}).get("kubernetes", {})
    for name, body in kubernetes.get("deploymentSpec", {}).get("executors", {}).items():
        errors += _parse(body, k8s, f"kubernetes executor {name}")
    return errors


def _parse(body: Mapping[str, Any], message: Any, where: str) -> list[str]:
    try:
        json_format.ParseDict(body, message(), ignore_unknown_fields=False)
    except json_format.ParseError as err:
        return [f"{where}: {err}"]
    return []
