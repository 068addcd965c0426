"""Machine types: what a user picks in the "machine type" box, and what it means to Kubernetes.

A machine type maps to pod resources, a node selector and tolerations for the training pod, like
Onepanel's node pools did. The built-in ones assume the NVIDIA GPU Operator's node labels
(``nvidia.com/gpu.present``, ``nvidia.com/gpu.count``) and the usual ``nvidia.com/gpu`` taint;
clusters with other labels override them in a catalog file (see :mod:`cvat_argo.request.catalog`).

``nodes`` above 1 makes a multi-node machine type (``gpu-2x4``: 2 nodes of 4 GPUs): the train stage
then runs as a JobSet of ``nodes`` worker pods, each like the one pod of a single-node type (``gpus``,
``cpu``, ``memory`` are per pod), training together under MultiWorkerMirroredStrategy (see
:mod:`cvat_argo.engines.jobset` and :mod:`cvat_argo.training.cluster`). The cluster needs JobSet.
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
    gpus: int = Field(0, ge=0, le=16, description="GPUs of each training pod (of each node)")
    nodes: int = Field(1, ge=1, le=64, description="training pods, one per node; above 1: a JobSet of workers")
    cpu: str = Field(pattern=_QUANTITY, description="CPU request of the training pod")
    memory: str = Field(pattern=_QUANTITY, description="memory request (and limit) of the training pod")
    shm_size: str = Field("2Gi", pattern=_QUANTITY, description="size of the memory-backed /dev/shm")
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    @property
    def total_gpus(self) -> int:
        return self.gpus * self.nodes

    def replicas(self, num_clones: int) -> int:
        """Model replicas that share the global batch: ``num_clones`` per pod on every node."""
        return num_clones * self.nodes


def _gpu_machine(gpus: int, nodes: int = 1) -> MachineType:
    plural = "s" if gpus > 1 else ""
    if nodes > 1:
        name = f"gpu-{nodes}x{gpus}"
        description = (f"{nodes} nodes x {gpus} NVIDIA GPU{plural} (a JobSet of {nodes} workers, "
                       "MultiWorkerMirroredStrategy over num_clones GPUs each; needs JobSet in the cluster)")
    else:
        name, description = f"gpu-{gpus}", f"{gpus} NVIDIA GPU{plural} (MirroredStrategy over num_clones of them)"
    return MachineType(
        name=name,
        description=description,
        gpus=gpus,
        nodes=nodes,
        cpu=str(6 * gpus),
        memory=f"{24 * gpus}Gi",
        shm_size=f"{4 * gpus}Gi",
        node_selector={"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": str(gpus)},
        tolerations=(Toleration(key="nvidia.com/gpu"),),
    )


BUILTIN_MACHINES: tuple[MachineType, ...] = (
    MachineType(name="cpu", description="CPU only: small data sets and smoke tests", cpu="4", memory="16Gi"),
    *(_gpu_machine(n) for n in (1, 2, 4, 8)),
    _gpu_machine(4, nodes=2),
)
