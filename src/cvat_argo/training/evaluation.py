"""Every validation image evaluated exactly once, whatever the replica count and the eval batch.

The problem: Model Garden batches the validation split per replica (``drop_remainder=False``) and
MirroredStrategy deals those batches out to the replicas in turn. When the split does not fill the
last global batch, the replicas at the end of the last step get a partial batch or nothing; a
replica with nothing runs the model on MirroredStrategy's zero-size dummy batch, which the detectors
cannot take (seen: ``input depth must be evenly divisible by filter depth: 3 vs 16`` with 2 images, a
global eval batch of 4 and 2 replicas; 5 images fail the same way). On one device the partial last
batch is evaluated, but with another shape (the step is traced a second time). Dropping the remainder
instead would silently leave images out and make the AP depend on the replica count.

The fix: the validation input is padded to exactly ``validation_steps`` full global batches with
*padding images*, and the COCO evaluator drops them before it counts anything:

* a padding image is a copy of a real parsed validation element whose ``groundtruths['source_id']``
  is :data:`PADDING_SOURCE_ID` (no real image has it: the dataset stage writes decimal source ids,
  which are never negative, and Model Garden's own id for an empty source id is -1), and whose
  RetinaNet loss weights are zero, so it adds nothing to the validation loss either;
* the COCO evaluator drops every ground-truth and prediction row with that id, after Model Garden has
  concatenated the replicas' outputs, so its images are neither images with missed objects nor
  sources of false positives: the AP is that of the real images, on 1 replica or 8.

Why not the alternatives: no eval batch that is a multiple of the replica count divides every split
size (5 images, 2 replicas); repeating real images would count their objects twice unless the
evaluator de-duplicated them anyway. Every step is a full batch on every replica, so the step has one
static shape (no retrace for a last partial batch) on one device and on many, and the two agree.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

#: ``groundtruths['source_id']`` of a padding image; rows with it never reach the COCO evaluation.
PADDING_SOURCE_ID = -2
_PATCHED_MARK = "_cvat_argo_drops_padding"


def _as_padding(images: Any, labels: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """One parsed validation element turned into a padding image (same shapes and dtypes)."""
    import tensorflow as tf

    labels = dict(labels)
    groundtruths = dict(labels["groundtruths"])
    source_id = groundtruths["source_id"]
    groundtruths["source_id"] = tf.fill(tf.shape(source_id), tf.constant(PADDING_SOURCE_ID, source_id.dtype))
    labels["groundtruths"] = groundtruths
    for key in ("cls_weights", "box_weights"):  # RetinaNet: no loss from padding (Mask R-CNN computes none)
        if key in labels:
            labels[key] = tf.nest.map_structure(tf.zeros_like, labels[key])
    return images, labels


def images_per_pipeline(global_batch: int, validation_steps: int, input_context: Any = None) -> tuple[int, int]:
    """(images one input pipeline must deliver, its per-replica batch) for ``validation_steps`` full steps."""
    if input_context is None:
        return validation_steps * global_batch, global_batch
    per_replica = input_context.get_per_replica_batch_size(global_batch)
    replicas_here = input_context.num_replicas_in_sync // input_context.num_input_pipelines
    return validation_steps * per_replica * replicas_here, per_replica


def padded_validation_inputs(build_inputs: Callable[..., Any], validation_steps: int) -> Callable[..., Any]:
    """``task.build_inputs`` whose validation dataset is exactly ``validation_steps`` full global batches.

    The real images come first, in the reader's order, then padding images (:func:`_as_padding` of the
    pipeline's first image) up to ``validation_steps`` batches; training data passes through unchanged.
    The argument must be named ``input_context``: Orbit passes it only to functions that declare it.
    """

    def build(params: Any, input_context: Any = None) -> Any:
        import tensorflow as tf

        dataset = build_inputs(params, input_context=input_context)
        if params.is_training:
            return dataset
        images, per_replica = images_per_pipeline(params.global_batch_size, validation_steps, input_context)
        real = dataset.unbatch()
        padding = real.take(1).map(_as_padding).repeat()
        dataset = real.concatenate(padding).take(images)
        return dataset.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    return build


def _drop_padding_rows(arrays: dict[str, Any] | None, keep: Any) -> dict[str, Any] | None:
    if not arrays or keep is None:
        return arrays
    return {key: value[keep] if getattr(value, "shape", ())[:1] == keep.shape else value
            for key, value in arrays.items()}


def patch_coco_evaluator_drops_padding() -> bool:
    """Make ``COCOEvaluator`` ignore padding images; True if it patched now, a no-op after that.

    Wraps ``COCOEvaluator._convert_to_numpy``, where ``update_state`` turns each step's outputs
    (a tuple per replica) into batch-first arrays: rows whose ``source_id`` is
    :data:`PADDING_SOURCE_ID` are removed from the ground truths and the predictions alike.
    """
    import numpy as np
    from official.vision.evaluation import coco_evaluator

    original: Callable[..., Any] = coco_evaluator.COCOEvaluator._convert_to_numpy
    if getattr(original, _PATCHED_MARK, False):
        return False

    @functools.wraps(original)
    def _convert_to_numpy(self: Any, groundtruths: Any, predictions: Any) -> tuple[Any, Any]:
        groundtruths, predictions = original(self, groundtruths, predictions)

        def keep(arrays: dict[str, Any] | None) -> Any:
            if not arrays or "source_id" not in arrays:
                return None
            mask = np.reshape(np.asarray(arrays["source_id"]) != PADDING_SOURCE_ID, (-1,))
            return None if mask.all() else mask

        return (_drop_padding_rows(groundtruths, keep(groundtruths)),
                _drop_padding_rows(predictions, keep(predictions)))

    setattr(_convert_to_numpy, _PATCHED_MARK, True)
    coco_evaluator.COCOEvaluator._convert_to_numpy = _convert_to_numpy
    return True


def pad_validation(task: Any, validation_steps: int) -> None:
    """Evaluate ``task`` on every validation image exactly once: pad its input, drop padding from COCO."""
    patch_coco_evaluator_drops_padding()
    task.build_inputs = padded_validation_inputs(task.build_inputs, validation_steps)
