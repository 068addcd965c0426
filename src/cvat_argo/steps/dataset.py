"""create-dataset: a CVAT export in, TFRecord shards and the list of images to pre-annotate out.

``python -m cvat_argo.steps.dataset --source SRC --out DIR [--val-fraction 0.1] [--seed 0]
[--labels a,b] [--rename a=b] [--empty-frames pre-annotate|negatives] [--strict]``, or
``--cvat-task-id ID`` instead of ``--source`` to export a live task (``CVAT_HOST`` and credentials in
the environment; empty frames of jobs that are completed or in validation/acceptance train as negatives).

Two streaming passes keep memory flat in the task size: the first reads the export, decides which
images are annotated and splits them (seeded, stratified), spilling their records to a scratch file;
the second reads that back and writes each image once, JPEG and PNG bytes passing through unchanged.
Nothing here imports TensorFlow. The output folder appears only when complete (written as
``DIR.partial`` and renamed).
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from ..cvat.review import (
    AWAITING_REVIEW,
    FRAME_KINDS,
    RULE_SOURCES_ONLY,
    RULE_WITH_JOBS,
    TO_PRE_ANNOTATE,
    frame_kind,
)
from ..data.imagefiles import displayed_size, prepare_image, probe_file
from ..data.labels import LabelMapping
from ..data.sources import Export, open_export, shown_name
from ..data.split import split_frames
from ..engines import artifacts
from ..entry import build_output, run_step
from ..errors import DatasetError, ImageProblem
from ..formats.annotations import ImageRecord
from ..formats.geometry import box_area, clip_box
from ..formats.label_map import write_label_map, write_labels_json
from ..formats.tfrecord.detection import detection_example, encode_mask_png
from ..formats.tfrecord.records import ShardedWriter, plan_shards
from ..progress import progress_bar, track
from ..reports.dataset import plot, write_report
from ..reports.forked_plot import ForkedPlotter

FEW_OBJECTS, FEW_PER_LABEL = 100, 10


@dataclass
class Options:
    source: str
    out: Path
    val_fraction: float = 0.1
    seed: int = 0
    labels: list[str] | None = None
    rename: list[str] = field(default_factory=list)
    empty_frames: str = "pre-annotate"
    strict: bool = False
    shard_mb: float = 150.0
    work: Path | None = None
    reviewed_frames: set[int] = field(default_factory=set)  # from a live task: annotated even when empty
    masks: bool = False  # write instance masks (Mask R-CNN)
    cvat_task_id: int | None = None  # the live task ``source`` (a download) was exported from

    @property
    def described(self) -> str:
        """The source as messages and dataset.json name it: the task, not its temporary download."""
        return f"CVAT task {self.cvat_task_id}" if self.cvat_task_id is not None else self.source


@dataclass
class Plan:
    """What pass 1 decided: per annotated image its boxes (class id, width, height) and file, and what to
    pre-annotate."""

    boxes_by_frame: dict[int, tuple[tuple[int, float, float], ...]] = field(default_factory=dict)
    files: dict[int, Path] = field(default_factory=dict)
    unannotated: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    tags: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)  # frames by review.frame_kind

    @property
    def labels_by_frame(self) -> dict[int, frozenset[int]]:
        """Per annotated image the class ids in it (empty for a negative): what the split stratifies by."""
        return {frame: frozenset(class_id for class_id, _, _ in boxes) for frame, boxes in self.boxes_by_frame.items()}


class RecordSpill:
    """The annotated images' records, pickled to a scratch file by the plan pass for the write pass.

    Reading them back costs a sixth of parsing the XML again (0.012 s against 0.08 s for 2,000
    images), and memory stays flat: one record at a time either way.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by records()

    def add(self, record: ImageRecord) -> None:
        pickle.dump(record, self._file, protocol=pickle.HIGHEST_PROTOCOL)

    def records(self) -> Iterator[ImageRecord]:
        self._file.close()
        with self.path.open("rb") as spilled:
            while True:
                try:
                    yield pickle.load(spilled)
                except EOFError:
                    return


class Skips:
    def __init__(self, strict: bool):
        self.strict = strict
        self.items: list[dict[str, str]] = []

    def add(self, item: str, reason: str) -> None:
        if self.strict:
            raise DatasetError(f"{item}: {reason} (--strict)")
        self.items.append({"item": item, "reason": reason})


