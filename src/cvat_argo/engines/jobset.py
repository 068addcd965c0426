"""A stage on several nodes: a Kubernetes JobSet, created, watched and cleaned up by an Argo resource step.

A multi-node machine type (``nodes`` > 1, :mod:`cvat_argo.request.machines`) runs the train stage as a
JobSet (``jobset.x-k8s.io/v1alpha2``, kubernetes-sigs/jobset, the engine under Kubeflow Trainer v2): one
replicated job ``worker`` of one Indexed Job with ``nodes`` pods, each the same container, command and
arguments as the single pod of a one-node machine type, with ``num_clones`` GPUs (the ``gpus``
parameter). JobSet's headless service (``network.enableDNSHostnames``) gives every pod a stable name;
each pod builds ``TF_CONFIG`` from those names and its Job completion index
(:mod:`cvat_argo.training.cluster`) and trains under MultiWorkerMirroredStrategy.

The Argo template is a ``resource`` template: ``action: create`` with ``setOwnerReference`` (the JobSet
is deleted with the workflow), ``successCondition: status.terminalState == Completed`` and
``failureCondition: status.terminalState == Failed``. A failed worker makes JobSet restart all of them
(``failurePolicy.maxRestarts``, the stage's retry limit); they resume from the checkpoints in the store.

Artifacts without an Argo executor: a resource step has no input or output artifacts, so the pods move
them through the store themselves, under the very keys the artifacts have on a one-node run
(:func:`cvat_argo.engines.artifacts.artifact_key`, ``<prefix>/<workflow name>/<stage>/<artifact>``):

* inputs: an init container (``python -m cvat_argo.training.cluster fetch``) downloads each input
  artifact's key into ``/mnt/in/<artifact>``, where Argo would have put it;
* outputs: the chief (worker 0) copies its finished ``/mnt/out/<artifact>`` to the artifact's key
  (``CVAT_ARGO_PUBLISH_KEY``); checkpoints reach the same key while it trains (``--resume-key``);
* stages after it read those keys: their DAG arguments are key-only S3 artifacts
  (``s3: {key: ...}``, resolved through ``artifactRepositoryRef``) instead of
  ``from: {{tasks.train.outputs.artifacts.model}}``. :func:`input_key` is the one place that says so.

The manifest is YAML inside the WorkflowTemplate, and Argo substitutes ``{{...}}`` into it as text
before it parses it. Every string that carries a variable is written as a literal block scalar
(``|-``), so a value with quotes, colons or braces (the ``model-spec`` JSON) stays one string; values
must be one line, which ours are (compact JSON, ``key=value`` lists, keys). No variable is ever in a
key. ``render`` does not need JobSet installed: it only writes this text.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..training import cluster
from . import artifacts
from .pipeline import Stage

API_VERSION = "jobset.x-k8s.io/v1alpha2"
KIND = "JobSet"
REPLICATED_JOB = "worker"
WORKER_PORT = cluster.DEFAULT_PORT
CONTAINER = "train"
SUCCESS_CONDITION = "status.terminalState == Completed"
FAILURE_CONDITION = "status.terminalState == Failed"
FETCH_MODULE = "cvat_argo.training.cluster"
#: RBAC the workflow's service account needs for a resource step on JobSets (create, then watch the status).
RBAC_RULE = {"apiGroups": ["jobset.x-k8s.io"], "resources": ["jobsets"],
             "verbs": ["create", "get", "list", "watch", "patch", "delete"]}


def input_key(stage: Stage, artifact: str, prefix: str, run: str) -> str:
    """Where a multi-node stage's input or output artifact lives in the store: the artifact's own key."""
    return artifacts.artifact_key(prefix, run, stage.name, artifact)


def generate_name(stage: Stage) -> str:
    """Short on purpose: pod hostnames ``<jobset>-worker-0-<i>`` must fit in 63 characters."""
    return f"cvat-argo-{stage.name}-"


class _ManifestDumper(yaml.SafeDumper):
    """Strings with Argo variables as literal blocks: substituted text cannot change the YAML's structure."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    from .yamlio import needs_quotes

    if "{{" in data or "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    if needs_quotes(data):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_ManifestDumper.add_representer(str, _represent_str)


