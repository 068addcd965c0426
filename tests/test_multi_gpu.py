"""Multi-GPU training without GPUs, and the train stage refusing more GPUs than its pod has.

The train stage picks its devices in ``cvat_argo.training.replicas``: the GPUs it sees, or, with
``CVAT_ARGO_CPU_REPLICAS=N`` and no GPU, N logical CPU devices. MirroredStrategy then runs the very
code it runs over GPUs (the global batch split per replica, synchronised batch norm, the all-reduce),
which these tests exercise through the stage's own ``main`` in fresh processes (the CPU can only be
split before TensorFlow initialises).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cvat_argo.engines import artifacts
from cvat_argo.engines.argo import build_workflow_template
from cvat_argo.errors import ArgumentError
from cvat_argo.request.spec import TrainingRequest
from cvat_argo.training.replicas import CPU_REPLICAS_ENV, Devices, check_devices, cpu_replicas_requested
from support.tiny_dataset import write_tiny_dataset


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    for name in ("CVAT_ARGO_STORE", CPU_REPLICAS_ENV):
        env.pop(name, None)
    return {**env, **extra}


# ----------------------------------------------------------------------------- refusing too few GPUs


@pytest.mark.parametrize(("model", "min_gpus", "num_clones", "devices", "message"), [
    ("frcnn-nas-coco", 2, None, Devices(gpus=1),
     "model frcnn-nas-coco needs at least 2 GPUs (min_gpus) but this pod sees 1"),
    ("frcnn-nas-coco", 2, None, Devices(gpus=0, cpu_replicas=4), "needs at least 2 GPUs (min_gpus) but this pod sees 0"),
    ("frcnn-nas-coco", 2, 1, Devices(gpus=4), "needs at least 2 GPUs (min_gpus) but num_clones=1"),
    ("frcnn-res50-coco", 0, 4, Devices(gpus=2),
     "num_clones=4 but this pod sees 2 GPU(s): request 4 GPUs (the gpus parameter) or lower num_clones"),
    ("frcnn-res50-coco", 0, 2, Devices(gpus=0), "num_clones=2 but this pod sees no GPU"),
    ("frcnn-res50-coco", 0, 3, Devices(gpus=0, cpu_replicas=2), f"{CPU_REPLICAS_ENV} gives 2 CPU replicas"),
])
def test_more_gpus_than_the_pod_sees_is_refused(model, min_gpus, num_clones, devices, message):
    with pytest.raises(ArgumentError) as raised:
        check_devices(model, min_gpus, num_clones, devices)
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(("min_gpus", "num_clones", "devices"), [
    (0, None, Devices(gpus=0)),  # the CPU quickstart
    (0, 1, Devices(gpus=0)),
    (2, None, Devices(gpus=2)),
    (2, 2, Devices(gpus=8)),
    (0, 2, Devices(gpus=0, cpu_replicas=2)),  # the test stand-in for two GPUs
])
def test_what_the_pod_has_is_accepted(min_gpus, num_clones, devices):
    check_devices("m", min_gpus, num_clones, devices)


def test_cpu_replicas_setting_is_checked():
    assert cpu_replicas_requested({}) == 1
    assert cpu_replicas_requested({CPU_REPLICAS_ENV: "2"}) == 2
    for bad in ("0", "two", "-1", "17"):
        with pytest.raises(ArgumentError, match=CPU_REPLICAS_ENV):
            cpu_replicas_requested({CPU_REPLICAS_ENV: bad})


def _template_train_command(machine: str, parameters: dict[str, str], dataset: Path, out: Path) -> list[str]:
    """The train container of the rendered WorkflowTemplate, its parameters filled in as Argo would."""
    template = build_workflow_template(TrainingRequest.create(task_id=1, machine=machine)).to_dict()
    defaults = {p["name"]: p.get("value", "") for p in template["spec"]["arguments"]["parameters"]}
    values = {**defaults, **parameters}
    container = next(t for t in template["spec"]["templates"] if t["name"] == artifacts.TRAIN)["container"]
    paths = {"/mnt/in/dataset": str(dataset), "/mnt/out/model": str(out)}

    def fill(arg: str) -> str:
        arg = re.sub(r"\{\{inputs\.parameters\.([\w-]+)\}\}", lambda m: values[m.group(1)], arg)
        return paths.get(arg, arg.replace("{{workflow.name}}", "cvat-argo-x1y2z"))

    assert container["command"][:2] == ["python", "-m"]
    return [sys.executable, "-m", *container["command"][2:], *map(fill, container["args"])]


def test_the_train_step_refuses_a_model_that_needs_more_gpus_than_its_pod(tmp_path):
    """``argo submit --from workflowtemplate/cvat-argo-gpu-1 -p model=frcnn-nas-coco`` gets past every
    build-time check (the template cannot re-run them); the train step itself must refuse, at once."""
    dataset = write_tiny_dataset(tmp_path / "dataset", train=2, val=2, with_masks=False)
    out = tmp_path / "model"
    command = _template_train_command("gpu-1", {"model": "frcnn-nas-coco"}, dataset, out)
    assert "frcnn-nas-coco" in command
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = result.stderr.strip().splitlines()
    assert errors[-1].startswith("error: model frcnn-nas-coco needs at least 2 GPUs (min_gpus) but this pod sees 0")
    assert "Traceback" not in result.stderr
    assert not out.exists()  # refused before anything was made or fetched


def test_the_train_step_refuses_num_clones_above_the_gpus_it_sees(tmp_path):
    dataset = write_tiny_dataset(tmp_path / "dataset", train=2, val=2, with_masks=False)
    out = tmp_path / "model"
    command = [sys.executable, "-m", "cvat_argo.steps.train", "--model", "ssd-mobilenet-v2-small",
               "--args", "epochs=1,batch_size=2,num_clones=2", "--dataset", str(dataset), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: num_clones=2 but this pod sees no GPU: train on a machine type with 2 GPUs or lower num_clones")
    assert not out.exists()


# ----------------------------------------------------------------------------- MirroredStrategy on CPUs

#: Runs the train stage's own ``main`` in a fresh process. It seeds TensorFlow (the same initial
#: weights in both runs) and wraps Model Garden's RetinaNet ``train_step`` to record, as each replica
#: traces it, the replica, its device and its batch: what MirroredStrategy handed each replica.
_DRIVER = r"""
import json, sys
import tensorflow as tf
from official.vision.tasks import retinanet

