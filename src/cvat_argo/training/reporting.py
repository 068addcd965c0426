"""Training progress as events: Orbit's controller, reporting each training loop and each evaluation.

Orbit knows the global step, the loop's loss and the COCO metrics, but only prints them into the
log among TensorFlow's warnings. :func:`reporting_controller` makes a ``controller_cls`` for
``train_lib.run_experiment`` that also emits them (:func:`cvat_argo.progress.emit`): ``train`` at
step N of ``total_steps`` with the loop's loss after every loop (``steps_per_loop`` is small, see
:mod:`.experiment`), ``evaluating`` while the validation split is evaluated, then ``train`` again
with its AP50. A subclass rather than Orbit actions because an action sees the loop's outputs
but not the global step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..progress import emit

TRAIN_PHASE, EVALUATE_PHASE = "train", "evaluating"
#: What the bar shows of an evaluation's output (Model Garden's COCO keys).
EVALUATION_METRICS = ("AP50",)
LOSS_KEYS = ("training_loss", "total_loss", "loss")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def loop_metrics(output: Mapping[str, Any]) -> dict[str, float]:
    """The loss of one training loop's output, as ``{"loss": value}`` (empty when it has none)."""
    loss = next((_number(output[k]) for k in LOSS_KEYS if k in output), None)
    return {} if loss is None else {"loss": loss}


def evaluation_metrics(output: Mapping[str, Any]) -> dict[str, float]:
    """The evaluation's metrics worth a glance; COCO's -1 (nothing of the kind to find) is left out."""
    values = {name: _number(output.get(name)) for name in EVALUATION_METRICS}
    return {name: value for name, value in values.items() if value is not None and value >= 0}


def reporting_controller(total_steps: int) -> type:
    """An ``orbit.Controller`` subclass that emits progress events for a run of ``total_steps`` steps."""
    import orbit

    class ReportingController(orbit.Controller):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.train_actions = (*self.train_actions, self._after_loop)
            emit(TRAIN_PHASE, self._step(), total_steps, "step", force=True)

        def _step(self) -> int:
            return int(self.global_step.numpy())

        def _after_loop(self, output: Mapping[str, Any]) -> None:
            emit(TRAIN_PHASE, self._step(), total_steps, "step", **loop_metrics(output))

        def evaluate(self, steps: int = -1) -> Any:
            emit(EVALUATE_PHASE, self._step(), total_steps, "step", force=True)
            output = super().evaluate(steps)
            emit(TRAIN_PHASE, self._step(), total_steps, "step", force=True, **evaluation_metrics(output or {}))
            return output

    return ReportingController
