"""Run a converted model: one interface over the TFLite files and the SavedModel of a convert output.

The convert stage writes a folder with ``model.json``, ``labels.json``, ``saved_model/`` and, for the
models Model Garden's TFLite path handles, ``model_fp32.tflite`` / ``model_fp16.tflite`` with
``tflite.json``. :func:`load_detector` opens one runtime of such a folder and returns a
:class:`Detector`; every runtime gives the same :class:`Detections`: boxes in the pixels of the image
that was passed in (not of the model's resized input), 1-based label ids, padding removed, sorted by
score.

Throughput: :meth:`Detector.prepare` (validation, and for TFLite the resize and normalisation) is
pure NumPy and thread-safe, so a caller can prepare images in worker threads while one thread feeds
:meth:`Detector.detect_prepared`; ``detect`` and ``detect_prepared`` are not thread-safe (one TFLite
interpreter per detector). ``preferred_batch`` is how many prepared images to pass per call.

TensorFlow is imported only for the SavedModel runtime; the TFLite runtime needs ``ai-edge-litert``
(or, when that is not installed, TensorFlow's ``tf.lite.Interpreter``).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engines import artifacts
from ..errors import CvatArgoError, ServingError
from ..formats.label_map import read_labels_json

RUNTIMES = ("tflite-fp32", "tflite-fp16", "saved_model")
#: Model Garden's ``preprocess_ops.MEAN_RGB`` / ``STDDEV_RGB`` (ImageNet statistics x 255).
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class Detections:
    """What a model found in one image, in that image's own pixel frame."""

    boxes: np.ndarray  # (N, 4) float32 xmin, ymin, xmax, ymax in original image pixels
    scores: np.ndarray  # (N,) float32, descending
    classes: np.ndarray  # (N,) int32, 1-based label ids: labels[classes - 1]
    masks: np.ndarray | None = None  # (N, h, w) float32 probabilities in each box's frame (Mask R-CNN)

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32))

    def above(self, threshold: float) -> Detections:
        """The detections scoring at least ``threshold``."""
        keep = self.scores >= threshold
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep],
                          None if self.masks is None else self.masks[keep])


@dataclass(frozen=True)
class Prepared:
    """One image made ready for a runtime by :meth:`Detector.prepare` (safe to do in worker threads)."""

    data: np.ndarray  # SavedModel: the uint8 HxWx3 image; TFLite: float32 SxSx3, resized, padded, normalised
    size: tuple[int, int]  # original (height, width)
    scale: tuple[float, float] = (1.0, 1.0)  # (y, x): model-input pixels per original pixel (TFLite only)


