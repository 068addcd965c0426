"""Score thresholds per label, chosen on the validation split and shipped with the model (``thresholds.json``).

One global 0.5 is too strict for a label the model scores low and too loose for one it confuses, and
every wrong pre-annotation costs a reviewer a deletion. So after export the convert stage runs the
detector that pre-annotation uses by default over the validation images, matches its detections to
the ground truth (same label, IoU >= 0.5, one to one, greedily by score), and gives each label the
lowest threshold at which validation precision reaches a target (0.9), never below a floor (0.3),
and the floor where the target is never reached or the label has no validation objects.

A chosen threshold is the score of the lowest detection it keeps, rounded down to 4 decimals, and the
precision and recall recorded with it are measured at exactly that stored value.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engines import artifacts
from ..errors import ConvertError
from ..formats.tfrecord.example import BytesList, FloatList, Int64List, decode_example
from ..formats.tfrecord.records import read_records
from ..inference.outputs import DEFAULT_THRESHOLD
from ..inference.serving import Detections
from ..progress import progress_bar

DEFAULT_TARGET_PRECISION = 0.9
DEFAULT_FLOOR = 0.3
DEFAULT_MAX_IMAGES = 2000
MATCH_IOU = 0.5
DECIMALS = 4
VALIDATION_SHARDS = "val-*-of-*.tfrecord"  # the dataset stage's validation split (records.shard_name)


@dataclass(frozen=True)
class GroundTruth:
    """One validation image's objects: boxes in its pixels, 1-based label ids, crowd regions flagged."""

    boxes: np.ndarray  # (N, 4) xmin, ymin, xmax, ymax
    classes: np.ndarray  # (N,) int
    is_crowd: np.ndarray | None = None  # (N,) bool; None or empty: no crowd regions

    @property
    def crowd(self) -> np.ndarray:
        flags = np.zeros(len(self.classes), bool)
        if self.is_crowd is not None and len(self.is_crowd) == len(flags):
            flags[:] = np.asarray(self.is_crowd, bool)
        return flags


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1, y1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = np.clip(box[2] - box[0], 0, None) * np.clip(box[3] - box[1], 0, None)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return inter / np.maximum(area + areas - inter, 1e-9)


def match_image(detections: Detections, truth: GroundTruth, label_id: int,
                iou: float = MATCH_IOU) -> tuple[list[float], list[bool], int]:
    """One label on one image: (scores, whether each is a true positive, objects to find).

    Highest score first, each detection takes the unmatched object of its label it overlaps most (IoU
    at least ``iou``); a detection that matches none but covers a crowd region counts neither way.
    """
    mine = np.flatnonzero(np.asarray(detections.classes) == label_id)
    scores = np.asarray(detections.scores, np.float64)[mine]
    boxes = np.asarray(detections.boxes, np.float64).reshape(-1, 4)[mine]
    own, crowd = np.asarray(truth.classes) == label_id, truth.crowd
    objects = np.asarray(truth.boxes, np.float64).reshape(-1, 4)[own & ~crowd]
    crowds = np.asarray(truth.boxes, np.float64).reshape(-1, 4)[own & crowd]
    taken = np.zeros(len(objects), bool)
    kept_scores, hits = [], []
    for index in np.argsort(-scores, kind="stable"):
        overlap = _iou(boxes[index], objects) if len(objects) else np.zeros(0)
        overlap[taken] = -1.0
        best = int(np.argmax(overlap)) if len(overlap) else -1
        if best >= 0 and overlap[best] >= iou:
            taken[best] = True
            hit = True
        elif len(crowds) and np.any(_iou(boxes[index], crowds) >= iou):
            continue
        else:
            hit = False
        kept_scores.append(float(scores[index]))
        hits.append(hit)
    return kept_scores, hits, len(objects)


@dataclass(frozen=True)
class LabelThreshold:
    """The threshold chosen for one label, why, and how it did on the validation split."""

    threshold: float
    reason: str
    target_reached: bool
    precision: float | None  # at ``threshold``; None when nothing scored that much
    recall: float | None  # at ``threshold``; None without validation objects
    support: int  # validation objects of the label
    detections: int  # detections at or above ``threshold``
    at_default: dict[str, float | None]  # {"threshold": 0.5, "precision", "recall"} for comparison


