"""The Model Garden ``ExperimentConfig`` of one training run: catalog entry + arguments + dataset artifact.

Model Garden's registered experiments are COCO recipes for TPU pods: 91 classes, batch 64-256,
bfloat16, step schedules measured in COCO steps, ``steps_per_loop`` of a whole COCO epoch. This module
turns one of them into the run the user asked for, and nothing else: no training loop here (the
train step hands the config to ``official.core.train_lib.run_experiment``). Every value it sets is
derived from the catalog entry, the :class:`~cvat_argo.request.spec.Arguments` and the dataset artifact, so
the saved ``params.yaml`` explains the run completely.

Choices and the Model Garden 2.20 traps they avoid (see the research notes):

* Backbone and decoder come from the entry and replace the experiment's (``retinanet_mobile_coco`` is
  SpineNet-Mobile with an identity decoder, not MobileNetV2); feature levels are made consistent per
  architecture: RetinaNet 3..7, Faster/Mask R-CNN with FPN 2..6, NAS-FPN 3..7. MobileNetV2 and ResNet
  stop at level 5 and the decoder builds the levels above.
* ``num_classes`` = labels + 1: Model Garden reserves class 0 for background in both RetinaNet (the
  focal loss one-hot encodes class ids 0..num_classes-1, the detection generator drops column 0 and
  adds 1 to the classes it returns) and Mask R-CNN (softmax over background + classes).
* Epochs are real passes: ``steps_per_epoch = ceil(train images / global batch)``; the learning rate
  warms up linearly from 0 and then follows a cosine to 0 at the last step.
* Precision is chosen on purpose: float32 on CPU (bfloat16, the experiments' default, is slow or
  unsupported there), mixed float16 with dynamic loss scaling on GPU.
* ``steps_per_loop`` stays small, because Orbit logs and checkpoints only between loops.
"""

from __future__ import annotations

import collections.abc
import itertools
import json
import logging
import math
import operator
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cvat_argo.engines import artifacts
from cvat_argo.errors import ArgumentError, DatasetError
from cvat_argo.formats.label_map import read_labels_json
from cvat_argo.formats.tfrecord.example import BytesList, decode_example
from cvat_argo.formats.tfrecord.records import read_records
from cvat_argo.request.model_entry import ModelEntry
from cvat_argo.request.spec import Arguments, batch_split_problem
from cvat_argo.training.restore import MODEL_GARDEN_MODULES, RestorePlan, restore_plan

if TYPE_CHECKING:
    import tf_keras
    from official.core.base_task import Task
    from official.core.config_definitions import ExperimentConfig

log = logging.getLogger(__name__)

#: Scale jitter of the training parser (the range Model Garden's Faster R-CNN recipe uses).
AUG_SCALE_MIN, AUG_SCALE_MAX = 0.8, 1.25
#: Warm-up: 10% of the run, at most this many steps.
WARMUP_FRACTION, MAX_WARMUP_STEPS = 0.1, 500
#: Orbit reports (logs, summaries, checkpoints) only between loops of ``steps_per_loop`` steps.
MAX_STEPS_PER_LOOP_GPU, MAX_STEPS_PER_LOOP_CPU = 50, 10
#: Evaluation runs every epoch, but at most this many times per run (every k epochs on long runs).
MAX_EVALUATIONS = 20
#: A checkpoint every epoch, but whole epochs of at least this many steps apart: one costs ~0.4 s on a
#: CPU, and the quickstart's 21-step epochs spent 4% of its training saving 22 of them.
MIN_STEPS_BETWEEN_CHECKPOINTS = 40
#: Batch-norm moving averages span about this fraction of the run (window 1 / (1 - momentum)), within
#: these momenta. Model Garden's 0.99 (a 100-step window) suits COCO's 100k+ steps; on a run of a few
#: hundred steps from scratch the averages trail the weights so far that the model evaluates to AP 0
#: for half the run (measured: AP50 0.0 at step 441 of 1,050 at 0.99; 0.52 at step 126 at 0.9).
BN_WINDOW_FRACTION, BN_MOMENTUM_MIN, BN_MOMENTUM_MAX = 0.02, 0.9, 0.99
#: Batch norm is synchronised across replicas only below this many images per replica. With 2-8 images
#: a replica's own batch statistics are noisy enough to hurt (the case sync BN exists for); from 16 on
#: they are about as good as the global batch's, while every BN layer still costs a latency-bound
#: all-reduce in the forward and one in the backward pass (~120 per step for a MobileNetV2 RetinaNet;
#: across nodes each is a network round trip that also makes the workers wait for each other).
SYNC_BN_MAX_PER_REPLICA_BATCH = 16
#: RetinaNet's NMS candidates per image. Model Garden's 5,000 is sized for COCO at 640 px (~77k
#: anchors); with its v2 NMS on CPU an evaluation batch of 8 at 256 px (12k anchors) took 1.4 s at
#: 5,000 and 0.18 s at 1,000, and the 100 detections an image keeps come from far fewer than 1,000.
RETINANET_PRE_NMS_TOP_K = 1000
#: Records inspected before training to catch a dataset the model cannot use.
RECORDS_TO_CHECK = 20

