"""From a detector's raw output to what people and tools read: CVAT shapes, COCO JSON, a summary.

Everything here is pure (numbers in, files out) so the stage, the CVAT detection function and the
nuclio handler agree on one conversion: thresholds per label, at most N shapes per image, boxes
clipped to the image and scaled back to its displayed size, class ids mapped to label names, and
Mask R-CNN masks turned into polygons.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engines import artifacts
from ..errors import CvatArgoError, ServingError
from ..formats.annotations import ImageRecord, LabelSpec, Shape
from ..reports.markdown import capped_section
from ..suggest import unknown_name_message
from .next_to_annotate import report_section

DEFAULT_THRESHOLD = 0.5
SCORE_BINS = 20


# --- thresholds ----------------------------------------------------------------------------------

#: Where the thresholds in use came from (``summary.json``'s ``threshold_origin``).
FROM_MODEL = "model thresholds.json"
FROM_ARGUMENT = "--threshold"
FROM_DEFAULT = "default"


@dataclass(frozen=True)
class Thresholds:
    """A global score threshold and per-label overrides (``--threshold 0.5 --threshold person=0.3``).

    ``origin`` says where they came from: the model's ``thresholds.json`` (chosen on validation data
    by the convert stage), an explicit ``--threshold``, or the built-in default.
    """

    default: float = DEFAULT_THRESHOLD
    per_label: Mapping[str, float] = field(default_factory=dict)
    origin: str = FROM_DEFAULT

    def of(self, label: str) -> float:
        return self.per_label.get(label, self.default)

    @property
    def lowest(self) -> float:
        """The lowest threshold of any label: what a model may be asked to keep."""
        return min([self.default, *self.per_label.values()])

    def as_dict(self) -> dict[str, Any]:
        return {"default": self.default, "per_label": dict(self.per_label)}

    @property
    def note(self) -> str | None:
        """Why every label has the built-in default, when it does (a model converted before thresholds were chosen)."""
        if self.origin != FROM_DEFAULT:
            return None
        return (f"the model has no {artifacts.THRESHOLDS} (converted before thresholds were chosen on validation "
                f"data): {self.default:g} for every label without --threshold")

    def floored(self, requested: float) -> Thresholds:
        """What a caller's own minimum (CVAT's ``conf_threshold``, a nuclio request's ``threshold``) leaves:
        it replaces the default, and raises every per-label threshold below it (nothing under it is returned)."""
        return Thresholds(requested, {name: max(value, requested) for name, value in self.per_label.items()},
                          self.origin)


def _score(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CvatArgoError(f"--threshold {where}: {text!r} is not a number") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise CvatArgoError(f"--threshold {where}: {value} is not between 0 and 1")
    return value


def parse_thresholds(values: Sequence[str], labels: Sequence[str], base: Thresholds | None = None) -> Thresholds:
    """``["0.4", "person=0.3"]`` over ``base`` (the model's thresholds) -> Thresholds.

    Explicit values win: a global one replaces every threshold of ``base``, a per-label one only its
    label's. A label the model lacks is an error naming it.
    """
    base = base or Thresholds()
    default: float | None = None
    per_label: dict[str, float] = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if not sep:
            default = _score(value, value)
            continue
        name = name.strip()
        if name not in labels:
            raise CvatArgoError(f"--threshold {value!r}: {unknown_name_message('label', name, labels)}")
        per_label[name] = _score(number.strip(), value)
    if default is not None:
        return Thresholds(default, per_label, FROM_ARGUMENT)
    if not per_label:
        return base
    origin = FROM_ARGUMENT if base.origin == FROM_DEFAULT else f"{base.origin} + {FROM_ARGUMENT}"
    return Thresholds(base.default, {**base.per_label, **per_label}, origin)


def _model_threshold(value: Any, path: Path, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ServingError(f"{path}: {what}: {value!r} is not a score threshold between 0 and 1")
    return float(value)


def model_thresholds(model_dir: Path | str, labels: Sequence[str]) -> Thresholds:
    """The thresholds a convert output folder ships (``thresholds.json``: ``{"default", "per_label"}``).

    A model converted before thresholds were chosen has no file: then every label has the built-in
    default (origin ``default``). A file that is unreadable, or names a label the model lacks, is a
    :class:`ServingError` naming it.
    """
    path = Path(model_dir) / artifacts.THRESHOLDS
    if not path.is_file():
        return Thresholds()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServingError(f"{path} is not readable JSON: {exc}") from None
    per_label = document.get("per_label", {}) if isinstance(document, dict) else None
    if not isinstance(per_label, dict):
        raise ServingError(f'{path}: expected {{"default": 0.5, "per_label": {{"label": 0.3}}}}')
    for name in per_label:
        if name not in labels:
            raise ServingError(f"{path}: {unknown_name_message('label', name, labels)}")
    default = document.get("default")
    return Thresholds(DEFAULT_THRESHOLD if default is None else _model_threshold(default, path, "default"),
                      {name: _model_threshold(value, path, f"label {name!r}") for name, value in per_label.items()},
                      FROM_MODEL)


# --- detections -> shapes ------------------------------------------------------------------------


def mask_to_polygon(mask: np.ndarray, box: Sequence[float], cut: float = 0.5) -> tuple[float, ...] | None:
    """The outline of the largest blob of a box-frame mask, in image pixels; None when nothing is set.

    Mask R-CNN gives each instance a small probability map (e.g. 28x28) covering its box; it is
    resized to the box, cut at ``cut``, traced with OpenCV and simplified to about a pixel.
    """
    try:
        import cv2
    except ImportError:
        raise CvatArgoError("Mask R-CNN polygons need OpenCV: pip install opencv-python-headless") from None
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = max(1, math.ceil(x1 - x0)), max(1, math.ceil(y1 - y0))
    probabilities = np.asarray(mask, dtype=np.float32)
    if probabilities.ndim != 2 or probabilities.size == 0:
        return None
    resized = cv2.resize(probabilities, (width, height), interpolation=cv2.INTER_LINEAR)
    binary = (resized >= cut).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    largest = max(contours, key=cv2.contourArea)
    simplified = cv2.approxPolyDP(largest, 1.0, True).reshape(-1, 2)
    if len(simplified) < 3:
        return None
    sx, sy = (x1 - x0) / width, (y1 - y0) / height
    return tuple(float(v) for x, y in simplified for v in (x0 + x * sx, y0 + y * sy))


def detections_to_shapes(
    detections: Any,
    labels: Sequence[str],
    width: int,
    height: int,
    thresholds: Thresholds,
    *,
    max_detections: int = 100,
    scale: tuple[float, float] = (1.0, 1.0),
    polygon_labels: Iterable[str] | None = None,
) -> tuple[Shape, ...]:
    """CVAT shapes (``source="auto"``, with score) for one image's detections.

    ``detections`` is a :class:`cvat_argo.inference.serving.Detections`; ``scale`` multiplies its boxes (the
    image may have been decoded smaller than its displayed size). Boxes are clipped to the image
    and empty ones dropped; masks become polygons for ``polygon_labels`` (default: every label).
    """
    boxes = np.asarray(detections.boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(detections.scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(detections.classes).reshape(-1).astype(np.int64)
    masks = getattr(detections, "masks", None)
    polygon_ok = None if polygon_labels is None else set(polygon_labels)
    order = np.argsort(-scores, kind="stable")
    shapes: list[Shape] = []
    for index in order:
        if len(shapes) >= max_detections:
            break
        class_id = int(classes[index])
        if not 1 <= class_id <= len(labels):
            continue  # padding or an id outside the label map: not an object of this task
        label = labels[class_id - 1]
        score = float(scores[index])
        if score < thresholds.of(label):
            continue
        x0, y0, x1, y1 = (float(v) for v in boxes[index] * (scale[0], scale[1], scale[0], scale[1]))
        box = (min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width),
               min(max(y1, 0.0), height))
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            continue
        polygon = None
        if masks is not None and (polygon_ok is None or label in polygon_ok):
            polygon = mask_to_polygon(masks[index], (x0, y0, x1, y1))
            if polygon is not None:
                polygon = _clip_points(polygon, width, height)
        shapes.append(Shape(label=label, kind="polygon" if polygon else "box", box=tuple(box), polygon=polygon,
                            source="auto", score=score))
    return tuple(shapes)


def _clip_points(flat: tuple[float, ...], width: int, height: int) -> tuple[float, ...]:
    return tuple(min(max(v, 0.0), float(width if i % 2 == 0 else height)) for i, v in enumerate(flat))


def fit_to_label(shape: Shape, label_type: str | None) -> Shape | None:
    """The shape in a form the task's label accepts; None when it accepts neither a box nor a polygon.

    CVAT refuses a polygon on a ``rectangle`` label and the reverse, so a Mask R-CNN polygon becomes
    its box on a rectangle label, and a box becomes a four-point polygon on a polygon label.
    """
    if label_type in (None, "", "any"):
        return shape
    if label_type == "rectangle":
        return shape if shape.kind == "box" else Shape(shape.label, "box", shape.box, source=shape.source,
                                                       score=shape.score)
    if label_type == "polygon":
        if shape.kind == "polygon":
            return shape
        x0, y0, x1, y1 = shape.box  # type: ignore[misc]
        return Shape(shape.label, "polygon", shape.box, polygon=(x0, y0, x1, y0, x1, y1, x0, y1), source=shape.source,
                     score=shape.score)
    return None


# --- COCO ----------------------------------------------------------------------------------------


def polygon_area(flat: Sequence[float]) -> float:
    xs, ys = np.asarray(flat[0::2], dtype=np.float64), np.asarray(flat[1::2], dtype=np.float64)
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


def coco_document(labels: Sequence[str], images: Iterable[ImageRecord]) -> dict[str, Any]:
    """COCO instances with a ``score`` per annotation, as pycocotools' ``loadRes`` and CVAT read them.

    Category ids are the task's label index + 1 and image ids frame + 1, as CVAT writes them; each
    annotation also carries ``attributes.source = "auto"`` (CVAT's COCO import then marks the shapes
    as machine-made) and ``attributes.score``.
    """
    category = {name: index + 1 for index, name in enumerate(labels)}
    document: dict[str, Any] = {
        "info": {"description": "cvat-argo pre-annotations"},
        "licenses": [],
        "categories": [{"id": cid, "name": name, "supercategory": ""} for name, cid in category.items()],
        "images": [],
        "annotations": [],
    }
    next_id = 1
    for record in images:
        image_id = record.frame + 1
        document["images"].append({"id": image_id, "file_name": record.name, "width": record.width,
                                   "height": record.height})
        for shape in record.shapes:
            x0, y0, x1, y1 = shape.box  # type: ignore[misc]
            segmentation = [list(shape.polygon)] if shape.polygon else []
            area = polygon_area(shape.polygon) if shape.polygon else (x1 - x0) * (y1 - y0)
            attributes: dict[str, Any] = {"occluded": False, "rotation": 0.0, "source": shape.source}
            if shape.score is not None:
                attributes["score"] = round(shape.score, 4)
            document["annotations"].append({
                "id": next_id, "image_id": image_id, "category_id": category[shape.label],
                "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
                "area": round(area, 3), "iscrowd": 0, "segmentation": [[round(v, 3) for v in ring]
                                                                         for ring in segmentation],
                "score": round(shape.score, 4) if shape.score is not None else 1.0,
                "attributes": attributes,
            })
            next_id += 1
    return document


# --- summary, plot, report -----------------------------------------------------------------------


@dataclass
class Tally:
    """Running counts while images stream through; memory stays small (scores in fixed bins).

    The score histogram counts every detection the runtime returned (:meth:`add_scores`), not only
    the shapes kept: what lies under the threshold is what tells a person whether to lower it.
    """

    labels: Sequence[str]
    images: int = 0
    images_with_shapes: int = 0
    shapes_per_label: Counter = field(default_factory=Counter)
    histogram: dict[str, list[int]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def add(self, record: ImageRecord) -> None:
        self.images += 1
        self.images_with_shapes += bool(record.shapes)
        for shape in record.shapes:
            self.shapes_per_label[shape.label] += 1

    def add_scores(self, scores: Sequence[float], classes: Sequence[int], labels: Sequence[str]) -> None:
        """Bin one image's raw detections (1-based ``classes`` into ``labels``), kept or not."""
        for score, class_id in zip(np.asarray(scores, np.float64).reshape(-1),
                                   np.asarray(classes).reshape(-1).astype(np.int64), strict=True):
            if 1 <= class_id <= len(labels) and 0.0 <= score <= 1.0:
                bins = self.histogram.setdefault(labels[class_id - 1], [0] * SCORE_BINS)
                bins[min(SCORE_BINS - 1, int(score * SCORE_BINS))] += 1

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"name": name, "reason": reason})

    def summary(self, **extra: Any) -> dict[str, Any]:
        return {
            "images": self.images,
            "images_with_shapes": self.images_with_shapes,
            "shapes": sum(self.shapes_per_label.values()),
            "shapes_per_label": {name: self.shapes_per_label.get(name, 0) for name in self.labels},
            "score_histogram": {"bins": SCORE_BINS, "counts": self.histogram, "of": "every detection"},
            "skipped": self.skipped,
            **extra,
        }