seen = []
original = retinanet.RetinaNetTask.train_step

def train_step(self, inputs, model, optimizer, metrics=None):
    context = tf.distribute.get_replica_context()
    seen.append({"replica": int(tf.get_static_value(context.replica_id_in_sync_group)),
                 "batch": int(inputs[0].shape[0]), "device": tf.constant(0).device})
    return original(self, inputs, model, optimizer, metrics)

retinanet.RetinaNetTask.train_step = train_step
tf.keras.utils.set_random_seed(3)
from cvat_argo.steps import train
code = train.main(sys.argv[2:])
open(sys.argv[1], "w").write(json.dumps(seen))
sys.exit(code)
"""
#: The same 4 images in the same order in both runs: no shuffling, flipping or scale jitter.
_SAME_BATCH = ("task.train_data.shuffle_buffer_size=1", "task.train_data.parser.aug_rand_hflip=false",
               "task.train_data.parser.aug_scale_min=1.0", "task.train_data.parser.aug_scale_max=1.0")
#: Synchronised batch norm is what the plan turns on for num_clones > 1 (see the test below), but
#: tracing it under MirroredStrategy walks the graph once per all-reduce in TensorFlow's
#: custom_gradient (one per layer with compat.patch_sync_batch_norm_single_all_reduce, forward and
#: backward), and with the CPU replicas' ReductionToOneDevice each walk crosses into the other
#: replica's graph: quadratic in depth, minutes of tracing for this model on 2 cores (a CPU artefact:
#: NCCL on GPUs reduces per device and the walk stops at once). This run turns it off to stay short;
#: the BN layers then normalise each replica's half batch.
_NO_SYNC_BN = "task.model.norm_activation.use_sync_bn=false"
#: First-step loss, one device vs two replicas, relative. Measured 0.8%: each replica normalises its
#: loss by its own positive anchors (RetinaNet) and its BN statistics come from its half of the batch.
LOSS_TOLERANCE = 0.02


def _train(tmp_path: Path, name: str, dataset: Path, clones: int, *overrides: str) -> tuple[dict, list, str]:
    out, seen = tmp_path / name, tmp_path / f"{name}.json"
    args = ["--model", "ssd-mobilenet-v2-small", "--args", f"epochs=2,batch_size=4,input_size=128,num_clones={clones}",
            "--dataset", str(dataset), "--out", str(out), "--eval-every-steps", "2", "--checkpoint-every-steps", "1"]
    for override in (*_SAME_BATCH, *overrides):
        args += ["--override", override]
    env = _env(**({CPU_REPLICAS_ENV: str(clones)} if clones > 1 else {}))
    result = subprocess.run([sys.executable, "-c", _DRIVER, str(seen), *args], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / artifacts.METRICS).read_text()), json.loads(seen.read_text()), result.stdout


def test_the_plan_for_two_replicas_syncs_batch_norm_on_cpu_replicas(tmp_path):
    pytest.importorskip("official", reason="needs the train extra (tf-models-official)")
    from cvat_argo.request.catalog import load_catalog
    from cvat_argo.request.spec import Arguments
    from cvat_argo.training.experiment import build_experiment

    dataset = write_tiny_dataset(tmp_path / "dataset", train=4, val=4, with_masks=False)
    entry = load_catalog().model("ssd-mobilenet-v2-small")
    plan = build_experiment(entry, Arguments(num_clones=2, batch_size=4), dataset, model_dir=tmp_path / "m",
                            cpu_replicas=2)
    runtime = plan.config.runtime
    assert (plan.num_clones, plan.per_replica_batch) == (2, 2)
    assert plan.config.task.model.norm_activation.use_sync_bn is True  # cross-replica batch statistics
    assert (runtime.distribution_strategy, runtime.num_gpus, runtime.mixed_precision_dtype) == ("mirrored", 0, "float32")
    one = build_experiment(entry, Arguments(batch_size=4), dataset, model_dir=tmp_path / "o")
    assert one.config.runtime.distribution_strategy == "one_device"
    assert one.config.task.model.norm_activation.use_sync_bn is False
    with pytest.raises(ArgumentError, match="num_clones=2"):  # CPU replicas only where the stage made them
        build_experiment(entry, Arguments(num_clones=2, batch_size=4), dataset, model_dir=tmp_path / "x")


@pytest.mark.slow
def test_two_cpu_replicas_split_the_batch_step_together_and_match_one_device(tmp_path):
    """num_clones=2 through the train stage on two logical CPUs: ~40 s + ~60 s on 2 cores."""
    pytest.importorskip("official", reason="needs the train extra (tf-models-official)")
    import numpy as np
    import tensorflow as tf

    dataset = write_tiny_dataset(tmp_path / "dataset", train=4, val=4, with_masks=False)
    one, one_seen, _ = _train(tmp_path, "one", dataset, 1)
    two, two_seen, log = _train(tmp_path, "two", dataset, 2, _NO_SYNC_BN)

    assert "MirroredStrategy over 2 replicas (device:CPU:0, device:CPU:1)" in log
    assert "global batch 4 (2 per replica x 2)" in log
    assert {s["replica"] for s in one_seen} == {0} and {s["batch"] for s in one_seen} == {4}
    # Each replica traced the step on its own device with half of the global batch.
    replicas = {(s["replica"], s["device"].rsplit("/", 1)[-1].upper(), s["batch"]) for s in two_seen}
    assert replicas == {(0, "DEVICE:CPU:0", 2), (1, "DEVICE:CPU:1", 2)}, two_seen
    assert two["num_clones"] == 2 and two["global_batch"] == 4 and two["final_step"] == 2

    first_one = next(h["loss"] for h in one["history"] if h["step"] == 1)
    first_two = next(h["loss"] for h in two["history"] if h["step"] == 1)
    print(f"first-step loss: one device {first_one:.6f}, two CPU replicas {first_two:.6f}")
    assert first_two == pytest.approx(first_one, rel=LOSS_TOLERANCE)
    assert first_two != first_one  # two replicas really computed it (their BN saw half batches)

    # The mirrored run's checkpoint restores, variable for variable, into a one-device model.
    from official.core import task_factory

    from cvat_argo.export.inputs import read_trained_model
    from cvat_argo.training.experiment import load_config

    trained = read_trained_model(tmp_path / "one")  # built as a one-device run builds it
    config = load_config(trained.params_file, trained.entry.experiment)
    model = task_factory.get_task(config.task).build_model()
    fresh = [v.numpy() for v in model.variables]
    tf.train.Checkpoint(model=model).read(str(tmp_path / "two" / "ckpt-2")).assert_existing_objects_matched()
    restored = sum(not np.array_equal(before, v.numpy()) for before, v in zip(fresh, model.variables, strict=True))
    assert restored > len(model.variables) // 2  # the weights are the mirrored run's, not a fresh model's
