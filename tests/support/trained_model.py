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
SSD_STEPS = 60  # 20 epochs x ceil(12 images / 4); at 30 steps the sharpened scores stay below 0.05
#: The batch-norm momentum and NMS candidates this fixture's scores were calibrated with (Model
#: Garden's defaults). The train stage now sizes both for short runs; 60 steps at momentum 0.9 give a
#: model whose sharpened scores saturate, and the runtime comparisons need them spread out.
SSD_OVERRIDES = ("task.model.norm_activation.norm_momentum=0.99", "task.model.detection_generator.pre_nms_top_k=5000")
#: Factor on the class head's kernels after training (see sharpen_class_head).
SHARPEN = 5.0
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
                      score_threshold: float = TEST_SCORE_THRESHOLD, sharpen: float = 0.0) -> TinyModel:
    """Dataset -> train -> convert under ``root``, with the real stage code."""
    from cvat_argo.steps import convert, train

    dataset = write_tiny_dataset(root / "dataset", train=train_images, val=val_images)
    model = root / "model"
    train.run(model=name, model_spec="", args=args, dataset=dataset, base_model=None, out=model,
              overrides=overrides, eval_every_steps=steps, checkpoint_every_steps=steps)
    if sharpen:
        sharpen_class_head(model, sharpen)
    converted = root / "converted"
    convert.run(model, dataset, converted, score_threshold=score_threshold, test_images=4)
    return TinyModel(dataset, model, converted)


def sharpen_class_head(model_dir: Path, factor: float) -> Path:
    """Write ``ckpt-<N+1>``: the newest checkpoint with the RetinaNet class head's kernels times ``factor``.

    After a few dozen steps from scratch every anchor still scores about the focal-loss prior
    (0.014-0.015 over the top 100 detections): ties everywhere, so a comparison of two runtimes could
    not tell a faithful export from a broken one. Scaling the class logits' kernels (not the bias)
    spreads the scores (about 0.45-0.7 for factor 5) while the model stays the trained one in every
    other weight; the convert stage exports whatever the newest checkpoint holds.
    """
    import tensorflow as tf
    from official.core import task_factory

    from cvat_argo.export.inputs import read_trained_model
    from cvat_argo.training.experiment import load_config

    trained = read_trained_model(model_dir)
    config = load_config(trained.params_file, trained.entry.experiment)
    network = task_factory.get_task(config.task).build_model()
    tf.train.Checkpoint(model=network).read(str(trained.checkpoint)).expect_partial()
    for weight in network.head._classifier.weights:
        if "bias" not in weight.name:
            weight.assign(weight * factor)
    return Path(tf.train.Checkpoint(model=network).write(str(model_dir / f"ckpt-{trained.step + 1}")))


def converted_ssd(tmp_path_factory) -> TinyModel:
    """The session's tiny converted SSD (trained and converted on first use)."""
    key = (SSD, str(tmp_path_factory.getbasetemp()))
    if key not in _CACHE:
        _CACHE[key] = train_and_convert(tmp_path_factory.mktemp("tiny-ssd"), overrides=SSD_OVERRIDES,
                                        sharpen=SHARPEN)
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
