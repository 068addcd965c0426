"""Training curves and COCO metrics, read back from the TensorBoard event files Orbit writes.

The event files are the one record of a run that survives a resume (they live beside the
checkpoints), so ``metrics.json`` and the plots are rebuilt from them rather than from the last
process's memory. Per-label AP comes from Model Garden's ``Precision mAP ByCategory/<id>``
metrics (see :func:`cvat_argo.training.compat.patch_coco_per_category_stats`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engines import artifacts

LOSS_TAGS = ("total_loss", "training_loss", "loss")
COCO_TAGS = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "APs": "AP_small", "APm": "AP_medium",
             "APl": "AP_large", "ARmax100": "AR100"}
PER_LABEL_TAGS = {"Precision mAP ByCategory": "AP", "Precision mAP ByCategory@50IoU": "AP50",
                  "Precision mAP ByCategory@75IoU": "AP75"}
#: What people read where COCO evaluation writes -1: the validation split has no objects of that size or label.
NOT_MEASURED = "n/a"


def coco_metric(value: float | None) -> str:
    """A COCO AP/AR for people: three decimals, ``n/a`` for COCO's -1 (nothing of the kind to find) or none."""
    if value is None or value < 0 or value != value:
        return NOT_MEASURED
    return f"{value:.3f}"


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from every event file under ``folder`` (later writes win per step)."""
    import tensorflow as tf

    values: dict[str, dict[int, float]] = defaultdict(dict)
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        try:
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        number = float(value.simple_value)
                    elif value.HasField("tensor"):
                        array = tf.make_ndarray(value.tensor)
                        if array.size != 1:
                            continue
                        number = float(array.reshape(()))
                    else:
                        continue
                    values[value.tag][int(event.step)] = number
        except tf.errors.DataLossError:
            continue  # a file cut short by a killed process: what it holds before the cut was read
    return {tag: sorted(points.items()) for tag, points in values.items()}


def summarize(model_dir: Path, labels: Sequence[str]) -> dict[str, Any]:
    train_events, validation_events = model_dir / artifacts.TRAIN_EVENTS, model_dir / artifacts.VALIDATION_EVENTS
    train = read_scalars(train_events) if train_events.exists() else {}
    validation = read_scalars(validation_events) if validation_events.exists() else {}
    loss_tag = next((t for t in LOSS_TAGS if t in train), None)
    history: dict[int, dict[str, float]] = defaultdict(dict)
    for step, value in train.get(loss_tag, []) if loss_tag else []:
        history[step]["loss"] = value
    for step, value in train.get("learning_rate", []):
        history[step]["learning_rate"] = value
    for tag, name in COCO_TAGS.items():
        for step, value in validation.get(tag, []):
            history[step][name] = value
    per_label: dict[str, dict[str, float]] = {}
    for index, label in enumerate(labels, start=1):
        for prefix, name in PER_LABEL_TAGS.items():
            points = validation.get(f"{prefix}/{index}")
            if points:
                per_label.setdefault(label, {})[name] = round(points[-1][1], 4)
    evaluated = [step for step in sorted(history) if "AP" in history[step]]
    final = {name: round(history[evaluated[-1]][name], 4) for name in COCO_TAGS.values()
             if evaluated and name in history[evaluated[-1]]}
    return {
        "final": final,
        "per_label": per_label,
        "history": [{"step": step, **{k: round(v, 6) for k, v in history[step].items()}} for step in sorted(history)],
    }


def plot_curves(summary: dict[str, Any], path: Path) -> None:
    from ..reports.plots import new_figure, plain_log_ticks, save_figure

    figure, (loss_axis, ap_axis) = new_figure(ncols=2, width=11, height=4)
    history = summary["history"]
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    if losses:
        loss_axis.plot(*zip(*losses, strict=True))
        loss_axis.set_yscale("log")
        plain_log_ticks(loss_axis.yaxis)
    loss_axis.set_xlabel("step")
    loss_axis.set_title("training loss")
    for name in ("AP", "AP50", "AP75"):
        points = [(h["step"], h[name]) for h in history if name in h]
        if points:
            ap_axis.plot(*zip(*points, strict=True), marker="o", label=name)
    ap_axis.set_ylim(0, 1)
    ap_axis.set_xlabel("step")
    ap_axis.set_title("validation COCO AP")
    if any(name in h for h in history for name in ("AP", "AP50")):
        ap_axis.legend()
    save_figure(figure, path)