_TASK_OF_ARCHITECTURE = {"retinanet": "RetinaNetTask", "faster_rcnn": "MaskRCNNTask", "mask_rcnn": "MaskRCNNTask"}

# Config keys the plan derives from the arguments or the dataset: an override would make the plan lie.
_MANAGED_KEYS = {
    "task.model.num_classes": "it comes from the dataset's labels.json",
    "task.model.input_size": "use the input_size argument",
    "task.train_data.input_path": "it is the dataset artifact's train shards",
    "task.validation_data.input_path": "it is the dataset artifact's val shards",
    "task.train_data.global_batch_size": "use the batch_size argument (the global batch)",
    "task.validation_data.global_batch_size": "it follows the batch_size argument",
    "task.init_checkpoint": "it is the base model of the run",
    "trainer.train_steps": "use the epochs argument (real passes over the training images)",
    "trainer.validation_steps": "it covers the validation split once",
    "trainer.optimizer_config.learning_rate.cosine.initial_learning_rate": "use the initial_learning_rate argument",
    "runtime.num_gpus": "use the num_clones argument",
    "runtime.distribution_strategy": "it follows the GPUs of the machine",
    "trainer.validation_summary_subdir": "metrics.json and the TensorBoard sidecar read the validation run there",
}


@dataclass(frozen=True)
class TrainingPlan:
    """A run's Model Garden config and the numbers it was derived from (for logs and the run report)."""

    config: ExperimentConfig
    global_batch: int
    per_replica_batch: int
    num_clones: int
    epochs: int
    steps_per_epoch: int
    total_steps: int
    input_size: int
    num_classes: int  # labels + 1: Model Garden's class 0 is background
    mixed_precision: str | None  # Keras policy name ("mixed_float16"), None for float32
    model_dir: Path
    labels: tuple[str, ...]
    warmup_steps: int
    eval_batch: int
    validation_steps: int
    notes: tuple[str, ...] = ()  # what the builder changed from the request and why, for the run log
    restore: RestorePlan | None = None  # what the base checkpoint restores; None: no checkpoint (from scratch)
    workers: int = 1  # pods training together (MultiWorkerMirroredStrategy): num_clones * workers replicas


# --------------------------------------------------------------------------------------------------
# The dataset artifact
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dataset:
    labels: tuple[str, ...]
    train_images: int
    val_images: int
    train_pattern: str
    val_pattern: str


def _shard_pattern(dataset_dir: Path, split: str, required: bool) -> str:
    pattern = f"{split}-*-of-*.tfrecord"
    if required and not any(dataset_dir.glob(pattern)):
        raise DatasetError(f"{dataset_dir}: no {pattern} shards; is this the dataset stage's output folder?")
    return str(dataset_dir / pattern)


def _read_dataset(dataset_dir: Path) -> _Dataset:
    labels = tuple(read_labels_json(dataset_dir / artifacts.LABELS))
    summary_path = dataset_dir / artifacts.DATASET_SUMMARY
    try:
        images = json.loads(summary_path.read_text(encoding="utf-8"))["images"]
        train, val = operator.index(images["train"]), operator.index(images.get("val", 0))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{summary_path}: cannot read images.train and images.val: {error}") from None
    if train < 1:
        raise DatasetError(f"{summary_path}: the training split is empty")
    return _Dataset(labels, train, val, _shard_pattern(dataset_dir, "train", True),
                    _shard_pattern(dataset_dir, "val", val > 0))


