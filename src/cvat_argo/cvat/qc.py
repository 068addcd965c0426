"""qc-report: what people did with the pre-annotations, per label: the number that says whether to retrain.

``python -m cvat_argo qc-report EXPORT [--predictions PRE_ANNOTATE_OUT] [--out DIR] [--iou 0.3]``

EXPORT is the task exported as "CVAT for images 1.1" after people reviewed it (a zip, a folder or
its ``annotations.xml``): the only format that keeps each shape's ``source``. CVAT marks what
happened to a machine shape: untouched it stays ``auto`` (accepted), edited it becomes
``semi-auto`` (corrected); what people drew is ``manual`` (added: the model missed it). Deleted
shapes leave no trace, so they are found by comparing with our own output (``--predictions``: the
pre-annotate stage's output folder, its ``coco.json`` or its ``annotations.xml``): a prediction with
no machine shape of the same label on the same image (matched one to one, best IoU first, at least
``--iou``) was deleted. With the scores (coco.json keeps them) the report also shows the outcome
by score and suggests a threshold.

Only the pre-annotated images count: those in the predictions, or without them the images that
hold at least one machine shape. Writes ``qc.json``, ``qc.md`` and ``qc.png``.
"""

from __future__ import annotations

import argparse
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

MACHINE_SOURCES = ("auto", "semi-auto")
OUTCOMES = ("accepted", "corrected", "deleted", "added")
SCORE_EDGES = tuple(round(0.1 * i, 1) for i in range(11))
RETRAIN_BELOW = 0.7  # acceptance under this: retrain on the reviewed images before pre-annotating more


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class LabelCounts:
    accepted: int = 0
    corrected: int = 0
    deleted: int = 0
    added: int = 0
    other: int = 0  # file/consensus shapes that are not among the predictions

    def as_dict(self, with_predictions: bool) -> dict[str, Any]:
        reviewed = self.accepted + self.corrected + (self.deleted if with_predictions else 0)
        found = self.accepted + self.corrected
        return {
            "accepted": self.accepted, "corrected": self.corrected,
            "deleted": self.deleted if with_predictions else None, "added": self.added, "other": self.other,
            "acceptance_rate": round(self.accepted / reviewed, 4) if reviewed else None,
            "found_by_model": round(found / (found + self.added), 4) if found + self.added else None,
        }


@dataclass
class Review:
    labels: dict[str, LabelCounts] = field(default_factory=dict)
    images: int = 0
    # outcome counts of predictions per score bin (needs --predictions with scores)
    by_score: dict[str, list[int]] = field(default_factory=lambda: {o: [0] * (len(SCORE_EDGES) - 1)
                                                                      for o in OUTCOMES[:3]})

    def of(self, label: str) -> LabelCounts:
        return self.labels.setdefault(label, LabelCounts())

    def scored(self, outcome: str, score: float | None) -> None:
        if score is not None:
            self.by_score[outcome][min(len(SCORE_EDGES) - 2, int(score * 10))] += 1


def _match(predicted: Sequence[Shape], reviewed: Sequence[Shape], min_iou: float) -> dict[int, int]:
    """One-to-one prediction -> reviewed-shape index pairs, same label, best IoU first."""
    pairs = []
    for i, p in enumerate(predicted):
        for j, r in enumerate(reviewed):
            if p.label == r.label and p.box is not None and r.box is not None:
                overlap = iou(p.box, r.box)
                if overlap >= min_iou:
                    pairs.append((overlap, i, j))
    matched: dict[int, int] = {}
    used: set[int] = set()
    for _, i, j in sorted(pairs, reverse=True):
        if i not in matched and j not in used:
            matched[i] = j
            used.add(j)
    return matched


