"""One model of the catalog: a name CVAT users know, mapped to a TF Model Garden experiment.

An entry carries everything the stages need to build, train and serve the model, so that adding a
model never needs code: the Model Garden experiment and the backbone and decoder that replace its
defaults, the input size, per-GPU batch size, learning rate, epochs by dataset size, the minimum
number of GPUs, the base checkpoint, and the image of each stage. Where Model Garden lacks the exact
backbone a seed name promises, ``stand_in`` says what is used instead and why.
"""

from __future__ import annotations

import typing
from typing import Any, Literal
from urllib.parse import urlparse

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..engines.artifacts import STAGE_NAMES

#: What a base checkpoint restores (``checkpoint.modules``); everything else starts fresh. The class head
#: is the layers whose shape depends on the class count (RetinaNet's ``head/_classifier``, Faster/Mask
#: R-CNN's ``detection_head/*/_classifier``, box regressor and mask regressor when they are per class):
#: a COCO detector's 91 classes never fit a task's labels, so 'all-but-class-head' is how a COCO-trained
#: detector starts. Applied by :mod:`cvat_argo.training.restore`.
RestoreMode = Literal["backbone", "backbone+decoder", "all-but-class-head", "all"]
RESTORE_MODES: dict[str, str] = {
    "backbone": "the backbone (an ImageNet classifier's weights); decoder and heads start fresh",
    "backbone+decoder": "the backbone and the feature pyramid; the heads start fresh",
    "all-but-class-head": "every layer the checkpoint has but the class head, which starts fresh",
    "all": "every layer, class head included (the same labels in the same order)",
}
assert tuple(RESTORE_MODES) == typing.get_args(RestoreMode)


class Checkpoint(BaseModel):
    """The base weights a run starts from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str | None = Field(
        None, description="https://, s3://, gs:// or a path; a tar archive or a checkpoint prefix. None: from scratch",
    )
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$",
        description="digest of the archive; None: not pinned (pull-base-model records the digest it saw)",
    )
    modules: RestoreMode = Field(
        "backbone",
        description="what to restore: " + "; ".join(f"{mode}: {what}" for mode, what in RESTORE_MODES.items()),
    )
    trained_on: str = Field("", description="what the weights were trained on, for the catalog table")
    max_bytes: int | None = Field(
        None, gt=0, strict=True,
        description="most bytes pull-base-model may download, and unpack, for these weights (each); None: 5 GiB",
    )

    @pydantic.model_serializer(mode="wrap")
    def _omit_unset_cap(self, handler: pydantic.SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Unset, the cap stays out of dumps: model-spec parameters and rendered templates keep their form.
        data = handler(self)
        if self.max_bytes is None:
            data.pop("max_bytes", None)
        return data

    @field_validator("uri")
    @classmethod
    def _supported_scheme(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        scheme = urlparse(uri).scheme
        if len(scheme) > 1 and scheme not in ("https", "http", "s3", "gs", "file"):
            raise ValueError(f"checkpoint uri {uri!r}: scheme {scheme!r} is not one of https, s3, gs, file or a path")
        return uri


class EpochRule(BaseModel):
    """``epochs`` for data sets with at most ``up_to_images`` training images (None: any size)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    up_to_images: int | None = Field(None, ge=1)
    epochs: int = Field(ge=1, le=10_000)


# Bounds of the free-form Model Garden configs (backbone, decoder): theirs are a few levels and keys.
FREE_FORM_MAX_DEPTH = 6  # {type: resnet, resnet: {model_id: 50}} is 2 deep
FREE_FORM_MAX_ITEMS = 256  # keys, values and list items, counted as written out (shared parts count each time)
FREE_FORM_MAX_TEXT = 1024  # characters of one key or string value


