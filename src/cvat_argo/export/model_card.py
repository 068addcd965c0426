"""The model card: a short Markdown page on what was trained, on what, how well, and what was exported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..engines import artifacts
from ..training.metrics import NOT_MEASURED, coco_metric
from .thresholds import rate


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def threshold_section(thresholds: dict[str, Any]) -> list[str]:
    """The chosen score thresholds (``thresholds.json``) as a table, beside what the fixed default gives."""
    chosen_on = thresholds["chosen_on"]
    cap = (f" (the first {chosen_on['images']} of {chosen_on['validation_images']}: capped at "
           f"{chosen_on['max_images']})" if chosen_on["capped"] else "")
    lines = ["## Score thresholds", "",
             f"Chosen on {chosen_on['images']} validation images{cap} with the `{chosen_on['runtime']}` runtime: per "
             f"label the lowest score at which precision reaches {chosen_on['target_precision']:g} (a detection "
             f"counts when it overlaps an object of its label by IoU {chosen_on['iou']:g}), never below "
             f"{chosen_on['floor']:g}. Pre-annotation, `cvat_argo.cvat_function` and the nuclio bundle use them "
             f"unless a threshold is given; `{artifacts.THRESHOLDS}` has the details.", "",
             f"| label | threshold | precision | recall | objects | at {chosen_on['compared_at']:g}: "
             "precision / recall | note |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, item in thresholds["labels"].items():
        at = item["at_default"]
        note = "" if item["target_reached"] else item["reason"]
        lines.append(f"| {name} | {item['threshold']:g} | {rate(item['precision'])} | {rate(item['recall'])} | "
                     f"{item['support']} | {rate(at['precision'])} / {rate(at['recall'])} | {note} |")
    return [*lines, ""]


def model_card(manifest: dict[str, Any], metrics: dict[str, Any], dataset: dict[str, Any],
               test: dict[str, Any], thresholds: dict[str, Any] | None = None) -> str:
    lines = [f"# {manifest['model']}", "", f"Model Garden experiment `{manifest['experiment']}` "
             f"({manifest['architecture']}), input {manifest['input_size']} x {manifest['input_size']} px, "
             f"trained to step {manifest['source']['step']}.", "",
             f"Arguments: `{manifest.get('arguments') or '(defaults)'}`", "",
             "Labels: " + ", ".join(f"{i} {name}" for i, name in enumerate(manifest["labels"], 1)), ""]
    images = dataset.get("images", {})
    if images:
        lines += ["## Dataset", "", "| split | images |", "|---|---:|"]
        lines += [f"| {split} | {count} |" for split, count in images.items()] + [""]
    final = metrics.get("final") or {}
    lines += ["## Metrics (validation split)", ""]
    if final:
        lines += ["| metric | value |", "|---|---:|"] + [
            f"| {key} | {coco_metric(value)} |" for key, value in final.items() if isinstance(value, (int, float))]
        if any(isinstance(value, (int, float)) and value < 0 for value in final.values()):
            lines += ["", f"{NOT_MEASURED}: the validation split has no objects of that kind (COCO writes -1)."]
    else:
        lines.append("No evaluation was recorded.")
    if "training_seconds" in metrics:
        lines += ["", f"Training took {metrics['training_seconds'] / 60:.1f} min "
                      f"({metrics.get('total_steps', '?')} steps, global batch {metrics.get('global_batch', '?')})."]
    lines += [""]
    if thresholds:
        lines += threshold_section(thresholds)
    lines += ["## Exports", "", "| file | size |", "|---|---:|"]
    sizes: dict[str, int] = {}
    for entry in manifest["exports"]:
        top = entry["file"].split("/")[0]
        sizes[top] = sizes.get(top, 0) + entry["bytes"]
    lines += [f"| {name}{'/' if name == artifacts.SAVED_MODEL_DIR else ''} | {_human(size)} |"
              for name, size in sizes.items()]
    lines += ["", "Runtimes: " + ", ".join(f"`{r}`" for r in manifest["runtimes"]) + "."]
    if not manifest["tflite"]["available"]:
        lines += ["", f"No TFLite export: {manifest['tflite']['reason']}."]
    lines += ["", "Boxes from every runtime are in the pixels of the image passed in; classes are 1-based label ids.",
              "", "## Self-test", "", f"{len(test['images'])} validation images, the trained checkpoint against each "
              f"export (detections scoring {test['score_floor']} or more):", "",
              "| runtime | result | detections compared |", "|---|---|---:|"]
    lines += [f"| {runtime} | {'ok' if item['ok'] else 'MISMATCH'} | {item['compared']} |"
              for runtime, item in test["runtimes"].items()]
    if not test.get("compared_detections"):
        lines += ["", f"**Warning: the self-test compared no detections.** Nothing scored {test['score_floor']} "
                      f"or more on the {len(test['images'])} images, so the test shows that every export loads and "
                      "runs, not that it finds what the trained model finds. An undertrained model does this: "
                      "train longer, or check the validation images and their labels."]
    return "\n".join(lines) + "\n"


def optional_json(path: Path) -> dict[str, Any]:
    """A summary the card shows when there is one: {} for a missing or unreadable file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}

