"""convert: the trained model exported for serving (SavedModel, TFLite), self-tested against the checkpoint.

``python -m cvat_argo.steps.convert --model MODEL_DIR --dataset DATASET_DIR --out OUT_DIR
[--score-threshold 0.05] [--self-test-images 8]``

``MODEL_DIR`` is the train stage's output (checkpoints, ``params.yaml``, ``model.json``,
``metrics.json``), ``DATASET_DIR`` the dataset stage's (``labels.json``, ``val-*`` shards). The
output, built in ``OUT_DIR.partial`` and renamed when complete:

* ``saved_model/``: Model Garden's ``image_tensor`` export wrapped so that its ``serving_default``
  signature returns boxes in the pixels of the images passed in (Model Garden returns them in its
  resized input frame, trap 6): input ``images`` uint8 [B, H, W, 3] of any size; outputs
  ``detection_boxes`` (ymin, xmin, ymax, xmax, original pixels), ``detection_scores``,
  ``detection_classes`` (int32, 1-based label ids), ``num_detections`` (slots past it are padding),
  ``image_info``, and ``detection_masks`` for Mask R-CNN.
* ``model_fp32.tflite``, ``model_fp16.tflite`` and ``tflite.json`` (how to feed them) for catalog
  entries with ``tflite: true``, through Model Garden's own path (``nms_version: tflite``,
  ``input_type='tflite'``, ``export_tflite_lib.convert_tflite_model``). Two-stage R-CNN models have no
  TFLite export: ``model.json`` says why.
* ``labels.json``, ``model.json`` (what is inside, every file's size and sha256, the signatures,
  the runtimes), ``model_card.md``, ``params.yaml`` and ``self_test.json``.

Self-test: on a few validation images the trained Keras model (newest checkpoint) and every export,
run through :mod:`cvat_argo.inference.serving`, must give the same detections within a tolerance; a mismatch
fails the stage and leaves the details in ``OUT_DIR.partial/self_test.json``.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..entry import exit_without_teardown, run_step
from ..errors import CvatArgoError, DatasetError
from ..formats.label_map import read_labels_json, write_labels_json
from ..formats.tfrecord import BytesList, decode_example, read_records
from ..inference import serving
from ..inference.serving import Detections
from ..request.model_entry import ModelEntry
from ..storage.store import file_sha256

FORMAT = "cvat-argo/convert"
FORMAT_VERSION = 1
INPUT_NAME = "images"
#: Model Garden's default lowest score of a returned detection (``pre_nms_score_threshold``).
DEFAULT_SCORE_THRESHOLD = 0.05
DEFAULT_SELF_TEST_IMAGES = 8
NO_TFLITE_REASON = {
    "faster_rcnn": "Faster R-CNN is a two-stage model: Model Garden's TFLite path (nms_version 'tflite', the "
                   "TFLite_Detection_PostProcess op) covers single-stage RetinaNet heads only, not the region "
                   "proposal and ROI-align stages; serve it with the SavedModel",
    "mask_rcnn": "Mask R-CNN is a two-stage model: Model Garden's TFLite path (nms_version 'tflite', the "
                 "TFLite_Detection_PostProcess op) covers single-stage RetinaNet heads only, not the region "
                 "proposal, ROI-align and mask stages; serve it with the SavedModel",
}
_CKPT = re.compile(r"^ckpt-(\d+)\.index$")


class ConvertError(CvatArgoError):
    """The model or dataset folder cannot be converted: names the file at fault."""


class SelfTestError(CvatArgoError):
    """An export does not reproduce the trained model's detections."""

    exit_code = 5


@dataclass(frozen=True)
class Tolerance:
    """How close an export's detection must be to the trained model's: scores absolute, boxes in pixels."""

    score: float
    box_pixels: float
    box_fraction: float  # of the image's longer side; the larger of the two box limits applies

    def box_limit(self, size: tuple[int, int]) -> float:
        return max(self.box_pixels, self.box_fraction * max(size))


TOLERANCES = {
    "saved_model": Tolerance(score=0.01, box_pixels=1.0, box_fraction=0.01),
    "tflite-fp32": Tolerance(score=0.01, box_pixels=1.0, box_fraction=0.01),
    "tflite-fp16": Tolerance(score=0.03, box_pixels=2.0, box_fraction=0.02),
}


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedModel:
    folder: Path
    manifest: dict[str, Any]
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
    manifest_path = folder / "model.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        entry = ModelEntry.model_validate(manifest["model_spec"])
        labels = tuple(manifest["labels"])
        input_size = int(manifest["input_size"])
    except FileNotFoundError:
        raise ConvertError(f"{manifest_path} is missing: is {folder} the train stage's output folder?") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConvertError(f"{manifest_path}: cannot read the model manifest: {error}") from None
    params_file = folder / "params.yaml"
    if not params_file.is_file():
        raise ConvertError(f"{params_file} is missing: the train stage writes the Model Garden config there, "
                           "and export needs it to rebuild the model")
    checkpoint, step = newest_checkpoint(folder)
    return TrainedModel(folder, manifest, entry, params_file, checkpoint, step, labels, input_size)


