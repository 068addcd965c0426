"""The pipeline, declared once: five stages and an exit step, with no engine in sight.

Each stage is the command ``python -m cvat_argo.steps.<module>`` with its arguments, the workflow
parameters it reads, its input and output artifacts, resources, retries and deadline. The Argo
engine (:mod:`cvat_argo.engines.argo`) turns this into a WorkflowTemplate; the local engine runs the same
commands as subprocesses. Arguments use neutral placeholders that each engine fills in:

``{param:NAME}``   a workflow parameter (Argo: ``{{inputs.parameters.NAME}}``)
``{input:NAME}``   the path of an input artifact (Argo: ``/mnt/in/NAME``)
``{output:NAME}``  the path of an output artifact (Argo: ``/mnt/out/NAME``)
``{run:name}``     the run's id (Argo: ``{{workflow.name}}``); also ``{run:status}``, ``{run:failures}``
                   in the exit step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import TransientError
from ..request.catalog import Catalog, ResolvedRequest, resolve_request
from ..request.machines import Toleration
from ..request.spec import TrainingRequest
from . import artifacts as a
from .images import EXIT_HANDLER_IMAGE, image_reference

#: A step exits with this code (EX_TEMPFAIL) when it failed on something worth retrying: a network
#: error, a 5xx from S3 or CVAT. Any other non-zero code is a permanent failure and is not retried.
TRANSIENT_EXIT_CODE = TransientError.exit_code

PLACEHOLDER = re.compile(r"\{(param|input|output|run):([a-z0-9-]+)\}")
RUN_FIELDS = ("name", "status", "failures")


@dataclass(frozen=True)
class Parameter:
    """A workflow parameter. ``template_default`` is what a reusable template offers when none is given."""

    name: str
    value: str
    description: str
    template_default: str | None = None

    @property
    def default(self) -> str:
        return self.value if self.template_default is None else self.template_default


@dataclass(frozen=True)
class ArtifactInput:
    """Input artifact ``name`` of a stage: output ``artifact`` of stage ``stage``."""

    name: str
    stage: str
    artifact: str


@dataclass(frozen=True)
class EnvVar:
    """An environment variable read from a cluster Secret or ConfigMap (optional: the pod starts without it).

    The local engine passes its own environment through instead: the variable names are the contract.
    """

    name: str
    source: str  # "secret" or "config-map"
    object_name: str
    key: str


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str
    gpu_parameter: str | None = None  # the workflow parameter that holds the GPU count
    gpu_resource: str = "nvidia.com/gpu"
    shm_size: str | None = None  # a memory-backed /dev/shm of this size
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()


@dataclass(frozen=True)
class Retry:
    """Retry when the pod errored (eviction, node loss) or the step exited TRANSIENT_EXIT_CODE."""

    limit: int
    backoff: str = "30s"
    factor: int = 2
    max_backoff: str = "10m"


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: everything an engine needs to know about it, and nothing engine-specific."""

    name: str
    module: str
    description: str
    image_name: str  # the folder under containers/ that builds the stage's default image
    image: str  # the image reference the stage runs (the default, or the model's own)
    args: tuple[str, ...]
    resources: Resources
    deadline_seconds: int
    inputs: tuple[ArtifactInput, ...] = ()
    outputs: tuple[str, ...] = ()
    retry: Retry | None = None
    env: tuple[EnvVar, ...] = ()
    tensorboard_logdir: str | None = None  # an {output:...} path whose logs a TensorBoard sidecar serves
    resumable: bool = False  # a half-finished output is kept: the step continues from it (checkpoints)
    nodes: int = 1  # pods that run the step together (a multi-node machine type): the Argo engine makes a JobSet

    @property
    def default_image(self) -> str:
        return image_reference(self.image_name)

    @property
    def command(self) -> tuple[str, ...]:
        return ("python", "-m", self.module, *self.args)

    @property
    def depends(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(artifact.stage for artifact in self.inputs))

    @property
    def parameters(self) -> tuple[str, ...]:
        """Workflow parameters the stage reads, in order of first use (arguments, then resources)."""
        names = [m.group(2) for arg in self.args for m in PLACEHOLDER.finditer(arg) if m.group(1) == "param"]
        if self.resources.gpu_parameter:
            names.append(self.resources.gpu_parameter)
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Pipeline:
    name: str
    parameters: tuple[Parameter, ...]
    stages: tuple[Stage, ...]
    exit_stage: Stage
    resolved: ResolvedRequest = field(repr=False)

    def stage(self, name: str) -> Stage:
        for stage in (*self.stages, self.exit_stage):
            if stage.name == name:
                return stage
        raise KeyError(name)

    def producer(self, artifact: str) -> Stage:
        """The stage whose output ``artifact`` is."""
        for stage in self.all_stages():
            if artifact in stage.outputs:
                return stage
        raise KeyError(artifact)

    @property
    def own_images(self) -> bool:
        """Whether the model runs any stage in an image other than the default one."""
        return any(stage.image != stage.default_image for stage in self.stages)

    def parameter_values(self) -> dict[str, str]:
        return {p.name: p.value for p in self.parameters}

    def topological_order(self) -> list[Stage]:
        """Stages in an order where each comes after the stages it depends on (declaration order on ties)."""
        done: list[str] = []
        pending = list(self.stages)
        while pending:
            ready = next(s for s in pending if all(d in done for d in s.depends))
            done.append(ready.name)
            pending.remove(ready)
        return [self.stage(name) for name in done]

    def all_stages(self) -> Iterator[Stage]:
        yield from self.stages
        yield self.exit_stage


