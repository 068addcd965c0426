"""What a user asks for: the training request and the arguments they type.

The arguments keep the form CVAT users already know from Onepanel,
``epochs=100,batch_size=24,initial_learning_rate=0.004,num_clones=4``, and also parse from a dict or
YAML. Parsing is strict, because a silently ignored ``epoch=5`` costs a GPU-day: an unknown key
names itself and the closest known key, a bad value names the key and the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ArgumentError, RequestError
from ..suggest import unknown_name_message
from .bounded_yaml import load_bounded_yaml

DEFAULT_MODEL = "ssd-mobilenet-v2-coco"
DEFAULT_MACHINE = "gpu-1"
DEFAULT_OUTPUT_PREFIX = "cvat-argo"

# Keys Onepanel accepted that mean something else here: say so instead of "unknown".
_RETIRED_KEYS = {
    "num_steps": "num_steps is not supported: epochs are real passes over the training images here, "
    "the number of steps is derived from them",
    "num-steps": "num-steps is not supported: use epochs (real passes over the training images)",
}


def batch_split_problem(batch_size: int, num_clones: int, nodes: int = 1) -> str | None:
    """The one rule (and wording) for splitting a global batch over replicas: each GPU gets the same share.

    On a multi-node machine type every node runs ``num_clones`` replicas: the batch splits ``num_clones * nodes`` ways.
    """
    replicas = num_clones * nodes
    if batch_size % replicas:
        where = f"num_clones={num_clones} GPUs"
        if nodes > 1:
            where += f" on each of {nodes} nodes ({replicas} replicas)"
        return f"batch_size={batch_size} cannot be split evenly over {where}: use a multiple of {replicas}"
    return None


class Arguments(BaseModel):
    """Training arguments. Unset fields (None) mean: the model's default for this dataset size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int | None = Field(
        None, ge=1, le=10_000,
        description="passes over the training images (not steps); default depends on the model and dataset size",
    )
    batch_size: int | None = Field(
        None, ge=1, le=4096, description="global batch size, split evenly over num_clones GPUs",
    )
    initial_learning_rate: float | None = Field(
        None, gt=0.0, le=10.0, description="peak learning rate after warm-up; the model's default is tuned",
    )
    num_clones: int | None = Field(
        None, ge=1, le=16, description="GPUs used by the training pod; default: all GPUs of the machine type",
    )
    input_size: int | None = Field(
        None, ge=64, le=2048, description="square model input in pixels; default from the model catalog",
    )

    @model_validator(mode="after")
    def _batch_divides_over_clones(self) -> Arguments:
        if self.batch_size is not None and self.num_clones is not None:
            problem = batch_split_problem(self.batch_size, self.num_clones)
            if problem:
                raise ValueError(problem)
        return self

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | Arguments | None) -> Arguments:
        """Parse ``"epochs=100,batch_size=24"``, a YAML mapping, a dict, or pass Arguments through."""
        if value is None:
            return cls()
        if isinstance(value, Arguments):
            return value
        if isinstance(value, Mapping):
            return cls._from_mapping(value)
        text = value.strip()
        if not text:
            return cls()
        looks_like_yaml = "\n" in text or (":" in text and "=" not in text)
        if not looks_like_yaml:
            return cls._from_mapping(_split_cvat_string(text))
        loaded = load_bounded_yaml(text, "the training arguments", error=ArgumentError, what="the arguments",
                                   max_bytes=64 * 1024, max_nodes=1000, max_aliases=20, max_depth=8)
        if not isinstance(loaded, Mapping):
            raise ArgumentError(f"arguments YAML must be a mapping of key: value, got {type(loaded).__name__}")
        return cls._from_mapping(loaded)

    @classmethod
    def _from_mapping(cls, mapping: Mapping[str, Any]) -> Arguments:
        problems: list[str] = []
        for key in mapping:
            if not isinstance(key, str):
                problems.append(f"argument names are strings, got {key!r}")
            elif key in _RETIRED_KEYS:
                problems.append(_RETIRED_KEYS[key])
            elif key not in cls.model_fields:
                problems.append(unknown_name_message("argument", key, cls.model_fields))
        if problems:
            raise ArgumentError("; ".join(problems))
        try:
            return cls.model_validate(dict(mapping))
        except ValidationError as exc:
            raise ArgumentError(_describe_validation_error(exc, mapping)) from None

    def to_string(self) -> str:
        """The canonical ``key=value,...`` form, in field order, without unset keys."""
        return ",".join(f"{key}={_format_value(value)}" for key, value in self.set_values().items())

    def set_values(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}

    def __str__(self) -> str:
        return self.to_string()


