"""The Model Garden experiment a run trains with: numbers, traps, and one real train step per catalog model.

Config tests are fast. Tests marked ``slow`` build real models and train them for a step or two on a
tiny dataset at 64-128 px on CPU (skip them with ``-m "not slow"``).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("official", reason="needs the train extra (tf-models-official)")
tf = pytest.importorskip("tensorflow")

from cvat_argo.errors import ArgumentError, DatasetError  # noqa: E402
from cvat_argo.formats.tfrecord.example import decode_example, encode_example  # noqa: E402
from cvat_argo.formats.tfrecord.records import read_records  # noqa: E402
from cvat_argo.request.catalog import load_catalog  # noqa: E402
from cvat_argo.request.spec import Arguments  # noqa: E402
from cvat_argo.training import compat  # noqa: E402
from cvat_argo.training.experiment import (  # noqa: E402
    MAX_STEPS_PER_LOOP_CPU,
    MAX_STEPS_PER_LOOP_GPU,
    TrainingPlan,
    build_experiment,
    build_model,
    load_config,
    save_config,
)
from support.tiny_dataset import write_tiny_dataset  # noqa: E402
from support.trained_model import SMALL_MASKS  # noqa: E402
from support.trained_model import SMALL_RCNN_HEADS as SMALL_RCNN  # noqa: E402

CATALOG = load_catalog(env={})
MODELS = sorted(CATALOG.models)
EAGER = ("trainer.train_tf_function=false", "trainer.train_tf_while_loop=false", "trainer.eval_tf_function=false")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "dataset")


def with_counts(source: Path, target: Path, train: int, val: int) -> Path:
    """A copy of ``source`` whose dataset.json claims other image counts (for the step arithmetic)."""
    shutil.copytree(source, target)
    summary = json.loads((target / "dataset.json").read_text())
    summary["images"] = {"train": train, "val": val}
    (target / "dataset.json").write_text(json.dumps(summary))
    return target


def plan_for(name: str, dataset: Path, tmp_path: Path, arguments: Arguments | None = None, **options) -> TrainingPlan:
    return build_experiment(CATALOG.model(name), arguments or Arguments(), dataset, model_dir=tmp_path / "model",
                            **options)


# --------------------------------------------------------------------------------------------------
# The model: architecture, classes, levels (trap 1)
# --------------------------------------------------------------------------------------------------


def test_ssd_config_is_mobilenet_v2_with_fpn_not_the_registered_spinenet(dataset, tmp_path):
    model = plan_for("ssd-mobilenet-v2-coco", dataset, tmp_path).config.task.model
    assert model.backbone.type == "mobilenet"
    assert model.backbone.mobilenet.model_id == "MobileNetV2"
    assert model.decoder.type == "fpn"
    assert model.decoder.fpn.use_separable_conv is True
    assert (model.min_level, model.max_level) == (3, 7)


@pytest.mark.parametrize(("name", "levels", "decoder"), [
    ("frcnn-res50-coco", (2, 6), "fpn"),
    ("frcnn-res101-coco", (2, 6), "fpn"),
    ("frcnn-inception-resnet-v2-coco", (2, 6), "fpn"),
    ("frcnn-nas-coco", (3, 7), "nasfpn"),
    ("maskrcnn-res50-coco", (2, 6), "fpn"),
])
def test_rcnn_levels_and_backbones_follow_the_catalog(dataset, tmp_path, name, levels, decoder):
    entry = CATALOG.model(name)
    model = plan_for(name, dataset, tmp_path).config.task.model
    assert (model.min_level, model.max_level) == levels
    assert model.decoder.type == decoder
    assert model.backbone.type == "resnet"
    assert model.backbone.resnet.model_id == entry.backbone["resnet"]["model_id"]
    assert model.include_mask is entry.masks
    assert entry.input_size_multiple % 2**levels[1] == 0


@pytest.mark.parametrize("name", MODELS)
def test_num_classes_counts_the_background_class(dataset, tmp_path, name):
    """3 labels -> 4: Model Garden's class 0 is background (RetinaNet's focal loss one-hot encodes
    ids 0..num_classes-1 and its detection generator drops column 0; Mask R-CNN's softmax has it)."""
    plan = plan_for(name, dataset, tmp_path)
    assert plan.labels == ("rectangle", "ellipse", "triangle")
    assert plan.num_classes == plan.config.task.model.num_classes == 4


# --------------------------------------------------------------------------------------------------
# Steps, epochs, batches
# --------------------------------------------------------------------------------------------------


