"""The Argo engine: the pipeline declaration as a Hera WorkflowTemplate and a Workflow that uses it.

The WorkflowTemplate is what GitOps commits and ``argo submit --from workflowtemplate/...`` runs: one
per machine type (``cvat-argo-gpu-4``), because the training pod's node selector, tolerations and
resources belong to the machine, not to a run. Everything that varies per run (data, model,
arguments, GPU count) is a workflow parameter. The Workflow built for a request only references the
template and passes the request's values.

Artifacts are key-only S3 artifacts resolved through ``artifactRepositoryRef``: endpoint, bucket and
credentials live in the cluster (ConfigMap + Secret), never here. Keys follow
``<output-prefix>/<workflow name>/<stage>/<artifact>``, and folders are stored unarchived.
"""

from __future__ import annotations

import json
from dataclasses import replace

from hera.workflows import (
    DAG,
    Artifact,
    ConfigMapEnv,
    Container,
    EmptyDirVolume,
    NoneArchiveStrategy,
    Parameter,
    Resource,
    Resources,
    RetryStrategy,
    S3Artifact,
    SecretEnv,
    Task,
    UserContainer,
    Workflow,
    WorkflowTemplate,
)
from hera.workflows.models import (
    ArtifactRepositoryRef,
    Backoff,
    ContainerPort,
    LabelValueFrom,
    PodGC,
    TTLStrategy,
    WorkflowMetadata,
    WorkflowTemplateRef,
)
from hera.workflows.models import Toleration as ModelToleration

from .. import __version__
from ..errors import RequestError
from ..request.catalog import Catalog, ResolvedRequest, load_catalog
from ..request.spec import TrainingRequest
from . import artifacts, jobset
from .pipeline import PLACEHOLDER, TRANSIENT_EXIT_CODE, ArtifactInput, Pipeline, Stage, build_pipeline

IN_DIR = "/mnt/in"
OUT_DIR = "/mnt/out"
ENTRYPOINT = "pipeline"
TENSORBOARD_PORT = 6006

# Retry a pod that errored (evicted, node lost) or a step that said its failure was transient.
RETRY_EXPRESSION = (
    f'lastRetry.status == "Error" or '
    f'(lastRetry.status == "Failed" and asInt(lastRetry.exitCode) == {TRANSIENT_EXIT_CODE})'
)
PREFIX_VARIABLE = "{{workflow.parameters.output-prefix}}"
_RUN_VARIABLES = {"name": "{{workflow.name}}", "status": "{{workflow.status}}", "failures": "{{workflow.failures}}"}

APP_LABELS = {
    "app.kubernetes.io/name": "cvat-argo",
    "app.kubernetes.io/part-of": "cvat-argo",
    "app.kubernetes.io/component": "training-pipeline",
    "app.kubernetes.io/version": __version__,
    "app.kubernetes.io/managed-by": "cvat-argo",
}
TASK_ID_LABEL = "cvat-argo/task-id"
MODEL_LABEL = "cvat-argo/model"
MACHINE_LABEL = "cvat-argo/machine"

POD_GC = PodGC(strategy="OnPodSuccess")  # failed pods stay for `kubectl logs` until the TTL below
TTL = TTLStrategy(seconds_after_success=3 * 24 * 3600, seconds_after_failure=7 * 24 * 3600)


def template_name(pipeline: Pipeline) -> str:
    """``cvat-argo-<machine>``; a model with images of its own gets a template of its own."""
    resolved = pipeline.resolved
    name = f"cvat-argo-{resolved.machine.name}"
    if pipeline.own_images:
        name += f"-{resolved.model.name}"
    return name


def argo_value(text: str) -> str:
    """A declared argument with Argo's variables and the container's artifact paths filled in."""

    def fill(match) -> str:
        kind, name = match.group(1), match.group(2)
        if kind == "param":
            return f"{{{{inputs.parameters.{name}}}}}"
        if kind == "input":
            return f"{IN_DIR}/{name}"
        if kind == "output":
            return f"{OUT_DIR}/{name}"
        return _RUN_VARIABLES[name]

    return PLACEHOLDER.sub(fill, text)