def _check_records(pattern: str, need_masks: bool) -> None:
    """Fail before the model is built on what would fail or mislead hours into training.

    Source ids must be numbers: Model Garden's decoder passes them to the COCO evaluator as image
    ids, and an empty one is replaced by a hash of the image bytes into ~4M buckets, so ids can
    collide and corrupt the evaluation. Mask R-CNN needs instance masks in every record with objects.
    """
    for index, record in enumerate(itertools.islice(_records(pattern), RECORDS_TO_CHECK)):
        features = decode_example(record)
        source = features.get("image/source_id")
        value = source.values[0] if isinstance(source, BytesList) and source.values else b""
        if not value.isdigit():
            raise DatasetError(
                f"{pattern}: record {index} has image/source_id {value!r}; it must be a decimal number unique in "
                "the dataset (rebuild the dataset with the dataset stage)"
            )
        has_objects = bool(getattr(features.get("image/object/class/label"), "values", ()))
        if need_masks and has_objects and "image/object/mask" not in features:
            raise DatasetError(
                f"{pattern}: record {index} has objects but no image/object/mask; this model trains on masks: "
                "rebuild the dataset with instance masks, or pick a model without masks"
            )


def _records(pattern: str) -> Iterator[bytes]:
    directory, name = Path(pattern).parent, Path(pattern).name
    for path in sorted(directory.glob(name)):
        yield from read_records(path)


# --------------------------------------------------------------------------------------------------
# Config pieces
# --------------------------------------------------------------------------------------------------


def feature_levels(entry: ModelEntry) -> tuple[int, int]:
    """(min_level, max_level) of the feature pyramid for the entry's architecture and decoder."""
    if entry.decoder.get("type") == "nasfpn" or entry.architecture == "retinanet":
        return 3, 7
    return 2, 6


def _oneof(config_class: type, values: Mapping[str, Any], what: str) -> Any:
    """A fresh one-of config (backbone or decoder) set from catalog values, strictly."""
    config = config_class()
    try:
        config.override(dict(values), is_strict=True)
    except (KeyError, ValueError, TypeError) as error:
        raise ArgumentError(f"catalog {what} {dict(values)!r} is not a Model Garden {what} config: {error}") from None
    if config.type is None or config.get() is None:
        raise ArgumentError(f"catalog {what} {dict(values)!r} names no known {what} type")
    return config


def _optimizer_config(entry: ModelEntry, learning_rate: float, total_steps: int, warmup_steps: int) -> Any:
    """Linear warm-up from 0 to ``learning_rate``, then a cosine to 0 at ``total_steps``.

    The cosine is offset by the warm-up, so the peak is reached exactly when the warm-up ends.
    """
    from official.modeling import optimization

    optimizer = {"type": "sgd", "sgd": {"momentum": 0.9}} if entry.optimizer == "sgd" else {"type": "adam", "adam": {}}
    return optimization.OptimizationConfig({
        "optimizer": optimizer,
        "learning_rate": {"type": "cosine", "cosine": {
            "initial_learning_rate": learning_rate, "decay_steps": max(total_steps - warmup_steps, 1),
            "alpha": 0.0, "offset": warmup_steps,
        }},
        "warmup": {"type": "linear", "linear": {"warmup_steps": warmup_steps, "warmup_learning_rate": 0.0}},
    })


# The class-specific output layer of each architecture in a Model Garden checkpoint: RetinaNet's
# ``head`` (in ``model.checkpoint_items``), Mask R-CNN's ``detection_head`` (one per cascade stage).
_CLASS_HEAD_KEY = re.compile(r"(^|/)_?(head|detection_head/\d+)/_classifier/bias/\.ATTRIBUTES/VARIABLE_VALUE$")
#: Restore modes that need a checkpoint of a whole detector, not of a classifier's backbone.
WHOLE_MODEL_MODES = ("all-but-class-head", "all")


def _class_head_width(config: ExperimentConfig) -> int:
    """Width of the class-head bias the model will have: classes x anchors (RetinaNet) or classes."""
    model = config.task.model
    if hasattr(model, "head"):  # RetinaNet: one score per anchor and class at each location
        return model.num_classes * model.anchor.num_scales * len(model.anchor.aspect_ratios)
    return model.num_classes