def _kept_boxes(record: ImageRecord, mapping: LabelMapping, dropped: Counter):
    """(class id, clipped box, shape) for the shapes that train; counts the ones that do not."""
    kept = []
    for shape in record.shapes:
        class_id = mapping.id_of(shape.label)
        if class_id is None:
            dropped["label not in the task" if not mapping.is_task_label(shape.label) else "label not selected"] += 1
            continue
        if shape.box is None:
            dropped["shape without extent"] += 1
            continue
        box = clip_box(shape.box, record.width, record.height)
        if box_area(box) <= 0:
            dropped["zero area after clipping to the image"] += 1
            continue
        kept.append((class_id, box, shape))
    return kept


def _image_problem(path: Path, record: ImageRecord) -> str | None:
    """Why an annotated image cannot train, from its header alone (before it is split)."""
    try:
        width, height = displayed_size(probe_file(path))
    except ImageProblem as exc:
        return str(exc)
    if (width, height) != (record.width, record.height):
        return f"the annotations say {record.width}x{record.height}, the file is {width}x{height}"
    return None


class OneImageEach:
    """Refuses two records that would be one training image: the plan keys images by frame, and two names
    that resolve to one file (``a.jpg`` and ``./a.jpg``, or two subsets of a project export found in one
    ``images/`` tree) would put the same picture in the dataset twice, possibly in both splits."""

    def __init__(self, export: Export):
        self.export = export
        self.frames: dict[int, tuple[int, str]] = {}  # frame -> (position in the export, name)
        self.files: dict[Path, tuple[str, int]] = {}  # file -> (name, frame)

    def frame(self, record: ImageRecord) -> None:
        position = len(self.frames)
        first = self.frames.setdefault(record.frame, (position, record.name))
        if first[0] != position:
            raise DatasetError(
                f"{self.export.described}: images {shown_name(first[1])} and {shown_name(record.name)} both have frame "
                f"{record.frame}: a project export numbers the frames of each subset from 0; export its tasks one "
                "by one (or the project with one subset)")

    def file(self, record: ImageRecord, path: Path) -> None:
        first = self.files.setdefault(path, (record.name, record.frame))
        if first[1] != record.frame:
            shown = path.relative_to(self.export.root) if path.is_relative_to(self.export.root) else path
            raise DatasetError(
                f"{self.export.described}: images {shown_name(first[0])} (frame {first[1]}) and "
                f"{shown_name(record.name)} (frame {record.frame}) are both the file {shown}: one picture would be "
                "in the dataset twice; remove one of them from the task")


def plan(export: Export, mapping: LabelMapping, options: Options, skips: Skips, spill: RecordSpill) -> Plan:
    result = Plan()
    unknown = Counter()
    one_each = OneImageEach(export)
    for record in track(export.reader.images(), "reading annotations", total=export.reader.meta.size):
        one_each.frame(record)
        for shape in record.shapes:
            if not mapping.is_task_label(shape.label):
                unknown[shape.label] += 1
        result.tags.update(record.tags)
        kind = frame_kind(record.shapes, record.frame in options.reviewed_frames)
        result.kinds[kind] += 1
        if kind == AWAITING_REVIEW:  # only our own unreviewed shapes: not truth, and not ours to redo
            continue
        path = export.locator.find(record.name)
        if path is None:
            skips.add(f"image {record.name}", "file not found in the export")
            continue
        one_each.file(record, path)
        if kind == TO_PRE_ANNOTATE and options.empty_frames != "negatives":
            result.unannotated.append({"frame": record.frame, "name": record.name,
                                       "width": record.width, "height": record.height, "_file": path})
            continue
        problem = _image_problem(path, record)
        if problem:
            skips.add(f"image {record.name}", problem)
            continue
        kept = _kept_boxes(record, mapping, result.dropped)
        result.boxes_by_frame[record.frame] = tuple((class_id, box[2] - box[0], box[3] - box[1])
                                                    for class_id, box, _ in kept)
        result.files[record.frame] = path
        spill.add(record)
    for label, count in unknown.items():
        skips.add(f"label {label}", f"{count} shape(s) with a label the task does not define: dropped")
    if not result.boxes_by_frame:
        skipped = [item for item in skips.items if item["item"].startswith("image ")]
        if skipped:
            raise DatasetError(
                f"no usable annotated image in {options.described}: {len(skipped)} skipped, the first "
                f"{skipped[0]['item'][:80]}: {skipped[0]['reason']}")
        if result.kinds[AWAITING_REVIEW]:
            raise DatasetError(
                f"no ground-truth image in {options.described}: its {result.kinds[AWAITING_REVIEW]} annotated "
                "frames hold only machine shapes (source auto) that nobody reviewed; review them in CVAT (finish "
                "the job, or edit the shapes in the UI) first")
        raise DatasetError(
            f"no annotated image in {options.described}: annotate some images in CVAT first (an image with at least "
            "one shape counts as annotated)"
        )
    return result


