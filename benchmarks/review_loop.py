"""Annotation effort saved by pre-annotation, round 1 and round 2 of the review loop, on a task with hidden truth.

    python benchmarks/review_loop.py [--images 300] [--annotated-fraction 0.4] [--epochs 24] [--seed 0]
                                     [--work DIR] [--keep] [--out benchmarks/reports]

What it does:
  1. Generates a partly annotated CVAT task export (:func:`cvat_argo.data.synthetic.generate_task`,
     320x240) whose hidden truth lists every image's shapes.
  2. Round 1: ``python -m cvat_argo run`` on the export (``ssd-mobilenet-v2-small``, the quickstart's
     epochs and batch). Its pre-annotations (with the per-label thresholds the convert stage chose on
     validation) are scored below; the annotate step is run again on the same model and images with a
     fixed ``--threshold 0.5`` and scored too.
  3. Simulated review: a seeded random half of the round-1 pre-annotated frames is "reviewed", i.e.
     those frames get their true shapes. A round-2 export is written with the project's own CVAT XML
     reader and writer: the frames annotated from the start, the reviewed frames, every other frame
     empty; the images are the same.
  4. Round 2: ``run --source ROUND2.zip --from-run ROUND1`` (training starts from round 1's model),
     scored on the frames still unannotated, with both threshold modes. Round 1's pre-annotations of
     those same frames are scored as well, so the round-1 / round-2 comparison is on the same frames.
  5. Prints a table and writes ``<out>/review_loop.md``, ``.json`` and ``.png`` (saved % per round and
     threshold mode). Every number is computed from this run's outputs; one run, not a median.

Effort model (what a person has to do in CVAT to turn the pre-annotations of a frame into its truth):
  - per frame, predictions and truth shapes are matched one to one: same label, box IoU >= 0.5,
    greedily by IoU (highest first). Boxes are compared (a polygon truth shape by its bounding box);
  - a matched prediction with IoU >= 0.85 is accepted as it is: 0 edits;
  - a matched prediction with IoU < 0.85 must be moved or resized: 1 edit;
  - an unmatched prediction must be deleted: 1 edit (a prediction with the wrong label is a delete
    plus an add);
  - an unmatched truth shape must be drawn: 1 edit.
  From scratch every truth shape is drawn: 1 edit each. saved = 1 - edits / scratch edits (negative
  when the pre-annotations cost more than they save). All edits weigh the same, although drawing a
  shape takes a person longer than deleting one: the figure is a count, not a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
from common import run_logged  # noqa: E402

from cvat_argo.data.synthetic import generate_task  # noqa: E402
from cvat_argo.engines import artifacts as a  # noqa: E402
from cvat_argo.formats.annotations import ImageRecord  # noqa: E402
from cvat_argo.formats.cvat_xml.common import EXPORT_XML  # noqa: E402
from cvat_argo.formats.cvat_xml.reader import CvatXmlReader  # noqa: E402
from cvat_argo.formats.cvat_xml.writer import write_cvat_xml  # noqa: E402
from cvat_argo.quickstart import QUICKSTART_BATCH, QUICKSTART_EPOCHS, QUICKSTART_MODEL  # noqa: E402

MATCH_IOU = 0.5  # a prediction and a truth shape of the same label are the same object
ACCEPT_IOU = 0.85  # ... and the reviewer leaves the prediction as it is
FIXED_THRESHOLD = 0.5
MODES = ("model", "fixed")
MODE_NAMES = {"model": "model's per-label", "fixed": f"fixed {FIXED_THRESHOLD}"}
# a benchmark never talks to a CVAT server or a configured store, and uses the built-in catalog
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("CVAT_")},
       "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}

Box = tuple[float, float, float, float]


# ---- the effort model ------------------------------------------------------------------------------

def iou(first: Box, second: Box) -> float:
    width = min(first[2], second[2]) - max(first[0], second[0])
    height = min(first[3], second[3]) - max(first[1], second[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = ((first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
             - inter)
    return inter / union if union > 0 else 0.0


@dataclass
class Effort:
    frames: int = 0
    truth: int = 0
    predictions: int = 0
    accepted: int = 0
    moved: int = 0
    deleted: int = 0
    added: int = 0
    per_label: dict[str, Effort] = field(default_factory=dict)

    @property
    def edits(self) -> int:
        return self.moved + self.deleted + self.added

    @property
    def saved(self) -> float | None:
        return 1 - self.edits / self.truth if self.truth else None

    def label(self, name: str) -> Effort:
        return self.per_label.setdefault(name, Effort())

    def to_json(self) -> dict[str, Any]:
        document = {"frames": self.frames, "truth_shapes": self.truth, "predictions": self.predictions,
                    "accepted": self.accepted, "moved": self.moved, "deleted": self.deleted, "added": self.added,
                    "edits": self.edits, "scratch_edits": self.truth,
                    "saved": round(self.saved, 4) if self.saved is not None else None}
        if self.per_label:
            document["per_label"] = {name: {k: v for k, v in effort.to_json().items() if k != "frames"}
                                     for name, effort in sorted(self.per_label.items())}
        return document


def frame_effort(predicted: Sequence[tuple[str, Box]], truth: Sequence[tuple[str, Box]], effort: Effort) -> None:
    """Add one frame's edits to ``effort`` (and its per-label rows): see the module's effort model."""
    pairs = sorted(((iou(p_box, t_box), p, t) for p, (p_label, p_box) in enumerate(predicted)
                    for t, (t_label, t_box) in enumerate(truth) if p_label == t_label), reverse=True)
    used_p: set[int] = set()
    used_t: set[int] = set()
    effort.frames += 1
    for label, _ in truth:
        for row in (effort, effort.label(label)):
            row.truth += 1
    for label, _ in predicted:
        for row in (effort, effort.label(label)):
            row.predictions += 1
    for overlap, p, t in pairs:
        if overlap < MATCH_IOU:
            break
        if p in used_p or t in used_t:
            continue
        used_p.add(p)
        used_t.add(t)
        for row in (effort, effort.label(truth[t][0])):
            if overlap >= ACCEPT_IOU:
                row.accepted += 1
            else:
                row.moved += 1
    for p, (label, _) in enumerate(predicted):
        if p not in used_p:
            for row in (effort, effort.label(label)):
                row.deleted += 1
    for t, (label, _) in enumerate(truth):
        if t not in used_t:
            for row in (effort, effort.label(label)):
                row.added += 1


def read_predictions(annotations: Path) -> dict[str, list[tuple[str, Box]]]:
    """File name -> [(label, box)] from an annotate output's ``coco.json``; every pre-annotated image is a key."""
    document = json.loads((annotations / a.COCO_JSON).read_text(encoding="utf-8"))
    labels = {c["id"]: c["name"] for c in document["categories"]}
    names = {image["id"]: image["file_name"] for image in document["images"]}
    predicted: dict[str, list[tuple[str, Box]]] = {name: [] for name in names.values()}
    for annotation in document["annotations"]:
        x, y, w, h = annotation["bbox"]
        predicted[names[annotation["image_id"]]].append((labels[annotation["category_id"]], (x, y, x + w, y + h)))
    return predicted


