"""pre-annotate: the trained model annotates the images nobody annotated yet, so people only check.

``python -m cvat_argo.steps.annotate --model EXPORTED --dataset DATASET --out DIR [--images FOLDER]
[--runtime auto|tflite|tflite-fp16|saved_model] [--threshold 0.5] [--threshold person=0.3]
[--max-detections 100] [--batch-size N] [--workers N] [--cvat-task-id ID] [--task-meta FILE] [--dry-run]
[--ledger LOCATION] [--refresh] [--run-id NAME]``

Images come from the dataset stage's ``unannotated.json`` (or every image under ``--images``).
Worker threads read, decode (JPEGs straight at the size the model needs, with PIL's draft mode) and
prepare the images while the model runs on the previous batch, so the model rarely waits. An image
that does not decode is skipped and listed; the run goes on. Score thresholds default to the model's
``thresholds.json`` (chosen per label on validation data by the convert stage; 0.5 for a model
without one); a global ``--threshold`` replaces them all, ``--threshold LABEL=SCORE`` one label's.

Outputs in DIR (written as ``DIR.partial`` and renamed when complete): ``annotations.xml`` (CVAT for
images 1.1), ``coco.json`` (with scores), ``summary.json``, ``scores.png`` and ``report.md``. With
``CVAT_HOST`` and credentials in the environment and a task id (``--cvat-task-id`` or the dataset's
``dataset.json``), the shapes are also appended to the task (see :mod:`cvat_argo.cvat.upload`);
labels the model has and the task lacks, or a ledger that cannot be read, stop the run before
inference. The ledger (``--ledger``, :mod:`cvat_argo.cvat.ledger`) records which frames' machine
shapes are ours, so a shape a reviewer deleted never comes back; ``--refresh`` replaces our shapes
on frames nobody edited since.

``next-to-annotate.json`` lists the ``--next N`` frames (default 50, 0: none) a person's labels would
teach the model most, ranked from the detections this run already has, with links to them in CVAT
when a task is known (see :mod:`cvat_argo.inference.next_to_annotate`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..engines import artifacts
from ..entry import build_output, run_tensorflow_step
from ..errors import CvatArgoError, DatasetError
from ..formats.annotations import ImageRecord, LabelSpec, TaskMeta
from ..formats.cvat_xml.writer import write_cvat_xml
from ..inference import next_to_annotate
from ..inference.outputs import (
    Tally,
    Thresholds,
    coco_document,
    detections_to_shapes,
    fit_to_label,
    model_thresholds,
    parse_thresholds,
    plot_scores,
    task_label_specs,
    write_report,
)
from ..inference.serving import letterbox_scale
from ..progress import progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
DRAFT_MIN_REDUCTION = 2.0  # decode JPEGs smaller only when that saves at least a 2x downscale


@dataclass(frozen=True)
class Item:
    """One image to pre-annotate: its task frame and name, file, and size as CVAT shows it."""

    frame: int
    name: str
    path: Path
    width: int | None = None
    height: int | None = None


@dataclass
class Decoded:
    item: Item
    pixels: Any = None  # what the detector takes (its prepared input, or the RGB array)
    scale: tuple[float, float] = (1.0, 1.0)  # detector pixels -> displayed pixels
    width: int = 0
    height: int = 0
    problem: str | None = None


@dataclass
class Options:
    model: Path
    dataset: Path | None
    out: Path
    images: Path | None = None
    runtime: str = "auto"
    thresholds: Sequence[str] = ()
    max_detections: int = 100
    batch_size: int | None = None
    workers: int | None = None
    cvat_task_id: int | None = None
    task_meta: Path | None = None
    dry_run: bool = False
    ledger: str | None = None  # --ledger: where the task's upload ledger is (see cvat_argo.cvat.ledger)
    refresh: bool = False  # --refresh: replace our untouched shapes by this model's
    run_id: str = ""  # --run-id: the name the ledger records for this run's shapes
    next_frames: int = next_to_annotate.DEFAULT_COUNT  # --next: frames listed in next-to-annotate.json
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


# --- what to annotate ----------------------------------------------------------------------------


def read_unannotated(dataset: Path) -> list[Item]:
    """The dataset stage's ``unannotated.json``: ``{"count", "images": [{frame, name, width, height, path}]}``."""
    listing = dataset / artifacts.UNANNOTATED
    if not listing.is_file():
        raise DatasetError(f"{listing} does not exist: give the create-dataset stage's output as --dataset, "
                           "or a folder of images as --images")
    try:
        document = json.loads(listing.read_text(encoding="utf-8"))
        return [Item(int(i["frame"]), str(i["name"]), dataset / i["path"], int(i["width"]), int(i["height"]))
                for i in document["images"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{listing}: not the create-dataset stage's list of images ({exc})") from None


def read_folder(folder: Path) -> list[Item]:
    """Every image under ``folder``, in name order; frames are their positions."""
    if not folder.is_dir():
        raise DatasetError(f"--images {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [Item(index, path.relative_to(folder).as_posix(), path) for index, path in enumerate(files)]


def task_id_from_dataset(dataset: Path | None) -> int | None:
    """The CVAT task the dataset came from, when ``dataset.json`` records it."""
    if dataset is None or not (dataset / artifacts.DATASET_SUMMARY).is_file():
        return None
    try:
        summary = json.loads((dataset / artifacts.DATASET_SUMMARY).read_text(encoding="utf-8"))
    except ValueError:
        return None
    for key in ("cvat_task_id", "task_id"):
        value = summary.get(key) or (summary.get("options") or {}).get(key)
        if value not in (None, ""):
            return int(value)
    return None


# --- decoding in worker threads ------------------------------------------------------------------


def model_input_size(detector: Any) -> tuple[int, int] | None:
    """(height, width) the model runs at, when the model says; decides the JPEG draft size.

    TFLite models state it in ``tflite.json`` (``input.shape`` [1, S, S, 3]); a SavedModel takes any
    size, so its images are decoded at full size unless ``model.json`` names an ``input_size``.
    """
    shape = ((getattr(detector, "spec", None) or {}).get("input") or {}).get("shape")
    if shape and len(shape) == 4:
        return int(shape[1]), int(shape[2])
    model_dir = getattr(detector, "model_dir", None)
    try:
        manifest = artifacts.ExportedModelManifest.read_if_present(Path(model_dir)) if model_dir else None
    except CvatArgoError:
        return None
    size = manifest.input_size if manifest else None
    return (size, size) if isinstance(size, int) else None


def shrink_for_model(pixels: np.ndarray, side: int) -> np.ndarray:
    """The image resized to the size the model scales it to (aspect kept, long side fits ``side``).

    The same bilinear resize (half-pixel centres, no antialiasing) as Model Garden's preprocessing,
    done here with OpenCV (uint8, off the GIL, ~30x faster than NumPy) so the model's own resize
    becomes a copy. Without OpenCV the image is left as it is.
    """
    height, width = pixels.shape[:2]
    scaled_h, scaled_w = letterbox_scale(height, width, side)
    if scaled_h >= height or scaled_w >= width:
        return pixels
    try:
        import cv2
    except ImportError:
        return pixels
    return cv2.resize(pixels, (scaled_w, scaled_h), interpolation=cv2.INTER_LINEAR)


def decode(item: Item, target: tuple[int, int] | None, prepare: Any = None) -> Decoded:
    """Read and decode one image as CVAT shows it (EXIF orientation applied), small when it can be.

    A JPEG much larger than the model input is decoded at 1/2, 1/4 or 1/8 of its size (DCT scaling,
    several times faster than a full decode and resize), then resized to the model's scale. Never
    raises for a bad file: the problem is returned, and the run goes on.
    """
    try:
        with Image.open(item.path) as opened:
            stored_w, stored_h = opened.size
            if target is not None and opened.format == "JPEG":
                factor = max(target) / max(stored_w, stored_h)  # the model fits the long side into its input
                if factor * DRAFT_MIN_REDUCTION <= 1:
                    opened.draft("RGB", (math.ceil(stored_w * factor), math.ceil(stored_h * factor)))
            orientation = opened.getexif().get(0x0112, 1)
            image = ImageOps.exif_transpose(opened)
            pixels = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        return Decoded(item, problem="file not found")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        return Decoded(item, problem=f"cannot be decoded ({exc})")
    full_w, full_h = (stored_h, stored_w) if orientation in (5, 6, 7, 8) else (stored_w, stored_h)
    width, height = item.width or full_w, item.height or full_h
    if (width, height) != (full_w, full_h):
        return Decoded(item, problem=f"the task says {width}x{height}, the file is {full_w}x{full_h}")
    if target is not None:
        pixels = shrink_for_model(pixels, max(target))
    scale = (width / pixels.shape[1], height / pixels.shape[0])
    if prepare is not None:
        try:
            pixels = prepare(pixels)
        except Exception as exc:  # a model-specific check (e.g. channels) on this one image
            return Decoded(item, problem=f"cannot be prepared for the model ({exc})")
    return Decoded(item, pixels, scale, width, height)


def decoded_in_order(items: Sequence[Item], workers: int, target: tuple[int, int] | None,
                     prepare: Any = None) -> Iterator[Decoded]:
    """``decode`` on worker threads, a bounded window ahead of the consumer, results in input order."""
    window = max(4, workers * 4)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[Future[Decoded]] = deque()
        source = iter(items)
        for item in source:
            pending.append(pool.submit(decode, item, target, prepare))
            if len(pending) >= window:
                break
        while pending:
            yield pending.popleft().result()
            item = next(source, None)
            if item is not None:
                pending.append(pool.submit(decode, item, target, prepare))


def default_workers() -> int:
    """Half the usable CPUs (at most 8) decode; the model's own threads use the rest.

    Measured on 2 cores: one decoding thread beside a two-thread TFLite interpreter ran ~15% faster
    than two, because decoding at the model's size is cheap next to the model.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores // 2))


# --- the model -----------------------------------------------------------------------------------


class Runner:
    """The detector with the split the serving module offers: prepare in threads, run in batches."""

    def __init__(self, detector: Any):
        self.detector = detector
        self.prepare = getattr(detector, "prepare", None)
        self._run_prepared = getattr(detector, "detect_prepared", None)
        if self.prepare is None or self._run_prepared is None:
            self.prepare = None

    def __call__(self, batch: list[Any]) -> list[Any]:
        if self.prepare is not None:
            return list(self._run_prepared(batch))
        return list(self.detector.detect(batch))


def read_model_labels(model: Path) -> tuple[str, ...]:
    """The model's label names (``labels.json``), read without loading the model."""
    if not model.is_dir():
        raise DatasetError(f"--model {model} is not a folder (expected the convert stage's output)")
    if not (model / artifacts.LABELS).is_file():
        raise DatasetError(f"{model} has no labels.json: the model's class ids cannot be mapped to CVAT labels "
                           "(give the convert stage's output folder)")
    from ..formats.label_map import read_labels_json

    return tuple(read_labels_json(model / artifacts.LABELS))


def load(model: Path, runtime: str) -> Any:
    """The exported model through :func:`cvat_argo.inference.serving.load_detector`, with readable failures."""
    read_model_labels(model)
    from ..inference.serving import load_detector

    return load_detector(model, runtime=runtime)


# --- the stage -----------------------------------------------------------------------------------


def _task_labels(options: Options, model_labels: Sequence[str], client: Any, task_id: int | None):
    """Label specs for the XML's meta (and the upload), checked against the model's labels."""
    from ..cvat.upload import check_labels

    if client is not None and task_id is not None:
        from ..cvat.upload import task_label_specs as server_labels

        labels = server_labels(client, task_id)
        check_labels(model_labels, labels, f"CVAT task {task_id}")
        return tuple(label.spec() for label in labels.values())
    if options.task_meta is not None:
        from ..formats.cvat_xml.reader import CvatXmlReader

        meta = CvatXmlReader(options.task_meta).meta
        check_labels(model_labels, meta.label_names, str(options.task_meta))
        return meta.labels
    return task_label_specs(model_labels)


def _upload_target(options: Options) -> tuple[Any, int | None, str | None]:
    """(client, task id, note): a client only when a server and a task are both known."""
    task_id = options.cvat_task_id if options.cvat_task_id is not None else task_id_from_dataset(options.dataset)
    from ..cvat import connection

    if not connection.configured(options.env):
        return None, task_id, "not uploaded: CVAT_HOST is not set"
    if task_id is None:
        return None, None, "not uploaded: no task id (give --cvat-task-id)"
    return connection.require(options.env).connect("uploading to CVAT"), task_id, None


def _open_ledger(options: Options, client: Any, task_id: int | None) -> tuple[Any, str]:
    """The task's upload ledger (:mod:`cvat_argo.cvat.ledger`), read before inference; (None, "") without an upload."""
    if client is None or task_id is None:
        return None, ""
    from ..cvat.ledger import open_ledger

    return open_ledger(options.ledger, client.api_map.host, task_id, options.env)


def annotate(options: Options, partial: Path) -> dict[str, Any]:
    # everything that can refuse the run is checked before the model loads
    model_labels = read_model_labels(options.model)
    thresholds: Thresholds = parse_thresholds(options.thresholds, model_labels,
                                              model_thresholds(options.model, model_labels))
    items = read_folder(options.images) if options.images else read_unannotated(options.dataset)  # type: ignore
    client, task_id, note = _upload_target(options)
    ledger, ledger_note = _open_ledger(options, client, task_id)  # a bad ledger stops the run here
    label_specs: tuple[LabelSpec, ...] = _task_labels(options, model_labels, client, task_id)
    ranking = next_to_annotate.Ranking(options.next_frames, model_labels)
    cvat_frames = options.images is None  # a folder's images have positions, not CVAT frame numbers
    links = (next_to_annotate.task_links(client, task_id)
             if ranking.limit and cvat_frames and client is not None and task_id is not None else None)
    started = time.perf_counter()
    detector = load(options.model, options.runtime)
    load_seconds = time.perf_counter() - started
    if tuple(detector.labels) != model_labels:
        raise DatasetError(f"{options.model}: the model's labels {detector.labels} differ from labels.json")
    label_types = {spec.name: spec.type for spec in label_specs}
    runner = Runner(detector)
    batch_size = options.batch_size or int(getattr(detector, "preferred_batch", 1) or 1)
    workers = options.workers or default_workers()
    target = model_input_size(detector)

    tally = Tally(labels=[spec.name for spec in label_specs])
    records: list[ImageRecord] = []
    unfit = 0
    loop_start = time.perf_counter()
    with progress_bar("pre-annotating", total=len(items)) as bar:
        batch: list[Decoded] = []

        def flush() -> None:
            nonlocal unfit
            if not batch:
                return
            results = runner([d.pixels for d in batch])
            for done, detections in zip(batch, results, strict=True):
                shapes = detections_to_shapes(detections, model_labels, done.width, done.height, thresholds,
                                              max_detections=options.max_detections, scale=done.scale)
                fitted = [fit_to_label(s, label_types.get(s.label)) for s in shapes]
                unfit += sum(f is None for f in fitted)
                record = ImageRecord(done.item.frame, done.item.name, done.width, done.height,
                                     tuple(f for f in fitted if f is not None))
                records.append(record)
                tally.add(record)
                tally.add_scores(detections.scores, detections.classes, model_labels)
                # every detection the runtime returned (above its own score floor), before the thresholds
                ranking.add(done.item.frame if cvat_frames else None, done.item.name, detections.scores,
                            detections.classes)
            bar.update(len(batch))
            batch.clear()

        for decoded in decoded_in_order(items, workers, target, runner.prepare):
            if decoded.problem:
                tally.skip(decoded.item.name, decoded.problem)
                bar.update(1)
                continue
            batch.append(decoded)
            if len(batch) >= batch_size:
                flush()
        flush()
    seconds = time.perf_counter() - loop_start

    meta = TaskMeta(labels=label_specs, size=len(records), mode="annotation")
    write_cvat_xml(partial / artifacts.CVAT_XML, meta, records)
    artifacts.write_json(partial / artifacts.COCO_JSON, coco_document([spec.name for spec in label_specs], records))
    summary = tally.summary(
        images_per_second=round(len(items) / seconds, 2) if seconds > 0 else 0.0,
        seconds=round(seconds, 3), model_load_seconds=round(load_seconds, 3),
        runtime=getattr(detector, "runtime", options.runtime), batch_size=batch_size, workers=workers,
        threshold=thresholds.as_dict(), threshold_origin=thresholds.origin, threshold_note=thresholds.note,
        max_detections=options.max_detections, model=str(options.model),
        labels=list(model_labels), dropped_for_label_type=unfit,
    )
    if client is not None and task_id is not None:
        from ..cvat.upload import upload

        with progress_bar("adding shapes to CVAT", total=sum(len(r.shapes) for r in records), unit="shape") as bar:
            counts = upload(client, task_id, records, model_labels, ledger=ledger, refresh=options.refresh,
                            run=options.run_id, dry_run=options.dry_run, progress=bar)
            summary["upload"] = {**counts, "ledger_note": ledger_note}
    else:
        summary["upload_note"] = note
    listed = next_to_annotate.rows(ranking.ranked(), links) if ranking.limit else None
    if listed is not None:
        artifacts.write_json(partial / artifacts.NEXT_TO_ANNOTATE, next_to_annotate.document(listed))
        summary["next_to_annotate"] = len(listed)
    artifacts.write_json(partial / artifacts.ANNOTATION_SUMMARY, summary)
    plot_scores(partial / artifacts.SCORES_PLOT, summary, summary["threshold"])
    write_report(partial, summary, next_to_annotate=listed)
    return summary


def run(options: Options) -> dict[str, Any]:
    return build_output(options.out, lambda partial: annotate(options, partial))


def _task_id(text: str) -> int | None:
    """``--cvat-task-id ""`` (what the pipeline passes when there is none) means no task."""
    text = text.strip()
    if not text:
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a task id (a whole number)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cvat_argo.steps.annotate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the convert stage's output folder")
    parser.add_argument("--dataset", type=Path, help="the create-dataset stage's output (its unannotated.json)")
    parser.add_argument("--images", type=Path, help="pre-annotate every image under this folder instead")
    parser.add_argument("--out", type=Path, required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--runtime", choices=("auto", "tflite", "tflite-fp16", "saved_model"), default="auto",
                        help="auto: TFLite on CPU, the SavedModel in batches on GPU")
    parser.add_argument("--threshold", action="append", default=[], metavar="[LABEL=]SCORE",
                        help="score threshold, global (0.5) or per label (person=0.3); repeatable. Default: the "
                        "model's thresholds.json (0.5 without one); a global value replaces all of those")
    parser.add_argument("--max-detections", type=int, default=100, help="at most this many shapes per image")
    parser.add_argument("--batch-size", type=int, help="images per model call (default: the runtime's preference)")
    parser.add_argument("--workers", type=int, help="decoding threads (default: half the CPUs this process may use)")
    parser.add_argument("--cvat-task-id", type=_task_id, default=None,
                        help="the CVAT task to add the shapes to (CVAT_HOST and credentials from the environment)")
    parser.add_argument("--task-meta", type=Path, help="a CVAT for images 1.1 annotations.xml of the task: its "
                        "labels (and their score attributes) describe the XML output without a server")
    parser.add_argument("--dry-run", action="store_true", help="report what would be added to CVAT, add nothing")
    parser.add_argument("--ledger", metavar="LOCATION", help="the task's upload ledger, which frames' machine shapes "
                        "are ours: FILE.json (a key in CVAT_ARGO_STORE when set, else a local file) or a ledgers "
                        "root in the store (<root>/<host>/task-<id>.json). Without one, frames with machine shapes "
                        "are left alone")
    parser.add_argument("--refresh", action="store_true", help="replace our shapes on frames nobody edited since "
                        "(the ledger says which) by this model's; without it our frames are left as they are")
    parser.add_argument("--run-id", default="", help="the name the ledger records for the shapes this run adds")
    parser.add_argument("--next", type=int, default=next_to_annotate.DEFAULT_COUNT, metavar="N",
                        help="list the N frames a person's labels would teach the model most in "
                        f"{artifacts.NEXT_TO_ANNOTATE} (default %(default)s; 0: no list)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.dataset is None and ns.images is None:
        raise DatasetError("give --dataset (the create-dataset stage's output) or --images FOLDER")
    if ns.max_detections < 1:
        raise DatasetError(f"--max-detections {ns.max_detections} must be at least 1")
    for name in ("batch_size", "workers"):
        if getattr(ns, name) is not None and getattr(ns, name) < 1:
            raise DatasetError(f"--{name.replace('_', '-')} {getattr(ns, name)} must be at least 1")
    options = Options(model=ns.model, dataset=ns.dataset, out=ns.out, images=ns.images, runtime=ns.runtime,
                      thresholds=ns.threshold, max_detections=ns.max_detections, batch_size=ns.batch_size,
                      workers=ns.workers, cvat_task_id=ns.cvat_task_id, task_meta=ns.task_meta, dry_run=ns.dry_run,
                      next_frames=ns.next, ledger=ns.ledger or None, refresh=ns.refresh, run_id=ns.run_id)
    summary = run(options)
    print(f"pre-annotated {summary['images']} images: {summary['shapes']} shapes "
          f"({', '.join(f'{k} {v}' for k, v in summary['shapes_per_label'].items())}), "
          f"{summary['images_per_second']} images/s ({summary['runtime']}); {len(summary['skipped'])} skipped")
    threshold = summary["threshold"]
    print(f"thresholds ({summary['threshold_origin']}): "
          + ", ".join([f"default {threshold['default']}", *(f"{k} {v}" for k, v in threshold["per_label"].items())])
          + (f"; {summary['threshold_note']}" if summary.get("threshold_note") else ""))
    for skipped in summary["skipped"][:10]:
        print(f"skipped {skipped['name']}: {skipped['reason']}", file=sys.stderr)
    upload = summary.get("upload")
    if upload:
        verb = "would add" if upload["dry_run"] else "added"
        print(f"CVAT task {upload['task_id']}: {verb} {upload['created']} shapes on {upload['frames_created']} "
              f"frames; left {upload['frames_human']} frames with human shapes and {upload['frames_other_auto']} "
              f"with other machine shapes alone; {upload['already_present']} already there")
        print(f"CVAT task {upload['task_id']}: left {upload['frames_reviewed']} frames of reviewed jobs and "
              f"{upload['frames_ours_kept'] + upload['frames_ours_edited']} of our earlier frames alone "
              f"({upload['frames_ours_edited']} edited since); {'would refresh' if upload['dry_run'] else 'refreshed'} "
              f"{upload['frames_refreshed']} ({upload['shapes_deleted']} old shapes deleted); {upload['ledger_note']}")
    else:
        print(f"CVAT: {summary.get('upload_note')}")
    if "next_to_annotate" in summary:
        print(f"next to annotate: {summary['next_to_annotate']} frames ranked in "
              f"{ns.out / artifacts.NEXT_TO_ANNOTATE}")
    print(f"written to {ns.out} (report: {ns.out / 'report.md'})")
    return 0


if __name__ == "__main__":
    run_tensorflow_step(main)
