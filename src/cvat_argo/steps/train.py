"""train: a Model Garden detector trained on the dataset artifact, resumable, evaluated every epoch.

``python -m cvat_argo.steps.train --model M [--model-spec JSON] --args "epochs=..,batch_size=.."
--dataset DIR --base-model DIR [--resume-key KEY] --out DIR [--override key=value ...]``

``num_clones`` GPUs train through MirroredStrategy with mixed precision; with no GPU it says so
once and trains on the CPU. Checkpoints are written into ``--out`` every epoch (or
``--checkpoint-every-steps``) and, with a store configured, copied to ``--resume-key`` as they
appear: a restarted step restores them and continues to the same total step count. Outputs:
checkpoints, ``params.yaml``, TensorBoard events, ``metrics.json`` (COCO AP, AP50, AP75, per label),
``training.png`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engines import artifacts
from ..entry import run_tensorflow_step
from ..errors import CvatArgoError, DatasetError
from ..progress import emit
from ..request.catalog import entry_from_parameters
from ..request.spec import Arguments
from ..storage.store import store_from_env


def base_checkpoint(base_model: Path | None) -> dict[str, Any]:
    """build_experiment's arguments for the pull stage's checkpoint: where it is, what it restores, its labels."""
    manifest = artifacts.BaseModelManifest.read_if_present(base_model) if base_model is not None else None
    if manifest is None or not manifest.checkpoint:
        return {}
    return {"init_checkpoint": str(base_model / manifest.checkpoint), "init_modules": manifest.modules,
            "checkpoint_labels": manifest.labels}


def _strategy(plan):
    from ..training.replicas import distribution_strategy

    strategy = distribution_strategy(plan.config.runtime, plan.num_clones)
    if strategy.num_replicas_in_sync > 1:
        devices = ", ".join(name.rsplit("/", 1)[-1] for name in strategy.extended.worker_devices)
        print(f"MirroredStrategy over {strategy.num_replicas_in_sync} replicas ({devices})", flush=True)
    return strategy


def train(plan, out: Path) -> None:
    """Orbit's train-and-evaluate loop; resumes by itself from the newest checkpoint in ``out``."""
    import tensorflow as tf
    from official.core import task_factory, train_lib

    from ..training import evaluation, restore
    from ..training.experiment import set_precision_policy
    from ..training.reporting import reporting_controller

    set_precision_policy(plan)
    strategy = _strategy(plan)
    with strategy.scope():
        task = task_factory.get_task(plan.config.task, logging_dir=str(out))
    # Model Garden's step functions branch on Python values only, so traced without AutoGraph they build
    # the same graphs (a branch on a tensor would fail loudly at tracing, not change the graph). It
    # spares converting some 300 functions' source: the first step and evaluation start ~4 s sooner.
    task.train_step = tf.autograph.experimental.do_not_convert(task.train_step)
    task.validation_step = tf.autograph.experimental.do_not_convert(task.validation_step)
    # Full eval batches on every replica, padding dropped before COCO: each val image counted once.
    evaluation.pad_validation(task, plan.validation_steps)
    # The base checkpoint is restored by the catalog's restore mode (Model Garden's own initialize knows
    # no 'all-but-class-head'); Orbit calls this only when the model folder has no checkpoint yet.
    task.initialize = restore.initializer(plan.restore)
    try:
        train_lib.run_experiment(distribution_strategy=strategy, task=task, mode="train_and_eval",
                                 params=plan.config, model_dir=str(out),
                                 controller_cls=reporting_controller(plan.total_steps))
    except tf.errors.ResourceExhaustedError:
        smaller = max(plan.num_clones, plan.global_batch // 2)
        raise CvatArgoError(
            f"out of memory with batch_size={plan.global_batch} ({plan.per_replica_batch} per GPU) at "
            f"input_size={plan.input_size}: lower batch_size (e.g. batch_size={smaller}) "
            "or input_size, or pick a machine type with more GPU memory"
        ) from None


def describe(plan) -> str:
    precision = plan.mixed_precision or "float32"
    return (f"{plan.epochs} epochs x {plan.steps_per_epoch} steps = {plan.total_steps} steps; global batch "
            f"{plan.global_batch} ({plan.per_replica_batch} per replica x {plan.num_clones}"
            f"{f' x {plan.workers} workers' if plan.workers > 1 else ''}); input "
            f"{plan.input_size}px; {len(plan.labels)} labels; {precision}; warm-up {plan.warmup_steps} steps")


def write_report(out: Path, plan, metrics: dict[str, Any], seconds: float, resumed_from: int) -> None:
    from ..training.metrics import plot_curves

    plot_curves(metrics, out / artifacts.TRAINING_PLOT)
    final = metrics["final"]
    resumed = f" (resumed from step {resumed_from})." if resumed_from else "."
    lines = ["# Training", "", describe(plan) + ".", "", f"Training took {seconds / 60:.1f} min{resumed}"]
    if final:
        lines += ["", "| metric | value |", "|---|---:|"] + [f"| {k} | {v:.3f} |" for k, v in final.items()]
    if metrics["per_label"]:
        lines += ["", "| label | AP | AP50 | AP75 |", "|---|---:|---:|---:|"]
        for label, values in metrics["per_label"].items():
            lines.append(f"| {label} | " + " | ".join(f"{values.get(k, float('nan')):.3f}"
                                                      for k in ("AP", "AP50", "AP75")) + " |")
    lines += ["", f"![loss and AP]({artifacts.TRAINING_PLOT})", ""]
    (out / artifacts.STAGE_REPORT).write_text("\n".join(lines), encoding="utf-8")


def latest_step(out: Path) -> int:
    steps = [int(p.name.split("-")[1].split(".")[0]) for p in out.glob("ckpt-*.index")]
    return max(steps, default=0)


def run(model: str, model_spec: str, args: str, dataset: Path, base_model: Path | None, out: Path,
        resume_key: str = "", overrides: Sequence[str] = (), eval_every_steps: int | None = None,
        checkpoint_every_steps: int | None = None, sync_every_seconds: float = 15.0) -> dict[str, Any]:
    from ..training import cluster, sync
    from ..training.experiment import build_experiment, save_config
    from ..training.metrics import summarize
    from ..training.replicas import check_devices, visible_devices

    entry = entry_from_parameters(model, model_spec)
    arguments = Arguments.parse(args)
    if not dataset.is_dir():  # before TensorFlow loads (seconds) and before --out is made
        raise DatasetError(f"--dataset {dataset} is not a folder (expected the create-dataset stage's output)")
    worker = cluster.configure()  # one of several pods (a JobSet): TF_CONFIG, before TensorFlow starts
    chief = worker is None or worker.is_chief
    publish_store = store_from_env() if worker is not None and worker.publish_key and chief else None
    if worker is not None and worker.publish_key and chief and publish_store is None:
        raise CvatArgoError(f"worker 0 of {worker.count} must copy the model to the store, but CVAT_ARGO_STORE "
                            "is not set (the cvat-argo-store ConfigMap)")
    devices = visible_devices()  # before the store and --out: a pod with too few GPUs fails at once
    check_devices(entry.name, entry.min_gpus, arguments.num_clones, devices)
    gpus = devices.gpus
    if gpus == 0:
        print("no GPU visible: training on the CPU (slow for anything but small models and inputs)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    store = store_from_env() if resume_key else None
    restored = sync.restore(store, resume_key, out) if store is not None and latest_step(out) == 0 else 0
    resumed_from = latest_step(out)
    if resumed_from:
        print(f"resuming from checkpoint ckpt-{resumed_from}" + (" (from the store)" if restored else ""), flush=True)
    plan = build_experiment(entry, arguments, dataset, model_dir=out, **base_checkpoint(base_model),
                            gpus_available=gpus, cpu_replicas=devices.cpu_replicas, overrides=overrides,
                            workers=worker.count if worker is not None else 1,
                            eval_every_steps=eval_every_steps, checkpoint_every_steps=checkpoint_every_steps)
    save_config(plan)
    artifacts.TrainedModelManifest(
        model=entry.name, model_spec=entry.model_dump(mode="json"), experiment=entry.experiment,
        labels=list(plan.labels), input_size=plan.input_size, num_classes=plan.num_classes,
        arguments=arguments.to_string(), restored=plan.restore.to_json() if plan.restore else None,
    ).write(out)
    print(f"{entry.name}: {describe(plan)}", flush=True)
    emit("building the model", resumed_from, plan.total_steps, "step")
    started = time.monotonic()
    if store is not None and chief:  # only the chief's checkpoints are the model's (training/cluster.py)
        with sync.CheckpointSync(out, store, resume_key, interval=sync_every_seconds):
            train(plan, out)
    else:
        train(plan, out)
    seconds = time.monotonic() - started
    if not chief:  # its folder holds no checkpoint and is not an output: the chief reports and publishes
        print(f"worker {worker.index} of {worker.count} finished after {seconds:.0f} s", flush=True)
        return {"model": entry.name, "worker": worker.index, "workers": worker.count,
                "total_steps": plan.total_steps, "training_seconds": round(seconds, 1)}
    metrics = summarize(out, plan.labels)
    summary = {"model": entry.name, "arguments": arguments.to_string(), "epochs": plan.epochs,
               "total_steps": plan.total_steps, "global_batch": plan.global_batch, "num_clones": plan.num_clones,
               "input_size": plan.input_size, "labels": list(plan.labels), "training_seconds": round(seconds, 1),
               "resumed_from_step": resumed_from, "final_step": latest_step(out), **metrics}
    artifacts.write_json(out / artifacts.METRICS, summary)
    write_report(out, plan, metrics, seconds, resumed_from)
    if publish_store is not None and worker is not None:  # a JobSet: no Argo executor uploads the output
        files = publish_store.put_dir(out, worker.publish_key, overwrite=True)
        print(f"published {files} files to {publish_store.uri(worker.publish_key)}", flush=True)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvat_argo.steps.train", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="")
    parser.add_argument("--model-spec", default="")
    parser.add_argument("--args", default="", help="epochs=100,batch_size=24,initial_learning_rate=0.004,num_clones=4")
    parser.add_argument("--dataset", type=Path, required=True, help="the create-dataset artifact")
    parser.add_argument("--base-model", type=Path, help="the pull-base-model artifact (none: from scratch)")
    parser.add_argument("--resume-key", default="", help="store key checkpoints are copied to and resumed from")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="expert: set a Model Garden config key, e.g. task.model.anchor.num_scales=2")
    parser.add_argument("--eval-every-steps", type=int)
    parser.add_argument("--checkpoint-every-steps", type=int)
    parser.add_argument("--sync-every-seconds", type=float, default=15.0,
                        help="how often new checkpoints are copied to the store (with --resume-key)")
    ns = parser.parse_args(argv)
    summary = run(ns.model, ns.model_spec, ns.args, ns.dataset, ns.base_model, ns.out, ns.resume_key, ns.override,
                  ns.eval_every_steps, ns.checkpoint_every_steps, ns.sync_every_seconds)
    if "worker" in summary:  # not the chief: it printed its line, the chief reports the model
        return 0
    final = summary["final"]
    print(f"trained {summary['model']} to step {summary['final_step']} in {summary['training_seconds']:.0f} s; "
          + (", ".join(f"{k} {v:.3f}" for k, v in final.items() if k in ("AP", "AP50", "AP75")) or "no evaluation"))
    return 0


if __name__ == "__main__":
    run_tensorflow_step(main)