def container_args(stage: Stage) -> list[str]:
    return [argo_value(arg) for arg in stage.args]


def artifact_key(stage: Stage, artifact: str) -> str:
    """The artifact's key with Argo's variables for the prefix and the run (the workflow's name)."""
    return artifacts.artifact_key(PREFIX_VARIABLE, _RUN_VARIABLES["name"], stage.name, artifact)


def _env(stage: Stage) -> list[SecretEnv | ConfigMapEnv]:
    env: list[SecretEnv | ConfigMapEnv] = []
    for var in stage.env:
        if var.source == "secret":
            env.append(SecretEnv(name=var.name, secret_name=var.object_name, secret_key=var.key, optional=True))
        else:
            env.append(ConfigMapEnv(name=var.name, config_map_name=var.object_name, config_map_key=var.key,
                                    optional=True))
    return env


def _retry(stage: Stage) -> RetryStrategy | None:
    if stage.retry is None:
        return None
    retry = stage.retry
    return RetryStrategy(
        limit=str(retry.limit),
        retry_policy="Always",
        expression=RETRY_EXPRESSION,
        backoff=Backoff(duration=retry.backoff, factor=str(retry.factor), max_duration=retry.max_backoff),
    )


def _gpu_patch(stage: Stage) -> str | None:
    """Resource counts cannot be workflow variables, but a pod spec patch can carry one."""
    gpus = stage.resources.gpu_parameter
    if gpus is None:
        return None
    count = f"{{{{inputs.parameters.{gpus}}}}}"
    resources = {"limits": {stage.resources.gpu_resource: count}, "requests": {stage.resources.gpu_resource: count}}
    return json.dumps({"containers": [{"name": "main", "resources": resources}]}, sort_keys=True)


def _tensorboard(stage: Stage) -> list[UserContainer] | None:
    if stage.tensorboard_logdir is None:
        return None
    logdir = argo_value(stage.tensorboard_logdir)
    return [
        UserContainer(
            name="tensorboard",
            image=stage.image,
            command=["tensorboard"],
            args=["--logdir", logdir, "--bind_all", "--port", str(TENSORBOARD_PORT)],
            ports=[ContainerPort(container_port=TENSORBOARD_PORT, name="tensorboard")],
            mirror_volume_mounts=True,
            resources=Resources(cpu_request="100m", memory_request="512Mi", memory_limit="1Gi").build(),
        )
    ]


def stage_container(stage: Stage, *, tensorboard: bool = True) -> Container:
    """One container template per stage: same command and arguments as the local engine runs."""
    res = stage.resources
    volumes = [EmptyDirVolume(name="out", mount_path=OUT_DIR)]
    if res.shm_size:
        volumes.append(EmptyDirVolume(name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=res.shm_size))
    return Container(
        name=stage.name,
        image=stage.image,
        command=list(stage.command[:3]),
        args=container_args(stage),
        inputs=[Parameter(name=p) for p in stage.parameters]
        + [Artifact(name=a.name, path=f"{IN_DIR}/{a.name}") for a in stage.inputs],
        outputs=[
            S3Artifact(name=name, path=f"{OUT_DIR}/{name}", key=artifact_key(stage, name),
                       archive=NoneArchiveStrategy())
            for name in stage.outputs
        ],
        resources=Resources(cpu_request=res.cpu, memory_request=res.memory, memory_limit=res.memory),
        pod_spec_patch=_gpu_patch(stage),
        node_selector=dict(res.node_selector) or None,
        tolerations=[
            ModelToleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect) for t in res.tolerations
        ] or None,
        env=_env(stage) or None,
        volumes=volumes,
        retry_strategy=_retry(stage),
        active_deadline_seconds=str(stage.deadline_seconds),
        sidecars=_tensorboard(stage) if tensorboard else None,
    )


