"""The train stage as the engines run it: a subprocess that writes checkpoints, metrics and a report,
and that resumes after being killed, from its own folder or, after a lost pod, from the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

pytest.importorskip("official", reason="needs the train extra (tf-models-official)")

from cvat_argo.engines import artifacts
from cvat_argo.engines.argo import build_workflow_template
from cvat_argo.request.spec import TrainingRequest
from cvat_argo.steps.train import latest_step
from cvat_argo.storage.store import minio_client
from support.fixtures_servers import s3_server  # noqa: F401
from support.tiny_dataset import LABELS, write_tiny_dataset
from support.trained_model import SMALL_MASKS, SMALL_RCNN, converted_ssd

# 48 images / batch 4 = 12 steps per epoch; 5 epochs = 60 steps, a checkpoint every 6.
ARGS = "epochs=5,batch_size=4,input_size=128"
TOTAL_STEPS = 60


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("train") / "dataset", train=48, val=4, with_masks=False)


def _command(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cvat_argo.steps.train", "--model", "ssd-mobilenet-v2-small", "--args", ARGS,
            "--dataset", str(dataset), "--out", str(out), "--checkpoint-every-steps", "6",
            "--eval-every-steps", "30", *extra]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    env.pop("CVAT_ARGO_STORE", None)
    return {**env, **(extra or {})}


def _has_checkpoint(out: Path) -> bool:
    return (out / "checkpoint").exists() and latest_step(out) > 0


def _kill_after_first_checkpoint(command: list[str], out: Path, env: dict[str, str], log: Path,
                                 ready: Callable[[], bool] | None = None) -> int:
    """Start training and SIGKILL it (no clean-up, like an evicted pod) once a checkpoint exists."""
    ready = ready or (lambda: _has_checkpoint(out))
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            if ready():
                break
            time.sleep(0.05)
        assert process.poll() is None, f"training ended before it could be killed:\n{log.read_text()[-3000:]}"
        process.send_signal(signal.SIGKILL)
        process.wait()
    return latest_step(out)


def test_newest_checkpoint_is_chosen_by_number_not_by_name(tmp_path):
    for step in (9, 10, 100, 2):
        (tmp_path / f"ckpt-{step}.index").write_bytes(b"")
    assert latest_step(tmp_path) == 100
    (tmp_path / "empty").mkdir()
    assert latest_step(tmp_path / "empty") == 0


@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint_and_stops_at_the_same_step(dataset, tmp_path):
    out = tmp_path / "model"
    killed_at = _kill_after_first_checkpoint(_command(dataset, out), out, _env(), tmp_path / "first.log")
    assert 0 < killed_at < TOTAL_STEPS

    finished = subprocess.run(_command(dataset, out), capture_output=True, text=True, env=_env(), timeout=900)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert f"resuming from checkpoint ckpt-{killed_at}" in finished.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == killed_at
    assert metrics["final_step"] == metrics["total_steps"] == TOTAL_STEPS
    assert metrics["labels"] == list(LABELS)
    # Evaluated every 30 steps (Orbit restarts that interval at the resumed step) and at the end, per label.
    evaluated = [h["step"] for h in metrics["history"] if "AP50" in h]
    assert evaluated[-1] == TOTAL_STEPS and len(evaluated) >= 2
    assert set(metrics["per_label"]) == set(LABELS)
    assert all(0.0 <= values["AP50"] <= 1.0 for values in metrics["per_label"].values())
    assert (out / "training.png").stat().st_size > 5_000
    report = (out / "report.md").read_text()
    assert f"resumed from step {killed_at}" in report and "| label | AP | AP50 | AP75 |" in report
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["experiment"] == "retinanet_mobile_coco" and manifest["num_classes"] == len(LABELS) + 1
    assert (out / "params.yaml").exists()


@pytest.mark.slow
def test_a_new_pod_resumes_from_the_checkpoints_copied_to_the_store(dataset, tmp_path, s3_server):  # noqa: F811
    client = minio_client(s3_server)
    client.make_bucket("runs")
    env = _env({**s3_server, "CVAT_ARGO_STORE": "s3://runs"})
    key = "cvat-argo/run-1/train/model"
    first = tmp_path / "pod-1" / "model"

    def stored_names() -> set[str]:
        return {obj.object_name.rsplit("/", 1)[1] for obj in client.list_objects("runs", prefix=key + "/")}

    command = _command(dataset, first, "--resume-key", key, "--sync-every-seconds", "0.5")
    killed_at = _kill_after_first_checkpoint(command, first, env, tmp_path / "first.log",
                                             ready=lambda: _has_checkpoint(first) and "checkpoint" in stored_names())
    # The sync thread copies every half second; the killed pod may not have copied its newest checkpoint.
    stored = stored_names()
    stored_steps = [int(n.split("-")[1].split(".")[0]) for n in stored if n.endswith(".index")]

    second = tmp_path / "pod-2" / "model"  # a fresh disk: the first pod's folder is gone
    finished = subprocess.run(_command(dataset, second, "--resume-key", key), capture_output=True, text=True,
                              env=env, timeout=900)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "(from the store)" in finished.stdout
    metrics = json.loads((second / "metrics.json").read_text())
    assert 0 < metrics["resumed_from_step"] <= killed_at and metrics["resumed_from_step"] in stored_steps
    assert metrics["final_step"] == TOTAL_STEPS
    # The finished run's final checkpoint is in the store too, for the next retry or a fine-tune.
    assert f"ckpt-{TOTAL_STEPS}.index" in stored_names()


def test_no_training_images_is_a_clear_error(tmp_path):
    empty = write_tiny_dataset(tmp_path / "dataset", train=0, val=2, with_masks=False)
    result = subprocess.run(_command(empty, tmp_path / "model"), capture_output=True, text=True, env=_env(),
                            timeout=300)
    assert result.returncode != 0
    assert "train" in result.stderr and str(empty) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_mask_rcnn_trains_and_evaluates_in_the_stage_loop(tmp_path):
    """The stage traces Model Garden's step functions without AutoGraph (faster start). Mask R-CNN has
    the most code in its steps (proposals, RoI sampling, mask targets), so one graph-mode train step
    and one evaluation of it show that the tracing holds for the two-stage models too."""
    from cvat_argo.steps import train

    dataset = write_tiny_dataset(tmp_path / "dataset", train=2, val=2, with_masks=True)
    summary = train.run(model="maskrcnn-res50-coco", model_spec="", args="epochs=1,batch_size=2,input_size=64",
                        dataset=dataset, base_model=None, out=tmp_path / "model", overrides=(*SMALL_RCNN, *SMALL_MASKS),
                        eval_every_steps=1, checkpoint_every_steps=1)
    assert summary["final_step"] == 1
    assert summary["history"][0]["loss"] > 0 and 0.0 <= summary["final"]["AP50"] <= 1.0
    events = b"".join(path.read_bytes() for path in (tmp_path / "model" / "train").glob("events.out.tfevents.*"))
    assert b"mask_loss" in events  # the step's summaries name the mask head's loss: masks were trained


@pytest.mark.slow
def test_the_tensorboard_sidecar_serves_the_event_files_training_writes(tmp_path_factory):
    """The sidecar served /mnt/out/model/logs, an empty folder: training writes model/train and model/validation."""
    template = build_workflow_template(TrainingRequest.create(task_id=1, machine="gpu-1")).to_dict()
    stage = next(t for t in template["spec"]["templates"] if t["name"] == artifacts.TRAIN)
    sidecar_args, step_args = stage["sidecars"][0]["args"], stage["container"]["args"]
    logdir = PurePosixPath(sidecar_args[sidecar_args.index("--logdir") + 1])
    out = PurePosixPath(step_args[step_args.index("--out") + 1])  # the pod's view of the train step's --out
    model = converted_ssd(tmp_path_factory).model  # a real train step's --out folder
    served = model / logdir.relative_to(out)
    runs = {path.parent.relative_to(served).as_posix() for path in served.rglob("events.out.tfevents.*")}
    assert {artifacts.TRAIN_EVENTS, artifacts.VALIDATION_EVENTS} <= runs, (logdir, runs)