def read_dataset_labels(dataset: Path, model: TrainedModel) -> tuple[str, ...]:
    path = dataset / "labels.json"
    if not path.is_file():
        raise DatasetError(f"{path} is missing: is {dataset} the dataset stage's output folder?")
    labels = tuple(read_labels_json(path))
    if labels != model.labels:
        raise DatasetError(f"{path}: labels {list(labels)} differ from the ones the model was trained on "
                           f"({model.folder / 'model.json'}: {list(model.labels)})")
    return labels


def self_test_images(dataset: Path, count: int) -> list[tuple[str, np.ndarray]]:
    """Up to ``count`` decoded validation images (training images when there is no validation split)."""
    from PIL import Image

    shards = sorted(dataset.glob("val-*-of-*.tfrecord")) or sorted(dataset.glob("train-*-of-*.tfrecord"))
    images = []
    records = itertools.chain.from_iterable(read_records(shard) for shard in shards)
    for record in itertools.islice(records, count):
        features = decode_example(record)
        encoded = features.get("image/encoded")
        name = features.get("image/filename")
        if not isinstance(encoded, BytesList) or not encoded.values:
            continue
        label = name.values[0].decode("utf-8", "replace") if isinstance(name, BytesList) and name.values else ""
        with Image.open(io.BytesIO(encoded.values[0])) as image:
            images.append((label or f"record {len(images)}", np.asarray(image.convert("RGB"))))
    return images


# --------------------------------------------------------------------------------------------------
# Model Garden config and export
# --------------------------------------------------------------------------------------------------


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


def _original_pixels_module_class() -> type:
    """Model Garden's DetectionModule, with boxes mapped back to the original image (trap 6).

    Model Garden returns ``detection_boxes`` in the frame of its resized, padded input; the mapping
    is in ``image_info`` ([[h, w], [scaled h, scaled w], [y scale, x scale], [y offset, x offset]]).
    Doing it inside the signature makes the SavedModel self-contained: any caller of
    ``serving_default`` gets boxes in the pixels of the images it passed.
    """
    import tensorflow as tf
    from official.vision.serving import detection

    class OriginalPixelsDetectionModule(detection.DetectionModule):
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            outputs = dict(super().serve(images))
            info = outputs["image_info"]
            scale = tf.tile(info[:, 2:3, :], [1, 1, 2])
            offset = tf.tile(info[:, 3:4, :], [1, 1, 2])
            size = tf.tile(info[:, 0:1, :], [1, 1, 2])
            boxes = (outputs["detection_boxes"] + offset) / scale
            outputs["detection_boxes"] = tf.clip_by_value(boxes, 0.0, size)
            outputs["detection_classes"] = tf.cast(outputs["detection_classes"], tf.int32)
            outputs["num_detections"] = tf.cast(outputs["num_detections"], tf.int32)
            return outputs

    return OriginalPixelsDetectionModule


def _save_options() -> Any:
    """Serving needs no gradients: not saving the custom-gradient functions makes the export faster."""
    import tensorflow as tf

    return tf.saved_model.SaveOptions(experimental_custom_gradients=False)


def _without_layer_traces() -> Any:
    """Keras would also trace and save every layer's call function (for reloading as Keras objects,
    which serving never does): most of the export time. The serving signature is traced as before."""
    from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope

    return keras_option_scope(save_traces=False, in_tf_saved_model_scope=False)


def export_saved_model(config: Any, model: TrainedModel, out: Path) -> dict[str, Any]:
    """``out/saved_model`` (trap 5: the subdir, or Model Garden writes into ``out`` itself) + ``params.yaml``."""
    import tensorflow as tf
    from official.vision.serving import export_saved_model_lib

    size = [model.input_size, model.input_size]
    module = _original_pixels_module_class()(params=config, batch_size=None, input_image_size=size,
                                             input_type="image_tensor", input_name=INPUT_NAME)
    with _without_layer_traces():
        export_saved_model_lib.export_inference_graph(
            input_type="image_tensor", batch_size=None, input_image_size=size, params=config,
            checkpoint_path=str(model.checkpoint), export_dir=str(out), export_module=module,
            export_saved_model_subdir=serving.SAVED_MODEL_DIR, save_options=_save_options())
    signature = tf.saved_model.load(str(out / serving.SAVED_MODEL_DIR)).signatures["serving_default"]
    (input_name, input_spec), = signature.structured_input_signature[1].items()
    outputs = {name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
               for name, spec in signature.structured_outputs.items()}
    mapping = {"boxes": "detection_boxes", "scores": "detection_scores", "classes": "detection_classes",
               "count": "num_detections"}
    if "detection_masks" in outputs:
        mapping["masks"] = "detection_masks"
    return {
        "name": "serving_default",
        "input": {"name": input_name, "dtype": input_spec.dtype.name, "shape": input_spec.shape.as_list(),
                  "description": "a batch of RGB images of one size, any size"},
        "outputs": mapping,
        "output_specs": outputs,
        "box_format": "ymin, xmin, ymax, xmax in pixels of the input images (not normalised, not the model's "
                      "resized frame)",
        "classes": "1-based label ids: labels[class - 1]",
        "padding": "slots past num_detections are padding",
    }


