"""Training benchmark: images/s of every catalog model on this machine, and what the SSD models learn.

    python benchmarks/train.py [--speed-steps 6] [--images 1000] [--steps 600] [--out benchmarks/reports]

Part 1, speed: each catalog model at a fixed small input (128 px; 256 px for the SSD models),
batch 2 (8 for SSD), built from its Model Garden experiment exactly as the train stage builds it,
trained with its compiled train step; images/s over ``--speed-steps`` steps after two warm-up steps.
On a machine with GPUs it also measures 1 GPU and num_clones = all GPUs (MirroredStrategy).

Part 2, accuracy: the train stage itself (``python -m cvat_argo.steps.train``) on a generated shapes
set (``--images`` 256x256 images, all annotated, through the create-dataset stage), for
``ssd-mobilenet-v2-small`` and ``ssd-mobilenet-v2-coco`` from scratch, with about ``--steps`` steps;
validation AP50 from its ``metrics.json``. Target: AP50 >= 0.9.

Prints a table and writes benchmarks/reports/train.md (+ .json). Numbers are measured, never typed in.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

SMALL_SIZE = {"retinanet": 256}
SMALL_RCNN = (  # fewer RoIs and proposals than COCO's, for CPU speed; backbones as in the catalog
    "task.model.roi_sampler.num_sampled_rois=64",
    "task.model.roi_generator.num_proposals=128",
    "task.model.roi_generator.test_num_proposals=128",
)

#: Mask R-CNN samples its mask targets from the RoIs above: no more than there are.
SMALL_MASKS = ("task.model.mask_sampler.num_sampled_masks=32",)


def speed(name: str, dataset: Path, work: Path, steps: int, gpus: int) -> float:
    """Images/s of the model's compiled train step (the stage's own experiment and task)."""
    import tensorflow as tf
    from official.common import distribute_utils

    from cvat_argo.request.catalog import load_catalog
    from cvat_argo.request.spec import Arguments
    from cvat_argo.training.experiment import build_experiment, build_model

    entry = load_catalog(env={}).model(name)
    size = SMALL_SIZE.get(entry.architecture, 128)
    batch = 8 if entry.architecture == "retinanet" else 2
    batch *= max(1, gpus)
    overrides = () if entry.architecture == "retinanet" else SMALL_RCNN + (SMALL_MASKS if entry.masks else ())
    plan = build_experiment(entry, Arguments(input_size=size, batch_size=batch, epochs=100,
                                             num_clones=gpus or None),
                            dataset, model_dir=work / name, gpus_available=gpus, overrides=overrides)
    if gpus:
        strategy = distribute_utils.get_distribution_strategy("mirrored", num_gpus=gpus)
    else:
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        task, model = build_model(plan)
        optimizer = task.create_optimizer(plan.config.trainer.optimizer_config, plan.config.runtime)
    inputs = iter(strategy.experimental_distribute_dataset(task.build_inputs(plan.config.task.train_data)))

    @tf.function
    def step(batch_inputs):
        strategy.run(task.train_step, args=(batch_inputs, model, optimizer))

    for _ in range(2):
        step(next(inputs))
    started = time.perf_counter()
    for _ in range(steps):
        step(next(inputs))
    tf.nest.map_structure(lambda v: v.numpy(), model.trainable_variables[:1])
    return steps * batch / (time.perf_counter() - started)


def accuracy(model: str, dataset: Path, work: Path, steps: int, train_images: int) -> dict:
    batch = 8
    epochs = max(1, math.ceil(steps / math.ceil(train_images / batch)))
    out = work / f"ap-{model}"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cvat_argo.steps.train", "--model", model,
                    "--args", f"epochs={epochs},batch_size={batch},input_size=256", "--dataset", str(dataset),
                    "--out", str(out)], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    metrics = json.loads((out / "metrics.json").read_text())
    return {"model": model, "steps": metrics["total_steps"], "epochs": epochs, "batch": batch,
            "seconds": round(time.perf_counter() - started, 1), **metrics["final"]}


def shapes_dataset(work: Path, images: int) -> tuple[Path, int]:
    from cvat_argo.data.synthetic import generate_task

    task = generate_task(work, images=images, annotated_fraction=1.0, width=256, height=256, seed=3, name="shapes")
    out = work / "dataset"
    subprocess.run([sys.executable, "-m", "cvat_argo.steps.dataset", "--source", str(task.export), "--out", str(out),
                    "--masks", "yes"],  # Mask R-CNN trains on the same records
                   check=True, stdout=subprocess.DEVNULL)
    counts = json.loads((out / "dataset.json").read_text())["images"]
    return out, counts["train"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed-steps", type=int, default=6)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--models", nargs="*", help="speed part: these models only (default: the whole catalog)")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "reports")
    ns = parser.parse_args()

    import tensorflow as tf

    from cvat_argo.request.catalog import load_catalog

    gpus = len(tf.config.list_physical_devices("GPU"))
    names = ns.models or sorted(load_catalog(env={}).models)
    with tempfile.TemporaryDirectory(prefix="cvat-argo-train-bench-") as tmp:
        work = Path(tmp)
        dataset, train_images = shapes_dataset(work, ns.images)
        speeds = []
        for name in names:
            row = {"model": name, "cpu": round(speed(name, dataset, work / "cpu", ns.speed_steps, 0), 2)}
            if gpus:
                row["gpu_1"] = round(speed(name, dataset, work / "gpu1", ns.speed_steps * 5, 1), 1)
                if gpus > 1:
                    row[f"gpu_{gpus}"] = round(speed(name, dataset, work / "gpuN", ns.speed_steps * 5, gpus), 1)
            print(row, file=sys.stderr, flush=True)
            speeds.append(row)
        results = [] if ns.skip_accuracy else [accuracy(m, dataset, work, ns.steps, train_images)
                                               for m in ("ssd-mobilenet-v2-small", "ssd-mobilenet-v2-coco")]

    columns = [k for k in speeds[0] if k != "model"]
    lines = ["| model | " + " | ".join(f"train images/s ({c.replace('_', ' ')})" for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    lines += [f"| {r['model']} | " + " | ".join(str(r[c]) for c in columns) + " |" for r in speeds]
    if results:
        lines += ["", f"Generated shapes set: {ns.images} images of 256x256 ({train_images} for training), from "
                      "scratch, the train stage as the pipeline runs it:", "",
                  "| model | steps | batch | minutes | AP | AP50 |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['model']} | {r['steps']} | {r['batch']} | {r['seconds'] / 60:.1f} | "
                  f"{r.get('AP', float('nan')):.3f} | {r.get('AP50', float('nan')):.3f} |" for r in results]
    gpu_note = f"{gpus} GPU(s)" if gpus else "no GPU (none lent to this run)"
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu_note}, TensorFlow {tf.__version__}"
    text = "\n".join(lines) + "\n"
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "train.md").write_text(f"# Training benchmark\n\nMachine: {machine}. Speed at 256 px (SSD, batch 8) "
                                     f"and 128 px (R-CNN, batch 2).\n\n{text}", encoding="utf-8")
    (ns.out / "train.json").write_text(json.dumps({"machine": machine, "speed": speeds, "accuracy": results},
                                                  indent=1), encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
