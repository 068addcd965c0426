"""What the convert stage reads, checked before TensorFlow is imported, and the config export builds from it.

The train stage's output folder (its ``model.json``, ``params.yaml`` and newest checkpoint), the
dataset stage's labels, and Model Garden's config set up for inference: every export (SavedModel,
TFLite in its own process) and the self-test start from these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engines import artifacts
from ..errors import ConvertError, DatasetError
from ..formats.label_map import read_labels_json
from ..request.model_entry import ModelEntry

_CKPT = re.compile(r"^ckpt-(\d+)\.index$")


@dataclass(frozen=True)
class TrainedModel:
    folder: Path
    manifest: artifacts.TrainedModelManifest
    entry: ModelEntry
    params_file: Path
    checkpoint: Path  # prefix: .../ckpt-N
    step: int
    labels: tuple[str, ...]
    input_size: int


def newest_checkpoint(folder: Path) -> tuple[Path, int]:
    """The highest-step ``ckpt-N`` prefix (numeric order: ckpt-10 after ckpt-9) with its data shards."""
    found = []
    for index in folder.glob("ckpt-*.index"):
        match = _CKPT.match(index.name)
        prefix = index.with_name(index.name.removesuffix(".index"))
        if match and any(folder.glob(prefix.name + ".data-*")):
            found.append((int(match.group(1)), prefix))
    if not found:
        raise ConvertError(f"{folder}: no checkpoint (ckpt-N.index with its .data-* files); is this the train "
                           "stage's output folder?")
    step, prefix = max(found)
    return prefix, step


def read_trained_model(folder: Path) -> TrainedModel:
    """The train stage's output, checked before TensorFlow is imported."""
    if not folder.is_dir():
        raise ConvertError(f"{folder}: the model folder does not exist")
    manifest_path = folder / artifacts.MODEL_MANIFEST
    if not manifest_path.is_file():
        raise ConvertError(f"{manifest_path} is missing: is {folder} the train stage's output folder?")
    try:
        manifest = artifacts.TrainedModelManifest.read(folder)
    except DatasetError as error:
        raise ConvertError(str(error)) from None
    try:
        entry = ModelEntry.model_validate(manifest.model_spec)
        labels = tuple(manifest.labels)
        input_size = int(manifest.input_size)
    except (ValueError, TypeError) as error:
        raise ConvertError(f"{manifest_path}: cannot read the model manifest: {error}") from None
    params_file = folder / artifacts.MODEL_PARAMS
    if not params_file.is_file():
        raise ConvertError(f"{params_file} is missing: the train stage writes the Model Garden config there, "
                           "and export needs it to rebuild the model")
    checkpoint, step = newest_checkpoint(folder)
    return TrainedModel(folder, manifest, entry, params_file, checkpoint, step, labels, input_size)


def read_dataset_labels(dataset: Path, model: TrainedModel) -> tuple[str, ...]:
    path = dataset / artifacts.LABELS
    if not path.is_file():
        raise DatasetError(f"{path} is missing: is {dataset} the dataset stage's output folder?")
    labels = tuple(read_labels_json(path))
    if labels != model.labels:
        raise DatasetError(f"{path}: labels {list(labels)} differ from the ones the model was trained on "
                           f"({model.folder / artifacts.MODEL_MANIFEST}: {list(model.labels)})")
    return labels


def load_export_config(model: TrainedModel, score_threshold: float) -> Any:
    """``params.yaml`` set up for inference on any machine: float32, and our lowest score."""
    from official.modeling import performance

    from ..training import compat
    from ..training.experiment import load_config

    compat.apply_all()
    try:
        config = load_config(model.params_file, model.entry.experiment)
    except (KeyError, ValueError, TypeError) as error:
        raise ConvertError(f"{model.params_file}: not a {model.entry.experiment} config: {error}") from None
    config.runtime.mixed_precision_dtype = "float32"  # a GPU-trained model exports and serves in float32
    config.runtime.loss_scale = None
    performance.set_mixed_precision_policy("float32")
    generator = config.task.model.detection_generator
    generator.pre_nms_score_threshold = score_threshold
    if hasattr(generator, "use_class_agnostic_nms") and generator.nms_version == "v2":
        # RetinaNet: the NMS that TFLite's fast path does too, so every runtime returns the same boxes; and
        # one label per object is what a pre-annotation wants.
        generator.use_class_agnostic_nms = True
    return config