def _resolve_checkpoint_modules(config: ExperimentConfig, entry: ModelEntry, mode: str, labels: Sequence[str],
                                checkpoint_labels: Sequence[str] | None) -> tuple[str, str | None]:
    """The restore mode the run can use (``mode``, or 'all-but-class-head' for 'all' when the class head
    does not fit), and a note when it changed.

    An earlier run's model (``checkpoint_labels``) fits only with the same labels in the same order:
    a head of the same width trained on other labels would start every class as another one. A
    checkpoint with another class count (a COCO detector's 91) would fail Model Garden's own 'all' on
    the first shape mismatch ("Received incompatible tensor with shape (36,) when attempting to restore
    variable with shape (27,)"); 'all-but-class-head' restores every other layer and starts the class
    head fresh (:mod:`cvat_argo.training.restore`).
    """
    import tensorflow as tf

    task = config.task
    if not task.init_checkpoint or mode not in WHOLE_MODEL_MODES:
        return mode, None
    if mode == "all" and checkpoint_labels is not None and tuple(checkpoint_labels) != tuple(labels):
        note = (f"the base model was trained on the labels {', '.join(checkpoint_labels)}, this dataset has "
                f"{', '.join(labels)}: restoring all but the class head, which starts fresh")
        log.warning(note)
        return "all-but-class-head", note
    path = task.init_checkpoint
    try:
        if tf.io.gfile.isdir(path):
            path = tf.train.latest_checkpoint(path) or path
        variables = dict(tf.train.list_variables(path))
    except (tf.errors.OpError, ValueError) as error:
        raise ArgumentError(f"init checkpoint {task.init_checkpoint} cannot be read: {error}") from None
    widths = {shape[0] for key, shape in variables.items() if _CLASS_HEAD_KEY.search(key) and shape}
    if not widths:
        raise ArgumentError(
            f"checkpoint.modules {mode!r} needs a checkpoint of a whole {entry.architecture} model, but "
            f"{task.init_checkpoint} has no {entry.architecture} class head; use checkpoint.modules 'backbone'"
        )
    expected = _class_head_width(config)
    if mode == "all-but-class-head" or widths == {expected}:
        return mode, None
    note = (
        f"init checkpoint {task.init_checkpoint} has a class head of width {sorted(widths)} but this model's is "
        f"{expected} ({config.task.model.num_classes} classes with background): restoring all but the class head, "
        "which starts fresh"
    )
    log.warning(note)
    return "all-but-class-head", note


# --------------------------------------------------------------------------------------------------
# Expert overrides
# --------------------------------------------------------------------------------------------------


def _config_children(node: Any) -> list[str]:
    return sorted(name for name in vars(node) if not name.startswith("_"))


def _flatten(key: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for child, child_value in value.items():
            yield from _flatten(f"{key}.{child}", child_value)
    else:
        yield key, value


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not raw.strip() or not all(key.split(".")):
        raise ArgumentError(f"override {text!r} is not key=value (example: task.model.anchor.num_scales=2)")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ArgumentError(f"override {key}: value {raw.strip()!r} is not valid YAML: {error}") from None


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether ``value`` (from YAML) fits a config field annotated ``annotation``; unknown forms pass."""
    from official.modeling.hyperparams import base_config

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple))
    if origin is not None or not isinstance(annotation, type):
        return True
    if issubclass(annotation, base_config.Config):
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


def _field_annotation(node: Any, name: str, current: Any) -> Any:
    """The dataclass annotation of ``node.name``, else the type of its current value (None: anything)."""
    try:
        hints = typing.get_type_hints(type(node))
    except Exception:  # unresolvable forward references: fall back to the value
        hints = {}
    if name in hints:
        return hints[name]
    return typing.Any if current is None else type(current)


def _check_leaf(config: ExperimentConfig, key: str, value: Any) -> None:
    """The key exists and the value fits the field's type (``override()`` checks neither)."""
    from official.modeling.hyperparams import base_config

    from cvat_argo.suggest import unknown_name_message

    for managed, reason in _MANAGED_KEYS.items():
        if key == managed or key.startswith(managed + "."):
            raise ArgumentError(f"override {key} is not allowed: {reason}")
    parent: Any = None
    node: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, base_config.Config):
            raise ArgumentError(f"override {key}: {'.'.join(parts[:depth])} is a value, not a section")
        known = _config_children(node)
        if part not in known:
            where = ".".join(parts[:depth]) or "the experiment"
            raise ArgumentError(f"override {key}: {unknown_name_message(f'key in {where}', part, known)}")
        parent, node = node, getattr(node, part)
    if not _accepts(_field_annotation(parent, parts[-1], node), value):
        raise ArgumentError(
            f"override {key}={value!r}: a {type(value).__name__} does not fit there (current value: {node!r})"
        )


