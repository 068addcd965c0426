"""qc-report: what people did with the pre-annotations, per label: the numbers that say whether to retrain.

``python -m cvat_argo qc-report EXPORT --predictions PRE_ANNOTATE_OUT [--reviewed all|0-99,120]
[--out DIR] [--iou 0.3]``

EXPORT is the task exported as "CVAT for images 1.1" after people reviewed it (a zip, a folder or
its ``annotations.xml``). ``--predictions`` is what the model proposed: the pre-annotate stage's
output folder, its ``coco.json`` (with scores) or its ``annotations.xml``.

**Outcomes.** On each image, the reviewed shapes are matched to the predictions one to one by the
IoU of their boxes (at least ``--iou``; same label first, then best IoU first, greedily). Every
prediction is counted exactly once:

- *accepted*: matched to a shape of the same label whose every side is within 1 px of it;
- *corrected*: matched, but moved or resized beyond that, or *relabelled*;
- *deleted*: matched to nothing.

A reviewed shape that matches no prediction is a *miss*: the model missed it. Shape sources do not
decide outcomes: a box moved through the API keeps ``source="auto"``.

**Which frames count** is the one rule of ``cvat_argo/cvat/review.py``. First each shape gets the
source CVAT's UI would have given it: one of ours left unchanged is ``auto`` (even when imported as
``file``), one of ours changed is ``semi-auto``; an ``auto`` shape matching none of ours stays
``auto`` (another model's or a later round's, or one of ours moved beyond recognition). A
frame still holding only untouched ``auto`` shapes is *awaiting review* and an empty one is *to
pre-annotate*, unless it is named reviewed; both are left out of the counts and reported. An export
has no job state, so the rule runs on sources alone (``RULE_SOURCES_ONLY``), and a frame where a
person accepted every shape unchanged looks unreviewed: name the frames people reviewed (the jobs
they completed) with ``--reviewed 0-99,120`` (CVAT frame numbers, the ``<image id>``) or
``--reviewed all``; the rule is then ``RULE_WITH_JOBS`` with those frames as the reviewed jobs.

Per label: precision of the proposals (accepted + corrected with the same label, over
predictions), recall (those over the reviewed shapes of the label), acceptance by score band
(0.1 wide), and the lowest score threshold above which at least 90% of the proposals were kept.
Without ``--predictions`` only the sources can speak: machine shapes found and people's misses,
with no accepted, corrected or deleted. Writes ``qc.json``, ``qc.md`` and ``qc.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engines import artifacts
from ..errors import DatasetError
from ..formats.annotations import Box, ImageRecord, Shape
from .review import (
    AWAITING_REVIEW,
    GROUND_TRUTH,
    MACHINE_SOURCE,
    RULE_SOURCES_ONLY,
    RULE_WITH_JOBS,
    frame_kind,
)

OUTCOMES = ("accepted", "corrected", "deleted")
MACHINE_SOURCES = (MACHINE_SOURCE, "semi-auto")  # what a model made, touched by people or not
UNCHANGED_PX = 1.0  # every side of an accepted shape within this many pixels of the prediction
UNCHANGED_DEGREES = 1.0  # and its rotation within this many degrees
SCORE_EDGES = tuple(round(0.1 * i, 1) for i in range(11))
TARGET_PRECISION = 0.9  # the threshold suggestion: the lowest score from which on this many proposals were kept
RETRAIN_BELOW = 0.7  # acceptance under this: retrain on the reviewed images before pre-annotating more


class CountingError(RuntimeError):
    """The counts broke their own invariant (a bug here, not bad input): no report rather than a wrong one."""


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def unchanged(predicted: Shape, reviewed: Shape) -> bool:
    """Same label, every side within UNCHANGED_PX and the rotation within UNCHANGED_DEGREES."""
    return (predicted.label == reviewed.label
            and max(abs(p - r) for p, r in zip(predicted.box, reviewed.box, strict=True)) <= UNCHANGED_PX  # type: ignore[arg-type]
            and abs(predicted.rotation - reviewed.rotation) <= UNCHANGED_DEGREES)


def match(predicted: Sequence[Shape], reviewed: Sequence[Shape], min_iou: float) -> dict[int, int]:
    """One-to-one prediction index -> reviewed index: same label first, then best IoU first (greedy)."""
    pairs = []
    for i, p in enumerate(predicted):
        for j, r in enumerate(reviewed):
            overlap = iou(p.box, r.box)  # type: ignore[arg-type]
            if overlap >= min_iou:
                pairs.append((p.label != r.label, -overlap, i, j))
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for _, _, i, j in sorted(pairs):
        if i not in matched and j not in taken:
            matched[i] = j
            taken.add(j)
    return matched


# --- which frames people reviewed ---------------------------------------------------------------


@dataclass(frozen=True)
class ReviewedFrames:
    """The frames ``--reviewed`` names: ``all``, or frame numbers and ranges such as ``0-99,120``."""

    spec: str
    ranges: tuple[tuple[int, int], ...] | None  # None: every frame

    @classmethod
    def parse(cls, text: str) -> ReviewedFrames:
        spec = text.strip()
        if spec.lower() == "all":
            return cls("all", None)
        ranges = []
        for part in spec.split(","):
            found = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            first, last = (int(found[1]), int(found[2] or found[1])) if found else (0, -1)
            if last < first:
                raise DatasetError(f"--reviewed {text!r}: {part.strip()!r} is not a frame number or a range "
                                   "first-last; give e.g. 0-99,120 (CVAT frame numbers) or all")
            ranges.append((first, last))
        return cls(spec, tuple(ranges))

    def __contains__(self, frame: object) -> bool:
        if self.ranges is None:
            return True
        return isinstance(frame, int) and any(first <= frame <= last for first, last in self.ranges)


# --- counting ------------------------------------------------------------------------------------


@dataclass
class LabelTally:
    predictions: int = 0
    accepted: int = 0
    corrected: int = 0
    relabelled: int = 0  # among corrected: matched to a shape of another label
    deleted: int = 0
    misses: int = 0  # reviewed shapes of this label that match no prediction
    reviewed: int = 0  # reviewed shapes of this label
    found: int = 0  # reviewed shapes of this label matched to a prediction of this label
    scored: list[tuple[float, str, bool]] = field(default_factory=list)  # (score, outcome, kept)

    def add(self, other: LabelTally) -> None:
        for name in ("predictions", "accepted", "corrected", "relabelled", "deleted", "misses", "reviewed", "found"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.scored.extend(other.scored)


@dataclass
class FrameTally:
    pre_annotated: int = 0  # pre-annotated frames found in the export
    counted: int = 0
    awaiting_review: int = 0  # only untouched auto shapes, not named reviewed
    awaiting_predictions: int = 0  # the predictions on those frames (not counted)
    empty_unreviewed: int = 0  # no shape left, not named reviewed: all deleted, or nothing was uploaded
    not_in_export: int = 0  # predicted images the export does not hold (e.g. the export of one job)
    reviewed_named: int = 0  # export frames that --reviewed names


@dataclass
class Review:
    with_predictions: bool
    labels: dict[str, LabelTally] = field(default_factory=dict)
    frames: FrameTally = field(default_factory=FrameTally)

    def of(self, label: str) -> LabelTally:
        return self.labels.setdefault(label, LabelTally())

    def total(self) -> LabelTally:
        total = LabelTally()
        for tally in self.labels.values():
            total.add(tally)
        return total


def as_the_ui_marks(reviewed: Sequence[Shape], predicted: Sequence[Shape], matched: dict[int, int]) -> list[Shape]:
    """The shapes with the source CVAT's UI would have given them (cvat-core ``computeNewSource``).

    An edit through the API, or an import of our XML (``file``), leaves sources that say nothing
    about a person; the comparison with the predictions does. Other sources stay as they are.
    """
    untouched = {j: unchanged(predicted[i], reviewed[j]) for i, j in matched.items()}
    marked = []
    for j, shape in enumerate(reviewed):
        source = shape.source
        if source in (MACHINE_SOURCE, "file") and j in untouched:
            source = MACHINE_SOURCE if untouched[j] else "semi-auto"
        # An auto shape where we proposed none stays auto: another model's, a later round's, or one of
        # ours moved far; none of them says a person looked at the frame (--reviewed can say so).
        marked.append(dataclasses.replace(shape, source=source))
    return marked


def _count_frame(result: Review, predicted: Sequence[Shape], reviewed: Sequence[Shape],
                 matched: dict[int, int]) -> None:
    for i, shape in enumerate(predicted):
        tally = result.of(shape.label)
        tally.predictions += 1
        j = matched.get(i)
        same_label = j is not None and reviewed[j].label == shape.label
        outcome = "deleted" if j is None else "accepted" if unchanged(shape, reviewed[j]) else "corrected"
        setattr(tally, outcome, getattr(tally, outcome) + 1)
        tally.relabelled += j is not None and not same_label
        if shape.score is not None:
            tally.scored.append((shape.score, outcome, same_label))
    matched_reviewed = {j: i for i, j in matched.items()}
    for j, shape in enumerate(reviewed):
        tally = result.of(shape.label)
        tally.reviewed += 1
        i = matched_reviewed.get(j)
        if i is None:
            tally.misses += 1
        elif predicted[i].label == shape.label:
            tally.found += 1


def _count_by_source(result: Review, reviewed: Sequence[Shape]) -> None:
    for shape in reviewed:
        tally = result.of(shape.label)
        tally.reviewed += 1
        if shape.source in MACHINE_SOURCES:
            tally.found += 1
        else:
            tally.misses += 1


def _boxed(shapes: Iterable[Shape]) -> list[Shape]:
    return [shape for shape in shapes if shape.box is not None]  # an empty mask has no extent to compare


def review(export: Iterable[ImageRecord], predictions: dict[str, ImageRecord] | None, min_iou: float = 0.3,
           reviewed_frames: ReviewedFrames | None = None) -> Review:
    """Count outcomes per label over the pre-annotated frames of the export that people reviewed."""
    result = Review(with_predictions=predictions is not None)
    frames = result.frames
    seen: set[str] = set()
    for record in export:
        named_reviewed = reviewed_frames is not None and record.frame in reviewed_frames
        frames.reviewed_named += named_reviewed
        shapes = _boxed(record.shapes)
        if predictions is None:
            if not any(shape.source in MACHINE_SOURCES for shape in shapes):
                continue  # no machine shape: not pre-annotated, as far as sources tell
            predicted: list[Shape] = []
            matched: dict[int, int] = {}
            marked = shapes
        else:
            if record.name not in predictions:
                continue  # not pre-annotated by this run
            seen.add(record.name)
            predicted = _boxed(predictions[record.name].shapes)
            matched = match(predicted, shapes, min_iou)
            marked = as_the_ui_marks(shapes, predicted, matched)
        frames.pre_annotated += 1
        unboxed = [shape for shape in record.shapes if shape.box is None]  # not compared, but a person's work counts
        kind = frame_kind([*marked, *unboxed], named_reviewed)
        if kind == AWAITING_REVIEW:
            frames.awaiting_review += 1
            frames.awaiting_predictions += len(predicted)
        elif kind != GROUND_TRUTH:
            frames.empty_unreviewed += 1
        elif predictions is None:
            frames.counted += 1
            _count_by_source(result, shapes)
        else:
            frames.counted += 1
            _count_frame(result, predicted, shapes, matched)
    if predictions is not None:
        frames.not_in_export = len(set(predictions) - seen)
    check_sums(result)
    return result


def check_sums(result: Review) -> None:
    """Every prediction counted once, every reviewed shape once; else raise CountingError."""
    for name, tally in [*result.labels.items(), ("all labels", result.total())]:
        broken = []
        if result.with_predictions and tally.accepted + tally.corrected + tally.deleted != tally.predictions:
            broken.append(f"accepted {tally.accepted} + corrected {tally.corrected} + deleted {tally.deleted} "
                          f"!= predictions {tally.predictions}")
        if tally.relabelled > tally.corrected or tally.found + tally.misses > tally.reviewed:
            broken.append(f"relabelled {tally.relabelled}, corrected {tally.corrected}, found {tally.found}, "
                          f"misses {tally.misses}, reviewed {tally.reviewed}")
        if len(tally.scored) > (tally.predictions if result.with_predictions else 0):
            broken.append(f"{len(tally.scored)} scores for {tally.predictions} predictions")
        if broken:
            raise CountingError(f"qc-report counted {name} inconsistently: {'; '.join(broken)}")
    total = result.total()
    matched = total.accepted + total.corrected if result.with_predictions else total.found
    if matched + total.misses != total.reviewed:
        raise CountingError(f"qc-report: matched {matched} + misses {total.misses} != reviewed shapes {total.reviewed}")


# --- numbers for the report ----------------------------------------------------------------------


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def score_band(score: float) -> int:
    return min(len(SCORE_EDGES) - 2, max(0, math.floor(score * 10 + 1e-9)))


Scored = Sequence[tuple[float, str, bool]]  # (score, outcome, kept with its label) per prediction


def threshold_for_precision(scored: Scored, target: float = TARGET_PRECISION) -> float | None:
    """The lowest score t such that of the predictions scored at least t, at least ``target`` were kept."""
    best, kept, count = None, 0, 0
    ordered = sorted(scored, key=lambda item: -item[0])
    for index, (score, _, was_kept) in enumerate(ordered):
        kept += was_kept
        count += 1
        if index + 1 < len(ordered) and ordered[index + 1][0] == score:
            continue  # a threshold keeps all predictions of one score or none
        if kept >= target * count:
            best = score
    return None if best is None else round(best, 4)


def by_score(scored: Scored) -> dict[str, list[Any]] | None:
    if not scored:
        return None
    bands: dict[str, list[Any]] = {name: [0] * (len(SCORE_EDGES) - 1) for name in ("predictions", *OUTCOMES)}
    for score, outcome, _ in scored:
        band = score_band(score)
        bands["predictions"][band] += 1
        bands[outcome][band] += 1
    bands["acceptance"] = [_rate(a, n) for a, n in zip(bands["accepted"], bands["predictions"], strict=True)]
    return bands


def label_row(tally: LabelTally, with_predictions: bool) -> dict[str, Any]:
    kept = tally.accepted + tally.corrected - tally.relabelled

    def known(value: Any) -> Any:  # what only the predictions tell
        return value if with_predictions else None

    return {
        "predictions": known(tally.predictions), "accepted": known(tally.accepted),
        "corrected": known(tally.corrected), "relabelled": known(tally.relabelled), "deleted": known(tally.deleted),
        "misses": tally.misses, "reviewed_shapes": tally.reviewed, "found_by_model": tally.found,
        "precision": known(_rate(kept, tally.predictions)),
        "recall": _rate(tally.found, tally.reviewed),
        "acceptance_rate": known(_rate(tally.accepted, tally.predictions)),
        "threshold_for_precision": threshold_for_precision(tally.scored),
        "by_score": by_score(tally.scored),
    }


def report_document(result: Review, export: str, predictions: str | None, min_iou: float,
                    reviewed_frames: ReviewedFrames | None) -> dict[str, Any]:
    total = label_row(result.total(), result.with_predictions)
    rate = total["acceptance_rate"]
    return {
        "export": export,
        "predictions": predictions,
        "frames": {**dataclasses.asdict(result.frames),
                   "rule": RULE_SOURCES_ONLY if reviewed_frames is None else RULE_WITH_JOBS,
                   "reviewed": None if reviewed_frames is None else reviewed_frames.spec},
        "iou": min_iou,
        "unchanged_px": UNCHANGED_PX,
        "score_edges": list(SCORE_EDGES),
        "target_precision": TARGET_PRECISION,
        "labels": {name: label_row(tally, result.with_predictions) for name, tally in sorted(result.labels.items())},
        "total": total,
        "retrain": rate is not None and rate < RETRAIN_BELOW,
    }


# --- writing -------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0%}" if isinstance(value, float) else str(value)


def frames_sentence(document: dict[str, Any]) -> str:
    frames = document["frames"]
    held = f"{frames['awaiting_predictions']} predictions, " if document["predictions"] else ""
    text = (f"{frames['pre_annotated']} pre-annotated frames in the export: {frames['counted']} reviewed and counted, "
            f"{frames['awaiting_review']} awaiting review ({held}not counted)")
    if frames["empty_unreviewed"]:
        text += f", {frames['empty_unreviewed']} empty and not named reviewed (not counted)"
    if frames["not_in_export"]:
        text += f"; predicted images not in the export: {frames['not_in_export']}"
    return text + "."


def write_markdown(path: Path, document: dict[str, Any]) -> None:
    frames, target = document["frames"], f"{document['target_precision']:.0%}"
    source = f" against the predictions `{document['predictions']}`" if document["predictions"] else ""
    lines = ["# Review of the pre-annotations", "",
             f"Export `{document['export']}`{source}. {frames_sentence(document)}",
             "", f"Which frames count: {frames['rule']}"
             + (f"; reviewed frames (`--reviewed`): {frames['reviewed']}." if frames["reviewed"] else "."), "",
             f"| label | predictions | accepted | corrected (relabelled) | deleted | misses | precision | recall | "
             f"threshold for {target} precision |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in [*document["labels"].items(), ("**all**", document["total"])]:
        corrected = "n/a" if row["corrected"] is None else f"{row['corrected']} ({row['relabelled']})"
        cells = [_cell(row["predictions"]), _cell(row["accepted"]), corrected, _cell(row["deleted"]), row["misses"],
                 _cell(row["precision"]), _cell(row["recall"]),
                 "n/a" if row["threshold_for_precision"] is None else f"{row['threshold_for_precision']:g}"]
        lines.append(f"| {name} | " + " | ".join(str(cell) for cell in cells) + " |")
    lines += ["", "Each prediction is one of: accepted (same label, every side within "
              f"{document['unchanged_px']:g} px), corrected (moved, resized or relabelled) or deleted (no reviewed "
              f"shape overlaps it by IoU {document['iou']:g}). Misses: reviewed shapes that match no prediction. "
              "Precision: predictions kept with their label; recall: reviewed shapes the model proposed with their "
              f"label; threshold: the lowest score from which on at least {target} of the predictions were kept."]
    if document["predictions"] is None:
        lines += ["", "Without `--predictions` only sources speak: found by model = machine shapes (`auto`, "
                  "`semi-auto`), misses = people's shapes; accepted, corrected and deleted are unknown."]
    bands = document["total"]["by_score"]
    if bands is not None:
        edges = document["score_edges"]
        lines += ["", "## Acceptance by score (all labels)", "",
                  "| score | predictions | accepted | corrected | deleted | acceptance |",
                  "|---|---:|---:|---:|---:|---:|"]
        for band, count in enumerate(bands["predictions"]):
            if count:
                cells = [count, bands["accepted"][band], bands["corrected"][band], bands["deleted"][band],
                         _cell(bands["acceptance"][band])]
                lines.append(f"| {edges[band]:.1f}-{edges[band + 1]:.1f} | " + " | ".join(map(str, cells)) + " |")
    if frames["awaiting_review"] and frames["reviewed"] is None:
        lines += ["", f"The frames awaiting review ({frames['awaiting_review']}) hold only untouched machine shapes: "
                  "if people reviewed them (accepted everything), name them with `--reviewed` (e.g. the frames of "
                  "the completed jobs)."]
    if document["retrain"]:
        lines += ["", f"Acceptance is under {RETRAIN_BELOW:.0%}: retrain on the reviewed images before pre-annotating "
                  "more."]
    lines += ["", f"![outcome by score band per label]({artifacts.QC_PLOT})", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


COLORS = {"accepted": "#2e7d32", "corrected": "#f9a825", "deleted": "#c62828", "misses": "#1565c0",
          "found_by_model": "#2e7d32"}
MAX_PANELS = 9


def plot(path: Path, document: dict[str, Any]) -> None:
    """Outcome by score band, for all labels and for the labels with most predictions; by label without scores."""
    from ..reports.plots import blank_figure, save_figure

    rows = [("all labels", document["total"]), *sorted(document["labels"].items(),
                                                       key=lambda item: -(item[1]["predictions"] or 0))]
    scored = [(name, row) for name, row in rows if row["by_score"] is not None][:MAX_PANELS]
    if not scored:
        figure = blank_figure(width=7, height=4)
        axis = figure.add_subplot(1, 1, 1)
        names = list(document["labels"])
        parts = [*OUTCOMES, "misses"] if document["predictions"] else ["found_by_model", "misses"]
        bottom = np.zeros(len(names))
        for part in parts:
            values = np.asarray([document["labels"][name][part] for name in names], dtype=float)
            axis.bar(range(len(names)), values, bottom=bottom, label=part.replace("_", " "), color=COLORS[part])
            bottom += values
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
        axis.set_ylabel("shapes")
        axis.yaxis.get_major_locator().set_params(integer=True)
        axis.set_title("outcome per label" + ("" if document["predictions"] else ", from shape sources only")
                       + " (no scores)")
        axis.legend(fontsize=8)
        save_figure(figure, path)
        return
    columns = min(3, len(scored))
    lines = math.ceil(len(scored) / columns)
    figure = blank_figure(width=4.2 * columns, height=3.3 * lines + 0.4)
    edges = document["score_edges"]
    for index, (name, row) in enumerate(scored):
        axis = figure.add_subplot(lines, columns, index + 1)
        bottom = np.zeros(len(edges) - 1)
        for outcome in OUTCOMES:
            values = np.asarray(row["by_score"][outcome], dtype=float)
            axis.bar(edges[:-1], values, width=0.1, align="edge", bottom=bottom, color=COLORS[outcome],
                     edgecolor="white", label=outcome)
            bottom += values
        threshold = row["threshold_for_precision"]
        if threshold is not None:
            axis.axvline(threshold, color="black", linestyle="--", linewidth=1,
                         label=f"{document['target_precision']:.0%} precision from here")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, max(1.0, bottom.max()) * 1.45)  # headroom for the legend and the threshold label
        axis.set_title(f"{name}: {row['predictions']} predictions, misses {row['misses']}", fontsize=9)
        axis.set_xlabel("prediction score", fontsize=8)
        axis.set_ylabel("predictions", fontsize=8)
        axis.yaxis.get_major_locator().set_params(integer=True)
        if index == 0:
            axis.legend(fontsize=7, ncol=2, loc="upper center")
    omitted = len([row for _, row in rows if row["by_score"] is not None]) - len(scored)
    if omitted > 0:
        figure.suptitle(f"{omitted} more labels in {artifacts.QC_JSON}", fontsize=8)
    save_figure(figure, path)


# --- inputs --------------------------------------------------------------------------------------


def _reader(source: str, work: Path):
    from ..data.sources import open_export

    if "://" not in source and not Path(source).expanduser().exists():
        raise DatasetError(f"export {source} does not exist: give the reviewed task exported as CVAT for images 1.1 "
                           "(zip, folder or annotations.xml)")
    export = open_export(source, work)
    if export.format != "cvat-images":
        raise DatasetError(f"{source}: qc-report needs the task exported as CVAT for images 1.1 (it keeps each "
                           f"shape's source); this is {export.format}")
    return export.reader


def read_predictions(path: Path) -> dict[str, ImageRecord]:
    """Our predictions by image name: the pre-annotate output folder (its coco.json, which always has
    the scores), a ``coco.json``, or an ``annotations.xml`` (scores only where the labels have one).
    Every shape must be machine-made: a file with people's shapes is not our output."""
    if path.is_dir():
        coco = path / artifacts.COCO_JSON
        path = coco if coco.is_file() else path / artifacts.CVAT_XML
    if not path.is_file():
        raise DatasetError(f"--predictions {path} does not exist: give the pre-annotate output folder, its "
                           f"{artifacts.COCO_JSON} or its {artifacts.CVAT_XML}")
    if path.suffix.lower() == ".json":
        from ..formats.coco import CocoReader

        try:
            reader: Any = CocoReader([path])
        except DatasetError as exc:  # e.g. the stage's summary.json: say what was expected
            raise DatasetError(f"--predictions {exc}; give the pre-annotate output folder or its "
                               f"{artifacts.COCO_JSON}") from None
    elif path.suffix.lower() == ".xml":
        from ..formats.cvat_xml.reader import CvatXmlReader

        reader = CvatXmlReader(path)
    else:
        raise DatasetError(f"--predictions {path} is neither a COCO .json nor a CVAT .xml: give the pre-annotate "
                           f"output folder, its {artifacts.COCO_JSON} or its {artifacts.CVAT_XML}")
    records = {record.name: record for record in reader.images()}
    for record in records.values():
        for shape in record.shapes:
            source = shape.attributes.get("source", MACHINE_SOURCE) if path.suffix.lower() == ".json" else shape.source
            if source != MACHINE_SOURCE:
                raise DatasetError(f"--predictions {path}: image {record.name} has a {shape.label} shape with source "
                                   f"{source!r}, so this is not the pre-annotate stage's output (its shapes are all "
                                   "auto); is it the reviewed export?")
    return records