def review(export: Iterable[ImageRecord], predictions: dict[str, ImageRecord] | None, min_iou: float = 0.3) -> Review:
    """Count outcomes per label over the pre-annotated images of the export."""
    result = Review()
    for record in export:
        predicted = predictions.get(record.name) if predictions is not None else None
        machine = [s for s in record.shapes if s.source in MACHINE_SOURCES]
        if predictions is not None and predicted is None:
            continue  # not pre-annotated by this run
        if predictions is None and not machine:
            continue
        result.images += 1
        # with predictions, "file" shapes (our XML imported through the UI) are machine shapes too
        candidates = [s for s in record.shapes if s.source in MACHINE_SOURCES
                      or (predicted is not None and s.source == "file")]
        file_outcome: dict[int, str] = {}  # id() of a matched "file" shape -> accepted or corrected
        if predicted is not None:
            matched = _match(predicted.shapes, candidates, min_iou)
            for i, shape in enumerate(predicted.shapes):
                if i not in matched:
                    result.of(shape.label).deleted += 1
                    result.scored("deleted", shape.score)
                    continue
                reviewed = candidates[matched[i]]
                unchanged = iou(shape.box, reviewed.box) >= 0.99  # type: ignore[arg-type]
                if reviewed.source == "file":
                    file_outcome[id(reviewed)] = "accepted" if unchanged else "corrected"
                outcome = "corrected" if reviewed.source == "semi-auto" or not unchanged else "accepted"
                result.scored(outcome, shape.score)
        for shape in record.shapes:
            counts = result.of(shape.label)
            outcome = {"auto": "accepted", "semi-auto": "corrected", "manual": "added"}.get(shape.source)
            outcome = outcome or file_outcome.get(id(shape), "other")
            setattr(counts, outcome, getattr(counts, outcome) + 1)
    return result


def suggested_threshold(by_score: dict[str, list[int]]) -> float | None:
    """The lowest score from which on fewer than half of the predictions were deleted, bin by bin."""
    suggestion = None
    for index in range(len(SCORE_EDGES) - 2, -1, -1):
        kept = by_score["accepted"][index] + by_score["corrected"][index]
        deleted = by_score["deleted"][index]
        if kept + deleted == 0:
            continue
        if deleted * 2 >= kept + deleted:
            break
        suggestion = SCORE_EDGES[index]
    return suggestion


def report_document(result: Review, with_predictions: bool, source: str) -> dict[str, Any]:
    totals = LabelCounts()
    for counts in result.labels.values():
        for name in ("accepted", "corrected", "deleted", "added", "other"):
            setattr(totals, name, getattr(totals, name) + getattr(counts, name))
    overall = totals.as_dict(with_predictions)
    rate = overall["acceptance_rate"]
    has_scores = any(sum(v) for v in result.by_score.values())
    return {
        "export": source,
        "images": result.images,
        "with_predictions": with_predictions,
        "labels": {name: counts.as_dict(with_predictions) for name, counts in sorted(result.labels.items())},
        "total": overall,
        "by_score": {"edges": list(SCORE_EDGES), **result.by_score} if has_scores else None,
        "suggested_threshold": suggested_threshold(result.by_score) if has_scores else None,
        "retrain": rate is not None and rate < RETRAIN_BELOW,
    }