def tflite_postprocessing(config: Any) -> dict[str, Any]:
    """TFLite's NMS set to do what the SavedModel's does: class-agnostic, same threshold, IoU and count.

    TFLite's fast NMS is class-agnostic and keeps the best class of each box
    (``max_classes_per_detection: 1``), which is Model Garden's ``use_class_agnostic_nms`` (see
    :func:`load_export_config`). Its per-class "regular" NMS is no alternative: measured here, it
    returned no detection at all of one of three classes that the SavedModel found with the top scores.
    """
    generator = config.task.model.detection_generator
    return {
        "use_regular_nms": False,
        "max_detections": generator.max_num_detections,
        "max_classes_per_detection": 1,
        "nms_score_threshold": generator.pre_nms_score_threshold,
        "nms_iou_threshold": generator.nms_iou_threshold,
    }


def export_tflite(config: Any, model: TrainedModel, out: Path) -> dict[str, Any]:
    """Model Garden's TFLite path: a batch-1 ``input_type='tflite'`` SavedModel, converted fp32 and fp16."""
    import copy

    from official.vision.serving import detection, export_saved_model_lib, export_tflite_lib

    config = copy.deepcopy(config)
    generator = config.task.model.detection_generator
    generator.nms_version = "tflite"
    generator.use_class_agnostic_nms = False  # Model Garden refuses it with 'tflite': the TFLite op's own is
    generator.tflite_post_processing.override(tflite_postprocessing(config), is_strict=True)
    size = [model.input_size, model.input_size]
    module = detection.DetectionModule(params=config, batch_size=1, input_image_size=size, input_type="tflite",
                                       input_name=INPUT_NAME)
    with tempfile.TemporaryDirectory(prefix="tflite-export-", dir=out) as temp, _without_layer_traces():
        export_saved_model_lib.export_inference_graph(
            input_type="tflite", batch_size=1, input_image_size=size, params=config,
            checkpoint_path=str(model.checkpoint), export_dir=temp, export_module=module,
            export_saved_model_subdir="saved_model", save_options=_save_options())
        for runtime, quant in (("tflite-fp32", None), ("tflite-fp16", "fp16")):
            flatbuffer = export_tflite_lib.convert_tflite_model(saved_model_dir=str(Path(temp) / "saved_model"),
                                                                quant_type=quant, params=config)
            (out / serving.TFLITE_FILES[runtime]).write_bytes(flatbuffer)
    interpreter = serving._interpreter_class()(model_path=str(out / serving.TFLITE_FILES["tflite-fp32"]))
    runner = interpreter.get_signature_runner("serving_default")
    (input_name, input_details), = runner.get_input_details().items()
    output_names = set(runner.get_output_details())
    outputs = {"boxes": "detection_boxes", "classes": "detection_classes", "scores": "detection_scores",
               "count": "num_detections"}
    missing = set(outputs.values()) - output_names
    if missing:
        raise ConvertError(f"the TFLite model has outputs {sorted(output_names)}, not {sorted(missing)}")
    from official.vision.ops import preprocess_ops

    spec = {
        "signature": "serving_default",
        "input": {"name": input_name, "dtype": np.dtype(input_details["dtype"]).name,
                  "shape": [int(v) for v in input_details["shape"]]},
        "normalization": {"mean": [float(v) for v in preprocess_ops.MEAN_RGB],
                          "stddev": [float(v) for v in preprocess_ops.STDDEV_RGB],
                          "formula": "(rgb - mean) / stddev, per channel, on 0..255 RGB values"},
        "resize": {
            "method": "bilinear, half-pixel centres, no antialiasing (tf.image.resize)",
            "keep_aspect_ratio": True,
            "scaled_size": "scale = min(S / height, S / width); scaled = round(height * scale), round(width * scale)",
            "padding": "place the scaled image at the top left of an S x S input; the rest is 0 (after normalisation)",
            "reference": "official.vision.ops.preprocess_ops.resize_and_crop_image; cvat_argo.inference.serving."
                         "preprocess_for_tflite",
        },
        "outputs": outputs,
        "box_format": "ymin, xmin, ymax, xmax in model-input pixels: divide y by scaled_height / height and x by "
                      "scaled_width / width for original pixels",
        "class_offset": 0,
        "classes": "float; 1-based label ids (labels[class - 1]) after adding class_offset; 0 is background",
        "count": "entries past num_detections are garbage",
        "nms": tflite_postprocessing(config),
    }
    (out / serving.TFLITE_JSON).write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return spec