def test_epochs_are_real_passes_over_the_training_images(dataset, tmp_path):
    data = with_counts(dataset, tmp_path / "data", train=1000, val=100)
    entry = CATALOG.model("ssd-mobilenet-v2-coco")
    plan = plan_for(entry.name, data, tmp_path)
    assert (plan.num_clones, plan.global_batch, plan.per_replica_batch) == (1, 16, 16)
    assert plan.epochs == entry.default_epochs(1000) == 80
    assert plan.steps_per_epoch == math.ceil(1000 / 16) == 63
    assert plan.total_steps == 80 * 63 == plan.config.trainer.train_steps
    assert plan.validation_steps == math.ceil(100 / 16) == plan.config.trainer.validation_steps
    trainer = plan.config.trainer
    assert trainer.checkpoint_interval == 63  # every epoch
    assert trainer.validation_interval == 4 * 63  # every epoch, but at most MAX_EVALUATIONS (20) times
    assert plan.config.task.train_data.global_batch_size == 16

    plan = plan_for(entry.name, data, tmp_path, Arguments(epochs=3, batch_size=10))
    assert (plan.epochs, plan.steps_per_epoch, plan.total_steps) == (3, 100, 300)
    assert plan.config.trainer.validation_interval == 100

    small = with_counts(dataset, tmp_path / "small", train=160, val=20)
    plan = plan_for(entry.name, small, tmp_path, Arguments(batch_size=8))
    assert plan.steps_per_epoch == 20
    assert plan.config.trainer.checkpoint_interval == 40  # whole epochs, at least 40 steps apart

    plan = plan_for(entry.name, data, tmp_path, eval_every_steps=100, checkpoint_every_steps=200)
    assert (plan.config.trainer.validation_interval, plan.config.trainer.checkpoint_interval) == (100, 200)


def test_global_batch_is_per_gpu_batch_times_clones(dataset, tmp_path):
    data = with_counts(dataset, tmp_path / "data", train=1000, val=100)
    plan = plan_for("frcnn-res50-coco", data, tmp_path, gpus_available=4)
    assert (plan.num_clones, plan.global_batch, plan.per_replica_batch) == (4, 16, 4)
    assert plan.steps_per_epoch == math.ceil(1000 / 16)
    assert plan.config.runtime.num_gpus == 4

    plan = plan_for("frcnn-res50-coco", data, tmp_path, Arguments(batch_size=24, num_clones=2), gpus_available=4)
    assert (plan.num_clones, plan.global_batch, plan.per_replica_batch) == (2, 24, 12)
    assert plan.config.runtime.num_gpus == 2
    assert plan.config.task.model.norm_activation.use_sync_bn  # batch statistics over both replicas


def test_batch_norm_is_synchronised_only_across_replicas(dataset, tmp_path):
    for name in ("ssd-mobilenet-v2-small", "frcnn-res50-coco"):
        assert not plan_for(name, dataset, tmp_path).config.task.model.norm_activation.use_sync_bn
        plan = plan_for(name, dataset, tmp_path, Arguments(batch_size=8, num_clones=2), gpus_available=2)
        assert plan.config.task.model.norm_activation.use_sync_bn
        # 16 images per replica give good statistics on their own: no all-reduce per BN layer
        plan = plan_for(name, dataset, tmp_path, Arguments(batch_size=32, num_clones=2), gpus_available=2)
        assert plan.per_replica_batch == 16 and not plan.config.task.model.norm_activation.use_sync_bn


def test_batch_norm_averages_span_a_small_part_of_the_run(dataset, tmp_path):
    """Model Garden's 0.99 made a 1,050-step quickstart evaluate to AP50 0 until step 441 (see experiment.py)."""
    data = with_counts(dataset, tmp_path / "data", train=800, val=100)

    def momentum(epochs: int) -> float:
        plan = plan_for("ssd-mobilenet-v2-small", data, tmp_path, Arguments(epochs=epochs, batch_size=8))
        return plan.config.task.model.norm_activation.norm_momentum

    assert momentum(5) == 0.9  # 500 steps: a window of 10 steps, the floor
    assert momentum(20) == pytest.approx(1 - 1 / 40)  # 2,000 steps: a 40-step window
    assert momentum(100) == 0.99  # 10,000 steps: Model Garden's own value, the ceiling
    plan = plan_for("ssd-mobilenet-v2-small", data, tmp_path, Arguments(epochs=5, batch_size=8),
                    overrides=["task.model.norm_activation.norm_momentum=0.97"])
    assert plan.config.task.model.norm_activation.norm_momentum == 0.97  # experts still decide


def test_retinanet_nms_candidates_are_sized_for_small_inputs(dataset, tmp_path):
    """5,000 candidates per image made each CPU evaluation batch cost 1.4 s instead of 0.18 s."""
    assert plan_for("ssd-mobilenet-v2-small", dataset, tmp_path).config.task.model.detection_generator.pre_nms_top_k == 1000
    default = load_config_defaults("fasterrcnn_resnetfpn_coco").task.model.detection_generator.pre_nms_top_k
    assert plan_for("frcnn-res50-coco", dataset, tmp_path).config.task.model.detection_generator.pre_nms_top_k == default