def plot_scores(path: Path, summary: Mapping[str, Any], thresholds: Mapping[str, Any]) -> None:
    """Every detection's score per label over 0-1, with each label's threshold: where to set it next time.

    Shapes under a threshold are what a lower one would add, so the histogram counts every detection
    the runtime returned (:meth:`Tally.add_scores`); a log count axis keeps the few near a threshold
    visible beside the many low-scoring ones.
    """
    from ..reports.plots import label_colour, new_figure, plain_log_ticks, save_figure

    figure, axis = new_figure(width=8, height=4.2)
    counts: Mapping[str, list[int]] = summary["score_histogram"]["counts"]
    bins = summary["score_histogram"]["bins"]
    edges = np.linspace(0, 1, bins + 1)
    labels = list(summary.get("labels") or counts)
    kept = summary.get("shapes_per_label", {})
    default, per_label = thresholds["default"], thresholds.get("per_label", {})
    lines: dict[float, list[int]] = {}
    for index, label in enumerate(labels):
        lines.setdefault(float(per_label.get(label, default)), []).append(index)
        values = np.asarray(counts.get(label, [0] * bins))
        if values.any():
            axis.stairs(values, edges, color=label_colour(index), linewidth=2, fill=False,
                        label=f"{label}: {int(values.sum())} detections, {kept.get(label, 0)} kept")
    nonzero = [v for values in counts.values() for v in values if v]
    if nonzero and max(nonzero) > 20 * min(nonzero):
        axis.set_yscale("log")
        plain_log_ticks(axis.yaxis)
    top = axis.get_ylim()[1]
    for value, indexes in sorted(lines.items()):
        colour = label_colour(indexes[0]) if len(indexes) == 1 else "black"
        axis.axvline(value, color=colour, linestyle="--", linewidth=1.5)
        axis.text(value + 0.008, top, f"threshold {value:g}: " + ", ".join(labels[i] for i in indexes),
                  rotation=90, va="top", ha="left", fontsize=8, color=colour)
    axis.set_xlim(0, 1)
    axis.set_xticks(np.linspace(0, 1, 11))
    axis.set_xlabel("score")
    axis.set_ylabel("detections")
    axis.set_title(f"scores of every detection ({summary['shapes']} kept as shapes on {summary['images']} images)",
                   fontsize=10)
    if nonzero:
        axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(3, len(labels)),
                    frameon=False)
    else:
        axis.text(0.5, 0.5, "the model returned no detections", ha="center", va="center", transform=axis.transAxes)
    save_figure(figure, path)