class TFLiteExportProcess:
    """:func:`export_tflite` in a second Python process, while this one exports the SavedModel.

    Both exports are mostly single-threaded graph tracing and conversion, so on a 2-core machine
    side by side they take about as long as the slower one (the quickstart's convert stage went from
    57-61 s to 33-35 s). The child writes its files into the same ``.partial`` folder (no name
    is shared with the SavedModel export) and ends the way every TensorFlow step does
    (:func:`~cvat_argo.entry.exit_without_teardown`); its log lines go to this step's log.
    """

    def __init__(self, model: Path, out: Path, score_threshold: float) -> None:
        import cvat_argo

        package_root = str(Path(cvat_argo.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self.out = out
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from cvat_argo.steps.convert import tflite_child_main; tflite_child_main()",
             str(model), str(out), repr(score_threshold)], env=env)

    def result(self) -> dict[str, Any]:
        """Wait for the child; its ``tflite.json`` spec, or :class:`ConvertError` when it failed."""
        code = self.process.wait()
        if code != 0:
            raise ConvertError(f"the TFLite export (a second process) failed with exit code {code}: its error is in "
                               "the lines above")
        return json.loads((self.out / serving.TFLITE_JSON).read_text(encoding="utf-8"))

    def stop(self) -> None:
        """Kill the child if it still runs (this step failed first); its files go with the partial folder."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def tflite_child_main() -> None:
    """Entry point of :class:`TFLiteExportProcess`'s child: ``MODEL_DIR OUT SCORE_THRESHOLD`` in ``sys.argv``."""

    def export(argv: Sequence[str] | None) -> int:
        model_dir, out, score_threshold = argv or ()
        trained = read_trained_model(Path(model_dir))
        export_tflite(load_export_config(trained, float(score_threshold)), trained, Path(out))
        return 0

    exit_without_teardown(run_step(export, sys.argv[1:]))


# --------------------------------------------------------------------------------------------------
# Self-test
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """Every decoded anchor box before NMS (RetinaNet): what any NMS can choose its detections from."""

    boxes: np.ndarray  # (N, 4) xmin, ymin, xmax, ymax in original pixels
    scores: np.ndarray  # (N, labels): column j is label id j + 1


