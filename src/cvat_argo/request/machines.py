"""Machine types: what a user picks in the "machine type" box, and what it means to Kubernetes.

A machine type maps to pod resources, a node selector and tolerations for the training pod, like
Onepanel's node pools did. The built-in ones assume the NVIDIA GPU Operator's node labels
(``nvidia.com/gpu.present``, ``nvidia.com/gpu.count``) and the usual ``nvidia.com/gpu`` taint;
clusters with other labels override them in a catalog file (see :mod:`cvat_argo.request.catalog`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"


class Toleration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


class MachineType(BaseModel):
    """Resources and placement of the training pod on one kind of node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=30)
    description: str
    gpus: int = Field(0, ge=0, le=16)
    cpu: str = Field(pattern=_QUANTITY, description="CPU request of the training pod")
    memory: str = Field(pattern=_QUANTITY, description="memory request (and limit) of the training pod")
    shm_size: str = Field("2Gi", pattern=_QUANTITY, description="size of the memory-backed /dev/shm")
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()


def _gpu_machine(gpus: int) -> MachineType:
    return MachineType(
        name=f"gpu-{gpus}",
        description=f"{gpus} NVIDIA GPU{'s' if gpus > 1 else ''} (MirroredStrategy over num_clones of them)",
        gpus=gpus,
        cpu=str(6 * gpus),
        memory=f"{24 * gpus}Gi",
        shm_size=f"{4 * gpus}Gi",
        node_selector={"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": str(gpus)},
        tolerations=(Toleration(key="nvidia.com/gpu"),),
    )


BUILTIN_MACHINES: tuple[MachineType, ...] = (
    MachineType(name="cpu", description="CPU only: small data sets and smoke tests", cpu="4", memory="16Gi"),
    *(_gpu_machine(n) for n in (1, 2, 4, 8)),
)