def load_config_defaults(experiment: str):
    from official.core import exp_factory

    return exp_factory.get_exp_config(experiment)


def test_batch_must_divide_over_clones_and_clones_need_gpus(dataset, tmp_path):
    with pytest.raises(ArgumentError, match=r"batch_size=10 cannot be split evenly over num_clones=4"):
        plan_for("frcnn-res50-coco", dataset, tmp_path, Arguments(batch_size=10), gpus_available=4)
    with pytest.raises(ArgumentError, match=r"num_clones=3 but only 2 GPUs"):
        plan_for("frcnn-res50-coco", dataset, tmp_path, Arguments(num_clones=3), gpus_available=2)
    with pytest.raises(ArgumentError, match=r"eval_every_steps must be at least 1"):
        plan_for("frcnn-res50-coco", dataset, tmp_path, eval_every_steps=0)


def test_input_size_must_be_a_multiple_of_the_models_stride(dataset, tmp_path):
    with pytest.raises(ArgumentError, match=r"input_size=200 is not a multiple of 128.*ssd-mobilenet-v2-coco"):
        plan_for("ssd-mobilenet-v2-coco", dataset, tmp_path, Arguments(input_size=200))
    plan = plan_for("frcnn-res50-coco", dataset, tmp_path, Arguments(input_size=320))
    assert plan.input_size == 320 and plan.config.task.model.input_size == [320, 320, 3]
    assert plan_for("frcnn-res50-coco", dataset, tmp_path).input_size == CATALOG.model("frcnn-res50-coco").input_size


# --------------------------------------------------------------------------------------------------
# Optimizer, schedule, augmentation, evaluation
# --------------------------------------------------------------------------------------------------


def learning_rates(plan: TrainingPlan, steps: list[int]) -> list[float]:
    from official.modeling import optimization

    schedule = optimization.OptimizerFactory(plan.config.trainer.optimizer_config).build_learning_rate()
    return [float(schedule(step)) for step in steps]