# Where the steps find the store and CVAT: names of the cluster objects and of the variables.
STORE_CONFIG_MAP = "cvat-argo-store"
STORE_SECRET = "cvat-argo-s3"
CVAT_SECRET = "cvat-credentials"

STORE_ENV = (
    EnvVar("CVAT_ARGO_STORE", "config-map", STORE_CONFIG_MAP, "store"),
    EnvVar("AWS_ENDPOINT_URL", "config-map", STORE_CONFIG_MAP, "endpoint"),
    EnvVar("AWS_REGION", "config-map", STORE_CONFIG_MAP, "region"),
    EnvVar("AWS_ACCESS_KEY_ID", "secret", STORE_SECRET, "accesskey"),
    EnvVar("AWS_SECRET_ACCESS_KEY", "secret", STORE_SECRET, "secretkey"),
)
# Air-gapped clusters: s3://bucket/prefix/ holding the public base checkpoints under <host>/<path>
# (cvat_argo.steps.pull); an optional key like the others, so a ConfigMap without it changes nothing.
MODEL_MIRROR_ENV = EnvVar("CVAT_ARGO_MODEL_MIRROR", "config-map", STORE_CONFIG_MAP, "model-mirror")
CVAT_ENV = (
    EnvVar("CVAT_HOST", "secret", CVAT_SECRET, "host"),
    EnvVar("CVAT_USERNAME", "secret", CVAT_SECRET, "username"),
    EnvVar("CVAT_PASSWORD", "secret", CVAT_SECRET, "password"),
    EnvVar("CVAT_ACCESS_TOKEN", "secret", CVAT_SECRET, "token"),
    # the organization and TLS settings of cvat.connection (all optional: a missing key is no setting)
    EnvVar("CVAT_ORG", "secret", CVAT_SECRET, "org"),
    EnvVar("CVAT_CA_BUNDLE", "secret", CVAT_SECRET, "ca-bundle"),  # the CA's PEM text
    EnvVar("CVAT_INSECURE", "secret", CVAT_SECRET, "insecure"),
)