class ReferenceModel:
    """The trained Keras model from the newest checkpoint, run eagerly on Model Garden's preprocessing."""

    def __init__(self, config: Any, checkpoint: Path) -> None:
        import copy

        import tensorflow as tf
        from official.core import task_factory
        from official.vision.ops import anchor

        config = copy.deepcopy(config)
        generator = config.task.model.detection_generator
        if hasattr(generator, "return_decoded"):
            generator.return_decoded = True  # RetinaNet: the boxes before NMS too
        self._tf, self._config = tf, config
        task = task_factory.get_task(config.task)
        self.model = task.build_model()
        tf.train.Checkpoint(model=self.model).read(str(checkpoint)).expect_partial()
        params = config.task.model
        self._size = list(params.input_size[:2])
        generator = anchor.build_anchor_generator(
            min_level=params.min_level, max_level=params.max_level, num_scales=params.anchor.num_scales,
            aspect_ratios=params.anchor.aspect_ratios, anchor_size=params.anchor.anchor_size)
        self._anchors = generator(image_size=self._size)

    def detect(self, image: np.ndarray) -> Detections:
        return self.run(image)[0]

    def run(self, image: np.ndarray) -> tuple[Detections, Candidates | None]:
        """The detections, and for RetinaNet the candidates before NMS, in original pixels."""
        from official.vision.ops import preprocess_ops

        tf = self._tf
        pixels = preprocess_ops.normalize_image(tf.cast(tf.constant(image), tf.float32),
                                                offset=preprocess_ops.MEAN_RGB, scale=preprocess_ops.STDDEV_RGB)
        pixels, info = preprocess_ops.resize_and_crop_image(
            pixels, self._size, padded_size=self._size, aug_scale_min=1.0, aug_scale_max=1.0,
            keep_aspect_ratio=self._config.task.train_data.parser.keep_aspect_ratio)
        anchors = {level: tf.expand_dims(boxes, 0) for level, boxes in self._anchors.items()}
        outputs = self.model.call(images=pixels[None], image_shape=info[None, 1, :], anchor_boxes=anchors,
                                  training=False)
        info = info.numpy()
        count = int(np.asarray(outputs["num_detections"][0]).reshape(-1)[0])
        scale = np.array([info[2, 0], info[2, 1], info[2, 0], info[2, 1]], np.float32)
        offset = np.array([info[3, 0], info[3, 1], info[3, 0], info[3, 1]], np.float32)
        boxes = (outputs["detection_boxes"][0][:count].numpy() + offset) / scale
        masks = outputs["detection_masks"][0][:count].numpy() if "detection_masks" in outputs else None
        detections = serving._finish(boxes, outputs["detection_scores"][0][:count].numpy(),
                                     outputs["detection_classes"][0][:count].numpy(), image.shape[:2], 10**9, masks)
        candidates = None
        if "decoded_boxes" in outputs:
            raw = (outputs["decoded_boxes"][0].numpy().reshape(-1, 4) + offset) / scale
            height, width = image.shape[:2]
            raw = np.clip(raw[:, [1, 0, 3, 2]], 0.0, np.array([width, height, width, height], np.float32))
            scores = outputs["decoded_box_scores"][0].numpy()
            candidates = Candidates(raw, scores.reshape(raw.shape[0], -1))
        return detections, candidates


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1, y1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def _unexplained(mine: Detections, theirs: Detections, size: tuple[int, int], tolerance: Tolerance,
                 floor: float, nms_iou: float, capacity: int) -> tuple[list[dict[str, Any]], int, int]:
    """Detections of ``mine`` that ``theirs`` does not reproduce; plus counts of exact and NMS-order matches.

    A detection is reproduced exactly by one of the same class whose score and corners are within the
    tolerance. Where two overlapping candidates score almost the same, float rounding can make NMS
    keep the other one: then a detection of the same class overlapping it by the NMS IoU, with a
    score within the tolerance, counts as reproduced (reported separately). Detections at the edges
    of what both lists can hold (near the score floor, or below the other list's last score when it
    is full) are not required.
    """
    limit = tolerance.box_limit(size)
    floor = floor + tolerance.score
    if len(theirs) >= capacity // 2:
        # Possibly cut at max detections (empty boxes are dropped after the cut, so the list can be
        # shorter than the cap): below its last score the other list cannot be expected to go.
        floor = max(floor, float(theirs.scores.min()) + tolerance.score)
    missing, exact, reordered = [], 0, 0
    for i in np.flatnonzero(mine.scores >= floor):
        same = (theirs.classes == mine.classes[i]) & (np.abs(theirs.scores - mine.scores[i]) <= tolerance.score)
        corner = np.abs(theirs.boxes - mine.boxes[i]).max(axis=1) if len(theirs) else np.zeros(0)
        if np.any(same & (corner <= limit)):
            exact += 1
        elif len(theirs) and np.any(same & (_iou(mine.boxes[i], theirs.boxes) >= nms_iou)):
            reordered += 1
        else:
            nearest = int(np.argmin(corner)) if len(theirs) else None
            missing.append({
                "class": int(mine.classes[i]), "score": round(float(mine.scores[i]), 5),
                "box": [round(float(v), 2) for v in mine.boxes[i]],
                "nearest": None if nearest is None else {
                    "class": int(theirs.classes[nearest]), "score": round(float(theirs.scores[nearest]), 5),
                    "box": [round(float(v), 2) for v in theirs.boxes[nearest]]},
            })
    return missing, exact, reordered


def compare(reference: Detections, exported: Detections, size: tuple[int, int], tolerance: Tolerance,
            floor: float, nms_iou: float, capacity: int) -> dict[str, Any]:
    """Both ways: every reference detection in the export and every exported one in the reference."""
    lost, exact, reordered = _unexplained(reference, exported, size, tolerance, floor, nms_iou, capacity)
    extra, exact_back, reordered_back = _unexplained(exported, reference, size, tolerance, floor, nms_iou, capacity)
    return {"reference": len(reference), "exported": len(exported), "matched": exact, "matched_back": exact_back,
            "nms_order_matches": reordered + reordered_back, "missing_in_export": lost, "extra_in_export": extra,
            "ok": not lost and not extra}


#: How many of the trained model's best detections an export with another NMS must also find.
TOP_DETECTIONS = 10