def test_learning_rate_warms_up_linearly_then_decays_to_zero_on_a_cosine(dataset, tmp_path):
    data = with_counts(dataset, tmp_path / "data", train=1000, val=100)
    plan = plan_for("ssd-mobilenet-v2-coco", data, tmp_path, Arguments(epochs=10, initial_learning_rate=0.004))
    total, warmup = plan.total_steps, plan.warmup_steps
    assert (total, warmup) == (630, 63)  # 10% of the run
    middle = warmup + (total - warmup) // 2
    rates = learning_rates(plan, [0, warmup // 2, warmup, middle, total - 1, total])
    assert rates[0] == 0.0
    assert rates[1] == pytest.approx(0.004 * (warmup // 2) / warmup, rel=1e-4)
    assert rates[2] == pytest.approx(0.004, rel=1e-6)  # the peak is where the warm-up ends
    assert rates[3] == pytest.approx(0.002, rel=1e-2)  # half-way down the cosine
    assert rates[4] < 1e-6 and rates[5] == pytest.approx(0.0, abs=1e-9)

    long_run = plan_for("ssd-mobilenet-v2-coco", with_counts(dataset, tmp_path / "big", 100_000, 10), tmp_path)
    assert long_run.warmup_steps == 500  # at most 500 steps


def test_optimizer_follows_the_catalog_and_keeps_model_gardens_weight_decay(dataset, tmp_path):
    ssd = plan_for("ssd-mobilenet-v2-coco", dataset, tmp_path).config
    assert ssd.trainer.optimizer_config.optimizer.type == "adam"
    assert ssd.task.losses.l2_weight_decay == pytest.approx(3e-5)  # retinanet_mobile_coco's
    frcnn = plan_for("frcnn-res50-coco", dataset, tmp_path).config
    assert frcnn.trainer.optimizer_config.optimizer.type == "sgd"
    assert frcnn.trainer.optimizer_config.optimizer.sgd.momentum == 0.9
    assert frcnn.task.losses.l2_weight_decay == pytest.approx(4e-5)  # fasterrcnn_resnetfpn_coco's
    assert frcnn.trainer.optimizer_config.learning_rate.cosine.initial_learning_rate == 0.01


@pytest.mark.parametrize("name", ["ssd-mobilenet-v2-coco", "maskrcnn-res50-coco"])
def test_augmentation_for_training_only_and_every_val_image_evaluated(dataset, tmp_path, name):
    task = plan_for(name, dataset, tmp_path).config.task
    train, val = task.train_data, task.validation_data
    assert (train.parser.aug_rand_hflip, train.parser.aug_scale_min, train.parser.aug_scale_max) == (True, 0.8, 1.25)
    assert (val.parser.aug_rand_hflip, val.parser.aug_scale_min, val.parser.aug_scale_max) == (False, 1.0, 1.0)
    assert (train.is_training, val.is_training) == (True, False)
    assert val.drop_remainder is False
    assert train.input_path == str(dataset / "train-*-of-*.tfrecord")
    assert val.input_path == str(dataset / "val-*-of-*.tfrecord")
    assert task.annotation_file is None and task.per_category_metrics is True


def test_checkpoint_modules_come_from_the_catalog(dataset, tmp_path):
    plan = plan_for("frcnn-res50-coco", dataset, tmp_path, init_checkpoint="/ckpt/resnet50/ckpt-1")
    assert plan.config.task.init_checkpoint == "/ckpt/resnet50/ckpt-1"
    assert plan.config.task.init_checkpoint_modules == "backbone"
    assert plan.restore.restored == ("backbone",)
    assert plan.restore.fresh == ("decoder", "rpn_head", "detection_head")
    assert plan_for("frcnn-res50-coco", dataset, tmp_path).config.task.init_checkpoint is None


def test_class_head_of_each_architecture(dataset, tmp_path):
    """The layers whose shape depends on the class count, which 'all-but-class-head' starts fresh."""
    from cvat_argo.training.restore import checkpoint_modules, class_head

    retina = plan_for("retinanet-spinenet-mobile-coco", dataset, tmp_path).config
    assert checkpoint_modules(retina) == ("backbone", "head")  # identity decoder: nothing to restore
    assert class_head(retina) == ("head/_classifier",)
    frcnn = plan_for("frcnn-res50-coco", dataset, tmp_path).config
    assert class_head(frcnn) == ("detection_head/*/_classifier", "detection_head/*/_box_regressor")
    masks = plan_for("maskrcnn-res50-coco", dataset, tmp_path).config
    assert checkpoint_modules(masks)[-1] == "mask_head"
    assert class_head(masks)[-1] == "mask_head/_mask_regressor"


# --------------------------------------------------------------------------------------------------
# Traps 3, 4 and 8: precision, params.yaml, steps_per_loop
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ssd-mobilenet-v2-coco", "frcnn-res50-coco", "maskrcnn-res50-coco"])
def test_float32_on_cpu_and_mixed_float16_on_gpu_never_bfloat16(dataset, tmp_path, name):
    """The experiments default to bfloat16 data, and the R-CNN ones to a bfloat16 policy (TPU settings)."""
    cpu = plan_for(name, dataset, tmp_path, gpus_available=0)
    assert cpu.mixed_precision is None
    assert cpu.config.runtime.mixed_precision_dtype == "float32"
    assert cpu.config.task.train_data.dtype == cpu.config.task.validation_data.dtype == "float32"
    assert (cpu.config.runtime.distribution_strategy, cpu.config.runtime.num_gpus) == ("one_device", 0)

    gpu = plan_for(name, dataset, tmp_path, gpus_available=2)
    assert gpu.mixed_precision == "mixed_float16"
    assert gpu.config.runtime.mixed_precision_dtype == "float16"
    assert gpu.config.runtime.loss_scale == "dynamic"
    assert gpu.config.task.train_data.dtype == "float32"  # cast to float16 by the first layer
    assert (gpu.config.runtime.distribution_strategy, gpu.config.runtime.num_gpus) == ("mirrored", 2)
    assert gpu.config.runtime.enable_xla is False


def test_params_yaml_is_written_and_loads_back_strictly(dataset, tmp_path):
    plan = plan_for("ssd-mobilenet-v2-coco", dataset, tmp_path, overrides=["task.model.anchor.num_scales=2"])
    path = save_config(plan)
    assert path == tmp_path / "model" / "params.yaml" and path.is_file()
    loaded = load_config(path, "retinanet_mobile_coco")
    assert loaded.as_dict() == plan.config.as_dict()
    assert loaded.task.model.backbone.type == "mobilenet"
    assert loaded.task.model.anchor.num_scales == 2


@pytest.mark.parametrize(("gpus", "bound"), [(0, MAX_STEPS_PER_LOOP_CPU), (1, MAX_STEPS_PER_LOOP_GPU)])
def test_steps_per_loop_stays_small_so_progress_is_visible(dataset, tmp_path, gpus, bound):
    """Orbit logs and checkpoints only between loops; the experiments loop over a whole COCO epoch."""
    data = with_counts(dataset, tmp_path / "data", train=100_000, val=1000)
    trainer = plan_for("frcnn-res50-coco", data, tmp_path, gpus_available=gpus).config.trainer
    assert trainer.steps_per_loop == bound <= 50
    assert trainer.summary_interval == trainer.steps_per_loop  # Orbit needs a multiple of steps_per_loop
    small = plan_for("frcnn-res50-coco", dataset, tmp_path, Arguments(batch_size=4), gpus_available=gpus)
    assert small.config.trainer.steps_per_loop == small.steps_per_epoch == 3


# --------------------------------------------------------------------------------------------------
# Expert overrides
# --------------------------------------------------------------------------------------------------


def test_overrides_apply_dotted_keys_and_yaml_values(dataset, tmp_path):
    config = plan_for("ssd-mobilenet-v2-coco", dataset, tmp_path, overrides=[
        "task.model.anchor.num_scales=2",
        "task.model.anchor.aspect_ratios=[1.0, 2.0]",
        "task.model.head={num_convs: 2, num_filters: 32}",
        "trainer.max_to_keep=2",
        "task.model.detection_generator.soft_nms_sigma=0.5",
    ]).config
    assert config.task.model.anchor.num_scales == 2
    assert config.task.model.anchor.aspect_ratios == [1.0, 2.0]
    assert (config.task.model.head.num_convs, config.task.model.head.num_filters) == (2, 32)
    assert config.trainer.max_to_keep == 2
    assert config.task.model.detection_generator.soft_nms_sigma == 0.5


@pytest.mark.parametrize(("override", "message"), [
    ("task.model.anchor.num_scale=2", r"override task.model.anchor.num_scale: unknown key in task.model.anchor 'num_scale' \(did you mean 'num_scales'\?\)"),
    ("task.modle.anchor.num_scales=2", r"unknown key in task 'modle' \(did you mean 'model'\?\)"),
    ("task.model.head={num_conv: 2}", r"override task.model.head.num_conv: unknown key"),
    ("task.model.anchor.num_scales=two", r"override task.model.anchor.num_scales='two': a str does not fit there"),
    ("task.model.anchor=2", r"override task.model.anchor=2: a int does not fit there"),
    ("task.model.anchor.num_scales.x=2", r"task.model.anchor.num_scales is a value, not a section"),
    ("task.model.anchor.num_scales", r"is not key=value"),
    ("trainer.train_steps=5", r"override trainer.train_steps is not allowed: use the epochs argument"),
    ("task.model.num_classes=5", r"labels.json"),
    ("task.train_data={global_batch_size: 3}", r"use the batch_size argument"),
    ("task.model.input_size=[256, 256, 3]", r"use the input_size argument"),
    ("task.model.max_level=8", r"input_size=384 is not a multiple of 256, which model ssd-mobilenet-v2-coco needs .*\(max_level=8\)"),
])
def test_bad_overrides_are_refused_with_a_readable_message(dataset, tmp_path, override, message):
    with pytest.raises(ArgumentError, match=message):
        plan_for("ssd-mobilenet-v2-coco", dataset, tmp_path, overrides=[override])


# --------------------------------------------------------------------------------------------------
# The dataset artifact (trap 7: numeric source ids)
# --------------------------------------------------------------------------------------------------


def test_the_task_decoder_reads_our_source_ids_as_numbers(dataset):
    from official.vision.dataloaders import tf_example_decoder, utils

    record = next(read_records(dataset / "train-00000-of-00001.tfrecord"))
    decoded = tf_example_decoder.TfExampleDecoder(include_mask=True).decode(tf.constant(record))
    assert decoded["source_id"].numpy() == b"1000"
    assert int(utils.process_source_id(decoded["source_id"]).numpy()) == 1000
    assert decoded["groundtruth_instance_masks"].shape[0] == decoded["groundtruth_classes"].shape[0] > 0


def rewrite_first_record(dataset: Path, target: Path, change) -> Path:
    shutil.copytree(dataset, target)
    shard = target / "train-00000-of-00001.tfrecord"
    records = list(read_records(shard))
    features = decode_example(records[0])
    change(features)
    records[0] = encode_example(features)
    from cvat_argo.formats.tfrecord.records import TFRecordWriter

    with TFRecordWriter(shard) as writer:
        for record in records:
            writer.write(record)
    return target


def test_non_numeric_source_ids_are_refused_before_training(dataset, tmp_path):
    from cvat_argo.formats.tfrecord.example import BytesList

    def empty_id(features):
        features["image/source_id"] = BytesList([b""])

    bad = rewrite_first_record(dataset, tmp_path / "bad", empty_id)
    with pytest.raises(DatasetError, match=r"record 0 has image/source_id b''; it must be a decimal number"):
        plan_for("ssd-mobilenet-v2-coco", bad, tmp_path)


def test_mask_rcnn_refuses_records_without_masks(dataset, tmp_path):
    no_masks = write_tiny_dataset(tmp_path / "no-masks", with_masks=False)
    with pytest.raises(DatasetError, match=r"no image/object/mask; this model trains on masks"):
        plan_for("maskrcnn-res50-coco", no_masks, tmp_path)
    assert plan_for("frcnn-res50-coco", no_masks, tmp_path).config.task.model.include_mask is False


def test_dataset_problems_name_the_file(dataset, tmp_path):
    with pytest.raises(DatasetError, match=r"labels.json"):
        plan_for("ssd-mobilenet-v2-coco", tmp_path, tmp_path)
    empty = with_counts(dataset, tmp_path / "empty", train=0, val=0)
    with pytest.raises(DatasetError, match=r"dataset.json: the training split is empty"):
        plan_for("ssd-mobilenet-v2-coco", empty, tmp_path)


# --------------------------------------------------------------------------------------------------
# Trap 2 and per-category AP: COCO evaluation fixes
# --------------------------------------------------------------------------------------------------


def retinanet_groundtruths() -> dict[str, list[np.ndarray]]:
    """Ground truth as the RetinaNet parser batches it: num_detections is [batch, 1], not [batch]."""
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 0, 0]], [[5, 5, 20, 20], [1, 1, 30, 30]]], dtype=np.float32)
    return {"source_id": [np.array([1000, 1001])], "height": [np.array([64, 64])], "width": [np.array([64, 64])],
            "num_detections": [np.array([[1], [2]])], "boxes": [boxes], "classes": [np.array([[1, 0], [2, 1]])],
            "areas": [np.array([[100, 0], [225, 841]], dtype=np.float32)], "is_crowds": [np.zeros((2, 2), np.int32)]}