def build_pipeline(request: TrainingRequest | ResolvedRequest, catalog: Catalog | None = None) -> Pipeline:
    """The pipeline for one request, checked against the catalog (refuses e.g. NAS-FPN on one GPU).

    A request that was resolved already (the CLI resolves before anything else happens) is used as it is.
    """
    resolved = resolve_request(request, catalog)
    model, machine = resolved.model, resolved.machine
    io_retry = Retry(limit=4)

    def image(stage: str, image_name: str) -> dict[str, str]:
        return {"image_name": image_name, "image": model.images.get(stage) or image_reference(image_name)}

    parameters = _parameters(resolved)
    stages = (
        Stage(
            name=a.CREATE_DATASET,
            module="cvat_argo.steps.dataset",
            description="CVAT export or task -> TFRecord shards, label map, list of images to pre-annotate",
            **image(a.CREATE_DATASET, "dataset"),
            args=("--source", "{param:source}", "--cvat-task-id", "{param:cvat-task-id}",
                  "--val-fraction", "{param:val-fraction}", "--model", "{param:model}",
                  "--model-spec", "{param:model-spec}", "--out", f"{{output:{a.DATASET}}}"),
            outputs=(a.DATASET,),
            resources=Resources(cpu="2", memory="4Gi"),
            retry=io_retry,
            deadline_seconds=4 * 3600,
            env=STORE_ENV + CVAT_ENV,
        ),
        Stage(
            name=a.PULL_BASE_MODEL,
            module="cvat_argo.steps.pull",
            description="fetch the base checkpoint (URL, S3, GCS, earlier run), verify its digest, cache it",
            **image(a.PULL_BASE_MODEL, "pull"),
            args=("--model", "{param:model}", "--model-spec", "{param:model-spec}",
                  "--uri", "{param:base-model-uri}", "--sha256", "{param:base-model-sha256}",
                  "--out", f"{{output:{a.BASE_MODEL}}}"),
            outputs=(a.BASE_MODEL,),
            resources=Resources(cpu="1", memory="2Gi"),
            retry=io_retry,
            deadline_seconds=2 * 3600,
            env=(*STORE_ENV, MODEL_MIRROR_ENV),
        ),
        Stage(
            name=a.TRAIN,
            module="cvat_argo.steps.train",
            description="train the detector with TF Model Garden on num_clones GPUs, evaluate, checkpoint",
            **image(a.TRAIN, "train"),
            args=("--model", "{param:model}", "--model-spec", "{param:model-spec}", "--args", "{param:args}",
                  "--dataset", f"{{input:{a.DATASET}}}", "--base-model", f"{{input:{a.BASE_MODEL}}}",
                  "--resume-key", a.checkpoint_key("{param:output-prefix}", "{run:name}"),
                  "--out", f"{{output:{a.MODEL}}}"),
            inputs=(ArtifactInput(a.DATASET, a.CREATE_DATASET, a.DATASET),
                    ArtifactInput(a.BASE_MODEL, a.PULL_BASE_MODEL, a.BASE_MODEL)),
            outputs=(a.MODEL,),
            resources=Resources(
                cpu=machine.cpu,
                memory=machine.memory,
                gpu_parameter="gpus" if machine.gpus else None,
                gpu_resource=machine.gpu_resource,
                shm_size=machine.shm_size,
                node_selector=tuple(sorted(machine.node_selector.items())),
                tolerations=machine.tolerations,
            ),
            # Pod errors (eviction, node loss) resume from the last checkpoint in the store.
            retry=Retry(limit=3, backoff="1m", max_backoff="15m"),
            deadline_seconds=int(resolved.request.train_timeout_hours * 3600),
            env=STORE_ENV,
            # Model Garden writes its TensorBoard runs (a.TRAIN_EVENTS, a.VALIDATION_EVENTS) into the model
            # folder itself: the sidecar serves that folder, so it shows both runs side by side.
            tensorboard_logdir=f"{{output:{a.MODEL}}}",
            resumable=True,  # an interrupted training continues from its newest checkpoint
            nodes=machine.nodes,  # MultiWorkerMirroredStrategy over the nodes (training/cluster.py)
        ),
        Stage(
            name=a.CONVERT,
            module="cvat_argo.steps.convert",
            description="export a SavedModel (and TFLite where the model allows), self-test it, write a model card",
            **image(a.CONVERT, "convert"),
            args=("--model", f"{{input:{a.MODEL}}}", "--dataset", f"{{input:{a.DATASET}}}",
                  "--out", f"{{output:{a.EXPORTED}}}"),
            inputs=(ArtifactInput(a.MODEL, a.TRAIN, a.MODEL), ArtifactInput(a.DATASET, a.CREATE_DATASET, a.DATASET)),
            outputs=(a.EXPORTED,),
            resources=Resources(cpu="4", memory="16Gi"),
            retry=Retry(limit=2),
            deadline_seconds=2 * 3600,
            env=STORE_ENV,
        ),
        Stage(
            name=a.PRE_ANNOTATE,
            module="cvat_argo.steps.annotate",
            description="detect objects on the unannotated images; CVAT XML, COCO JSON, and shapes in the CVAT task",
            **image(a.PRE_ANNOTATE, "annotate"),
            # the ledger of what earlier runs added to the task lives in the store beside the runs, so a
            # later run never re-adds what a reviewer deleted (cvat_argo.cvat.ledger)
            args=("--model", f"{{input:{a.EXPORTED}}}", "--dataset", f"{{input:{a.DATASET}}}",
                  "--cvat-task-id", "{param:cvat-task-id}", "--ledger", a.ledgers_root("{param:output-prefix}"),
                  "--run-id", "{run:name}", "--out", f"{{output:{a.ANNOTATIONS}}}"),
            inputs=(ArtifactInput(a.EXPORTED, a.CONVERT, a.EXPORTED),
                    ArtifactInput(a.DATASET, a.CREATE_DATASET, a.DATASET)),
            outputs=(a.ANNOTATIONS,),
            resources=Resources(cpu="4", memory="8Gi"),
            retry=Retry(limit=2),
            deadline_seconds=8 * 3600,
            env=STORE_ENV + CVAT_ENV,
        ),
    )
    exit_stage = Stage(
        name=a.RECORD_STATUS,
        module="cvat_argo.steps.status",
        description=f"record the run's final status and failures as {a.STATUS_FILE}",
        image_name=EXIT_HANDLER_IMAGE,
        image=image_reference(EXIT_HANDLER_IMAGE),
        args=("--run", "{run:name}", "--status", "{run:status}", "--failures", "{run:failures}",
              "--out", f"{{output:{a.STATUS}}}"),
        outputs=(a.STATUS,),
        resources=Resources(cpu="100m", memory="256Mi"),
        retry=Retry(limit=2, backoff="10s"),
        deadline_seconds=600,
    )
    return Pipeline(name="cvat-argo", parameters=parameters, stages=stages, exit_stage=exit_stage,
                    resolved=resolved)


