"""The devices one training pod replicates over, checked against what it was asked to use.

Production: ``num_clones`` GPUs under MirroredStrategy; with no GPU, one CPU replica. The train stage
checks the request against the GPUs it can see *before* it loads data or touches the store, so a
template submitted with too few GPUs (``argo submit --from workflowtemplate/cvat-argo-gpu-1 -p
model=frcnn-nas-coco``, or ``num_clones`` above the ``gpus`` parameter) fails in seconds with one line
instead of an out-of-memory error an hour later.

Testing the multi-GPU path without GPUs: ``CVAT_ARGO_CPU_REPLICAS=N`` splits the CPU into N logical
devices (``tf.config.set_logical_device_configuration``) before TensorFlow initialises, and
``num_clones`` up to N then replicate over them with the very code GPUs use: MirroredStrategy, the
global batch split per replica, synchronised batch norm, the all-reduce. It is ignored where a GPU
is visible, so it can never change what a GPU pod does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import ArgumentError

CPU_REPLICAS_ENV = "CVAT_ARGO_CPU_REPLICAS"


@dataclass(frozen=True)
class Devices:
    """What this process can replicate over: GPUs, else ``cpu_replicas`` logical CPU devices (normally 1)."""

    gpus: int
    cpu_replicas: int = 1

    @property
    def replicas(self) -> int:
        return self.gpus or self.cpu_replicas


def cpu_replicas_requested(environ: dict[str, str] | None = None) -> int:
    """``CVAT_ARGO_CPU_REPLICAS`` as a number (1 when unset)."""
    raw = (os.environ if environ is None else environ).get(CPU_REPLICAS_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or not 1 <= int(raw) <= 16:
        raise ArgumentError(f"{CPU_REPLICAS_ENV}={raw!r} is not a number of CPU replicas from 1 to 16")
    return int(raw)


def visible_devices() -> Devices:
    """The GPUs TensorFlow sees; with none, the CPU split into ``CVAT_ARGO_CPU_REPLICAS`` logical devices."""
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    wanted = cpu_replicas_requested()
    if gpus or wanted == 1:
        return Devices(gpus=gpus)
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if configured is None:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * wanted)
        except RuntimeError:
            raise ArgumentError(f"{CPU_REPLICAS_ENV}={wanted}: TensorFlow was initialised before the CPU could be "
                                "split; set it before the process starts") from None
    elif len(configured) != wanted:
        raise ArgumentError(f"{CPU_REPLICAS_ENV}={wanted} but the CPU is already split into {len(configured)} devices")
    return Devices(gpus=0, cpu_replicas=wanted)


def check_devices(model: str, min_gpus: int, num_clones: int | None, devices: Devices) -> None:
    """Refuse, in one line, a model or ``num_clones`` that needs more GPUs than this pod sees."""
    if min_gpus > devices.gpus:
        raise ArgumentError(
            f"model {model} needs at least {min_gpus} GPUs (min_gpus) but this pod sees {devices.gpus}: run it on a "
            f"machine type with {min_gpus} or more GPUs and gpus={min_gpus} or more"
        )
    if num_clones is not None and num_clones > devices.replicas:
        if devices.gpus:
            seen = f"this pod sees {devices.gpus} GPU(s): request {num_clones} GPUs (the gpus parameter)"
        elif devices.cpu_replicas > 1:
            seen = f"{CPU_REPLICAS_ENV} gives {devices.cpu_replicas} CPU replicas: raise it"
        else:
            seen = f"this pod sees no GPU: train on a machine type with {num_clones} GPUs"
        raise ArgumentError(f"num_clones={num_clones} but {seen} or lower num_clones")
    if num_clones is not None and min_gpus > num_clones:
        raise ArgumentError(f"model {model} needs at least {min_gpus} GPUs (min_gpus) but num_clones={num_clones}: "
                            f"use num_clones={min_gpus} or more")


def distribution_strategy(runtime: Any, num_clones: int) -> Any:
    """The strategy for a plan's ``runtime`` config: MirroredStrategy over the GPUs or CPU replicas, else one CPU."""
    import tensorflow as tf
    from official.common import distribute_utils

    if runtime.distribution_strategy == "multi_worker_mirrored":  # several pods: TF_CONFIG (training.cluster)
        return distribute_utils.get_distribution_strategy(distribution_strategy="multi_worker_mirrored")
    if runtime.distribution_strategy == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if runtime.num_gpus else "/cpu:0")
    if runtime.distribution_strategy != "mirrored" or runtime.num_gpus:  # GPUs (or a strategy named by an override)
        return distribute_utils.get_distribution_strategy(distribution_strategy=runtime.distribution_strategy,
                                                          num_gpus=runtime.num_gpus)
    cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
    if len(cpus) < num_clones:
        raise ArgumentError(f"num_clones={num_clones} CPU replicas but TensorFlow has {len(cpus)} CPU device(s); "
                            f"set {CPU_REPLICAS_ENV}={num_clones}")
    # Reduction through one device: NCCL is GPU-only, and the CPU replicas share one host's memory anyway.
    # Unlike NCCL it sums both replicas' tensors in one graph, which makes tracing synchronised batch
    # norm quadratic in depth (training.compat.patch_sync_batch_norm_single_all_reduce).
    return tf.distribute.MirroredStrategy(devices=cpus[:num_clones],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())