def read_truth(truth_xml: Path) -> dict[str, list[tuple[str, Box]]]:
    return {record.name: [(shape.label, tuple(shape.box)) for shape in record.shapes if shape.box is not None]
            for record in CvatXmlReader(truth_xml).images()}


def effort_on(frames: Iterable[str], predicted: Mapping[str, list[tuple[str, Box]]],
              truth: Mapping[str, list[tuple[str, Box]]]) -> Effort:
    effort = Effort()
    for name in sorted(frames):
        frame_effort(predicted[name], truth[name], effort)
    return effort


# ---- the pipeline, as a user runs it -------------------------------------------------------------------

def _run(command: list[str], log: Path) -> float:
    return run_logged(command, log, ENV)


def run_round(source: Path, store: Path, run_id: str, epochs: int, log: Path, from_run: str | None) -> dict[str, Any]:
    """One round: the whole local pipeline, then the annotate step again with a fixed threshold."""
    command = [sys.executable, "-m", "cvat_argo", "run", "--source", str(source), "--model", QUICKSTART_MODEL,
               "--machine", "cpu", "--args", f"epochs={epochs},batch_size={QUICKSTART_BATCH}",
               "--store", str(store), "--run-id", run_id]
    if from_run:
        command += ["--from-run", from_run]
    print(f"{run_id}: running the pipeline (log: {log})", flush=True)
    seconds = _run(command, log)
    root = store / run_id
    fixed = store.parent / f"{run_id}-fixed-{FIXED_THRESHOLD}"
    print(f"{run_id}: pre-annotating again with --threshold {FIXED_THRESHOLD}", flush=True)
    _run([sys.executable, "-m", "cvat_argo.steps.annotate",
          "--model", str(a.artifact_path(root, a.CONVERT, a.EXPORTED)),
          "--dataset", str(a.artifact_path(root, a.CREATE_DATASET, a.DATASET)),
          "--threshold", str(FIXED_THRESHOLD), "--next", "0", "--out", str(fixed)], log)
    outputs = {"model": a.artifact_path(root, a.PRE_ANNOTATE, a.ANNOTATIONS), "fixed": fixed}
    metrics = a.read_json(a.artifact_path(root, a.TRAIN, a.MODEL) / a.METRICS, "training metrics")
    stages = {stage: round(a.StageManifest.read(root / stage).seconds, 1) for stage in a.STAGE_NAMES
              if (root / stage / a.STAGE_MANIFEST).is_file()}
    return {
        "run_id": run_id, "from_run": from_run, "wall_seconds": round(seconds, 1), "stage_seconds": stages,
        "train_steps": metrics.get("total_steps"), "validation": metrics.get("final"),
        "thresholds": {mode: a.read_json(path / a.ANNOTATION_SUMMARY, "pre-annotation summary")["threshold"]
                       for mode, path in outputs.items()},
        "predictions": {mode: read_predictions(path) for mode, path in outputs.items()},
    }