def stage_resource(stage: Stage) -> Resource:
    """A multi-node stage: an Argo resource template that creates and watches its JobSet (engines/jobset.py)."""
    labels = {**APP_LABELS, "cvat-argo/workflow": _RUN_VARIABLES["name"], "cvat-argo/stage": stage.name}
    manifest = jobset.jobset(stage, args=container_args(stage), in_dir=IN_DIR, out_dir=OUT_DIR,
                             prefix=PREFIX_VARIABLE, run=_RUN_VARIABLES["name"], labels=labels)
    return Resource(
        name=stage.name,
        action="create",
        set_owner_reference=True,  # deleted with the workflow
        manifest=jobset.dump_manifest(manifest),
        success_condition=jobset.SUCCESS_CONDITION,
        failure_condition=jobset.FAILURE_CONDITION,
        inputs=[Parameter(name=p) for p in stage.parameters],
    )


def _input_argument(pipeline: Pipeline, item: ArtifactInput) -> Artifact:
    """An input artifact of a DAG task: the producing task's output, or, when a JobSet produced it (no Argo
    output artifact), the same key in the store as a key-only S3 artifact."""
    producer = pipeline.stage(item.stage)
    if producer.nodes > 1:
        key = jobset.input_key(producer, item.artifact, PREFIX_VARIABLE, _RUN_VARIABLES["name"])
        return S3Artifact(name=item.name, key=key)
    return Artifact(name=item.name, from_=f"{{{{tasks.{item.stage}.outputs.artifacts.{item.artifact}}}}}")


def _dag(pipeline: Pipeline, containers: dict[str, Container | Resource]) -> DAG:
    tasks = []
    for stage in pipeline.stages:
        arguments: list[Parameter | Artifact] = [
            Parameter(name=p, value=f"{{{{workflow.parameters.{p}}}}}") for p in stage.parameters
        ]
        if stage.nodes == 1:  # a JobSet's pods fetch their inputs from the store themselves (engines/jobset.py)
            arguments += [_input_argument(pipeline, a) for a in stage.inputs]
        tasks.append(Task(name=stage.name, template=containers[stage.name], arguments=arguments or None,
                          depends=" && ".join(stage.depends) or None))
    return DAG(name=ENTRYPOINT, tasks=tasks)


def cluster_pipeline(request: TrainingRequest | ResolvedRequest, catalog: Catalog | None = None) -> Pipeline:
    """The request's pipeline, refusing what a cluster cannot run (a dataset on this machine's disk)."""
    source = (request.request if isinstance(request, ResolvedRequest) else request).source
    if source.kind == "path":
        raise RequestError(
            f"dataset source {source.uri!r} is a local path, which the cluster cannot read: upload the "
            "export (s3://bucket/key or an https:// URL) or use a CVAT task id; or run it here with "
            "`python -m cvat_argo run`"
        )
    return build_pipeline(request, catalog)


def build_workflow_template(request: TrainingRequest, catalog: Catalog | None = None) -> WorkflowTemplate:
    """The reusable WorkflowTemplate for the request's machine type (and model images)."""
    pipeline = build_pipeline(request, catalog)
    return workflow_template_for(pipeline, catalog)


def template_models(pipeline: Pipeline, catalog: Catalog | None = None) -> list[str]:
    """The models the pipeline's template runs: its ``model`` parameter's choices in the Argo UI.

    A template with images of its own runs only its model. A machine type's template runs every model
    that fits the machine and brings no images (those get their own templates), plus the pipeline's
    own model, so that a template installed for a model from another catalog accepts it.
    """
    resolved = pipeline.resolved
    if pipeline.own_images:
        return [resolved.model.name]
    catalog = catalog or load_catalog()
    fits = [entry.name for entry in catalog.models.values() if entry.min_gpus <= resolved.machine.gpus
            and not build_pipeline(replace(resolved, model=entry)).own_images]
    first = [catalog.default_model] if catalog.default_model in fits else []
    return list(dict.fromkeys([*first, *fits, resolved.model.name]))