def compare_with_candidates(reference: Detections, candidates: Candidates, exported: Detections,
                            size: tuple[int, int], tolerance: Tolerance, floor: float,
                            nms_iou: float, capacity: int) -> dict[str, Any]:
    """For an export whose NMS differs from Model Garden's in details (TFLite's post-processing op).

    TFLite's op does not clip boxes to the image before NMS and breaks ties its own way, so the two
    keep slightly different sets. What must still hold: every exported detection is one of the
    trained model's own candidates (same class, score and box within the tolerance), and each of
    the trained model's top detections is in the export, or a detection that would suppress it
    (overlap at least the NMS IoU, a score at least as high) is.
    """
    limit = tolerance.box_limit(size)
    unexplained, matched = [], 0
    for i in np.flatnonzero(exported.scores >= floor + tolerance.score):
        column = int(exported.classes[i]) - 1
        if not 0 <= column < candidates.scores.shape[1]:
            close = np.zeros(len(candidates.boxes), bool)
        else:
            close = ((np.abs(candidates.scores[:, column] - exported.scores[i]) <= tolerance.score)
                     & (np.abs(candidates.boxes - exported.boxes[i]).max(axis=1) <= limit))
        if close.any():
            matched += 1
        else:
            unexplained.append({"class": int(exported.classes[i]), "score": round(float(exported.scores[i]), 5),
                                "box": [round(float(v), 2) for v in exported.boxes[i]]})
    lost = []
    # Only boxes wholly inside the image: for one cut by the border, clipping before NMS (Model Garden)
    # or not (TFLite) changes its overlaps; for one inside, clipping a suppressor only raises the IoU.
    height, width = size
    inside = ((reference.boxes[:, 0] > 0) & (reference.boxes[:, 1] > 0) & (reference.boxes[:, 2] < width)
              & (reference.boxes[:, 3] < height))
    required = floor + tolerance.score
    if len(exported) >= capacity // 2:  # possibly cut at max detections: nothing below its last is owed
        required = max(required, float(exported.scores.min()) + tolerance.score)
    owed = np.flatnonzero((reference.scores >= required) & inside)[:TOP_DETECTIONS]
    for i in owed:
        overlap = _iou(reference.boxes[i], exported.boxes) if len(exported) else np.zeros(0)
        if not np.any((overlap >= nms_iou) & (exported.scores >= reference.scores[i] - tolerance.score)):
            lost.append({"class": int(reference.classes[i]), "score": round(float(reference.scores[i]), 5),
                         "box": [round(float(v), 2) for v in reference.boxes[i]]})
    return {"reference": len(reference), "exported": len(exported), "matched": matched,
            "matched_back": len(owed) - len(lost), "nms_order_matches": 0, "missing_in_export": lost,
            "extra_in_export": unexplained,
            "ok": not lost and not unexplained}


def compare_runtime(config: Any, runtime: str, reference: Detections, candidates: Candidates | None,
                    exported: Detections, size: tuple[int, int]) -> dict[str, Any]:
    """The comparison that fits ``runtime``: TFLite's NMS differs in details, the SavedModel's is the same."""
    generator = config.task.model.detection_generator
    floor, nms_iou = float(generator.pre_nms_score_threshold), float(generator.nms_iou_threshold)
    tolerance, capacity = TOLERANCES[runtime], int(generator.max_num_detections)
    if runtime.startswith("tflite") and candidates is not None:
        return compare_with_candidates(reference, candidates, exported, size, tolerance, floor, nms_iou, capacity)
    return compare(reference, exported, size, tolerance, floor, nms_iou, capacity)


def self_test(config: Any, model: TrainedModel, out: Path, images: list[tuple[str, np.ndarray]],
              runtimes: Sequence[str], reference: ReferenceModel | None = None,
              expected: list[tuple[Detections, Candidates | None]] | None = None) -> dict[str, Any]:
    """Every runtime of ``out`` against the trained model on ``images``; the result for ``self_test.json``.

    ``expected``: the trained model's results on ``images`` when already computed (``reference.run``).
    """
    if expected is None:
        reference = reference or ReferenceModel(config, model.checkpoint)
        expected = [reference.run(image) for _, image in images]
    floor = float(config.task.model.detection_generator.pre_nms_score_threshold)
    report: dict[str, Any] = {"checkpoint": model.checkpoint.name, "images": [name for name, _ in images],
                              "score_floor": floor, "runtimes": {}}
    for runtime in runtimes:
        detector = serving.load_detector(out, runtime)
        started = time.perf_counter()
        found = detector.detect([image for _, image in images])
        seconds = time.perf_counter() - started
        tolerance = TOLERANCES[runtime]
        per_image = []
        for (name, image), (want, candidates), got in zip(images, expected, found, strict=True):
            result = compare_runtime(config, runtime, want, candidates, got, image.shape[:2])
            per_image.append({"image": name, "size": list(image.shape[:2]), **result})
        compared = sum(item["matched"] + item["matched_back"] for item in per_image)
        report["runtimes"][runtime] = {
            "ok": all(item["ok"] for item in per_image), "tolerance": vars(tolerance), "compared": compared,
            "seconds": round(seconds, 3), "images": per_image,
        }
    report["ok"] = all(item["ok"] for item in report["runtimes"].values())
    report["compared_detections"] = sum(item["compared"] for item in report["runtimes"].values())
    return report