def write(spill: RecordSpill, mapping: LabelMapping, the_plan: Plan, val: set[int], out: Path, options: Options,
          skips: Skips) -> dict[str, Any]:
    splits = {"train": [f for f in the_plan.boxes_by_frame if f not in val], "val": sorted(val)}
    target = int(options.shard_mb * 2**20)
    sizes = {frame: the_plan.files[frame].stat().st_size for frame in the_plan.files}
    writers, shard_of = {}, {}
    for split, frames in splits.items():
        total = sum(sizes[f] for f in frames)
        shards = plan_shards(total, target)
        writers[split] = ShardedWriter(out, split, shards)
        running = 0
        for frame in frames:
            shard_of[frame] = (split, min(shards - 1, running * shards // max(total, 1)))
            running += sizes[frame]
    counts = {split: Counter() for split in splits}
    images = Counter()
    box_sizes: list[tuple[float, float]] = []
    converted = Counter()
    source_id = 0
    progress = progress_bar("writing TFRecords", total=len(shard_of))
    try:
        for record in spill.records():
            if record.frame not in shard_of:
                continue
            split, shard = shard_of[record.frame]
            progress.update(1)
            path = the_plan.files[record.frame]
            try:
                prepared = prepare_image(path.read_bytes())
            except ImageProblem as exc:
                skips.add(f"image {record.name}", str(exc))
                continue
            if (prepared.width, prepared.height) != (record.width, record.height):
                skips.add(f"image {record.name}", f"the annotations say {record.width}x{record.height}, the file is "
                          f"{prepared.width}x{prepared.height}")
                continue
            if prepared.converted:
                converted[prepared.converted.split(";")[0]] += 1
            kept = _kept_boxes(record, mapping, Counter())
            source_id += 1
            masks = areas = None
            if options.masks:
                from ..formats.masks import instance_mask  # NumPy: 50 ms of start-up only Mask R-CNN needs

                arrays = [instance_mask(shape, box, record.width, record.height) for _, box, shape in kept]
                masks = [encode_mask_png(memoryview(a), record.width, record.height) for a in arrays]
                areas = [float(a.sum()) for a in arrays]
            example = detection_example(
                encoded=prepared.data, image_format=prepared.format, width=prepared.width, height=prepared.height,
                source_id=source_id, filename=record.name, boxes=[box for _, box, _ in kept],
                labels=[class_id for class_id, _, _ in kept], texts=[mapping.name_of(c) for c, _, _ in kept],
                is_crowd=[shape.attributes.get("is_crowd") == "true" for _, _, shape in kept],
                areas=areas, masks_png=masks,
            )
            writers[split].write(example, shard)
            images[split] += 1
            for class_id, box, _ in kept:
                counts[split][mapping.name_of(class_id)] += 1
                box_sizes.append((box[2] - box[0], box[3] - box[1]))
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        progress.close()
    shards = {split: [{"file": info.path.name, "records": info.records, "bytes": info.bytes}
                      for info in writer.close()] for split, writer in writers.items()}
    return {"images": dict(images), "objects": {s: dict(c) for s, c in counts.items()}, "shards": shards,
            "box_sizes": box_sizes, "converted": dict(converted)}


def expected_objects(the_plan: Plan, val: set[int], mapping: LabelMapping
                     ) -> tuple[dict[str, dict[str, int]], list[tuple[float, float]]]:
    """Objects per split and label, and box sizes, as the write pass will count them if no image fails
    there (the plan already checked every header): what the plot can be drawn from while it runs."""
    counts = {"train": Counter(), "val": Counter()}
    sizes = []
    for frame, boxes in the_plan.boxes_by_frame.items():
        split = counts["val" if frame in val else "train"]
        for class_id, width, height in boxes:
            split[mapping.name_of(class_id)] += 1
            sizes.append((width, height))
    return {name: dict(counter) for name, counter in counts.items()}, sizes


def copy_unannotated(the_plan: Plan, out: Path) -> list[dict[str, Any]]:
    """Put the images to pre-annotate into the artifact (hard links where possible)."""
    listed = []
    for item in track(the_plan.unannotated, "collecting unannotated images"):
        source: Path = item.pop("_file")
        relative = Path("unannotated") / item["name"]
        target = out / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # "a" and "a/b.jpg": one name is a folder of the other
            raise DatasetError(f"image {shown_name(item['name'])}: cannot be written as {shown_name(str(relative))} "
                               f"({exc.strerror}): another image's name is its folder") from None
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        listed.append({**item, "path": relative.as_posix()})
    return listed


def box_statistics(sizes: list[tuple[float, float]]) -> dict[str, Any]:
    if not sizes:
        return {}
    widths, heights = sorted(w for w, _ in sizes), sorted(h for _, h in sizes)
    areas = [w * h for w, h in sizes]
    return {
        "count": len(sizes),
        "width": {"min": round(widths[0], 1), "median": round(median(widths), 1), "max": round(widths[-1], 1)},
        "height": {"min": round(heights[0], 1), "median": round(median(heights), 1), "max": round(heights[-1], 1)},
        "coco_size": {"small (< 32x32)": sum(a < 32**2 for a in areas),
                      "medium": sum(32**2 <= a < 96**2 for a in areas),
                      "large (>= 96x96)": sum(a >= 96**2 for a in areas)},
    }


def warnings_for(objects: dict[str, dict[str, int]], names: Sequence[str]) -> list[str]:
    totals = Counter()
    for split_counts in objects.values():
        totals.update(split_counts)
    found = []
    total = sum(totals.values())
    if total < FEW_OBJECTS:
        found.append(
            f"only {total} annotated objects (fewer than {FEW_OBJECTS}): the detector will be rough and its "
            "validation AP noisy; expect pre-annotations that need many corrections, and annotate more images"
        )
    for name in names:
        if totals[name] < FEW_PER_LABEL:
            found.append(
                f"label {name} has only {totals[name]} annotated objects (fewer than {FEW_PER_LABEL}): the model will "
                f"rarely find {name}; annotate more of them before relying on its pre-annotations"
            )
    return found


def _build(options: Options, partial: Path) -> dict[str, Any]:
    """Everything run() writes, into ``partial``; the caller removes it on failure."""
    plotter = ForkedPlotter()  # imports matplotlib on the other core while this process converts
    try:
        return _convert_and_report(options, partial, plotter)
    finally:
        plotter.cancel()


def _convert_and_report(options: Options, partial: Path, plotter: ForkedPlotter) -> dict[str, Any]:
    skips = Skips(options.strict)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cvat-argo-dataset-", dir=options.work) as work:
        export = open_export(options.source, Path(work))
        if not export.reader.meta.label_names:
            raise DatasetError(f"{export.described}: the export defines no labels (no <labels> in its <meta>, or no "
                               "'categories'): add labels to the task and export it again")
        mapping = LabelMapping(export.reader.meta.label_names, options.labels, options.rename)
        spill = RecordSpill(Path(work) / "records.pickle")
        the_plan = plan(export, mapping, options, skips, spill)
        val = split_frames(the_plan.labels_by_frame, options.val_fraction, options.seed)
        expected, expected_sizes = expected_objects(the_plan, val, mapping)
        plotter.send(plot, partial / artifacts.DATASET_PLOT, {"labels": list(mapping.names), "objects": expected},
                     expected_sizes)  # drawn on the other core while this one writes the records
        written = write(spill, mapping, the_plan, val, partial, options, skips)
        unannotated = copy_unannotated(the_plan, partial)
    conversion_seconds = time.perf_counter() - started
    write_label_map(partial / artifacts.LABEL_MAP, mapping.names)
    write_labels_json(partial / artifacts.LABELS, mapping.names)
    artifacts.write_json(partial / artifacts.UNANNOTATED, {"count": len(unannotated), "images": unannotated})
    summary = {
        "source": options.described,
        **({"cvat_task_id": options.cvat_task_id} if options.cvat_task_id is not None else {}),
        "format": export.format,
        "labels": list(mapping.names),
        "images": {"train": written["images"].get("train", 0), "val": written["images"].get("val", 0),
                   "unannotated": len(unannotated), "skipped": len(skips.items)},
        # Every frame by what people did with it (cvat/review.py): only ground truth is trained on.
        "frames": {**{kind: the_plan.kinds[kind] for kind in FRAME_KINDS},
                   "rule": RULE_WITH_JOBS if options.cvat_task_id is not None else RULE_SOURCES_ONLY},
        "objects": written["objects"],
        "shards": written["shards"],
        "boxes": box_statistics(written["box_sizes"]),
        "dropped_shapes": dict(the_plan.dropped),
        "converted_images": written["converted"],
        "tags": dict(the_plan.tags),
        "skipped": skips.items,
        "warnings": warnings_for(written["objects"], mapping.names),
        # Reading the export, planning and writing every record and image (no start-up, no report).
        "conversion_seconds": round(conversion_seconds, 3),
        "options": {"val_fraction": options.val_fraction, "seed": options.seed, "labels": options.labels,
                    "rename": options.rename, "empty_frames": options.empty_frames, "masks": options.masks},
    }
    if summary["images"]["train"] == 0:
        raise DatasetError(f"no usable training image in {options.described}: see the skipped images")
    artifacts.write_json(partial / artifacts.DATASET_SUMMARY, summary)
    plotter.wait()
    if written["objects"] != expected:  # an image failed in the write pass: the plot must show what was written
        plot(partial / artifacts.DATASET_PLOT, summary, written["box_sizes"])
    write_report(partial, summary)
    return summary


def run(options: Options) -> dict[str, Any]:
    return build_output(options.out, lambda partial: _build(options, partial))


def print_summary(summary: dict[str, Any], out: Path) -> None:
    images = summary["images"]
    print(f"dataset: {images['train']} train and {images['val']} validation images, {images['unannotated']} to "
          f"pre-annotate, {images['skipped']} skipped; labels: {', '.join(summary['labels'])}")
    if summary["frames"][AWAITING_REVIEW]:
        print(f"{summary['frames'][AWAITING_REVIEW]} frames hold only machine shapes nobody reviewed: left out of "
              "training and of pre-annotation until a person reviews them")
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"written to {out} (report: {out / 'report.md'})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cvat_argo.steps.dataset", description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="", help="CVAT export: folder, zip, s3://bucket/key or https:// URL")
    parser.add_argument("--cvat-task-id", default="", help="a live CVAT task (CVAT_HOST and credentials)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", type=lambda s: [x.strip() for x in s.split(",") if x.strip()] or None,
                        help="comma-separated labels to keep (default: all)")
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="rename or merge a label")
    parser.add_argument("--empty-frames", choices=("pre-annotate", "negatives"), default="pre-annotate",
                        help="images without shapes: pre-annotate them (default) or train on them as negatives")
    parser.add_argument("--strict", action="store_true", help="fail on any skipped image or shape")
    parser.add_argument("--shard-mb", type=float, default=150.0, help="target TFRecord shard size")
    parser.add_argument("--masks", choices=("auto", "yes", "no"), default="auto",
                        help="write instance masks (for Mask R-CNN); auto: when --model-spec/--model trains masks")
    parser.add_argument("--model", default="", help="the model the dataset is for (decides --masks auto)")
    parser.add_argument("--model-spec", default="", help="its catalog entry as JSON (as the pipeline passes it)")
    parser.add_argument("--work", type=Path, help="scratch folder for downloads and extraction")
    return parser