def qc_report(export: str, out: Path, predictions: Path | None = None, min_iou: float = 0.3,
              reviewed_frames: ReviewedFrames | None = None) -> dict[str, Any]:
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out} is a file, not a folder: give a folder for {artifacts.QC_JSON}, "
                           f"{artifacts.QC_MARKDOWN} and {artifacts.QC_PLOT}")
    with tempfile.TemporaryDirectory(prefix="cvat-argo-qc-") as work:
        reader = _reader(export, Path(work))
        predicted = None if predictions is None else read_predictions(predictions)
        result = review(reader.images(), predicted, min_iou, reviewed_frames)
    if result.frames.pre_annotated == 0:
        raise DatasetError(f"{export}: no pre-annotated image ("
                           + (f"no image named as in {predictions})" if predictions else "no machine shapes)")
                           + ": export the task the pre-annotations went to, as CVAT for images 1.1")
    if reviewed_frames is not None and result.frames.reviewed_named == 0:
        raise DatasetError(f"--reviewed {reviewed_frames.spec}: names no frame of {export} (CVAT frame numbers start "
                           "at 0, as the export's <image id>)")
    document = report_document(result, export, None if predictions is None else str(predictions), min_iou,
                               reviewed_frames)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file on the way, or no permission
        raise DatasetError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    artifacts.write_json(out / artifacts.QC_JSON, document)
    write_markdown(out / artifacts.QC_MARKDOWN, document)
    plot(out / artifacts.QC_PLOT, document)
    return document