def check_self_test(report: dict[str, Any], partial: Path) -> None:
    """Write ``self_test.json``; raise :class:`SelfTestError` naming the runtimes that failed."""
    (partial / "self_test.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if not report["ok"]:
        failed = [runtime for runtime, item in report["runtimes"].items() if not item["ok"]]
        raise SelfTestError(f"self-test failed: {', '.join(failed)} did not reproduce the trained model's detections "
                            f"within the tolerance; details in {partial / 'self_test.json'}")


# --------------------------------------------------------------------------------------------------
# Output folder
# --------------------------------------------------------------------------------------------------


def file_entries(out: Path) -> list[dict[str, Any]]:
    """Size and sha256 of every file of the exports, for integrity checks after copies."""
    entries = []
    paths = [out / name for name in (*serving.TFLITE_FILES.values(), serving.TFLITE_JSON)]
    paths += sorted(p for p in (out / serving.SAVED_MODEL_DIR).rglob("*") if p.is_file())
    for path in paths:
        if path.is_file():
            entries.append({"file": path.relative_to(out).as_posix(), "bytes": path.stat().st_size,
                            "sha256": file_sha256(path)})
    return entries


def is_previous_output(out: Path) -> bool:
    try:
        return json.loads((out / serving.MODEL_JSON).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_output_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_previous_output(out))):
        raise ConvertError(f"{out} exists and is not an earlier convert output: refusing to overwrite it "
                           "(choose another --out or empty it)")


def publish(partial: Path, out: Path) -> None:
    """Replace ``out`` by the finished ``partial`` (an earlier convert output is removed only now)."""
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    partial.rename(out)
    if old.exists():
        shutil.rmtree(old)


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def model_card(manifest: dict[str, Any], metrics: dict[str, Any], dataset: dict[str, Any],
               test: dict[str, Any]) -> str:
    lines = [f"# {manifest['model']}", "", f"Model Garden experiment `{manifest['experiment']}` "
             f"({manifest['architecture']}), input {manifest['input_size']} x {manifest['input_size']} px, "
             f"trained to step {manifest['source']['step']}.", "",
             f"Arguments: `{manifest.get('arguments') or '(defaults)'}`", "",
             "Labels: " + ", ".join(f"{i} {name}" for i, name in enumerate(manifest["labels"], 1)), ""]
    images = dataset.get("images", {})
    if images:
        lines += ["## Dataset", "", "| split | images |", "|---|---:|"]
        lines += [f"| {split} | {count} |" for split, count in images.items()] + [""]
    final = metrics.get("final") or {}
    lines += ["## Metrics (validation split)", ""]
    if final:
        lines += ["| metric | value |", "|---|---:|"] + [
            f"| {key} | {value:.3f} |" for key, value in final.items() if isinstance(value, (int, float))]
    else:
        lines.append("No evaluation was recorded.")
    if "training_seconds" in metrics:
        lines += ["", f"Training took {metrics['training_seconds'] / 60:.1f} min "
                      f"({metrics.get('total_steps', '?')} steps, global batch {metrics.get('global_batch', '?')})."]
    lines += ["", "## Exports", "", "| file | size |", "|---|---:|"]
    sizes: dict[str, int] = {}
    for entry in manifest["exports"]:
        top = entry["file"].split("/")[0]
        sizes[top] = sizes.get(top, 0) + entry["bytes"]
    lines += [f"| {name}{'/' if name == serving.SAVED_MODEL_DIR else ''} | {_human(size)} |"
              for name, size in sizes.items()]
    lines += ["", "Runtimes: " + ", ".join(f"`{r}`" for r in manifest["runtimes"]) + "."]
    if not manifest["tflite"]["available"]:
        lines += ["", f"No TFLite export: {manifest['tflite']['reason']}."]
    lines += ["", "Boxes from every runtime are in the pixels of the image passed in; classes are 1-based label ids.",
              "", "## Self-test", "", f"{len(test['images'])} validation images, the trained checkpoint against each "
              f"export (detections scoring {test['score_floor']} or more):", "",
              "| runtime | result | detections compared |", "|---|---|---:|"]
    lines += [f"| {runtime} | {'ok' if item['ok'] else 'MISMATCH'} | {item['compared']} |"
              for runtime, item in test["runtimes"].items()]
    return "\n".join(lines) + "\n"