def write_markdown(path: Path, document: dict[str, Any]) -> None:
    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        return f"{value:.0%}" if isinstance(value, float) else str(value)

    lines = ["# Review of the pre-annotations", "", f"Export `{document['export']}`: {document['images']} "
             "pre-annotated images.", "",
             "| label | accepted | corrected | deleted | added by people | acceptance | found by model |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in [*document["labels"].items(), ("**all**", document["total"])]:
        lines.append(f"| {name} | {row['accepted']} | {row['corrected']} | {cell(row['deleted'])} | {row['added']} | "
                     f"{cell(row['acceptance_rate'])} | {cell(row['found_by_model'])} |")
    lines += ["", "Acceptance: machine shapes kept unchanged among all the machine shapes people reviewed "
              "(accepted + corrected + deleted). Found by model: share of the objects that the model found "
              "(accepted + corrected) among all objects people kept or added."]
    if not document["with_predictions"]:
        lines += ["", "Deleted shapes are unknown without `--predictions` (the pre-annotate stage's annotations.xml); "
                  "the acceptance rate here counts only the shapes people kept."]
    if document["suggested_threshold"] is not None:
        lines += ["", f"Most predictions scored below {document['suggested_threshold']} were deleted or there were "
                  f"none: a threshold of {document['suggested_threshold']} would have saved people those deletions."]
    if document["retrain"]:
        lines += ["", f"Acceptance is under {RETRAIN_BELOW:.0%}: retrain on the reviewed images before pre-annotating "
                  "more."]
    lines += ["", "![outcomes per label](qc.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def plot(path: Path, document: dict[str, Any]) -> None:
    from ..reports.plots import new_figure, save_figure

    has_scores = document["by_score"] is not None
    figure, axes = new_figure(ncols=2 if has_scores else 1, width=11 if has_scores else 6, height=4)
    axis = axes[0] if has_scores else axes
    names = list(document["labels"])
    bottom = np.zeros(len(names))
    for outcome in OUTCOMES:
        values = np.asarray([document["labels"][n][outcome] or 0 for n in names], dtype=float)
        axis.bar(range(len(names)), values, bottom=bottom, label=outcome)
        bottom += values
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axis.set_ylabel("shapes")
    axis.set_title("what people did with the pre-annotations")
    axis.legend(fontsize=8)
    if has_scores:
        by_score, edges = document["by_score"], document["by_score"]["edges"]
        bottom = np.zeros(len(edges) - 1)
        for outcome in OUTCOMES[:3]:
            values = np.asarray(by_score[outcome], dtype=float)
            axes[1].bar(edges[:-1], values, width=0.1, align="edge", bottom=bottom, label=outcome, edgecolor="white")
            bottom += values
        axes[1].set_xlabel("prediction score")
        axes[1].set_ylabel("predictions")
        axes[1].set_title("outcome by score")
        axes[1].legend(fontsize=8)
    save_figure(figure, path)


def _reader(source: str, work: Path):
    from ..data.sources import open_export

    export = open_export(source, work)
    if export.format != "cvat-images":
        raise DatasetError(f"{source}: qc-report needs the task exported as CVAT for images 1.1 (it keeps each "
                           f"shape's source); this is {export.format}")
    return export.reader


def read_predictions(path: Path) -> dict[str, ImageRecord]:
    """Our predictions by image name: the pre-annotate output folder (its coco.json, which always has
    the scores), a ``coco.json``, or an ``annotations.xml`` (scores only where the labels have one)."""
    if path.is_dir():
        coco = path / artifacts.COCO_JSON
        path = coco if coco.is_file() else path / artifacts.CVAT_XML
    if not path.is_file():
        raise DatasetError(f"--predictions {path} does not exist: give the pre-annotate output folder, its "
                           "coco.json or its annotations.xml")
    if path.suffix == ".json":
        from ..formats.coco import CocoReader

        reader: Any = CocoReader([path])
    else:
        from ..formats.cvat_xml.reader import CvatXmlReader

        reader = CvatXmlReader(path)
    return {record.name: record for record in reader.images()}


def qc_report(export: str, out: Path, predictions: Path | None = None, min_iou: float = 0.3) -> dict[str, Any]:
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out} is a file, not a folder: give a folder for qc.json, qc.md and qc.png")
    with tempfile.TemporaryDirectory(prefix="cvat-argo-qc-") as work:
        reader = _reader(export, Path(work))
        predicted = None if predictions is None else read_predictions(predictions)
        result = review(reader.images(), predicted, min_iou)
    if result.images == 0:
        raise DatasetError(f"{export}: no pre-annotated image (no machine shapes"
                           + (", and no image named as in the predictions)" if predictions else ")")
                           + ": export the task the pre-annotations went to, as CVAT for images 1.1")
    document = report_document(result, predictions is not None, export)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file on the way, or no permission
        raise DatasetError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    artifacts.write_json(out / artifacts.QC_JSON, document)
    write_markdown(out / artifacts.QC_MARKDOWN, document)
    plot(out / artifacts.QC_PLOT, document)
    return document


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvat_argo qc-report", description=__doc__.splitlines()[0])
    parser.add_argument("export", help="the reviewed task as CVAT for images 1.1: zip, folder, annotations.xml, "
                                       "s3:// or https://")
    parser.add_argument("--predictions", type=Path, help="the pre-annotate stage's output folder, coco.json or "
                                                         "annotations.xml (finds deletions)")
    parser.add_argument("--out", type=Path, default=Path("qc-report"), help="output folder (default: qc-report)")
    parser.add_argument("--iou", type=float, default=0.3, help="least overlap for a reviewed shape to be a "
                                                               "prediction's (default 0.3)")
    ns = parser.parse_args(argv)
    if not 0 < ns.iou <= 1:
        raise DatasetError(f"--iou {ns.iou} must be in (0, 1]")
    document = qc_report(ns.export, ns.out, ns.predictions, ns.iou)
    total = document["total"]
    rate = total["acceptance_rate"]
    print(f"{document['images']} pre-annotated images: {total['accepted']} accepted, {total['corrected']} corrected, "
          f"{total['deleted'] if total['deleted'] is not None else 'unknown'} deleted, {total['added']} added by "
          f"people; acceptance {'n/a' if rate is None else f'{rate:.0%}'}")
    if document["retrain"]:
        print(f"acceptance is under {RETRAIN_BELOW:.0%}: retrain on the reviewed images")
    print(f"written to {ns.out} (report: {ns.out / 'qc.md'})")
    return 0


if __name__ == "__main__":
    from ..entry import run_step

    sys.exit(run_step(main))