class Detector(ABC):
    """A loaded model: ``detect(images)`` or, to overlap preprocessing, ``prepare`` + ``detect_prepared``."""

    labels: tuple[str, ...]
    runtime: str
    preferred_batch: int
    model_dir: Path

    @abstractmethod
    def prepare(self, image: np.ndarray) -> Prepared:
        """Validate (and for TFLite resize + normalise) one uint8 HxWx3 RGB image; thread-safe."""

    @abstractmethod
    def detect_prepared(self, prepared: Sequence[Prepared]) -> list[Detections]:
        """Run the model on prepared images; one :class:`Detections` per image, in order."""

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections for each uint8 HxWx3 RGB image (any sizes, mixed sizes allowed)."""
        return self.detect_prepared([self.prepare(image) for image in images])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.runtime} {self.model_dir}>"


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 HxWx3: greyscale is repeated, an alpha channel dropped; anything else is refused."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"expected an HxWx3 RGB image, got an array of shape {array.shape}")
    if array.shape[2] == 4:
        array = array[:, :, :3]
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {array.dtype}")
    return np.ascontiguousarray(array)


def _finish(boxes_yx: np.ndarray, scores: np.ndarray, classes: np.ndarray, size: tuple[int, int],
            num_labels: int, masks: np.ndarray | None = None) -> Detections:
    """Original-pixel y-x boxes -> clipped x-y boxes; drop background, unknown classes, empty boxes; sort."""
    height, width = size
    boxes_yx = np.asarray(boxes_yx, np.float32).reshape(-1, 4)
    boxes = boxes_yx[:, [1, 0, 3, 2]]
    boxes = np.clip(boxes, 0.0, np.array([width, height, width, height], np.float32))
    classes = np.rint(np.asarray(classes, np.float32)).astype(np.int32).reshape(-1)
    scores = np.asarray(scores, np.float32).reshape(-1)
    # Background / unknown ids, and boxes that lie wholly outside the image (in the padding of the
    # model's square input) and are empty once clipped.
    keep = (classes >= 1) & (classes <= num_labels) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    order = np.argsort(-scores[keep], kind="stable")
    return Detections(
        boxes=np.ascontiguousarray(boxes[keep][order], np.float32), scores=scores[keep][order],
        classes=classes[keep][order],
        masks=None if masks is None else np.asarray(masks, np.float32)[keep][order],
    )


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ServingError(f"{path} is missing: {path.parent} is not a convert output folder ({what})") from None
    except (OSError, ValueError) as error:
        raise ServingError(f"{path}: cannot read {what}: {error}") from None


# --------------------------------------------------------------------------------------------------
# TFLite
# --------------------------------------------------------------------------------------------------


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.image.resize(..., 'bilinear')`` in NumPy: half-pixel centres, no antialiasing, float32.

    The same arithmetic as TensorFlow's kernel, so a TFLite model fed by this sees (to float rounding)
    the input the SavedModel builds for itself and both give the same detections.
    """
    image = np.asarray(image, np.float32)
    in_h, in_w = image.shape[:2]
    if (in_h, in_w) == (height, width):
        return image.copy()

    def weights(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = np.float32(in_size) / np.float32(out_size)
        source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
        floor = np.floor(source)
        lower = np.maximum(floor, 0).astype(np.int64)
        upper = np.minimum(np.ceil(source), in_size - 1).astype(np.int64)
        return lower, upper, (source - floor).astype(np.float32)

    top, bottom, y_lerp = weights(height, in_h)
    left, right, x_lerp = weights(width, in_w)
    x_lerp = x_lerp[None, :, None]
    rows_top, rows_bottom = image[top], image[bottom]
    top_values = rows_top[:, left] + (rows_top[:, right] - rows_top[:, left]) * x_lerp
    bottom_values = rows_bottom[:, left] + (rows_bottom[:, right] - rows_bottom[:, left]) * x_lerp
    return top_values + (bottom_values - top_values) * y_lerp[:, None, None]


def letterbox_scale(height: int, width: int, input_size: int) -> tuple[int, int]:
    """Model Garden's ``resize_and_crop_image`` size: the largest aspect-preserving fit in the square."""
    h, w, side = np.float32(height), np.float32(width), np.float32(input_size)
    scale = np.minimum(side / h, side / w)
    return int(np.round(h * scale)), int(np.round(w * scale))


def preprocess_for_tflite(image: np.ndarray, input_size: int, mean: Sequence[float] = MEAN_RGB,
                          stddev: Sequence[float] = STDDEV_RGB) -> tuple[np.ndarray, tuple[float, float]]:
    """Normalise, resize keeping the aspect ratio, pad bottom/right with 0: what the SavedModel does inside.

    Returns the float32 SxSx3 input and the (y, x) scale (scaled size / original size).
    """
    height, width = image.shape[:2]
    scaled_h, scaled_w = letterbox_scale(height, width, input_size)
    normalised = (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(stddev, np.float32)
    resized = resize_bilinear(normalised, scaled_h, scaled_w)
    padded = np.zeros((input_size, input_size, 3), np.float32)
    padded[:scaled_h, :scaled_w] = resized[:input_size, :input_size]
    scale = (float(np.float32(scaled_h) / np.float32(height)), float(np.float32(scaled_w) / np.float32(width)))
    return padded, scale


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            import tensorflow as tf
        except ImportError:
            raise ServingError("the TFLite runtime needs the ai-edge-litert package "
                               "(pip install ai-edge-litert)") from None
        return tf.lite.Interpreter
    return Interpreter


class TFLiteDetector(Detector):
    """Model Garden's TFLite export: batch 1, float32 SxSx3 normalised input, boxes in input pixels."""

    preferred_batch = 1

    def __init__(self, model_dir: Path, runtime: str, labels: tuple[str, ...], spec: dict[str, Any],
                 num_threads: int | None = None) -> None:
        self.model_dir, self.runtime, self.labels, self.spec = model_dir, runtime, labels, spec
        path = model_dir / artifacts.TFLITE_FILES[runtime]
        if not path.is_file():
            raise ServingError(f"{path} is missing: runtime {runtime} is not available in {model_dir}")
        interpreter_class = _interpreter_class()
        self._interpreter = interpreter_class(model_path=str(path), num_threads=num_threads or os.cpu_count() or 1)
        self._runner = self._interpreter.get_signature_runner(spec.get("signature", "serving_default"))
        self._input_name = spec["input"]["name"]
        self._input_size = int(spec["input"]["shape"][1])
        self._outputs = spec["outputs"]
        self._mean = spec["normalization"]["mean"]
        self._stddev = spec["normalization"]["stddev"]

    def prepare(self, image: np.ndarray) -> Prepared:
        rgb = as_rgb_uint8(image)
        data, scale = preprocess_for_tflite(rgb, self._input_size, self._mean, self._stddev)
        return Prepared(data=data, size=(rgb.shape[0], rgb.shape[1]), scale=scale)

    def detect_prepared(self, prepared: Sequence[Prepared]) -> list[Detections]:
        results = []
        for item in prepared:
            outputs = self._runner(**{self._input_name: item.data[None]})
            count = int(np.asarray(outputs[self._outputs["count"]]).reshape(-1)[0])
            boxes = np.asarray(outputs[self._outputs["boxes"]], np.float32).reshape(-1, 4)[:count]
            scores = np.asarray(outputs[self._outputs["scores"]], np.float32).reshape(-1)[:count]
            classes = np.asarray(outputs[self._outputs["classes"]]).reshape(-1)[:count]
            scale_y, scale_x = item.scale
            boxes = boxes / np.array([scale_y, scale_x, scale_y, scale_x], np.float32)  # trap 6: back to original
            classes = np.rint(classes.astype(np.float32)) + int(self.spec.get("class_offset", 0))
            results.append(_finish(boxes, scores, classes, item.size, len(self.labels)))
        return results


# --------------------------------------------------------------------------------------------------
# SavedModel
# --------------------------------------------------------------------------------------------------


class SavedModelDetector(Detector):
    """The ``serving_default`` signature: uint8 [B, H, W, 3] in, boxes in original pixels out.

    Images of one call are batched when they have the same size (a tensor batch cannot mix sizes).
    """

    def __init__(self, model_dir: Path, labels: tuple[str, ...], signature: dict[str, Any],
                 preferred_batch: int = 8) -> None:
        import tensorflow as tf

        self.model_dir, self.labels, self.runtime = model_dir, labels, "saved_model"
        self.preferred_batch = preferred_batch
        path = model_dir / artifacts.SAVED_MODEL_DIR
        if not (path / "saved_model.pb").is_file():
            raise ServingError(f"{path}/saved_model.pb is missing: runtime saved_model is not available in {model_dir}")
        self._tf = tf
        self._loaded = tf.saved_model.load(str(path))
        self._function = self._loaded.signatures[signature.get("name", "serving_default")]
        self._input_name = signature["input"]["name"]
        self._outputs = signature["outputs"]

    def prepare(self, image: np.ndarray) -> Prepared:
        rgb = as_rgb_uint8(image)
        return Prepared(data=rgb, size=(rgb.shape[0], rgb.shape[1]))

    def detect_prepared(self, prepared: Sequence[Prepared]) -> list[Detections]:
        results: list[Detections | None] = [None] * len(prepared)
        start = 0
        while start < len(prepared):
            end = start + 1
            while (end < len(prepared) and end - start < self.preferred_batch
                   and prepared[end].data.shape == prepared[start].data.shape):
                end += 1
            batch = np.stack([item.data for item in prepared[start:end]])
            outputs = self._function(**{self._input_name: self._tf.constant(batch)})
            outputs = {key: value.numpy() for key, value in outputs.items()}
            for offset, item in enumerate(prepared[start:end]):
                count = int(np.asarray(outputs[self._outputs["count"]][offset]).reshape(-1)[0])
                masks = None
                if "masks" in self._outputs and self._outputs["masks"] in outputs:
                    masks = outputs[self._outputs["masks"]][offset][:count]
                results[start + offset] = _finish(
                    outputs[self._outputs["boxes"]][offset][:count], outputs[self._outputs["scores"]][offset][:count],
                    outputs[self._outputs["classes"]][offset][:count], item.size, len(self.labels), masks)
            start = end
        return [result for result in results if result is not None]


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is usable here, without importing TensorFlow (cheap enough for ``auto``)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def read_manifest(folder: Path) -> artifacts.ExportedModelManifest:
    """The convert output's ``model.json``; a missing or unreadable one is a :class:`ServingError`."""
    if not (folder / artifacts.MODEL_MANIFEST).is_file():
        raise ServingError(f"{folder / artifacts.MODEL_MANIFEST} is missing: {folder} is not a convert output "
                           "folder (the model manifest)")
    try:
        return artifacts.ExportedModelManifest.read(folder)
    except CvatArgoError as error:
        raise ServingError(str(error)) from None


def available_runtimes(model_dir: Path | str) -> list[str]:
    """The runtimes a convert output folder offers, fastest on a CPU first."""
    return [runtime for runtime in read_manifest(Path(model_dir)).runtimes if runtime in RUNTIMES]


def load_detector(model_dir: Path | str, runtime: str = "auto", num_threads: int | None = None) -> Detector:
    """Open a convert output folder with one runtime.

    ``auto``: the fp32 TFLite model when the folder has one and no GPU is visible, else the SavedModel.
    ``tflite`` means ``tflite-fp32``. A missing manifest, labels file or runtime is a :class:`ServingError`
    naming the folder.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ServingError(f"{folder} is not a folder: expected the output of the convert stage")
    manifest = read_manifest(folder)
    if not (folder / artifacts.LABELS).is_file():
        raise ServingError(f"{folder / artifacts.LABELS} is missing: {folder} is not a convert output folder")
    labels = tuple(read_labels_json(folder / artifacts.LABELS))
    offered = [name for name in manifest.runtimes if name in RUNTIMES]
    wanted = {"tflite": "tflite-fp32"}.get(runtime, runtime)
    if wanted == "auto":
        wanted = "tflite-fp32" if "tflite-fp32" in offered and not gpu_visible() else "saved_model"
    if wanted not in RUNTIMES:
        raise ServingError(f"unknown runtime {runtime!r}: use auto, tflite, tflite-fp16 or saved_model")
    if wanted not in offered:
        why = (manifest.tflite or {}).get("reason", "") if wanted.startswith("tflite") else ""
        raise ServingError(f"runtime {wanted} is not available for the model in {folder} (it has: "
                           f"{', '.join(offered) or 'none'})" + (f": {why}" if why else ""))
    if wanted == "saved_model":
        return SavedModelDetector(folder, labels, (manifest.saved_model or {})["signature"])
    spec = _read_json(folder / artifacts.TFLITE_MANIFEST, "how to feed the TFLite model")
    return TFLiteDetector(folder, wanted, labels, spec, num_threads)
