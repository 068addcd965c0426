"""Two workers train one model together, as the pods of a multi-node JobSet do, on 127.0.0.1.

Each worker is the JobSet pod's own commands, run as subprocesses with the pod's environment: the init
container's ``python -m cvat_argo.training.cluster fetch`` of the dataset from the store (a moto S3 on
loopback), then ``python -m cvat_argo.steps.train`` with ``CVAT_ARGO_WORKERS=2``, ``JOB_COMPLETION_INDEX``
and the workers' addresses, from which each builds its ``TF_CONFIG`` (training/cluster.py) and trains
under MultiWorkerMirroredStrategy. TensorFlow's multi-worker checkpoint rule is checked: the chief
(worker 0) writes the checkpoints into its model folder; the other worker's go to a temporary folder.
The chief then publishes the model folder under the train artifact's key, where the next stage reads it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("official", reason="needs the train extra (tf-models-official)")

from cvat_argo.engines import artifacts
from cvat_argo.steps.train import latest_step
from cvat_argo.storage.store import minio_client, store_from_env
from cvat_argo.training import cluster
from support.fixtures_servers import s3_server  # noqa: F401
from support.tiny_dataset import write_tiny_dataset

# 16 images / global batch 4 = 4 steps: 2 per replica per step on each of the 2 workers.
ARGS = "epochs=1,batch_size=4,input_size=128"
TOTAL_STEPS = 4
PREFIX, RUN = "cvat-argo", "run-mw"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
def test_two_workers_train_together_and_the_chief_writes_the_checkpoint(tmp_path, s3_server):  # noqa: F811
    minio_client(s3_server).make_bucket("runs")
    base_env = {**os.environ, **s3_server, "CVAT_ARGO_STORE": "s3://runs", "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    store = store_from_env(base_env)
    dataset_key = artifacts.artifact_key(PREFIX, RUN, artifacts.CREATE_DATASET, artifacts.DATASET)
    model_key = artifacts.artifact_key(PREFIX, RUN, artifacts.TRAIN, artifacts.MODEL)
    store.put_dir(write_tiny_dataset(tmp_path / "dataset", train=16, val=4, with_masks=False), dataset_key)

    hosts = ",".join(f"127.0.0.1:{port}" for port in _free_ports(2))
    processes, logs, outs = [], [], []
    started = time.monotonic()
    for index in range(2):
        pod = tmp_path / f"pod-{index}"  # each pod has its own disk
        env = {**base_env, cluster.WORKERS_ENV: "2", cluster.INDEX_ENV: str(index), cluster.HOSTS_ENV: hosts,
               cluster.PUBLISH_ENV: model_key}
        fetch = subprocess.run([sys.executable, "-m", "cvat_argo.training.cluster", "fetch", "--key", dataset_key,
                                "--out", str(pod / "in" / "dataset")], capture_output=True, text=True, env=env,
                               timeout=120)
        assert fetch.returncode == 0, fetch.stdout + fetch.stderr
        outs.append(pod / "out" / "model")
        logs.append((pod / "train.log").open("w"))
        command = [sys.executable, "-m", "cvat_argo.steps.train", "--model", "ssd-mobilenet-v2-small",
                   "--args", ARGS, "--dataset", str(pod / "in" / "dataset"), "--resume-key", model_key,
                   "--out", str(outs[-1]), "--checkpoint-every-steps", str(TOTAL_STEPS),
                   "--eval-every-steps", str(TOTAL_STEPS), "--sync-every-seconds", "1"]
        processes.append(subprocess.Popen(command, stdout=logs[-1], stderr=subprocess.STDOUT, env=env))
    try:
        codes = [process.wait(timeout=300) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        for log in logs:
            log.close()
    seconds = time.monotonic() - started
    texts = [(tmp_path / f"pod-{index}" / "train.log").read_text() for index in range(2)]
    assert codes == [0, 0], "\n---\n".join(text[-4000:] for text in texts)

    chief, other = outs
    # both workers built TF_CONFIG and trained the same steps together
    assert "worker 1 of 2 finished" in texts[1]
    plan = [line for line in texts[0].splitlines() if "global batch" in line]
    assert plan and "global batch 4 (2 per replica x 1 x 2 workers)" in plan[0], plan
    # TF's multi-worker checkpoint rule: one checkpoint, the chief's; the other worker's went to a temp folder
    assert latest_step(chief) == TOTAL_STEPS
    assert sorted(p.name for p in chief.glob("ckpt-*.index")) == [f"ckpt-{TOTAL_STEPS}.index"]
    assert list(other.glob("ckpt-*")) == [] and not (other / "checkpoint").exists()
    assert not (other / artifacts.METRICS).exists()  # the chief reports
    metrics = json.loads((chief / artifacts.METRICS).read_text())
    assert metrics["final_step"] == TOTAL_STEPS and metrics["global_batch"] == 4
    # published under the train artifact's key, where convert's key-only input artifact reads it
    stored = set(store.list(model_key))
    assert {f"ckpt-{TOTAL_STEPS}.index", "checkpoint", artifacts.METRICS, artifacts.MODEL_MANIFEST,
            artifacts.MODEL_PARAMS} <= {name.rsplit("/", 1)[-1] for name in stored}, sorted(stored)
    print(f"two workers: {seconds:.0f} s")
