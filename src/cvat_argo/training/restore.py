"""Restoring a base checkpoint into the model a run trains, by the catalog's restore mode.

Model Garden's ``task.initialize`` knows two modes: ``'all'`` (every layer, and a checkpoint with another
class count fails on the first shape mismatch) and a list of ``backbone``/``decoder``. A COCO-trained
detector needs a third: every layer but the class head, whose shape depends on the class count and
which therefore starts fresh. This module does all four modes of
:data:`~cvat_argo.request.model_entry.RESTORE_MODES` the same way, through TensorFlow's own
object-graph matching: the modules the mode restores are handed to ``tf.train.Checkpoint`` as Model
Garden does (``model.checkpoint_items``: ``backbone``, ``decoder``, ``head`` for RetinaNet; ``rpn_head``,
``detection_head``, ``mask_head`` for Faster/Mask R-CNN), with the class-head layers cut out of the
object graph, and ``assert_existing_objects_matched`` makes every other variable come from the
checkpoint (a variable the checkpoint lacks, or one of another shape, is an error, never a silent
fresh start).

:func:`restore_plan` says, before anything is built, which modules a run restores and which start
fresh (the train stage writes it into ``model.json``); :func:`restore` does it and reports variable by
variable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cvat_argo.errors import ArgumentError
from cvat_argo.request.model_entry import RESTORE_MODES

if TYPE_CHECKING:
    import tf_keras
    from official.core.config_definitions import ExperimentConfig

log = logging.getLogger(__name__)

#: Model Garden's own value of ``task.init_checkpoint_modules`` for each mode: what its ``initialize``
#: would restore without us, written into ``params.yaml``. 'all-but-class-head' has no Model Garden
#: equivalent; its nearest safe subset is the backbone and decoder.
MODEL_GARDEN_MODULES: dict[str, str | list[str]] = {
    "backbone": "backbone", "backbone+decoder": ["backbone", "decoder"],
    "all-but-class-head": ["backbone", "decoder"], "all": "all",
}


@dataclass(frozen=True)
class RestorePlan:
    """What a run restores from its base checkpoint (paths in the checkpoint's object graph)."""

    mode: str  # one of RESTORE_MODES
    checkpoint: str
    restored: tuple[str, ...]  # modules restored, each whole but the paths in ``fresh`` below it
    fresh: tuple[str, ...]  # modules and layers that start from their initializers

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "checkpoint": self.checkpoint, "restored": list(self.restored),
                "fresh": list(self.fresh)}


@dataclass(frozen=True)
class RestoreReport:
    """What :func:`restore` did, variable by variable (Keras variable names)."""

    plan: RestorePlan
    restored: tuple[str, ...]
    fresh: tuple[str, ...]

    def summary(self) -> str:
        fresh = ", ".join(self.plan.fresh) or "nothing"
        return (f"restored {len(self.restored)} variables ({', '.join(self.plan.restored)}) from "
                f"{self.plan.checkpoint} ({self.plan.mode}); {len(self.fresh)} start fresh ({fresh})")


def checkpoint_modules(config: ExperimentConfig) -> tuple[str, ...]:
    """The ``model.checkpoint_items`` names of the model ``config`` builds, without building it."""
    model = config.task.model
    decoder = () if model.decoder.type in (None, "identity") else ("decoder",)
    if hasattr(model, "head"):  # RetinaNet
        return ("backbone", *decoder, "head")
    masks = ("mask_head",) if model.include_mask else ()
    return ("backbone", *decoder, "rpn_head", "detection_head", *masks)


def class_head(config: ExperimentConfig) -> tuple[str, ...]:
    """Paths (``*``: any child) of the layers whose shape depends on the class count."""
    model = config.task.model
    if hasattr(model, "head"):  # RetinaNet: classes x anchors scores per location
        return ("head/_classifier",)
    paths = ["detection_head/*/_classifier"]  # softmax over background + classes
    if not model.detection_head.class_agnostic_bbox_pred:
        paths.append("detection_head/*/_box_regressor")  # 4 numbers per class
    if model.include_mask and not model.mask_head.class_agnostic:
        paths.append("mask_head/_mask_regressor")  # one mask per class
    return tuple(paths)


