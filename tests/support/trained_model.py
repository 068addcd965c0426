"""Tiny trained and converted models for the convert and annotate tests, built once per pytest session.

``converted_ssd(tmp_path_factory)`` trains ``ssd-mobilenet-v2-coco`` at 128 px on the tiny shapes
dataset for a few dozen steps (enough for scores that differ from the focal-loss prior, so that
comparisons between runtimes mean something) and runs the real convert stage on it. The result is
cached per session (keyed by pytest's base temp folder), so any test module can call it.
On 2 CPU cores: about 1 min of training and 2-3 min of conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from support.tiny_dataset import write_tiny_dataset

SSD = "ssd-mobilenet-v2-coco"
#: Short: a few dozen steps; sharpen_class_head then spreads the scores out from the ~0.01 prior.
SSD_ARGS = "epochs=20,batch_size=4,input_size=128,initial_learning_rate=0.01"
SSD_STEPS = 60  # 20 epochs x ceil(12 images / 4)
#: The batch-norm momentum and NMS candidates this fixture's scores were calibrated with (Model
#: Garden's defaults). The train stage now sizes both for short runs; 60 steps at momentum 0.9 give a
#: model whose sharpened scores saturate, and the runtime comparisons need them spread out.
SSD_OVERRIDES = ("task.model.norm_activation.norm_momentum=0.99", "task.model.detection_generator.pre_nms_top_k=5000")
#: What sharpen_class_head makes of the median validation image: its best foreground anchor scores
#: SHARPEN_TOP, its SHARPEN_RANK-th best SHARPEN_LAST (a little over TEST_SCORE_THRESHOLD).
SHARPEN_TOP, SHARPEN_RANK, SHARPEN_LAST = 0.75, 60, 0.08
#: Lowest score the test exports return: the tiny model's scores are low, and the tests compare many.
TEST_SCORE_THRESHOLD = 0.05
#: CPU-sized R-CNN heads for the training tests: fewer proposals, sampled RoIs and filters. The
#: backbones stay as the catalog has them (ResNet depth cannot shrink); 64 px images keep them cheap.
SMALL_RCNN_HEADS = (
    "task.model.roi_sampler.num_sampled_rois=32",
    "task.model.roi_generator.num_proposals=64",
    "task.model.roi_generator.pre_nms_top_k=256",
    "task.model.roi_generator.test_num_proposals=64",
    "task.model.roi_generator.test_pre_nms_top_k=256",
    "task.model.rpn_head.num_filters=32",
    "task.model.detection_head={num_convs: 1, num_filters: 32, fc_dims: 64}",
)
#: The converted tiny Faster R-CNN also gets a narrower FPN, so one step runs in seconds on a CPU.
SMALL_RCNN = (*SMALL_RCNN_HEADS, "task.model.decoder.fpn.num_filters=32")
#: And Mask R-CNN a small mask head.
SMALL_MASKS = ("task.model.mask_sampler.num_sampled_masks=8", "task.model.mask_head={num_convs: 1, num_filters: 32}")


@dataclass(frozen=True)
class TinyModel:
    dataset: Path  # dataset stage output
    model: Path  # train stage output
    converted: Path  # convert stage output


_CACHE: dict[tuple[str, str], TinyModel] = {}


def train_and_convert(root: Path, name: str = SSD, args: str = SSD_ARGS, overrides: tuple[str, ...] = (),
                      steps: int = SSD_STEPS, train_images: int = 12, val_images: int = 4,
                      score_threshold: float = TEST_SCORE_THRESHOLD, sharpen: bool = False) -> TinyModel:
    """Dataset -> train -> convert under ``root``, with the real stage code."""
    from cvat_argo.steps import convert, train

    dataset = write_tiny_dataset(root / "dataset", train=train_images, val=val_images)
    model = root / "model"
    train.run(model=name, model_spec="", args=args, dataset=dataset, base_model=None, out=model,
              overrides=overrides, eval_every_steps=steps, checkpoint_every_steps=steps)
    if sharpen:
        sharpen_class_head(model, dataset)
    converted = root / "converted"
    convert.run(model, dataset, converted, score_threshold=score_threshold, test_images=4)
    return TinyModel(dataset, model, converted)


def sharpen_class_head(model_dir: Path, dataset: Path) -> Path:
    """Write ``ckpt-<N+1>``: the newest checkpoint with the class logits spread out by an affine map.

    After a few dozen steps from scratch every anchor still scores about the focal-loss prior
    (0.013-0.015): ties everywhere, so a comparison of two runtimes could not tell a faithful export
    from a broken one; and how far 60 steps move the head depends on the CPU's kernels (a fixed
    factor on the kernels gave scores of 0.45-0.7 on one machine and under the 0.05 floor on
    another). Scaling the class head's (pointwise) kernel and bias by ``f`` and adding ``c`` to the bias turns
    every class logit ``z`` into ``f * z + c``; ``f`` and ``c`` are solved for on the validation
    images so that the median image's best foreground anchor scores :data:`SHARPEN_TOP` and its
    :data:`SHARPEN_RANK`-th best :data:`SHARPEN_LAST`: scores spread over a wide band and only a few
    dozen detections per image clear the floor, on any machine. Every other weight stays the trained
    one; the convert stage exports whatever the newest checkpoint holds.
    """
    import numpy as np
    import tensorflow as tf
    from official.core import task_factory
    from official.vision.ops import preprocess_ops

    from cvat_argo.export.inputs import read_trained_model
    from cvat_argo.export.self_test import self_test_images
    from cvat_argo.training.experiment import load_config

    trained = read_trained_model(model_dir)
    config = load_config(trained.params_file, trained.entry.experiment)
    network = task_factory.get_task(config.task).build_model()
    tf.train.Checkpoint(model=network).read(str(trained.checkpoint)).expect_partial()
    side = config.task.model.input_size[:2]
    pixels = tf.stack([preprocess_ops.normalize_image(tf.image.resize(tf.constant(image), side))
                       for _, image in self_test_images(dataset, 4)])
    features = network.decoder(network.backbone(pixels, training=False), training=False)
    classes = config.task.model.num_classes  # channels: anchors x classes, class 0 is background
    logits = np.concatenate([level.numpy().reshape(len(pixels), -1, classes)[..., 1:].reshape(len(pixels), -1)
                             for level in network.head(features, training=False)[0].values()], axis=1)
    ranked = np.median(-np.sort(-logits, axis=1)[:, :SHARPEN_RANK], axis=0)
    spread = float(ranked[0] - ranked[-1])
    assert spread > 1e-6, f"the trained class head gives every anchor the same score ({ranked[0]})"
    logit = lambda p: float(np.log(p / (1.0 - p)))  # noqa: E731
    factor = (logit(SHARPEN_TOP) - logit(SHARPEN_LAST)) / spread
    shift = logit(SHARPEN_TOP) - factor * float(ranked[0])
    # The head's last layer is a separable convolution: the logits are linear in its pointwise
    # kernel and bias (scaling the depthwise kernel too would square the factor).
    for weight in network.head._classifier.weights:
        if "bias" in weight.name:
            weight.assign(weight * factor + shift)
        elif "depthwise" not in weight.name:
            weight.assign(weight * factor)
    return Path(tf.train.Checkpoint(model=network).write(str(model_dir / f"ckpt-{trained.step + 1}")))


def converted_ssd(tmp_path_factory) -> TinyModel:
    """The session's tiny converted SSD (trained and converted on first use)."""
    key = (SSD, str(tmp_path_factory.getbasetemp()))
    if key not in _CACHE:
        _CACHE[key] = train_and_convert(tmp_path_factory.mktemp("tiny-ssd"), overrides=SSD_OVERRIDES,
                                        sharpen=True)
    return _CACHE[key]


def converted_rcnn(tmp_path_factory) -> TinyModel:
    """A one-step Faster R-CNN at 64 px: SavedModel only (no TFLite for two-stage models)."""
    key = ("frcnn-res50-coco", str(tmp_path_factory.getbasetemp()))
    if key not in _CACHE:
        _CACHE[key] = train_and_convert(
            tmp_path_factory.mktemp("tiny-rcnn"), name="frcnn-res50-coco",
            args="epochs=1,batch_size=2,input_size=64", overrides=SMALL_RCNN, steps=1, train_images=2,
            val_images=2, score_threshold=0.0)
    return _CACHE[key]
