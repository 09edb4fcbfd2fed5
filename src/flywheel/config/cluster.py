"""The cluster section: where the pipeline steps run on Kubernetes and what they ask for.

Read by `flywheel pipeline compile|submit` (through `pipelines.cluster`); the
KFP local runner ignores it. Every step gets CPU and memory requests (quota'd
Kubeflow profile namespaces refuse pods without them) and limits; the training
step gets its own resources, GPUs and placement.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from flywheel.config.base import FrozenConfig

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


def quantity(value: str) -> str:
    """`value`, checked to be a Kubernetes resource quantity (`500m`, `2`, `16Gi`).

    >>> quantity("16Gi")
    '16Gi'
    """
    if not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. '500m', '2', '16Gi')")
    return value


class Resources(FrozenConfig):
    """CPU and memory of one step's container: requests, and limits (None: no limit)."""

    cpu: str = "500m"
    memory: str = "2Gi"
    cpu_limit: str | None = "2"
    memory_limit: str | None = "4Gi"

    @field_validator("cpu", "memory", "cpu_limit", "memory_limit")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        return None if value is None else quantity(value)


class Toleration(FrozenConfig):
    """A toleration of a node taint (Kubernetes `tolerations[]`)."""

    key: str = Field(min_length=1)
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = "NoSchedule"

    @model_validator(mode="after")
    def _value_matches_operator(self) -> Toleration:
        if (self.operator == "Equal") != (self.value is not None):
            raise ValueError(f"toleration {self.key!r}: 'Equal' needs a value, 'Exists' takes none")
        return self


class Placement(FrozenConfig):
    """Where a step's pod may run: node labels it needs, taints it tolerates."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()


def _gpu_placement() -> Placement:
    return Placement(
        node_selector={"nvidia.com/gpu.present": "true"},  # NVIDIA GPU feature discovery's label
        tolerations=(Toleration(key="nvidia.com/gpu"),),  # the usual taint of GPU node pools
    )


class TrainPlacement(FrozenConfig):
    """The training step on a cluster: GPUs (or none), its resources, its nodes.

    `gpus: 0` trains on CPU: no accelerator, the CPU image, and the placement of
    the other steps instead of `placement` (which names the GPU nodes).
    """

    gpus: int = Field(1, ge=0)
    accelerator: str = Field("nvidia.com/gpu", min_length=1)  # the GPU's resource name
    resources: Resources = Resources(cpu="4", memory="16Gi", cpu_limit="8", memory_limit="32Gi")
    placement: Placement = Field(default_factory=_gpu_placement)


class ClusterConfig(FrozenConfig):
    """params.yaml `cluster`: resources and placement of the pipeline steps on Kubernetes."""

    steps: Resources = Resources()  # every step but training
    placement: Placement = Placement()  # every step but training (training too when gpus: 0)
    train: TrainPlacement = TrainPlacement()