def _rates(scores: np.ndarray, hits: np.ndarray, support: int, threshold: float) -> tuple[float | None, float | None,
                                                                                       int]:
    kept = scores >= threshold
    found, true = int(kept.sum()), int(hits[kept].sum())
    precision = round(true / found, DECIMALS) if found else None
    recall = round(true / support, DECIMALS) if support else None
    return precision, recall, found


def choose_threshold(scores: Sequence[float], hits: Sequence[bool], support: int,
                     target_precision: float = DEFAULT_TARGET_PRECISION, floor: float = DEFAULT_FLOOR,
                     compare_at: float = DEFAULT_THRESHOLD) -> LabelThreshold:
    """The lowest threshold (a detection's score, at least ``floor``) whose precision reaches the target.

    ``scores``/``hits``: every validation detection of the label and whether it found an object;
    ``support``: how many objects there were. Precision need not fall as the threshold falls, so every
    candidate is tried, lowest first.
    """
    score_array, hit_array = np.asarray(scores, np.float64), np.asarray(hits, bool)
    chosen, reason, reached = floor, f"floor: precision {target_precision:g} not reached", False
    if support == 0:
        reason = "no validation objects"
    elif not np.any(score_array >= floor):
        reason = f"floor: no validation detection scored {floor:g} or more"
    else:
        order = np.argsort(-score_array, kind="stable")
        ranked, true = score_array[order], np.cumsum(hit_array[order])
        precision = true / np.arange(1, len(ranked) + 1)
        # only where the next score is lower: equal scores are kept or dropped together
        last_of_score = np.append(ranked[1:] < ranked[:-1], True)
        good = np.flatnonzero(last_of_score & (ranked >= floor) & (precision >= target_precision))
        if len(good):
            lowest = ranked[good[-1]]
            chosen = max(floor, math.floor(lowest * 10**DECIMALS) / 10**DECIMALS)
            reason, reached = f"precision {target_precision:g} reached", True
            if np.any((score_array >= chosen) & (score_array < lowest)):  # rounding would let more in
                chosen = float(lowest)
    precision_at, recall_at, found = _rates(score_array, hit_array, support, chosen)
    default_precision, default_recall, _ = _rates(score_array, hit_array, support, compare_at)
    return LabelThreshold(chosen, reason, reached, precision_at, recall_at, support, found,
                          {"threshold": compare_at, "precision": default_precision, "recall": default_recall})


# --- the validation split --------------------------------------------------------------------------


def _values(features: Mapping[str, Any], key: str, kind: type) -> list[Any]:
    value = features.get(key)
    return list(value.values) if isinstance(value, kind) else []


def validation_images(dataset: Path, limit: int) -> Iterator[tuple[str, np.ndarray, GroundTruth]]:
    """The first ``limit`` validation images, decoded, with their objects in pixels."""
    from PIL import Image

    shards = sorted(dataset.glob(VALIDATION_SHARDS))
    records = itertools.chain.from_iterable(read_records(shard) for shard in shards)
    for number, record in enumerate(itertools.islice(records, limit)):
        features = decode_example(record)
        encoded = _values(features, "image/encoded", BytesList)
        names = _values(features, "image/filename", BytesList)
        name = names[0].decode("utf-8", "replace") if names else f"validation record {number}"
        if not encoded:
            raise ConvertError(f"{dataset}: validation record {number} ({name}) has no image/encoded bytes")
        try:
            with Image.open(io.BytesIO(encoded[0])) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise ConvertError(f"{dataset}: validation image {name} cannot be decoded ({exc})") from None
        height, width = pixels.shape[:2]
        corners = [_values(features, f"image/object/bbox/{key}", FloatList) for key in ("xmin", "ymin", "xmax", "ymax")]
        boxes = np.asarray(corners, np.float64).T.reshape(-1, 4) * (width, height, width, height)
        classes = np.asarray(_values(features, "image/object/class/label", Int64List), np.int64)
        crowd = np.asarray(_values(features, "image/object/is_crowd", Int64List), bool)
        if len(classes) != len(boxes):
            raise ConvertError(f"{dataset}: validation image {name} has {len(boxes)} boxes and {len(classes)} labels")
        yield name, pixels, GroundTruth(boxes, classes, crowd)