def _split_cvat_string(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            continue
        key, sep, value = piece.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ArgumentError(f"argument {piece!r} is not key=value (example: epochs=100,batch_size=24)")
        if not value:
            raise ArgumentError(f"argument {key} has no value: write {key}=VALUE or leave it out")
        if key in pairs:
            raise ArgumentError(f"argument {key} is given twice ({key}={pairs[key]} and {key}={value})")
        pairs[key] = value
    return pairs


def _format_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _describe_validation_error(exc: ValidationError, given: Mapping[str, Any]) -> str:
    problems = []
    for error in exc.errors():
        if not error["loc"]:  # a model-level rule (batch_size vs num_clones) already reads well
            problems.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        key = str(error["loc"][0])
        field = Arguments.model_fields[key]
        problems.append(f"argument {key}={given.get(key)} is invalid: {error['msg'].lower()} ({field.description})")
    return "; ".join(problems)


class DatasetSource(BaseModel):
    """Where the annotated images come from: a CVAT export (path or URL) or a live CVAT task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str | None = Field(None, description="a CVAT export: local path, s3://bucket/key or https:// URL")
    cvat_task_id: int | None = Field(None, ge=1, description="a task on the CVAT server named by CVAT_HOST")

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetSource:
        if (self.uri is None) == (self.cvat_task_id is None):
            raise ValueError("give exactly one dataset source: an export (path, s3:// or https:// URL) or a task id")
        return self

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        uri = uri.strip()
        if not uri:
            raise ValueError("the dataset source is empty")
        scheme = urlparse(uri).scheme
        if len(scheme) > 1 and scheme not in ("s3", "https", "http", "file"):
            raise ValueError(
                f"dataset source {uri!r} has scheme {scheme!r}: use a local path, s3://bucket/key, an https:// URL "
                "or a CVAT task id"
            )
        if scheme == "s3" and not urlparse(uri).netloc:
            raise ValueError(f"dataset source {uri!r} names no bucket: write s3://bucket/path/to/export.zip")
        return uri

    @property
    def kind(self) -> Literal["cvat-task", "s3", "url", "path"]:
        if self.cvat_task_id is not None:
            return "cvat-task"
        scheme = urlparse(self.uri or "").scheme
        if scheme == "s3":
            return "s3"
        if scheme in ("http", "https"):
            return "url"
        return "path"

    def describe(self) -> str:
        return f"CVAT task {self.cvat_task_id}" if self.cvat_task_id is not None else str(self.uri)


_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


class ArtifactRepository(BaseModel):
    """The Argo artifact repository the workflow's key-only artifacts resolve through.

    Endpoint, bucket and credentials live in the cluster (the ConfigMap and a Secret), never in the
    rendered YAML: this only names the ConfigMap and the key inside it. The default is a ConfigMap of
    our own (``render`` writes it), not Argo's ``artifact-repositories``, which a cluster may already
    hold and which ``kubectl apply`` would replace; name that one here to use it instead.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    config_map: str = "cvat-argo-artifact-repositories"
    key: str = "cvat-argo"


class TrainingRequest(BaseModel):
    """Everything one run needs: which data, which model, on what machine, with which arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: DatasetSource
    model: str = DEFAULT_MODEL
    machine: str = DEFAULT_MACHINE
    arguments: Arguments = Field(default_factory=Arguments)
    base_model_uri: str | None = Field(
        None, description="override the catalog's base checkpoint (https://, s3://, gs://, a path, an earlier run)",
    )
    base_model_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    artifact_repository: ArtifactRepository = Field(default_factory=ArtifactRepository)
    output_prefix: str = DEFAULT_OUTPUT_PREFIX
    service_account: str = "cvat-argo"
    tensorboard: bool = True
    train_timeout_hours: float = Field(48.0, gt=0, le=24 * 14)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("arguments", mode="before")
    @classmethod
    def _parse_arguments(cls, value: Any) -> Arguments:
        return Arguments.parse(value)

    @field_validator("output_prefix")
    @classmethod
    def _clean_prefix(cls, prefix: str) -> str:
        prefix = prefix.strip("/")
        if not _PREFIX_RE.match(prefix) or ".." in prefix.split("/"):
            raise ValueError(
                f"output prefix {prefix!r} must be path segments of letters, digits, '.', '_' or '-' "
                "(e.g. team/cvat-argo)"
            )
        return prefix

    @classmethod
    def create(
        cls,
        *,
        source: str | None = None,
        task_id: int | None = None,
        args: str | Mapping[str, Any] | Arguments | None = None,
        **fields: Any,
    ) -> TrainingRequest:
        """Friendly constructor: ``TrainingRequest.create(task_id=42, args="epochs=10,batch_size=8")``.

        Raises :class:`RequestError` or :class:`ArgumentError` with a readable message.
        """
        arguments = Arguments.parse(args)
        try:
            return cls(source=DatasetSource(uri=source, cvat_task_id=task_id), arguments=arguments, **fields)
        except ValidationError as exc:
            raise RequestError(_describe_request_error(exc)) from None


def _describe_request_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "request"
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return "; ".join(problems)