def _wants_masks(choice: str, model: str, model_spec: str) -> bool:
    if choice != "auto":
        return choice == "yes"
    if not model and not model_spec:
        return False
    from ..request.catalog import entry_from_parameters

    return entry_from_parameters(model, model_spec).masks


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if not 0 < ns.val_fraction < 1:
        raise DatasetError(f"--val-fraction {ns.val_fraction} must be between 0 and 1")
    if not ns.source and not ns.cvat_task_id:
        raise DatasetError("give --source (a CVAT export) or --cvat-task-id")
    if not ns.source and not ns.cvat_task_id.strip().isdigit():
        raise DatasetError(f"--cvat-task-id {ns.cvat_task_id!r} is not a task id: give the number in the task's "
                           "URL (.../tasks/ID)")
    options = Options(source=ns.source, out=ns.out, val_fraction=ns.val_fraction, seed=ns.seed, labels=ns.labels,
                      rename=ns.rename, empty_frames=ns.empty_frames, strict=ns.strict, shard_mb=ns.shard_mb,
                      work=ns.work, masks=_wants_masks(ns.masks, ns.model, ns.model_spec))
    with tempfile.TemporaryDirectory(prefix="cvat-argo-task-", dir=ns.work) as download:
        if not ns.source:
            from ..cvat.server import export_task

            options.cvat_task_id = int(ns.cvat_task_id)
            archive, options.reviewed_frames = export_task(options.cvat_task_id, Path(download))
            options.source = str(archive)
        summary = run(options)
    print_summary(summary, ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_step(main))
