"""Small, tested fixes for TF Model Garden 2.20 bugs we hit; each one is idempotent.

``patch_coco_groundtruth_numpy2``: the RetinaNet parser reports ``groundtruths['num_detections']`` as
``tf.shape(classes)``, a 1-element vector per image, so after batching it is ``[batch, 1]`` (the
Mask R-CNN parser reports a scalar). ``coco_utils.convert_groundtruths_to_coco_dataset`` then calls
``int()`` on a 1-element array, which NumPy deprecated in 1.25 and NumPy 2 turns into
``TypeError: only 0-dimensional arrays can be converted to Python scalars``: COCO evaluation of every
RetinaNet run fails at the end of the first evaluation. The fix flattens that one field before the
conversion; nothing else changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_PATCHED_MARK = "_cvat_argo_numpy2_patch"


def _flatten_num_detections(groundtruths: dict[str, Any]) -> dict[str, Any]:
    """``num_detections`` batches as ``[batch]`` vectors, whatever the parser's per-image shape."""
    import numpy as np

    batches = groundtruths.get("num_detections")
    if batches is None:
        return groundtruths
    fixed = dict(groundtruths)
    fixed["num_detections"] = [np.reshape(np.asarray(batch), (np.shape(batch)[0],)) for batch in batches]
    return fixed


def patch_coco_groundtruth_numpy2() -> bool:
    """Wrap ``convert_groundtruths_to_coco_dataset`` to flatten ``num_detections``; True if it patched now.

    The COCO evaluator looks the function up on the ``coco_utils`` module at call time, so replacing
    the module attribute is enough. Calling this again is a no-op.
    """
    from official.vision.evaluation import coco_utils

    original: Callable[..., Any] = coco_utils.convert_groundtruths_to_coco_dataset
    if getattr(original, _PATCHED_MARK, False):
        return False

    @functools.wraps(original)
    def convert_groundtruths_to_coco_dataset(groundtruths: dict[str, Any], label_map: Any = None) -> Any:
        return original(_flatten_num_detections(groundtruths), label_map)

    setattr(convert_groundtruths_to_coco_dataset, _PATCHED_MARK, True)
    coco_utils.convert_groundtruths_to_coco_dataset = convert_groundtruths_to_coco_dataset
    return True


# --------------------------------------------------------------------------------------------------
# Per-category COCO metrics
# --------------------------------------------------------------------------------------------------

# Rows of ``category_stats``, in the order ``COCOEvaluator._retrieve_per_category_metrics`` reads them
# (the same order as ``COCOeval.stats``): (precision or recall, IoU threshold, area, maxDets index).
_CATEGORY_ROWS = (
    ("precision", None, "all", -1), ("precision", 0.5, "all", -1), ("precision", 0.75, "all", -1),
    ("precision", None, "small", -1), ("precision", None, "medium", -1), ("precision", None, "large", -1),
    ("recall", None, "all", 0), ("recall", None, "all", 1), ("recall", None, "all", -1),
    ("recall", None, "small", -1), ("recall", None, "medium", -1), ("recall", None, "large", -1),
)


def category_stats(coco_eval: Any) -> Any:
    """``[12, num_categories]`` AP/AR per category from an accumulated ``COCOeval``, -1 where undefined.

    The same averages as ``COCOeval.summarize`` computes over all categories, kept per category.
    """
    import numpy as np

    params = coco_eval.params
    areas = list(params.areaRngLbl)
    stats = np.full((len(_CATEGORY_ROWS), len(params.catIds)), -1.0)
    for row, (kind, iou, area, max_dets) in enumerate(_CATEGORY_ROWS):
        values = coco_eval.eval[kind]  # precision: [T, R, K, A, M]; recall: [T, K, A, M]
        if iou is not None:
            values = values[np.isclose(params.iouThrs, iou)]
        values = values[..., areas.index(area), max_dets]  # precision: [T, R, K]; recall: [T, K]
        for k in range(len(params.catIds)):
            per_category = values[:, :, k] if kind == "precision" else values[:, k]
            valid = per_category[per_category > -1]
            stats[row, k] = valid.mean() if valid.size else -1.0
    return stats


def patch_coco_per_category_stats() -> bool:
    """Make ``per_category_metrics=True`` work with the open-source pycocotools; True if it patched now.

    Model Garden's ``COCOEvaluator`` reports per-category AP only ``if hasattr(coco_eval,
    'category_stats')``: an attribute that Google's internal COCO API fork sets in ``summarize()`` and
    the pycocotools on PyPI never does, so the flag silently yields nothing. This wraps
    ``COCOeval.summarize`` to set ``category_stats`` after it (box and mask evaluation; keypoint
    evaluation has other area ranges and is left alone). Calling it again is a no-op.
    """
    from pycocotools import cocoeval

    original: Callable[..., Any] = cocoeval.COCOeval.summarize
    if getattr(original, _PATCHED_MARK, False):
        return False

    @functools.wraps(original)
    def summarize(self: Any) -> None:
        original(self)
        if self.params.iouType in ("bbox", "segm") and not hasattr(self, "category_stats"):
            self.category_stats = category_stats(self)

    setattr(summarize, _PATCHED_MARK, True)
    cocoeval.COCOeval.summarize = summarize
    return True