def unpatched(function):
    return getattr(function, "__wrapped__", function)


def test_numpy2_coco_groundtruth_fix(monkeypatch):
    """NumPy 2.1 warns on int() of a 1-element array (later NumPy raises TypeError); both fail here."""
    from official.vision.evaluation import coco_utils

    monkeypatch.setattr(coco_utils, "convert_groundtruths_to_coco_dataset",
                        unpatched(coco_utils.convert_groundtruths_to_coco_dataset))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises((DeprecationWarning, TypeError), match=r"(ndim > 0 to a scalar|0-dimensional arrays)"):
            coco_utils.convert_groundtruths_to_coco_dataset(retinanet_groundtruths())
        assert compat.patch_coco_groundtruth_numpy2() is True
        assert compat.patch_coco_groundtruth_numpy2() is False  # idempotent
        converted = coco_utils.convert_groundtruths_to_coco_dataset(retinanet_groundtruths())
    assert [(a["image_id"], a["category_id"]) for a in converted["annotations"]] == [(1000, 1), (1001, 2), (1001, 1)]


def evaluate_boxes(groundtruths: dict[str, list[np.ndarray]]) -> dict[str, float]:
    from official.vision.evaluation import coco_evaluator

    evaluator = coco_evaluator.COCOEvaluator(annotation_file=None, include_mask=False, per_category_metrics=True)
    truth = {key: tf.constant(value[0]) for key, value in groundtruths.items()}
    predictions = {
        "source_id": truth["source_id"], "num_detections": tf.constant([1, 2]),
        "image_info": tf.constant([[[64, 64], [64, 64], [1, 1], [0, 0]]] * 2, tf.float32),
        "detection_boxes": truth["boxes"], "detection_classes": truth["classes"],
        "detection_scores": tf.constant([[0.9, 0.0], [0.8, 0.7]]),
    }
    evaluator.update_state(truth, predictions)
    return evaluator.result()