def dump_manifest(obj: dict[str, Any]) -> str:
    from .yamlio import ordered

    return yaml.dump(ordered(obj), Dumper=_ManifestDumper, default_flow_style=False, sort_keys=False, width=4096)


def _env_from(var: Any) -> dict[str, Any]:
    ref = "secretKeyRef" if var.source == "secret" else "configMapKeyRef"
    return {"name": var.name, "valueFrom": {ref: {"name": var.object_name, "key": var.key, "optional": True}}}


def _label_env(name: str, label: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{label}']"}}}


def jobset(stage: Stage, *, args: list[str], in_dir: str, out_dir: str, prefix: str, run: str,
           labels: dict[str, str]) -> dict[str, Any]:
    """The JobSet of ``stage.nodes`` workers running ``stage`` (``args`` with Argo's variables filled in)."""
    res = stage.resources
    store_env = [_env_from(var) for var in stage.env]
    if len(stage.outputs) != 1:
        raise ValueError(f"stage {stage.name}: a multi-node stage publishes exactly one output artifact")
    publish = input_key(stage, stage.outputs[0], prefix, run)
    env = [
        *store_env,
        {"name": cluster.WORKERS_ENV, "value": str(stage.nodes)},
        _label_env(cluster.JOBSET_ENV, cluster.JOBSET_NAME_LABEL),
        _label_env(cluster.REPLICATED_JOB_ENV, cluster.REPLICATED_JOB_LABEL),
        {"name": cluster.PORT_ENV, "value": str(WORKER_PORT)},
        {"name": cluster.PUBLISH_ENV, "value": publish},
    ]
    resources: dict[str, Any] = {"requests": {"cpu": res.cpu, "memory": res.memory}, "limits": {"memory": res.memory}}
    if res.gpu_parameter:
        count = f"{{{{inputs.parameters.{res.gpu_parameter}}}}}"
        resources["requests"][res.gpu_resource] = count
        resources["limits"][res.gpu_resource] = count
    mounts = [{"name": "in", "mountPath": in_dir}, {"name": "out", "mountPath": out_dir}]
    volumes: list[dict[str, Any]] = [{"name": "in", "emptyDir": {}}, {"name": "out", "emptyDir": {}}]
    if res.shm_size:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm_size}})
    fetch_args = ["fetch"]
    for item in stage.inputs:
        fetch_args += ["--key", artifacts.artifact_key(prefix, run, item.stage, item.artifact),
                       "--out", f"{in_dir}/{item.name}"]
    init = [{
        "name": "fetch-inputs",
        "image": stage.image,
        "command": ["python", "-m", FETCH_MODULE],
        "args": fetch_args,
        "env": store_env,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "volumeMounts": [{"name": "in", "mountPath": in_dir}],
    }] if stage.inputs else []
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "initContainers": init,
        "containers": [{
            "name": CONTAINER,
            "image": stage.image,
            "command": list(stage.command[:3]),
            "args": args,
            "env": env,
            "ports": [{"name": "collective", "containerPort": WORKER_PORT}],
            "resources": resources,
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    }
    if not init:
        del pod_spec["initContainers"]
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = [
            {k: v for k, v in {"key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect}.items()
             if v is not None}
            for t in res.tolerations
        ]
    job_spec = {
        "parallelism": stage.nodes,
        "completions": stage.nodes,
        "completionMode": "Indexed",  # JOB_COMPLETION_INDEX in every pod, and the stable hostnames
        "backoffLimit": 0,  # one worker lost breaks the collectives: JobSet restarts them all
        "activeDeadlineSeconds": stage.deadline_seconds,
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"generateName": generate_name(stage), "labels": dict(labels)},
        "spec": {
            "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
            "failurePolicy": {"maxRestarts": stage.retry.limit if stage.retry else 0},
            "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1, "template": {"spec": job_spec}}],
        },
    }