def apply_overrides(config: ExperimentConfig, overrides: Sequence[str]) -> None:
    """Apply ``key=value`` overrides (YAML values, dotted keys) strictly: unknown keys are refused."""
    for text in overrides:
        key, value = _parse_override(text)
        for leaf_key, leaf_value in _flatten(key, value):
            _check_leaf(config, leaf_key, leaf_value)
            nested: Any = leaf_value
            for part in reversed(leaf_key.split(".")):
                nested = {part: nested}
            try:
                config.override(nested, is_strict=True)
            except (KeyError, ValueError, TypeError) as error:
                raise ArgumentError(f"override {leaf_key}: {error}") from None


# --------------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------------


def build_experiment(
    entry: ModelEntry,
    arguments: Arguments,
    dataset_dir: Path,
    *,
    model_dir: Path,
    init_checkpoint: str | None = None,
    init_modules: str | None = None,
    checkpoint_labels: Sequence[str] | None = None,
    gpus_available: int = 0,
    cpu_replicas: int = 1,
    workers: int = 1,
    overrides: Sequence[str] = (),
    eval_every_steps: int | None = None,
    checkpoint_every_steps: int | None = None,
) -> TrainingPlan:
    """The Model Garden config for training ``entry`` on the dataset artifact in ``dataset_dir``.

    Raises :class:`~cvat_argo.errors.ArgumentError` (a ValueError) for arguments or overrides the
    run cannot use, and :class:`~cvat_argo.errors.DatasetError` for an unusable dataset artifact.
    """
    from official.core import exp_factory
    from official.vision import registry_imports  # noqa: F401 - registers the vision experiments
    from official.vision.configs import backbones, decoders

    from cvat_argo.training import compat

    compat.apply_all()
    dataset_dir, model_dir = Path(dataset_dir), Path(model_dir)
    dataset = _read_dataset(dataset_dir)
    _check_records(dataset.train_pattern, need_masks=entry.masks)

    input_size = arguments.input_size or entry.input_size
    problem = entry.input_size_problem(input_size)
    if problem:
        raise ArgumentError(problem)
    if gpus_available < 0:
        raise ArgumentError(f"gpus_available must not be negative, got {gpus_available}")
    num_clones = arguments.num_clones or max(gpus_available, 1)
    # cpu_replicas > 1: logical CPU devices standing in for GPUs (training.replicas, for tests)
    if num_clones > max(gpus_available, 1 if gpus_available else cpu_replicas, 1):
        raise ArgumentError(f"num_clones={num_clones} but only {gpus_available} GPUs are available")
    if workers < 1:
        raise ArgumentError(f"workers must be at least 1, got {workers}")
    # several workers (a multi-node machine type, training.cluster): each runs num_clones replicas
    global_batch = arguments.batch_size or entry.batch_size * num_clones * workers
    problem = batch_split_problem(global_batch, num_clones, workers)
    if problem:
        raise ArgumentError(problem)
    per_replica_batch = global_batch // (num_clones * workers)

    epochs = arguments.epochs or entry.default_epochs(dataset.train_images)
    steps_per_epoch = math.ceil(dataset.train_images / global_batch)
    total_steps = epochs * steps_per_epoch
    warmup_steps = min(MAX_WARMUP_STEPS, max(1, round(WARMUP_FRACTION * total_steps)))
    learning_rate = arguments.initial_learning_rate or entry.initial_learning_rate
    eval_batch = global_batch
    # The last step's batch is filled with padding images the COCO evaluator ignores (training.evaluation):
    # a replica left without images would crash, and every image must count once on any replica count.
    validation_steps = math.ceil(dataset.val_images / eval_batch)
    eval_interval = (_positive("eval_every_steps", eval_every_steps)
                     or steps_per_epoch * math.ceil(epochs / MAX_EVALUATIONS))
    checkpoint_interval = (_positive("checkpoint_every_steps", checkpoint_every_steps)
                           or steps_per_epoch * math.ceil(MIN_STEPS_BETWEEN_CHECKPOINTS / steps_per_epoch))
    steps_per_loop = min(steps_per_epoch, eval_interval, checkpoint_interval,
                         MAX_STEPS_PER_LOOP_GPU if gpus_available else MAX_STEPS_PER_LOOP_CPU)

    config = exp_factory.get_exp_config(entry.experiment)
    task_kind = type(config.task).__name__
    if task_kind != _TASK_OF_ARCHITECTURE[entry.architecture]:
        raise ArgumentError(
            f"model {entry.name}: experiment {entry.experiment} is a {task_kind}, not a {entry.architecture} experiment"
        )

    model = config.task.model
    model.num_classes = len(dataset.labels) + 1
    model.input_size = [input_size, input_size, 3]
    model.min_level, model.max_level = feature_levels(entry)
    model.backbone = _oneof(backbones.Backbone, entry.backbone, "backbone")
    model.decoder = _oneof(decoders.Decoder, entry.decoder, "decoder")
    if entry.architecture != "retinanet":
        if entry.masks and model.mask_head is None:
            raise ArgumentError(f"model {entry.name} trains masks but experiment {entry.experiment} has no mask head")
        model.include_mask = entry.masks
    # Synchronised batch norm only pays off across replicas (on one device it costs ~25% of a CPU step)
    # and only for small per-replica batches (SYNC_BN_MAX_PER_REPLICA_BATCH).
    model.norm_activation.use_sync_bn = num_clones * workers > 1 and per_replica_batch < SYNC_BN_MAX_PER_REPLICA_BATCH
    model.norm_activation.norm_momentum = batch_norm_momentum(total_steps)
    if entry.architecture == "retinanet":
        generator = model.detection_generator
        generator.pre_nms_top_k = min(generator.pre_nms_top_k, RETINANET_PRE_NMS_TOP_K)

    task = config.task
    task.init_checkpoint = init_checkpoint
    # The catalog's restore mode, or 'all' for an earlier run's model (init_modules); resolved below
    requested_mode = init_modules or entry.checkpoint.modules
    task.init_checkpoint_modules = MODEL_GARDEN_MODULES.get(requested_mode, requested_mode)
    task.annotation_file = None  # COCO ground truth from the val records
    task.per_category_metrics = True
    task.use_coco_metrics = True
    data_dtype = "float32"  # the image tensor; layers cast it to float16 themselves under the mixed policy
    for data, pattern, training, batch in ((task.train_data, dataset.train_pattern, True, global_batch),
                                           (task.validation_data, dataset.val_pattern, False, eval_batch)):
        data.input_path = pattern
        data.is_training = training
        data.global_batch_size = batch
        data.dtype = data_dtype
        data.drop_remainder = training  # validation must see every image once
        data.parser.aug_rand_hflip = training
        data.parser.aug_scale_min = AUG_SCALE_MIN if training else 1.0
        data.parser.aug_scale_max = AUG_SCALE_MAX if training else 1.0
    task.train_data.shuffle_buffer_size = min(task.train_data.shuffle_buffer_size, dataset.train_images)
    if hasattr(task.validation_data, "num_examples"):
        # Mask R-CNN writes a COCO annotation file from this many val records for mask AP.
        task.validation_data.num_examples = dataset.val_images

    gpu = gpus_available > 0
    runtime = config.runtime
    runtime.distribution_strategy = "mirrored" if gpu or num_clones > 1 else "one_device"
    if workers > 1:
        runtime.distribution_strategy = "multi_worker_mirrored"  # TF_CONFIG names the workers
    runtime.num_gpus = num_clones if gpu else 0
    runtime.mixed_precision_dtype = "float16" if gpu else "float32"
    runtime.loss_scale = "dynamic" if gpu else None
    runtime.enable_xla = False  # XLA-compiling whole train steps is tuned for TPUs; dynamic shapes recompile

    trainer = config.trainer
    trainer.train_steps = total_steps
    trainer.validation_steps = validation_steps
    trainer.validation_interval = eval_interval
    trainer.checkpoint_interval = checkpoint_interval
    trainer.steps_per_loop = steps_per_loop
    trainer.summary_interval = steps_per_loop
    # Orbit writes <model_dir>/train (fixed) and this; metrics.json and the TensorBoard sidecar read both.
    trainer.validation_summary_subdir = artifacts.VALIDATION_EVENTS
    trainer.optimizer_config = _optimizer_config(entry, learning_rate, total_steps, warmup_steps)

    apply_overrides(config, overrides)
    _check_consistent(config, entry)
    mode, note = _resolve_checkpoint_modules(config, entry, requested_mode, dataset.labels, checkpoint_labels)
    task.init_checkpoint_modules = MODEL_GARDEN_MODULES.get(mode, mode)
    notes = (note,) if note else ()
    config.validate()
    return TrainingPlan(
        config=config, global_batch=global_batch, per_replica_batch=per_replica_batch, num_clones=num_clones,
        epochs=epochs, steps_per_epoch=steps_per_epoch, total_steps=total_steps, input_size=input_size,
        num_classes=model.num_classes, mixed_precision="mixed_float16" if gpu else None, model_dir=model_dir,
        labels=dataset.labels, warmup_steps=warmup_steps, eval_batch=eval_batch, validation_steps=validation_steps,
        notes=notes, restore=restore_plan(config, mode), workers=workers,
    )