def test_per_category_ap_needs_the_category_stats_fix(monkeypatch):
    """Model Garden reads ``COCOeval.category_stats``, which only Google's internal COCO API sets."""
    from pycocotools import cocoeval

    compat.patch_coco_groundtruth_numpy2()
    monkeypatch.setattr(cocoeval.COCOeval, "summarize", unpatched(cocoeval.COCOeval.summarize))
    assert not any("ByCategory" in key for key in evaluate_boxes(retinanet_groundtruths()))
    assert compat.patch_coco_per_category_stats() is True
    assert compat.patch_coco_per_category_stats() is False
    metrics = evaluate_boxes(retinanet_groundtruths())
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["Precision mAP ByCategory/1"] == pytest.approx(1.0)
    assert metrics["Precision mAP ByCategory/2"] == pytest.approx(1.0)
    assert metrics["Recall AR (large) ByCategory/2"] == -1.0  # no large objects: undefined, as COCO says


def test_build_experiment_applies_the_coco_fixes(dataset, tmp_path):
    from official.vision.evaluation import coco_utils
    from pycocotools import cocoeval

    plan_for("ssd-mobilenet-v2-coco", dataset, tmp_path)
    assert coco_utils.convert_groundtruths_to_coco_dataset is not unpatched(coco_utils.convert_groundtruths_to_coco_dataset)
    assert cocoeval.COCOeval.summarize is not unpatched(cocoeval.COCOeval.summarize)