def round_two_export(export: Path, truth_xml: Path, reviewed: set[str], out: Path) -> dict[str, int]:
    """The round-1 export with the reviewed frames given their true shapes, as a new CVAT export zip."""
    out.parent.mkdir(parents=True, exist_ok=True)
    given = out.parent / f".{out.stem}-given.xml"
    staged = out.parent / f".{out.stem}-{EXPORT_XML}"
    with zipfile.ZipFile(export) as source:
        given.write_bytes(source.read(EXPORT_XML))
        reader = CvatXmlReader(given)
        truth = {record.name: record for record in CvatXmlReader(truth_xml).images()}
        records: list[ImageRecord] = []
        counts = {"annotated_before": 0, "reviewed": 0, "empty": 0}
        for record in reader.images():
            if record.shapes:
                if record.name in reviewed:
                    raise SystemExit(f"{record.name}: a frame annotated from the start cannot be a reviewed one")
                counts["annotated_before"] += 1
                records.append(record)
            elif record.name in reviewed:
                counts["reviewed"] += 1
                records.append(ImageRecord(record.frame, record.name, record.width, record.height,
                                           truth[record.name].shapes))
            else:
                counts["empty"] += 1
                records.append(record)
        if counts["reviewed"] != len(reviewed):
            raise SystemExit(f"{export}: {len(reviewed) - counts['reviewed']} reviewed frames are not in the export")
        write_cvat_xml(staged, reader.meta, records)
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as target:
            for info in source.infolist():
                if info.filename != EXPORT_XML:
                    target.writestr(info, source.read(info))
            target.write(staged, EXPORT_XML)
    given.unlink()
    staged.unlink()
    return counts


# ---- the report ----------------------------------------------------------------------------------------