def batch_norm_momentum(total_steps: int) -> float:
    """Momentum whose averaging window is ~2% of the run: evaluations see statistics of recent weights."""
    window = BN_WINDOW_FRACTION * total_steps
    return round(min(BN_MOMENTUM_MAX, max(BN_MOMENTUM_MIN, 1 - 1 / max(window, 1))), 4)


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ArgumentError(f"{name} must be at least 1, got {value}")
    return value


def _check_consistent(config: ExperimentConfig, entry: ModelEntry) -> None:
    """After overrides: the pyramid's coarsest level must divide the input exactly."""
    model = config.task.model
    problem = entry.input_size_problem(model.input_size[0], multiple=2**model.max_level)
    if problem:
        raise ArgumentError(f"{problem} (max_level={model.max_level})")
    if not 1 <= model.min_level <= model.max_level:
        raise ArgumentError(f"min_level={model.min_level} and max_level={model.max_level} make no feature pyramid")


# --------------------------------------------------------------------------------------------------
# Saving and building
# --------------------------------------------------------------------------------------------------


def save_config(plan: TrainingPlan, model_dir: Path | None = None) -> Path:
    """Write ``params.yaml`` into the model folder (``run_experiment`` does not), for export to rebuild the model."""
    from official.core import train_utils

    directory = Path(model_dir if model_dir is not None else plan.model_dir)
    train_utils.serialize_config(plan.config, str(directory))
    return directory / artifacts.MODEL_PARAMS


