"""Every validation image evaluated exactly once, whatever the replica count (training/evaluation.py).

A validation split that does not fill the last global eval batch left the last replicas without images
and the evaluation crashed (``input depth must be evenly divisible by filter depth: 3 vs 16`` on 2
CPU replicas with 5 images and an eval batch of 4). The train step now pads the validation input with
padding images to full batches and the COCO evaluator drops them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("official", reason="needs the train extra (tf-models-official)")
tf = pytest.importorskip("tensorflow")

from cvat_argo.training import compat, evaluation  # noqa: E402
from cvat_argo.training.evaluation import PADDING_SOURCE_ID  # noqa: E402
from cvat_argo.training.replicas import CPU_REPLICAS_ENV  # noqa: E402
from support.tiny_dataset import write_tiny_dataset  # noqa: E402


class _Params:
    def __init__(self, is_training: bool, global_batch_size: int = 4) -> None:
        self.is_training, self.global_batch_size = is_training, global_batch_size


def _fake_build_inputs(images: int):
    """What a Model Garden task's build_inputs returns: parsed elements batched per replica, remainder kept."""

    def build_inputs(params, input_context=None):
        ids = tf.constant(np.arange(1000, 1000 + images), tf.int64)
        dataset = tf.data.Dataset.from_tensor_slices((
            tf.ones([images, 2, 2, 3]),
            {"cls_weights": tf.ones([images, 5]), "box_weights": tf.ones([images, 5]),
             "groundtruths": {"source_id": ids, "boxes": tf.ones([images, 3, 4])}},
        ))
        batch = input_context.get_per_replica_batch_size(params.global_batch_size) if input_context else 4
        return dataset.batch(batch, drop_remainder=params.is_training)

    return build_inputs


@pytest.mark.parametrize(("replicas", "batch_shapes"), [(1, [4, 4]), (2, [2, 2, 2, 2])])
def test_validation_input_is_padded_to_full_batches_of_every_image_once(replicas, batch_shapes):
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=replicas)
    build = evaluation.padded_validation_inputs(_fake_build_inputs(5), validation_steps=2)
    batches = list(build(_Params(is_training=False), input_context=context))
    assert [int(images.shape[0]) for images, _ in batches] == batch_shapes  # no partial, no empty batch
    ids = np.concatenate([labels["groundtruths"]["source_id"].numpy() for _, labels in batches])
    assert ids.tolist() == [1000, 1001, 1002, 1003, 1004] + [PADDING_SOURCE_ID] * 3
    weights = np.concatenate([labels["cls_weights"].numpy() for _, labels in batches])
    assert weights[:5].all() and not weights[5:].any()  # padding adds nothing to the validation loss
    training = list(build(_Params(is_training=True), input_context=context))  # training data: untouched
    assert sum(int(images.shape[0]) for images, _ in training) == 4


def test_orbit_passes_the_input_context_to_the_padded_inputs():
    import inspect

    build = evaluation.padded_validation_inputs(_fake_build_inputs(5), validation_steps=2)
    assert "input_context" in inspect.getfullargspec(build).args  # orbit.utils.make_distributed_dataset looks


def _step_outputs(source_ids: list[int]):
    """One evaluation step's outputs as two replicas return them: per-replica tuples; a perfect detector."""
    count = len(source_ids)
    boxes = np.tile(np.array([[[4, 4, 30, 30]]], np.float32), (count, 1, 1))
    truth = {"source_id": np.array(source_ids), "height": np.full(count, 64), "width": np.full(count, 64),
             "num_detections": np.ones((count, 1), np.int32), "boxes": boxes, "classes": np.ones((count, 1), np.int32),
             "areas": np.full((count, 1), 676.0, np.float32), "is_crowds": np.zeros((count, 1), np.int32)}
    predictions = {"source_id": np.array(source_ids), "num_detections": np.ones(count, np.int32),
                   "image_info": np.tile(np.array([[[64, 64], [64, 64], [1, 1], [0, 0]]], np.float32), (count, 1, 1)),
                   "detection_boxes": boxes, "detection_classes": np.ones((count, 1), np.int32),
                   "detection_scores": np.full((count, 1), 0.9, np.float32)}
    half = count // 2

    def split(arrays):
        return {key: (tf.constant(value[:half]), tf.constant(value[half:])) for key, value in arrays.items()}

    return split(truth), split(predictions)


