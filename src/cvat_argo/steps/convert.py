"""convert: the trained model exported for serving (SavedModel, TFLite), self-tested against the checkpoint.

``python -m cvat_argo.steps.convert --model MODEL_DIR --dataset DATASET_DIR --out OUT_DIR
[--score-threshold 0.05] [--self-test-images 8] [--target-precision 0.9] [--threshold-floor 0.3]
[--threshold-images 2000]``

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
* ``thresholds.json``: a score threshold per label, chosen on the validation split with the runtime
  pre-annotation uses by default (the lowest reaching ``--target-precision`` 0.9, never below
  ``--threshold-floor`` 0.3, on at most ``--threshold-images`` 2000 images; see
  :mod:`cvat_argo.export.thresholds`). pre-annotate, ``cvat_argo.cvat_function`` and the nuclio
  bundle use them unless given a threshold.

Self-test: on a few validation images the trained Keras model (newest checkpoint) and every export,
run through :mod:`cvat_argo.inference.serving`, must give the same detections within a tolerance; a mismatch
fails the stage and leaves the details in ``OUT_DIR.partial/self_test.json``.

This module parses the arguments and runs the steps in order; the work is in :mod:`cvat_argo.export`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engines import artifacts
from ..entry import run_tensorflow_step
from ..errors import ConvertError
from ..export.inputs import load_export_config, read_dataset_labels, read_trained_model
from ..export.model_card import model_card, optional_json
from ..export.output import FORMAT, FORMAT_VERSION, check_output_folder, file_entries, publish
from ..export.saved_model import export_saved_model
from ..export.self_test import ReferenceModel, check_self_test, self_test, self_test_images
from ..export.tflite import NO_TFLITE_REASON, TFLiteExportProcess
from ..export.thresholds import (
    DEFAULT_FLOOR,
    DEFAULT_MAX_IMAGES,
    DEFAULT_TARGET_PRECISION,
    check_choice,
    choose_thresholds,
    describe,
)
from ..formats.label_map import write_labels_json
from ..inference.serving import load_detector
from ..progress import emit

#: Model Garden's default lowest score of a returned detection (``pre_nms_score_threshold``).
DEFAULT_SCORE_THRESHOLD = 0.05
DEFAULT_SELF_TEST_IMAGES = 8


#: What convert reports as its progress (phase i of 4, and "converted" at the end).
PHASES = ("exporting the model", "self-testing the exports", "choosing score thresholds", "publishing the model",
          "converted")


def _phase(index: int) -> None:
    emit(PHASES[index], index, len(PHASES) - 1, "phase")


def run(model: Path, dataset: Path, out: Path, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        test_images: int = DEFAULT_SELF_TEST_IMAGES, target_precision: float = DEFAULT_TARGET_PRECISION,
        threshold_floor: float = DEFAULT_FLOOR, threshold_images: int = DEFAULT_MAX_IMAGES) -> dict[str, Any]:
    """Export, self-test, choose the score thresholds and publish; returns the summary that ``model.json`` holds."""
    model, dataset, out = Path(model), Path(dataset), Path(out)
    if not 0.0 <= score_threshold < 1.0:
        raise ConvertError(f"score threshold must be in [0, 1), got {score_threshold}")
    check_choice(target_precision, threshold_floor, threshold_images)  # before minutes of export
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
        _phase(0)
        print("exporting the SavedModel (image_tensor, boxes in original pixels)", flush=True)
        signature = export_saved_model(config, trained, partial)
        reference = ReferenceModel(config, trained.checkpoint)
        expected = [reference.run(image) for _, image in images]
        if tflite_export is not None:
            tflite = {"available": True, "files": dict(artifacts.TFLITE_FILES), "spec": artifacts.TFLITE_MANIFEST,
                      "input": tflite_export.result()["input"]}
            runtimes = ["tflite-fp32", "tflite-fp16", "saved_model"]
    finally:
        if tflite_export is not None:
            tflite_export.stop()
    if not tflite["available"]:
        tflite["reason"] = NO_TFLITE_REASON.get(
            trained.entry.architecture, f"catalog entry {trained.entry.name} has tflite: false")
    write_labels_json(partial / artifacts.LABELS, labels)
    generator = config.task.model.detection_generator
    manifest = artifacts.ExportedModelManifest(
        format=FORMAT, version=FORMAT_VERSION, model=trained.entry.name, experiment=trained.entry.experiment,
        architecture=trained.entry.architecture, labels=list(labels), num_classes=len(labels) + 1,
        input_size=trained.input_size, arguments=trained.manifest.arguments,
        masks=trained.entry.masks, score_threshold=score_threshold,
        max_detections=generator.max_num_detections, nms_iou_threshold=generator.nms_iou_threshold,
        source={"model_dir": str(model), "checkpoint": trained.checkpoint.name, "step": trained.step},
        runtimes=runtimes, saved_model={"path": artifacts.SAVED_MODEL_DIR, "signature": signature},
        tflite=tflite, exports=file_entries(partial),
    )
    manifest.write(partial)

    _phase(1)
    print(f"self-test: {len(images)} validation images, checkpoint vs {', '.join(runtimes)}", flush=True)
    test = self_test(config, trained, partial, images, runtimes, expected=expected)
    check_self_test(test, partial)
    if not test["compared_detections"]:
        print(f"warning: no detection scored {score_threshold} or more on the self-test images, so the self-test "
              "compared nothing (an undertrained model?)", flush=True)
    _phase(2)
    detector = load_detector(partial, "auto")  # what pre-annotate runs by default here
    thresholds = choose_thresholds(detector, dataset, labels, target_precision=target_precision,
                                   floor=threshold_floor, max_images=threshold_images)
    artifacts.write_json(partial / artifacts.THRESHOLDS, thresholds)
    print(describe(thresholds), flush=True)
    manifest = dataclasses.replace(
        manifest, convert_seconds=round(time.monotonic() - started, 1), exports=file_entries(partial),
        self_test={"ok": True, "images": len(images), "compared_detections": test["compared_detections"],
                   "runtimes": {r: item["compared"] for r, item in test["runtimes"].items()}})
    manifest.write(partial)
    document = manifest.to_json()
    metrics = optional_json(model / artifacts.METRICS)
    dataset_summary = optional_json(dataset / artifacts.DATASET_SUMMARY)
    card = model_card(document, metrics, dataset_summary, test, thresholds)
    (partial / artifacts.MODEL_CARD).write_text(card, encoding="utf-8")
    _phase(3)
    publish(partial, out)
    _phase(4)
    print(f"converted {trained.entry.name}: {', '.join(runtimes)} in {manifest.convert_seconds:.0f} s; "
          f"self-test ok ({test['compared_detections']} detections compared)", flush=True)
    return document


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvat_argo.steps.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the train stage's output folder")
    parser.add_argument("--dataset", type=Path, required=True, help="the dataset stage's output folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                        help="lowest score the exports return (the annotate stage applies its own on top)")
    parser.add_argument("--self-test-images", type=int, default=DEFAULT_SELF_TEST_IMAGES)
    parser.add_argument("--target-precision", type=float, default=DEFAULT_TARGET_PRECISION,
                        help="each label's threshold is the lowest reaching this validation precision")
    parser.add_argument("--threshold-floor", type=float, default=DEFAULT_FLOOR,
                        help="no label's threshold goes below this (also used where the target is not reached)")
    parser.add_argument("--threshold-images", type=int, default=DEFAULT_MAX_IMAGES,
                        help="at most this many validation images (the first ones) choose the thresholds")
    ns = parser.parse_args(argv)
    run(ns.model, ns.dataset, ns.out, ns.score_threshold, ns.self_test_images, ns.target_precision,
        ns.threshold_floor, ns.threshold_images)
    return 0


if __name__ == "__main__":
    run_tensorflow_step(main)