def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _thresholds(threshold: Mapping[str, Any]) -> str:
    per_label = threshold.get("per_label") or {}
    if not per_label:
        return f"{threshold.get('default')} for every label"
    listed = ", ".join(f"{label} {value}" for label, value in per_label.items())
    return f"{listed} (default {threshold.get('default')})"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("round 1, all its frames", "round 1", "all"), ("round 1, frames left for round 2", "round 1", "left"),
              ("round 2 (same frames)", "round 2", "left")]
    figure, axis = plt.subplots(figsize=(6.4, 3.4))
    width = 0.38
    lowest = 0.0
    for offset, mode in enumerate(MODES):
        values = [next((100 * (r["effort"]["saved"] or 0)) for r in rows
                       if r["round"] == rnd and r["frames_set"] == which and r["mode"] == mode)
                  for _, rnd, which in groups]
        bars = axis.bar([i + (offset - 0.5) * width for i in range(len(groups))], values, width,
                        label=f"thresholds: {MODE_NAMES[mode]}")
        axis.bar_label(bars, fmt="%.0f%%", fontsize=8)
        lowest = min(lowest, *values)
    axis.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    axis.set_ylim(lowest - 10 if lowest < 0 else 0, 122)
    axis.set_ylabel("edits saved vs. from scratch (%)")
    axis.axhline(0, color="black", linewidth=0.6)
    axis.legend(fontsize=8, loc="upper center", ncol=2)
    axis.set_title("annotation effort saved by pre-annotation", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report(document: dict[str, Any]) -> list[str]:
    rows = document["rows"]
    setting = document["setting"]
    lines = [f"# review loop: annotation effort saved by pre-annotation ({setting['images']} images of "
             f"{setting['image_size']}, {setting['annotated']} annotated, {setting['model']}, "
             f"{setting['epochs']} epochs, seed {setting['seed']}, {document['machine']})", "",
             "| round | frames scored | thresholds | frames | truth shapes | accepted | moved | deleted | added "
             "| edits | saved |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        e = row["effort"]
        lines.append(f"| {row['round']} | {row['frames_label']} | {MODE_NAMES[row['mode']]} | {e['frames']} | "
                     f"{e['truth_shapes']} | {e['accepted']} | {e['moved']} | {e['deleted']} | {e['added']} | "
                     f"{e['edits']} | {_pct(e['saved'])} |")
    lines += ["", "| round | run wall clock (s) | train steps | train (s) | validation AP50 | validation AP | "
              "model's thresholds |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, info in document["rounds"].items():
        validation = info.get("validation") or {}
        lines.append(f"| {name} | {info['wall_seconds']} | {info['train_steps']} | "
                     f"{info['stage_seconds'].get(a.TRAIN, '')} | {validation.get('AP50', '')} | "
                     f"{validation.get('AP', '')} | {_thresholds(info['thresholds']['model'])} |")
    lines += ["", "Per label, on the frames both rounds pre-annotated:", "",
              "| round | thresholds | label | truth | predictions | accepted | moved | deleted | added | edits "
              "| saved |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row["frames_set"] != "left":
            continue
        for label, e in row["effort"].get("per_label", {}).items():
            lines.append(f"| {row['round']} | {MODE_NAMES[row['mode']]} | {label} | {e['truth_shapes']} | "
                         f"{e['predictions']} | {e['accepted']} | {e['moved']} | {e['deleted']} | {e['added']} | "
                         f"{e['edits']} | {_pct(e['saved'])} |")
    review = document["review"]
    lines += ["", f"Round 1 trained on the {setting['annotated']} frames annotated from the start and "
              f"pre-annotated the other {review['round_1_frames']}; a person then reviewed a random half of those "
              f"({review['reviewed']} frames, seed {setting['seed']}), which became ground truth for round 2 "
              f"(`run --from-run`), which pre-annotated the {review['round_2_frames']} frames still left. "
              "The round 1 rows on \"frames left for round 2\" score round 1's pre-annotations of those same "
              "frames, so they compare like with like with round 2.", "",
              "Effort model: per frame, predictions are matched one to one to the true shapes (same label, box "
              f"IoU >= {MATCH_IOU}, greedily by IoU). A match with IoU >= {ACCEPT_IOU} is accepted as is (0 edits), "
              "a looser match is moved or resized (1 edit), an unmatched prediction is deleted (1 edit; a wrong "
              "label is a delete and an add), an unmatched true shape is added (1 edit). From scratch every true "
              "shape is one add; saved = 1 - edits / truth shapes. Edits are counted, not timed: drawing a shape "
              "takes longer than deleting one.", "",
              "One run on a shared machine, not a median: training on the CPU is not bit-for-bit repeatable (see "
              "the quickstart's AP50 of 0.91-0.95 over runs), so a rerun gives somewhat different numbers.", ""]
    if document.get("plot"):
        lines += [f"![saved per round and threshold mode]({document['plot']})", ""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--annotated-fraction", type=float, default=0.4,
                        help="annotated from the start; the rest is pre-annotated over two rounds")
    parser.add_argument("--epochs", type=int, default=QUICKSTART_EPOCHS, help="epochs of each round's training")
    parser.add_argument("--seed", type=int, default=0, help="the task's and the simulated review's seed")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "reports")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary scratch folder (runs, exports)")
    ns = parser.parse_args()
    if ns.work and ns.work.exists() and any(ns.work.iterdir()):
        raise SystemExit(f"--work {ns.work}: must be empty or not exist")
    work = ns.work or Path(tempfile.mkdtemp(prefix="cvat-argo-bench-review-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        document = benchmark(ns, work.resolve())
    finally:
        if ns.work is None and not ns.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"scratch kept in {work}")
    ns.out.mkdir(parents=True, exist_ok=True)
    try:
        plot(document["rows"], ns.out / "review_loop.png")
        document["plot"] = "review_loop.png"
    except Exception as exc:  # the numbers matter more than the picture
        print(f"no plot: {exc}")
    lines = report(document)
    (ns.out / "review_loop.md").write_text("\n".join(lines), encoding="utf-8")
    (ns.out / "review_loop.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


def benchmark(ns: argparse.Namespace, work: Path) -> dict[str, Any]:
    log = work / "benchmark.log"
    store = work / "runs"
    task = generate_task(work / "task", images=ns.images, annotated_fraction=ns.annotated_fraction, width=320,
                         height=240, seed=ns.seed, name="shapes")
    truth = read_truth(task.truth)
    first = run_round(task.export, store, "round-1", ns.epochs, log, None)
    round_1_frames = set(first["predictions"]["model"])
    if set(first["predictions"]["fixed"]) != round_1_frames:
        raise SystemExit("round 1: the two threshold modes pre-annotated different frames")
    rng = np.random.default_rng(ns.seed + 1)
    ordered = sorted(round_1_frames)
    reviewed = {ordered[i] for i in rng.permutation(len(ordered))[: len(ordered) // 2].tolist()}
    counts = round_two_export(task.export, task.truth, reviewed, work / "round-2" / "shapes-round-2.zip")
    second = run_round(work / "round-2" / "shapes-round-2.zip", store, "round-2", ns.epochs, log, "round-1")
    left = set(second["predictions"]["model"])
    if left != round_1_frames - reviewed or set(second["predictions"]["fixed"]) != left:
        raise SystemExit("round 2 pre-annotated other frames than the ones left unreviewed")
    rows = []
    for name, info, frames_set, frames, label in (
            ("round 1", first, "all", round_1_frames, "all round-1 frames"),
            ("round 1", first, "left", left, "frames left for round 2"),
            ("round 2", second, "left", left, "frames left for round 2")):
        for mode in MODES:
            rows.append({"round": name, "frames_set": frames_set, "frames_label": label, "mode": mode,
                         "effort": effort_on(frames, info["predictions"][mode], truth).to_json()})
    rounds = {}
    for name, info in (("round 1", first), ("round 2", second)):
        rounds[name] = {k: v for k, v in info.items() if k != "predictions"}
    machine = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores usable"
    return {
        "setting": {"images": ns.images, "image_size": "320x240", "annotated_fraction": ns.annotated_fraction,
                    "annotated": task.annotated, "model": QUICKSTART_MODEL, "epochs": ns.epochs,
                    "batch_size": QUICKSTART_BATCH, "seed": ns.seed},
        "effort_model": {"match_iou": MATCH_IOU, "accept_iou": ACCEPT_IOU, "fixed_threshold": FIXED_THRESHOLD,
                         "edit": "move/resize, delete or add: 1 each; from scratch: 1 add per true shape"},
        "machine": machine,
        "review": {"round_1_frames": len(round_1_frames), "reviewed": len(reviewed), "round_2_frames": len(left),
                   "round_2_export": counts},
        "rounds": rounds,
        "rows": rows,
    }


if __name__ == "__main__":
    sys.exit(main())