def test_the_coco_evaluator_ignores_padding_images():
    """Padding images must be neither images with missed objects nor sources of false positives."""
    from official.vision.evaluation import coco_evaluator

    compat.apply_all()
    evaluation.patch_coco_evaluator_drops_padding()
    assert evaluation.patch_coco_evaluator_drops_padding() is False  # idempotent: patched once
    evaluator = coco_evaluator.COCOEvaluator(annotation_file=None, include_mask=False)
    truth, predictions = _step_outputs([1000, 1001, 1002, PADDING_SOURCE_ID])
    # a whole step of padding, with confident detections that would be false positives
    padding_truth, padding_predictions = _step_outputs([PADDING_SOURCE_ID] * 2)
    padding_truth["num_detections"] = tuple(tf.zeros_like(n) for n in padding_truth["num_detections"])
    evaluator.update_state(truth, predictions)
    evaluator.update_state(padding_truth, padding_predictions)
    ids = np.concatenate(evaluator._groundtruths["source_id"]).tolist()
    predicted = np.concatenate(evaluator._predictions["source_id"]).tolist()
    assert sorted(ids) == sorted(predicted) == [1000, 1001, 1002]
    assert evaluator.result()["AP"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- through the train step

#: Runs the train stage's ``main`` on 2 CPU replicas, then evaluates its last checkpoint again on one
#: device through Model Garden's own eval mode, with the train step's padding. It records what each
#: COCO evaluation saw: the source ids of its ground-truth and prediction rows, and its AP.
_DRIVER = r"""
import json, sys
from pathlib import Path
import numpy as np
import tensorflow as tf
from official.vision.evaluation import coco_evaluator

record, out, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
evaluations = []
original = coco_evaluator.COCOEvaluator.evaluate

def evaluate(self):
    ids = lambda rows: sorted(int(i) for batch in rows["source_id"] for i in np.reshape(batch, (-1,)))
    seen = {"truth": ids(self._groundtruths), "predicted": ids(self._predictions)}
    rows = zip(np.concatenate(self._predictions["source_id"]), np.concatenate(self._predictions["detection_scores"]))
    seen["scores"] = {str(int(i)): float(np.sum(s)) for i, s in rows}  # the detections, image by image
    metrics = original(self)
    evaluations.append({**seen, "AP": float(metrics["AP"]), "AP50": float(metrics["AP50"])})
    return metrics

coco_evaluator.COCOEvaluator.evaluate = evaluate
tf.keras.utils.set_random_seed(3)
from cvat_argo.steps import train
code = train.main(args)
assert code == 0, code

from official.core import task_factory, train_lib
from cvat_argo.export.inputs import read_trained_model
from cvat_argo.training import evaluation
from cvat_argo.training.experiment import load_config

trained = read_trained_model(out)
config = load_config(trained.params_file, trained.entry.experiment)
strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
with strategy.scope():
    task = task_factory.get_task(config.task, logging_dir=str(out))
task.validation_step = tf.autograph.experimental.do_not_convert(task.validation_step)
evaluation.pad_validation(task, config.trainer.validation_steps)
train_lib.run_experiment(distribution_strategy=strategy, task=task, mode="eval", params=config, model_dir=str(out))
Path(record).write_text(json.dumps(evaluations))
"""


@pytest.mark.slow
def test_two_replicas_evaluate_each_of_5_validation_images_once_like_one_device(tmp_path):
    """5 val images, eval batch 4, 2 CPU replicas (the last step had 1 image for 2 replicas): ~2.5 min on 2 cores."""
    dataset = write_tiny_dataset(tmp_path / "dataset", train=4, val=5, with_masks=False)
    val_ids = list(range(1004, 1009))  # the tiny dataset numbers train, then val, from 1000
    out, record = tmp_path / "model", tmp_path / "evaluations.json"
    args = ["--model", "ssd-mobilenet-v2-small", "--args", "epochs=1,batch_size=4,input_size=128,num_clones=2",
            "--dataset", str(dataset), "--out", str(out),
            # sync BN traces for minutes on 2 cores (tests/test_multi_gpu.py); it does not touch evaluation
            "--override", "task.model.norm_activation.use_sync_bn=false",
            # keep every detection: a 1-step model scores low, and the comparison needs detections to compare
            "--override", "task.model.detection_generator.pre_nms_score_threshold=0.0"]
    env = {**{k: v for k, v in os.environ.items() if k != "CVAT_ARGO_STORE"},
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", CPU_REPLICAS_ENV: "2"}
    result = subprocess.run([sys.executable, "-c", _DRIVER, str(record), str(out), *args],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "MirroredStrategy over 2 replicas" in result.stdout

    two_replicas, one_device = json.loads(record.read_text())
    for seen in (two_replicas, one_device):  # each image once: no padding, no duplicate, none left out
        assert seen["truth"] == seen["predicted"] == val_ids, seen
    # The same checkpoint (the last step's) gives the same detections, image by image, on one device and
    # on two replicas (every detection kept: pre_nms_score_threshold=0).
    assert all(score > 0 for score in two_replicas["scores"].values()), two_replicas["scores"]
    assert one_device["scores"].keys() == two_replicas["scores"].keys()
    for image, score in two_replicas["scores"].items():
        assert one_device["scores"][image] == pytest.approx(score, rel=1e-4), image
    # AP itself is not compared: a 1-step model's AP is ~1e-4, made of near-tied low scores whose order
    # float noise between the two runs can flip. The same detections on the same images is the claim.
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["AP"] == pytest.approx(two_replicas["AP"], abs=5.1e-5)  # metrics.json: 4 decimals
