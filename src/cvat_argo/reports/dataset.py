"""The dataset stage's short report: counts per split and label, box sizes, warnings, and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engines import artifacts
from .markdown import capped_section


def plot(path: Path, summary: dict[str, Any], box_sizes: list[tuple[float, float]]) -> None:
    """Objects per label and split (``summary``'s "labels" and "objects"), and every box's size."""
    from .plots import new_figure, plain_log_ticks, save_figure

    labels = summary["labels"]
    figure, (counts_axis, sizes_axis) = new_figure(ncols=2, width=11, height=4)
    offsets = {"train": -0.2, "val": 0.2}
    for split, offset in offsets.items():
        values = [summary["objects"].get(split, {}).get(name, 0) for name in labels]
        counts_axis.bar([i + offset for i in range(len(labels))], values, width=0.4, label=split)
    counts_axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    counts_axis.set_ylabel("objects")
    counts_axis.set_title("objects per label")
    counts_axis.legend()
    if box_sizes:
        sizes_axis.scatter([w for w, _ in box_sizes], [h for _, h in box_sizes], s=4, alpha=0.4)
        sizes_axis.set_xscale("log")
        sizes_axis.set_yscale("log")
        for axis in (sizes_axis.xaxis, sizes_axis.yaxis):
            plain_log_ticks(axis)
    sizes_axis.set_xlabel("box width (px)")
    sizes_axis.set_ylabel("box height (px)")
    sizes_axis.set_title("box sizes")
    save_figure(figure, path)


def write_report(out: Path, summary: dict[str, Any]) -> None:
    """``report.md``, which shows ``dataset.png`` (drawn by :func:`plot`)."""
    images = summary["images"]
    lines = [
        "# Dataset",
        "",
        f"Source: `{summary['source']}` ({summary['format']}).",
        "",
        "| | images | objects |",
        "|---|---:|---:|",
    ]
    for split in ("train", "val"):
        lines.append(f"| {split} | {images[split]} | {sum(summary['objects'].get(split, {}).values())} |")
    lines += [f"| to pre-annotate | {images['unannotated']} | |", f"| skipped | {images['skipped']} | |", ""]
    frames = summary.get("frames")
    if frames:
        lines += [f"Frames by review: {frames['ground_truth']} ground truth (trained on), {frames['awaiting_review']} "
                  f"awaiting review (machine shapes nobody reviewed: neither trained on nor pre-annotated again), "
                  f"{frames['to_pre_annotate']} to pre-annotate. Rule: {frames['rule']}.", ""]
    lines += ["| label | train | val |", "|---|---:|---:|"]
    for name in summary["labels"]:
        lines.append(f"| {name} | {summary['objects'].get('train', {}).get(name, 0)} | "
                     f"{summary['objects'].get('val', {}).get(name, 0)} |")
    boxes = summary.get("boxes") or {}
    if boxes:
        lines += ["", f"Box width median {boxes['width']['median']} px (min {boxes['width']['min']}, max "
                  f"{boxes['width']['max']}); height median {boxes['height']['median']} px. COCO size classes: "
                  + ", ".join(f"{k}: {v}" for k, v in boxes["coco_size"].items()) + "."]
    if summary["dropped_shapes"]:
        lines += ["", "Dropped shapes: " + ", ".join(f"{v} ({k})" for k, v in summary["dropped_shapes"].items()) + "."]
    if summary["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in summary["warnings"]]
    lines += capped_section("Skipped", [f"{s['item']}: {s['reason']}" for s in summary["skipped"]],
                            artifacts.DATASET_SUMMARY)
    lines += ["", f"![labels and box sizes]({artifacts.DATASET_PLOT})", ""]
    (out / artifacts.STAGE_REPORT).write_text("\n".join(lines), encoding="utf-8")