# --------------------------------------------------------------------------------------------------
# Synchronised batch norm: one all-reduce per layer
# --------------------------------------------------------------------------------------------------


def _one_all_reduce_moments(self: Any, x: Any, reduction_axes: Any, keep_dims: bool, mask: Any = None) -> Any:
    """tf_keras' ``_sync_calculate_mean_and_var`` with the three all-reduces stacked into one.

    The same sums, counts and formulas as tf_keras 2.20; only the transport differs.
    """
    import tensorflow as tf

    with tf.name_scope("moments"):
        y = tf.cast(x, tf.float32) if x.dtype == tf.float16 else x  # fp16 cannot hold the sums
        replica_ctx = tf.distribute.get_replica_context()
        if not replica_ctx:
            return self._no_sync_calculate_mean_and_var(x, reduction_axes, keep_dims, mask=mask)
        if mask is not None:
            mask_weights = tf.expand_dims(tf.cast(mask, y.dtype, name="mask_weights"), axis=-1,
                                          name="mask_weights_broadcasted")
            y *= mask_weights
            local_count = tf.broadcast_to(mask_weights, tf.shape(y), name="count")
        else:
            local_count = tf.ones_like(y, name="count")
        local = tf.stack([tf.reduce_sum(y, axis=reduction_axes, keepdims=True),
                          tf.reduce_sum(tf.square(y), axis=reduction_axes, keepdims=True),
                          tf.reduce_sum(local_count, axis=reduction_axes, keepdims=True)])
        y_sum, y_squared_sum, count_sum = tf.unstack(replica_ctx.all_reduce(tf.distribute.ReduceOp.SUM, local))
        mean = tf.math.divide_no_nan(y_sum, count_sum)
        # var = E(x^2) - E(x)^2, which float arithmetic can leave slightly negative
        variance = tf.maximum(tf.math.divide_no_nan(y_squared_sum, count_sum) - tf.square(mean), 0.0)
        if not keep_dims:
            mean = tf.squeeze(mean, reduction_axes)
            variance = tf.squeeze(variance, reduction_axes)
        if x.dtype == tf.float16:
            return tf.cast(mean, tf.float16), tf.cast(variance, tf.float16)
        return mean, variance


def patch_sync_batch_norm_single_all_reduce() -> bool:
    """Make synchronised batch norm all-reduce once per layer, not three times; True if it patched now.

    ``norm_activation.use_sync_bn`` builds tf_keras ``BatchNormalization(synchronized=True)`` (or the
    deprecated ``SyncBatchNormalization``, the same class underneath). In training its
    ``_sync_calculate_mean_and_var`` calls ``ReplicaContext.all_reduce`` three times per layer (sum,
    sum of squares, count), and every call is a ``merge_call`` (MirroredStrategy and
    MultiWorkerMirroredStrategy use merge calls unless XLA compiles for GPUs only) wrapped in
    ``tf.custom_gradient``, whose backward pass all-reduces the gradients again. In graph mode
    ``custom_gradient`` walks the graph backwards from the reduced tensors to find the variables they
    read, stopping at the all-reduce's inputs. Whether that is cheap depends on the transport:

    * NCCL (MirroredStrategy's default on GPUs) and collective ops (MultiWorkerMirroredStrategy, and
      its RING implementation on CPUs) give each device a reduced tensor computed from its own input
      only: the walk stops at once. GPU pods do not pay the cost below.
    * In-graph reductions (``ReductionToOneDevice``, ``HierarchicalCopyAllReduce``: the CPU replicas
      of :mod:`cvat_argo.training.replicas`, or GPUs without NCCL) sum every replica's tensor on one
      device, so each walk goes on through the *other* replicas' graphs back to the input pipeline:
      per layer, forward and backward, over a graph that grows with every layer, so quadratic. This
      is what made tracing one train step of ssd-mobilenet-v2-small on two CPU replicas take minutes.

    Stacking the three statistics into one tensor makes one all-reduce (and one merge call, one
    walk, one collective on the wire, one backward all-reduce) per layer instead of three, with
    exactly the same sums and gradients (the gradient of a sum of stacked values is the stack of
    the gradients). The one tensor is also one launch order on every replica, which per-tensor
    collectives need. Calling this again is a no-op.
    """
    from tf_keras.src.layers.normalization import batch_normalization

    cls = batch_normalization.BatchNormalizationBase
    original: Callable[..., Any] = cls._sync_calculate_mean_and_var
    if getattr(original, _PATCHED_MARK, False):
        return False

    @functools.wraps(original)
    def _sync_calculate_mean_and_var(self: Any, x: Any, reduction_axes: Any, keep_dims: bool, mask: Any = None) -> Any:
        return _one_all_reduce_moments(self, x, reduction_axes, keep_dims, mask=mask)

    setattr(_sync_calculate_mean_and_var, _PATCHED_MARK, True)
    cls._sync_calculate_mean_and_var = _sync_calculate_mean_and_var
    return True


def apply_all() -> None:
    """Every fix of this module (each idempotent): what a training or evaluation run calls first."""
    patch_coco_groundtruth_numpy2()
    patch_coco_per_category_stats()
    patch_sync_batch_norm_single_all_reduce()