def _validation_count(dataset: Path) -> int | None:
    """How many validation images the dataset stage wrote (its ``dataset.json``), when it says."""
    try:
        count = json.loads((dataset / artifacts.DATASET_SUMMARY).read_text(encoding="utf-8"))["images"]["val"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return count if isinstance(count, int) else None


def check_choice(target_precision: float, floor: float, max_images: int) -> None:
    """The choice's parameters, named by the convert stage's flags."""
    for flag, value in (("--target-precision", target_precision), ("--threshold-floor", floor)):
        if not 0.0 <= value <= 1.0 or math.isnan(value):
            raise ConvertError(f"{flag} must be between 0 and 1, got {value}")
    if max_images < 1:
        raise ConvertError(f"--threshold-images must be at least 1, got {max_images}")


def choose_thresholds(detector: Any, dataset: Path, labels: Sequence[str], *,
                      target_precision: float = DEFAULT_TARGET_PRECISION, floor: float = DEFAULT_FLOOR,
                      max_images: int = DEFAULT_MAX_IMAGES, iou: float = MATCH_IOU) -> dict[str, Any]:
    """Run ``detector`` over the validation split and choose each label's threshold; the ``thresholds.json`` document.

    ``detector`` is a :class:`cvat_argo.inference.serving.Detector`; images go through it in batches of
    its ``preferred_batch``. At most ``max_images`` images (the first ones) are used, and the document says so.
    """
    check_choice(target_precision, floor, max_images)
    available = _validation_count(dataset)
    scores: dict[int, list[float]] = {i: [] for i in range(1, len(labels) + 1)}
    hits: dict[int, list[bool]] = {i: [] for i in range(1, len(labels) + 1)}
    support = dict.fromkeys(scores, 0)
    batch_size = max(1, int(getattr(detector, "preferred_batch", 8) or 8))
    used = 0
    total = min(max_images, available) if available is not None else None
    with progress_bar("choosing score thresholds on validation images", total=total) as bar:
        images = validation_images(dataset, max_images)
        while batch := list(itertools.islice(images, batch_size)):
            found = detector.detect([pixels for _, pixels, _ in batch])
            for (_, _, truth), detections in zip(batch, found, strict=True):
                for label_id in scores:
                    image_scores, image_hits, objects = match_image(detections, truth, label_id, iou)
                    scores[label_id] += image_scores
                    hits[label_id] += image_hits
                    support[label_id] += objects
            used += len(batch)
            bar.update(len(batch))
    chosen = {name: choose_threshold(scores[i], hits[i], support[i], target_precision, floor)
              for i, name in enumerate(labels, 1)}
    return {
        "default": DEFAULT_THRESHOLD,
        "per_label": {name: item.threshold for name, item in chosen.items()},
        "chosen_on": {"split": "validation", "images": used, "validation_images": available,
                      "max_images": max_images, "capped": available is not None and available > used,
                      "runtime": getattr(detector, "runtime", "?"), "iou": iou,
                      "target_precision": target_precision, "floor": floor, "compared_at": DEFAULT_THRESHOLD},
        "labels": {name: asdict(item) for name, item in chosen.items()},
    }


def rate(value: float | None) -> str:
    """A precision or recall for people: two decimals, ``-`` where there was nothing to measure."""
    return "-" if value is None else f"{value:.2f}"


def describe(document: Mapping[str, Any]) -> str:
    """One line for the convert stage's summary: each label's threshold and validation precision/recall."""
    chosen_on = document["chosen_on"]
    parts = [f"{name} {item['threshold']:g} (P {rate(item['precision'])} R {rate(item['recall'])}"
             + ("" if item["target_reached"] else f"; {item['reason']}") + ")"
             for name, item in document["labels"].items()]
    capped = f" (first {chosen_on['images']} of {chosen_on['validation_images']})" if chosen_on["capped"] else ""
    return (f"score thresholds on {chosen_on['images']} validation images{capped}, lowest reaching precision "
            f"{chosen_on['target_precision']:g}, floor {chosen_on['floor']:g}: " + ", ".join(parts))