def load_config(params_file: Path, experiment: str) -> ExperimentConfig:
    """The config saved by :func:`save_config`, laid strictly over ``experiment``'s defaults."""
    from official.core import exp_factory
    from official.modeling import hyperparams
    from official.vision import registry_imports  # noqa: F401

    config = exp_factory.get_exp_config(experiment)
    hyperparams.override_params_dict(config, str(params_file), is_strict=True)
    config.validate()
    return config


def set_precision_policy(plan: TrainingPlan) -> None:
    """Set the global Keras policy the plan asks for; layers take their dtype when they are built.

    ``run_experiment`` does not do this (Model Garden's ``train.py`` does, before building the task),
    so call it before :func:`build_model` or ``task.build_model()``.
    """
    from official.modeling import performance

    performance.set_mixed_precision_policy(plan.config.runtime.mixed_precision_dtype, plan.config.runtime.loss_scale)


def build_model(plan: TrainingPlan) -> tuple[Task, tf_keras.Model]:
    """The Model Garden task and its model, built under the plan's precision policy."""
    from official.core import task_factory

    from cvat_argo.training import compat

    compat.apply_all()
    set_precision_policy(plan)
    task = task_factory.get_task(plan.config.task, logging_dir=str(plan.model_dir))
    return task, task.build_model()