def _template_parameters(pipeline: Pipeline, catalog: Catalog | None) -> list[Parameter]:
    """The template's workflow parameters with their defaults; ``model`` and ``gpus`` carry an ``enum``
    (the Argo UI offers a drop-down; recent Argo versions refuse a value outside it)."""
    resolved = pipeline.resolved
    models = template_models(pipeline, catalog)
    model_default = next(p.default for p in pipeline.parameters if p.name == "model")
    # A template whose models exclude the catalog's default (a model with images of its own) defaults to
    # the pipeline's model, with its catalog entry: a run started from the UI then needs no model-spec.
    own_default = model_default not in models
    parameters = []
    for p in pipeline.parameters:
        value, enum = p.default, None
        if p.name == "model":
            value, enum = (resolved.model.name if own_default else p.default), models
        elif p.name == "model-spec" and own_default:
            value = p.value
        elif p.name == "gpus":
            enum = [str(n) for n in range(1, resolved.machine.gpus + 1)]
        parameters.append(Parameter(name=p.name, value=value, description=p.description, enum=enum))
    return parameters


def workflow_template_for(pipeline: Pipeline, catalog: Catalog | None = None) -> WorkflowTemplate:
    """The pipeline's WorkflowTemplate; ``catalog`` (default: the built-in one, or ``$CVAT_ARGO_CATALOG``)
    lists the models its ``model`` parameter offers."""
    resolved = pipeline.resolved
    request = resolved.request
    containers: dict[str, Container | Resource] = {
        s.name: stage_resource(s) if s.nodes > 1 else stage_container(s, tensorboard=request.tensorboard)
        for s in pipeline.all_stages()
    }
    total_deadline = sum(s.deadline_seconds for s in pipeline.stages)
    return WorkflowTemplate(
        name=template_name(pipeline),
        labels={**APP_LABELS, MACHINE_LABEL: resolved.machine.name},
        annotations={
            "workflows.argoproj.io/description": (
                f"cvat-argo {__version__}: CVAT annotations -> trained detector -> pre-annotations, on machine "
                f"type {resolved.machine.name} ({resolved.machine.description})."
            ),
        },
        entrypoint=ENTRYPOINT,
        on_exit=pipeline.exit_stage.name,
        arguments=_template_parameters(pipeline, catalog),
        templates=[_dag(pipeline, containers), *containers.values()],
        service_account_name=request.service_account,
        artifact_repository_ref=ArtifactRepositoryRef(
            config_map=request.artifact_repository.config_map, key=request.artifact_repository.key
        ),
        active_deadline_seconds=total_deadline,
        pod_gc=POD_GC,
        ttl_strategy=TTL,
        archive_logs=True,
        workflow_metadata=WorkflowMetadata(
            labels=APP_LABELS,
            labels_from={
                TASK_ID_LABEL: LabelValueFrom(expression="workflow.parameters['cvat-task-id']"),
                MODEL_LABEL: LabelValueFrom(expression="workflow.parameters['model']"),
            },
        ),
    )


def build_workflow(request: TrainingRequest, catalog: Catalog | None = None) -> Workflow:
    """A Workflow that runs the request through its machine type's WorkflowTemplate."""
    pipeline = cluster_pipeline(request, catalog)
    return workflow_for(pipeline)


def workflow_for(pipeline: Pipeline) -> Workflow:
    resolved = pipeline.resolved
    request = resolved.request
    labels = {**APP_LABELS, MODEL_LABEL: resolved.model.name, MACHINE_LABEL: resolved.machine.name, **request.labels}
    if request.source.cvat_task_id is not None:
        labels[TASK_ID_LABEL] = str(request.source.cvat_task_id)
    return Workflow(
        generate_name=workflow_generate_name(resolved),
        labels=labels,
        workflow_template_ref=WorkflowTemplateRef(name=template_name(pipeline)),
        arguments=[Parameter(name=name, value=value) for name, value in pipeline.parameter_values().items()],
    )


def workflow_generate_name(resolved: ResolvedRequest) -> str:
    task = resolved.request.source.cvat_task_id
    stem = f"cvat-argo-{f'task{task}-' if task is not None else ''}{resolved.model.name}"
    return stem[:57].rstrip("-") + "-"