def write_report(out: Path, summary: Mapping[str, Any],
                 next_to_annotate: Sequence[Mapping[str, Any]] | None = None) -> None:
    """``report.md``: what was annotated, how fast, what was skipped, what went to CVAT and what to
    annotate next (``next_to_annotate``: the rows of that list, None when it was not made)."""
    lines = [
        "# Pre-annotations",
        "",
        f"{summary['shapes']} shapes on {summary['images']} images ({summary['images_with_shapes']} with at least one "
        f"shape), {summary['images_per_second']:.1f} images/s with the {summary['runtime']} runtime.",
        "",
        f"Threshold {summary['threshold']['default']}"
        + "".join(f", {k} {v}" for k, v in summary["threshold"]["per_label"].items())
        + (f" (from {summary['threshold_origin']})" if summary.get("threshold_origin") else "")
        + f"; at most {summary['max_detections']} shapes per image."
        + (f" Note: {summary['threshold_note']}." if summary.get("threshold_note") else ""),
        "",
        "| label | shapes |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {count} |" for name, count in summary["shapes_per_label"].items()]
    lines += [
        "",
        "Files: `annotations.xml` (CVAT for images 1.1), `coco.json` (COCO with scores), `summary.json`.",
        "",
        "Importing `annotations.xml` through CVAT's *Upload annotations* replaces the task's annotations unless the "
        "server offers the append mode, and marks the shapes `source=file`; the upload through cvat-sdk "
        "(`CVAT_HOST` set and a task id known) appends them as `source=auto` and leaves frames people annotated "
        "alone.",
    ]
    upload = summary.get("upload")
    if upload:
        lines += ["", "## CVAT", ""]
        verb = "would add" if upload.get("dry_run") else "added"
        lines.append(f"Task {upload['task_id']}: {verb} {upload['created']} shapes on {upload['frames_created']} "
                     f"frames; left alone {upload['frames_human']} frames with human shapes, "
                     f"{upload['frames_other_auto']} frames with other machine shapes; {upload['already_present']} "
                     "shapes were already there from an earlier run.")
    elif summary.get("upload_note"):
        lines += ["", f"CVAT: {summary['upload_note']}"]
    lines += capped_section("Skipped images", [f"{s['name']}: {s['reason']}" for s in summary["skipped"]],
                            artifacts.ANNOTATION_SUMMARY)
    if next_to_annotate is not None:
        lines += report_section(next_to_annotate)
    lines += ["", f"![score histogram]({artifacts.SCORES_PLOT})", ""]
    (out / artifacts.STAGE_REPORT).write_text("\n".join(lines), encoding="utf-8")


def task_label_specs(names: Sequence[str]) -> tuple[LabelSpec, ...]:
    """Label specs when the task itself is not known: the model's names, any shape type."""
    return tuple(LabelSpec(name=name, type="any") for name in names)
