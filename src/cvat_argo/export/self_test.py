"""The self-test: every export must reproduce the trained Keras model's detections within a tolerance.

The reference is the newest checkpoint run eagerly on a few validation images; each runtime is run
through :mod:`cvat_argo.inference.serving` and compared both ways, TFLite against the reference's
candidates before NMS (its NMS differs in details). The report is ``self_test.json``.
"""

from __future__ import annotations

import io
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engines import artifacts
from ..errors import SelfTestError
from ..formats.tfrecord.example import BytesList, decode_example
from ..formats.tfrecord.records import read_records
from ..inference import serving
from ..inference.serving import Detections
from .inputs import TrainedModel


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
    (partial / artifacts.SELF_TEST).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if not report["ok"]:
        failed = [runtime for runtime, item in report["runtimes"].items() if not item["ok"]]
        raise SelfTestError(f"self-test failed: {', '.join(failed)} did not reproduce the trained model's detections "
                            f"within the tolerance; details in {partial / artifacts.SELF_TEST}")