def restore_plan(config: ExperimentConfig, mode: str) -> RestorePlan | None:
    """Which modules ``mode`` restores into the model ``config`` builds; None when there is no checkpoint."""
    checkpoint = config.task.init_checkpoint
    if not checkpoint:
        return None
    if mode not in RESTORE_MODES:
        raise ArgumentError(f"restore mode {mode!r} is not one of {', '.join(RESTORE_MODES)}")
    modules = checkpoint_modules(config)
    if mode == "backbone":
        chosen = ("backbone",)
    elif mode == "backbone+decoder":
        chosen = tuple(m for m in modules if m in ("backbone", "decoder"))
    else:
        chosen = modules
    excluded = class_head(config) if mode == "all-but-class-head" else ()
    fresh = tuple(m for m in modules if m not in chosen) + excluded
    return RestorePlan(mode=mode, checkpoint=str(checkpoint), restored=chosen, fresh=fresh)


def _pruned(node: Any, cut: Sequence[Sequence[str]]) -> Any:
    """``node``, or a stand-in with the same checkpoint children but the paths in ``cut`` (``*``: any)."""
    import tensorflow as tf

    if not cut:
        return node
    stand_in = tf.__internal__.tracking.AutoTrackable()
    for name, child in tf.train.TrackableView.children(node).items():
        if any(len(path) == 1 and path[0] in (name, "*") for path in cut):
            continue
        deeper = [path[1:] for path in cut if len(path) > 1 and path[0] in (name, "*")]
        stand_in._track_trackable(_pruned(child, deeper), name=name)  # the same name: matched by the checkpoint
    return stand_in


def _variables(root: Any) -> list[Any]:
    import tensorflow as tf

    return [node for node in tf.train.TrackableView(root).descendants() if isinstance(node, tf.Variable)]


def restore(model: tf_keras.Model, plan: RestorePlan) -> RestoreReport:
    """Restore ``plan``'s modules of ``model`` from its checkpoint; every other variable keeps its initial value.

    Raises :class:`~cvat_argo.errors.ArgumentError` when the checkpoint does not fit: a restored variable
    it lacks or has with another shape (a checkpoint of another architecture, or 'all' with another
    class count).
    """
    import tensorflow as tf

    items: Mapping[str, Any] = getattr(model, "checkpoint_items", None) or {"model": model}
    missing = [name for name in plan.restored if name not in items]
    if missing:
        raise ArgumentError(f"restore mode {plan.mode}: the model has no {', '.join(missing)} to restore")
    cut = [path.split("/") for path in plan.fresh if "/" in path]
    root = {name: _pruned(items[name], [path[1:] for path in cut if path[0] == name]) for name in plan.restored}
    path = plan.checkpoint
    if tf.io.gfile.isdir(path):
        path = tf.train.latest_checkpoint(path) or path
    try:
        status = tf.train.Checkpoint(**root).read(path)
        status.expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        first = str(error).strip().splitlines()[0][:600] if str(error).strip() else type(error).__name__
        raise ArgumentError(
            f"base checkpoint {plan.checkpoint} does not fit this model with restore mode {plan.mode} "
            f"({', '.join(plan.restored)}): {first}. Is it a checkpoint of the same architecture, backbone and "
            "decoder? Use checkpoint.modules 'backbone' (or 'all-but-class-head' for another class count)"
        ) from None
    restored_ids = {id(variable) for name in root for variable in _variables(root[name])}
    report = RestoreReport(
        plan=plan,
        restored=tuple(v.name for v in model.variables if id(v) in restored_ids),
        fresh=tuple(v.name for v in model.variables if id(v) not in restored_ids),
    )
    log.info(report.summary())
    return report


def initializer(plan: RestorePlan | None, announce: Callable[[str], None] = print) -> Callable[[Any], None]:
    """A replacement for Model Garden's ``task.initialize(model)`` that restores by ``plan``.

    Orbit calls it once, when the model folder holds no checkpoint of its own (a resumed run restores
    its own checkpoint instead).
    """
    def initialize(model: Any) -> None:
        if plan is not None:
            announce(restore(model, plan).summary())

    return initialize
