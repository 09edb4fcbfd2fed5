"""The Training Operator's PyTorchJob admission rules, ported to check infra/k8s offline.

Mirrors kubeflow/training-operator **v1.8.0** (commit
f8687ca7fd947e6ebd52dde4dfeefdf006e7b239; v1.8.1 has the same file):
validatePyTorchJob, validateSpec and validatePyTorchReplicaSpecs in
pkg/webhooks/pytorch/pytorchjob_webhook.go. The schema file
infra/k8s/schemas/pytorchjob-v1.schema.yaml cites that file at 45666717ae23,
whose content is the same as v1.8.0's. The webhook first appeared in v1.8.0:
a v1.7 operator admits every PyTorchJob its CRD schema accepts.

Checked: the name is a DNS-1035 label; `spec.elasticPolicy.nProcPerNode` is
not used together with `spec.nprocPerNode`; `pytorchReplicaSpecs` is given,
with Master and Worker replicas only, each with containers, every container
with an image and one of them named "pytorch", and exactly one Master.
Not ported: the deprecation warning for `elasticPolicy.nProcPerNode`, and
v1.9's rules (workers required with an elastic policy, `managedBy`).
"""

from __future__ import annotations

import re

from tests.support.k8s import Doc


def pytorchjob_admission_errors(job: Doc) -> list[str]:
    """The Training Operator's PyTorchJob admission verdict.

    Port of validatePyTorchJob (pkg/webhooks/pytorch/pytorchjob_webhook.go, v1.8.0).
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