def test_sync_batch_norm_all_reduces_once_per_layer_with_the_same_statistics(monkeypatch):
    """The patched synchronised BN sends one stacked all-reduce per call; output and gradients are unchanged."""
    import tf_keras
    from tf_keras.src.layers.normalization import batch_normalization

    base = batch_normalization.BatchNormalizationBase
    monkeypatch.setattr(base, "_sync_calculate_mean_and_var", unpatched(base._sync_calculate_mean_and_var))
    calls = []
    all_reduce = tf.distribute.ReplicaContext.all_reduce
    monkeypatch.setattr(tf.distribute.ReplicaContext, "all_reduce",
                        lambda self, op, value, options=None: calls.append(value) or all_reduce(self, op, value, options))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    x = tf.random.stateless_normal((4, 5, 5, 3), seed=(1, 2), mean=2.0)

    def run() -> list[np.ndarray]:
        with strategy.scope():
            layer = tf_keras.layers.BatchNormalization(synchronized=True, momentum=0.5)
            layer.build(x.shape)

        @tf.function
        def step():
            def replica():
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    loss = tf.reduce_sum(layer(x, training=True) ** 3)
                return loss, tape.gradient(loss, x)
            return strategy.run(replica)
        loss, grad = step()
        return [loss.numpy(), grad.numpy(), layer.moving_mean.numpy(), layer.moving_variance.numpy()]

    before, three = run(), len(calls)
    assert compat.patch_sync_batch_norm_single_all_reduce() is True
    assert compat.patch_sync_batch_norm_single_all_reduce() is False  # idempotent
    calls.clear()
    after = run()
    # forward and backward: three all-reduces before (the count gets no gradient), one now
    assert (three, len(calls)) == (3 + 2, 1 + 1)
    assert calls[0].shape == (3, 1, 1, 1, 3)  # sum, sum of squares and count per channel, stacked
    for old, new in zip(before, after, strict=True):
        np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Real models (slow)
# --------------------------------------------------------------------------------------------------


def small_overrides(name: str) -> tuple[str, ...]:
    entry = CATALOG.model(name)
    if entry.architecture == "retinanet":
        return ()
    decoder = ("task.model.decoder.fpn.num_filters=32",) if entry.decoder["type"] == "fpn" else (
        "task.model.decoder.nasfpn={num_filters: 32, num_repeats: 1}",)
    return SMALL_RCNN + decoder + (SMALL_MASKS if entry.masks else ())


def train_steps(plan: TrainingPlan, steps: int) -> tuple[object, list[dict]]:
    """Build the task and model and run the task's own train step eagerly (tracing costs more than it saves)."""
    task, model = build_model(plan)
    optimizer = task.create_optimizer(plan.config.trainer.optimizer_config, plan.config.runtime)
    metrics = task.build_metrics(training=True)
    inputs = iter(task.build_inputs(plan.config.task.train_data))
    logs = []
    for _ in range(steps):
        entry = task.train_step(next(inputs), model, optimizer, metrics)
        # The task returns the total loss; its metrics hold the parts (mask_loss, ...), averaged so far.
        logs.append({**{m.name: float(m.result()) for m in metrics}, **{k: float(v) for k, v in entry.items()}})
    return model, logs


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size"), [
    ("frcnn-res50-coco", 64),
    ("frcnn-res101-coco", 64),
    ("frcnn-inception-resnet-v2-coco", 64),
    ("frcnn-nas-coco", 128),
    ("maskrcnn-res50-coco", 64),
])
def test_rcnn_models_train_a_step_on_cpu(dataset, tmp_path, name, size):
    started = time.perf_counter()
    plan = plan_for(name, dataset, tmp_path, Arguments(input_size=size, batch_size=2, epochs=1),
                    overrides=small_overrides(name))
    model, logs = train_steps(plan, 1)
    print(f"{name} at {size} px: build + 1 train step in {time.perf_counter() - started:.1f} s")
    assert math.isfinite(logs[0]["loss"]) and logs[0]["loss"] > 0
    assert model.backbone.compute_dtype == "float32"
    if CATALOG.model(name).masks:
        assert logs[0]["mask_loss"] > 0  # the masks reached the loss