def main(argv: Sequence[str] | None = None) -> int:
    details = __doc__.split("\n\n", 2)[2].replace("``", "").replace("**", "")
    parser = argparse.ArgumentParser(prog="python -m cvat_argo qc-report", description=__doc__.split("\n\n")[0],
                                     epilog=details, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", help="the reviewed task as CVAT for images 1.1: zip, folder, annotations.xml, "
                                       "s3:// or https://")
    parser.add_argument("--predictions", type=Path, help="the pre-annotate stage's output folder, coco.json or "
                                                         "annotations.xml (without it: sources only)")
    parser.add_argument("--reviewed", metavar="FRAMES",
                        help="frames people reviewed (e.g. of the jobs they completed): 'all' or '0-99,120'; "
                             "counts their untouched auto shapes as accepted")
    parser.add_argument("--out", type=Path, default=Path("qc-report"), help="output folder (default: qc-report)")
    parser.add_argument("--iou", type=float, default=0.3, help="least overlap for a reviewed shape to be a "
                                                               "prediction's (default 0.3)")
    ns = parser.parse_args(argv)
    if not 0 < ns.iou <= 1:
        raise DatasetError(f"--iou {ns.iou} must be in (0, 1]")
    reviewed = None if ns.reviewed is None else ReviewedFrames.parse(ns.reviewed)
    document = qc_report(ns.export, ns.out, ns.predictions, ns.iou, reviewed)
    total = document["total"]
    print(frames_sentence(document))
    if document["predictions"] is None:
        print(f"without --predictions: {total['found_by_model']} machine shapes kept, {total['misses']} misses; "
              f"recall {_cell(total['recall'])}")
    else:
        print(f"{total['predictions']} predictions: {total['accepted']} accepted, {total['corrected']} corrected "
              f"({total['relabelled']} relabelled), {total['deleted']} deleted; {total['misses']} misses; "
              f"precision {_cell(total['precision'])}, recall {_cell(total['recall'])}, "
              f"acceptance {_cell(total['acceptance_rate'])}")
    if document["frames"]["awaiting_review"] and ns.reviewed is None:
        print("frames awaiting review hold only untouched auto shapes; if people reviewed them, say which with "
              "--reviewed all or --reviewed 0-99,120")
    if document["retrain"]:
        print(f"acceptance is under {RETRAIN_BELOW:.0%}: retrain on the reviewed images")
    print(f"written to {ns.out} (report: {ns.out / artifacts.QC_MARKDOWN})")
    return 0


if __name__ == "__main__":
    from ..entry import run_step

    sys.exit(run_step(main))