def run(model: Path, dataset: Path, out: Path, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        test_images: int = DEFAULT_SELF_TEST_IMAGES) -> dict[str, Any]:
    """Export, self-test and publish; returns the summary that ``model.json`` holds."""
    model, dataset, out = Path(model), Path(dataset), Path(out)
    if not 0.0 <= score_threshold < 1.0:
        raise ConvertError(f"score threshold must be in [0, 1), got {score_threshold}")
    trained = read_trained_model(model)
    labels = read_dataset_labels(dataset, trained)
    check_output_folder(out)
    images = self_test_images(dataset, test_images)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    print(f"converting {trained.entry.name} (checkpoint {trained.checkpoint.name}) into {out}", flush=True)
    started = time.monotonic()

    runtimes = ["saved_model"]
    tflite: dict[str, Any] = {"available": False, "reason": ""}
    tflite_export = None
    if trained.entry.tflite:
        print("exporting TFLite fp32 and fp16 through Model Garden's TFLite path (in a second process)", flush=True)
        tflite_export = TFLiteExportProcess(model, partial, score_threshold)
    try:
        config = load_export_config(trained, score_threshold)
        print("exporting the SavedModel (image_tensor, boxes in original pixels)", flush=True)
        signature = export_saved_model(config, trained, partial)
        reference = ReferenceModel(config, trained.checkpoint)
        expected = [reference.run(image) for _, image in images]
        if tflite_export is not None:
            tflite = {"available": True, "files": dict(serving.TFLITE_FILES), "spec": serving.TFLITE_JSON,
                      "input": tflite_export.result()["input"]}
            runtimes = ["tflite-fp32", "tflite-fp16", "saved_model"]
    finally:
        if tflite_export is not None:
            tflite_export.stop()
    if not tflite["available"]:
        tflite["reason"] = NO_TFLITE_REASON.get(
            trained.entry.architecture, f"catalog entry {trained.entry.name} has tflite: false")
    write_labels_json(partial / serving.LABELS_JSON, labels)
    generator = config.task.model.detection_generator
    manifest: dict[str, Any] = {
        "format": FORMAT, "version": FORMAT_VERSION, "model": trained.entry.name,
        "experiment": trained.entry.experiment,
        "architecture": trained.entry.architecture, "labels": list(labels), "num_classes": len(labels) + 1,
        "input_size": trained.input_size, "arguments": trained.manifest.get("arguments", ""),
        "masks": trained.entry.masks, "score_threshold": score_threshold,
        "max_detections": generator.max_num_detections, "nms_iou_threshold": generator.nms_iou_threshold,
        "source": {"model_dir": str(model), "checkpoint": trained.checkpoint.name, "step": trained.step},
        "runtimes": runtimes, "saved_model": {"path": serving.SAVED_MODEL_DIR, "signature": signature},
        "tflite": tflite, "exports": file_entries(partial),
    }
    (partial / serving.MODEL_JSON).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")

    print(f"self-test: {len(images)} validation images, checkpoint vs {', '.join(runtimes)}", flush=True)
    test = self_test(config, trained, partial, images, runtimes, expected=expected)
    check_self_test(test, partial)
    if not test["compared_detections"]:
        print(f"warning: no detection scored {score_threshold} or more on the self-test images, so the self-test "
              "compared nothing (an undertrained model?)", flush=True)
    manifest["self_test"] = {"ok": True, "images": len(images), "compared_detections": test["compared_detections"],
                             "runtimes": {r: item["compared"] for r, item in test["runtimes"].items()}}
    manifest["convert_seconds"] = round(time.monotonic() - started, 1)
    (partial / serving.MODEL_JSON).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    metrics = _optional_json(model / "metrics.json")
    dataset_summary = _optional_json(dataset / "dataset.json")
    (partial / "model_card.md").write_text(model_card(manifest, metrics, dataset_summary, test), encoding="utf-8")
    publish(partial, out)
    print(f"converted {trained.entry.name}: {', '.join(runtimes)} in {manifest['convert_seconds']:.0f} s; "
          f"self-test ok ({test['compared_detections']} detections compared)", flush=True)
    return manifest


def _optional_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvat_argo.steps.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the train stage's output folder")
    parser.add_argument("--dataset", type=Path, required=True, help="the dataset stage's output folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                        help="lowest score the exports return (the annotate stage applies its own on top)")
    parser.add_argument("--self-test-images", type=int, default=DEFAULT_SELF_TEST_IMAGES)
    ns = parser.parse_args(argv)
    run(ns.model, ns.dataset, ns.out, ns.score_threshold, ns.self_test_images)
    return 0


if __name__ == "__main__":
    exit_without_teardown(run_step(main))