@pytest.mark.slow
def test_ssd_trains_and_evaluates_with_run_experiment(dataset, tmp_path):
    """The whole Orbit path the train step uses: 2 steps (12 images / batch 6), then COCO evaluation."""
    from official.common import distribute_utils
    from official.core import task_factory, train_lib

    started = time.perf_counter()
    plan = plan_for("ssd-mobilenet-v2-coco", dataset, tmp_path, Arguments(input_size=128, batch_size=6, epochs=1),
                    overrides=EAGER)
    assert plan.total_steps == 2 and plan.validation_steps == 1
    save_config(plan)
    runtime = plan.config.runtime
    strategy = distribute_utils.get_distribution_strategy(runtime.distribution_strategy, num_gpus=runtime.num_gpus)
    with strategy.scope():
        task = task_factory.get_task(plan.config.task, logging_dir=str(plan.model_dir))
    model, metrics = train_lib.run_experiment(
        distribution_strategy=strategy, task=task, mode="train_and_eval", params=plan.config,
        model_dir=str(plan.model_dir), run_post_eval=True)
    print(f"ssd-mobilenet-v2-coco at 128 px: 2 train steps + evaluation in {time.perf_counter() - started:.1f} s")
    assert tf.train.latest_checkpoint(str(plan.model_dir)).endswith("ckpt-2")
    assert math.isfinite(metrics["total_loss"])
    assert 0.0 <= metrics["AP50"] <= 1.0
    assert {f"Precision mAP ByCategory/{i}" for i in (1, 2, 3)} <= set(metrics)
    # Trap 1 in the built model: MobileNetV2 features 3..5, FPN adds 6 and 7; no SpineNet anywhere.
    assert type(model.backbone).__name__ == "MobileNet"
    assert type(model.decoder).__name__ == "FPN"
    assert not any("spine" in layer.name for layer in model.backbone.layers)
    assert sorted(model.backbone.output_specs, key=int) == ["2", "3", "4", "5"]


@pytest.mark.slow
def test_all_modules_with_another_class_count_restores_all_but_the_class_head(dataset, tmp_path):
    """Model Garden's 'all' fails on a class-count mismatch; we restore all but the class head
    (variable by variable in tests/test_restore.py); Model Garden's own field keeps a safe subset."""
    entry = CATALOG.model("ssd-mobilenet-v2-coco")
    restore_all = entry.model_copy(update={"checkpoint": entry.checkpoint.model_copy(update={"modules": "all"})})
    arguments = Arguments(input_size=128)
    source = build_experiment(restore_all, arguments, dataset, model_dir=tmp_path / "source")
    _, source_model = build_model(source)
    checkpoint = tf.train.Checkpoint(**source_model.checkpoint_items).write(str(tmp_path / "ckpt" / "ckpt"))

    same = build_experiment(restore_all, arguments, dataset, model_dir=tmp_path / "same", init_checkpoint=checkpoint)
    assert same.config.task.init_checkpoint_modules == "all" and same.notes == ()
    task, model = build_model(same)
    task.initialize(model)
    np.testing.assert_array_equal(model.head.weights[-1].numpy(), source_model.head.weights[-1].numpy())

    two_labels = write_tiny_dataset(tmp_path / "two", num_classes=2)
    other = build_experiment(restore_all, arguments, two_labels, model_dir=tmp_path / "other", init_checkpoint=checkpoint)
    assert other.config.task.init_checkpoint_modules == ["backbone", "decoder"]
    assert other.restore.mode == "all-but-class-head" and other.restore.fresh == ("head/_classifier",)
    assert "restoring all but the class head" in other.notes[0]
    task, model = build_model(other)
    task.initialize(model)
    np.testing.assert_array_equal(model.backbone.weights[0].numpy(), source_model.backbone.weights[0].numpy())

    # What the fallback avoids: Model Garden's own 'all' on the same checkpoint.
    other.config.task.init_checkpoint_modules = "all"
    task, model = build_model(other)
    with pytest.raises(ValueError, match=r"Received incompatible tensor with shape \(36,\)"):
        task.initialize(model)

    with pytest.raises(ArgumentError, match=r"cannot be read"):
        build_experiment(restore_all, arguments, dataset, model_dir=tmp_path / "x", init_checkpoint=str(tmp_path / "nothing"))

    # An earlier run's model (the next round): 'all' with its labels; the same width is not enough.
    labels = ("rectangle", "ellipse", "triangle")
    again = build_experiment(entry, arguments, dataset, model_dir=tmp_path / "again", init_checkpoint=checkpoint,
                             init_modules="all", checkpoint_labels=labels)
    assert again.config.task.init_checkpoint_modules == "all" and again.notes == ()
    swapped = build_experiment(entry, arguments, dataset, model_dir=tmp_path / "swapped", init_checkpoint=checkpoint,
                               init_modules="all", checkpoint_labels=("ellipse", "rectangle", "triangle"))
    assert swapped.config.task.init_checkpoint_modules == ["backbone", "decoder"]
    assert swapped.restore.mode == "all-but-class-head" and again.restore.mode == "all"
    assert "trained on the labels ellipse, rectangle, triangle" in swapped.notes[0]