def free_form_problem(value: Any, field: str) -> str | None:
    """Why a free-form config (``backbone``, ``decoder``) is unusable, or None; never walks past the bounds.

    It must be a mapping of plain YAML/JSON values with a string ``type`` (the Model Garden one-of
    branch), at most :data:`FREE_FORM_MAX_DEPTH` levels deep and :data:`FREE_FORM_MAX_ITEMS` items.
    """
    if not isinstance(value, dict):
        return f"expected a mapping, got {type(value).__name__}"
    if not isinstance(value.get("type"), str):
        example = "resnet" if field == "backbone" else "fpn"
        return f"needs a 'type' naming the Model Garden {field} (e.g. type: {example})"
    items = 0
    pending: list[tuple[Any, str, int]] = [(value, field, 1)]
    while pending:
        node, where, depth = pending.pop()
        if isinstance(node, str):
            if len(node) > FREE_FORM_MAX_TEXT:
                return f"{where}: a string of {len(node)} characters, over {FREE_FORM_MAX_TEXT}"
            continue
        if node is None or isinstance(node, (bool, int, float)):
            continue
        if not isinstance(node, (dict, list, tuple)):
            return f"{where}: {type(node).__name__} values are not allowed (strings, numbers, booleans, lists, maps)"
        if depth > FREE_FORM_MAX_DEPTH:
            return f"{where}: nested deeper than {FREE_FORM_MAX_DEPTH} levels; a Model Garden {field} config is flat"
        items += len(node)
        if items > FREE_FORM_MAX_ITEMS:
            return f"more than {FREE_FORM_MAX_ITEMS} keys and values; a Model Garden {field} config has a few dozen"
        if isinstance(node, dict):
            for key, child in node.items():
                if not isinstance(key, str) or len(key) > FREE_FORM_MAX_TEXT:
                    return f"{where}: keys are strings of at most {FREE_FORM_MAX_TEXT} characters"
                pending.append((child, f"{where}.{key}", depth + 1))
        else:
            pending.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(node))
    return None


class ModelEntry(BaseModel):
    """A catalog entry. Built-in entries live in ``catalog.yaml``; user files use the same fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    description: str
    architecture: Literal["retinanet", "faster_rcnn", "mask_rcnn"]
    experiment: str = Field(description="TF Model Garden experiment the config starts from (exp_factory name)")
    backbone: dict[str, Any] = Field(description="Model Garden backbone config: {type: resnet, resnet: {model_id: 50}}")
    decoder: dict[str, Any] = Field(description="Model Garden decoder config, e.g. {type: fpn}")
    input_size: int = Field(ge=64, le=2048)
    input_size_multiple: int = Field(
        ge=1, description="the input size must be a multiple of 2**max_level of the feature pyramid",
    )
    batch_size: int = Field(ge=1, le=512, description="default batch size per GPU (global = this x num_clones)")
    initial_learning_rate: float = Field(gt=0, le=10)
    optimizer: Literal["sgd", "adam"] = "sgd"
    epochs: tuple[EpochRule, ...] = Field(min_length=1, description="default epochs by training set size")
    min_gpus: int = Field(0, ge=0, le=16, description="refused on machine types with fewer GPUs")
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    images: dict[str, str] = Field(default_factory=dict, description="stage -> image; missing stages use defaults")
    stand_in: str | None = Field(None, description="what replaces the backbone the name promises, and why")
    tflite: bool = Field(False, description="Model Garden's TFLite export path handles this architecture")
    masks: bool = Field(False, description="trains on polygons/masks as well as boxes")

    def input_size_problem(self, input_size: int, multiple: int | None = None) -> str | None:
        """The one rule (and wording) for input sizes: the feature pyramid must divide the image exactly.

        ``multiple`` is the coarsest pyramid stride when overrides changed it (default: the entry's).
        """
        multiple = multiple or self.input_size_multiple
        if input_size % multiple:
            suggestion = max(1, round(input_size / multiple)) * multiple
            return (f"input_size={input_size} is not a multiple of {multiple}, which model {self.name} needs "
                    f"(its feature pyramid halves the image down to 1/{multiple}); use e.g. input_size={suggestion}")
        return None

    @field_validator("backbone", "decoder")
    @classmethod
    def _bounded_free_form(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        problem = free_form_problem(value, str(info.field_name))
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("images")
    @classmethod
    def _known_stages(cls, images: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(images) - set(STAGE_NAMES))
        if unknown:
            raise ValueError(f"images for unknown stages {unknown}: stages are {', '.join(STAGE_NAMES)}")
        return images

    @model_validator(mode="after")
    def _consistent(self) -> ModelEntry:
        problem = self.input_size_problem(self.input_size)
        if problem:
            raise ValueError(problem)
        bounded = [rule.up_to_images for rule in self.epochs[:-1]]
        if None in bounded or self.epochs[-1].up_to_images is not None:
            raise ValueError("epochs: every rule but the last needs up_to_images; the last rule has none (any size)")
        if bounded != sorted(bounded):
            raise ValueError("epochs: rules must be in increasing up_to_images order")
        if self.masks and self.architecture != "mask_rcnn":
            raise ValueError("masks: only mask_rcnn models train on masks")
        return self

    def default_epochs(self, train_images: int) -> int:
        """Epochs for a training split of ``train_images`` images: small sets need more passes."""
        for rule in self.epochs:
            if rule.up_to_images is None or train_images <= rule.up_to_images:
                return rule.epochs
        raise AssertionError("the last epoch rule has no bound")  # guaranteed by _consistent