def _parameters(resolved: ResolvedRequest) -> tuple[Parameter, ...]:
    request, model, machine = resolved.request, resolved.model, resolved.machine
    source = request.source
    parameters = [
        Parameter("source", source.uri or "", "CVAT export to train on: s3://bucket/key or https:// URL", ""),
        Parameter("cvat-task-id", str(source.cvat_task_id or ""),
                  "or a CVAT task id (server and credentials from the cvat-credentials Secret)", ""),
        Parameter("model", model.name, "model name from the catalog (python -m cvat_argo models)",
                  resolved.default_model),
        Parameter("model-spec", json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":")),
                  "the model's catalog entry as JSON; empty: the built-in entry named by model", ""),
        Parameter("args", resolved.arguments.to_string(),
                  "training arguments, e.g. epochs=100,batch_size=24,initial_learning_rate=0.004,num_clones=4", ""),
    ]
    if machine.gpus:
        parameters.append(Parameter("gpus", str(resolved.num_clones),
                                    f"GPUs for the training pod (num_clones), at most {machine.gpus}",
                                    str(machine.gpus)))
    parameters += [
        Parameter("base-model-uri", request.base_model_uri or "",
                  "base checkpoint override (https://, s3://, gs://, an earlier run); empty: the catalog's", ""),
        Parameter("base-model-sha256", request.base_model_sha256 or "", "expected sha256 of the base checkpoint", ""),
        Parameter("val-fraction", repr(request.val_fraction), "share of annotated images kept for validation",
                  "0.1"),
        Parameter("output-prefix", request.output_prefix,
                  "artifact keys are <output-prefix>/<workflow name>/<stage>/<artifact>"),
    ]
    return tuple(parameters)
