"""The trained model as a ``cvat_sdk.auto_annotation`` detection function.

One module serves every way CVAT runs such functions::

    cvat-cli task auto-annotate TASK --function-module cvat_argo.cvat_function -p model=str:PATH_OR_S3_URI
    cvat-cli function create-native "shapes detector" --function-module cvat_argo.cvat_function -p model=str:...
    cvat-cli function run-agent FUNCTION_ID --function-module cvat_argo.cvat_function -p model=str:...
    cvat_sdk.auto_annotation.annotate_task(client, task_id, cvat_argo.cvat_function.create(model=...))

``create(model=...)`` takes the convert stage's output folder, locally or as ``s3://bucket/prefix``
(fetched once through :mod:`cvat_argo.storage.fetch` into a cache folder); ``CVAT_ARGO_MODEL`` names
it when no ``-p model=`` is given. Optional parameters: ``runtime`` (auto, tflite, tflite-fp16,
saved_model), ``threshold``, ``max_detections``.

Thresholds: the model's own, from the ``thresholds.json`` the convert stage writes (one per label,
chosen on validation data; ``{"default": 0.5, "per_label": {"person": 0.3}}``, labels must be the
model's), read by :func:`cvat_argo.inference.outputs.model_thresholds`; 0.5 for every label of a model
without one. ``-p threshold=float:`` is an explicit global threshold: it replaces them all, as
pre-annotate's ``--threshold`` does. CVAT's ``--conf-threshold`` (the context's ``conf_threshold``),
when given, replaces the default and is a floor for the per-label ones: a function must return
nothing below it.

The spec lists the model's labels with the model's own ids (1..N, as in ``labels.json``); cvat-sdk
maps them to the task's labels by name, and refuses a function label whose type differs from the
task label's (``rectangle`` vs ``polygon``), and any attribute whose input type or values differ.
So the function fits itself to the task, as the pre-annotate stage does:

* a ``rectangle`` task label gets rectangles (a Mask R-CNN polygon becomes its box), a ``polygon``
  label polygons (the mask's outline, or a box's four corners), an ``any`` label what the model
  gives (boxes, or Mask R-CNN outlines); the function declares the label with the task's type;
* a task label with a ``score`` attribute (number ``min;max;step`` with whole numbers, or text)
  gets the detection's score in it, converted as the stage's upload does
  (:func:`cvat_argo.cvat.upload.score_value`); the function declares the attribute as the task has it;
* a task label of another type (ellipse, points, mask, skeleton...) fits no detection: it is left
  out of the spec and its detections are dropped, with a warning;
* a model label the task lacks keeps the model's own type: cvat-sdk refuses it, or drops its
  shapes with ``--allow-unmatched-labels``.

cvat-sdk gives a detection function no view of the task (its context holds the frame name, the
threshold and ``conv_mask_to_poly``; the spec is read once, before any image). The task's labels
exist in one place when the spec is read: the ``TaskDataset`` that ``annotate_task`` (also behind
``cvat-cli task auto-annotate``) loaded just before. ``spec`` reads them from there, and only from
there; ``ModelFunction.fitted(labels)`` fits a function to given labels explicitly. Elsewhere (the
native-function agent, which reads the spec once for all tasks and runs ``detect`` in a worker
process) the spec is the model's own: ``rectangle`` labels for box models, ``polygon`` for Mask R-CNN,
no attributes, so that CVAT's label mapping only offers task labels the output fits.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from PIL import ImageOps

from ..engines.artifacts import ExportedModelManifest
from ..errors import CvatArgoError
from ..inference.outputs import (
    DEFAULT_THRESHOLD,
    Thresholds,
    detections_to_shapes,
    fit_to_label,
    model_thresholds,
    parse_thresholds,
)
from ..suggest import unknown_name_message
from .upload import TaskAttribute, TaskLabel, parse_labels, score_value

MODEL_ENV = "CVAT_ARGO_MODEL"
CACHE_ENV = "CVAT_ARGO_CACHE"
CACHED_MODEL = "model"  # the folder inside each cache entry (<cache>/<hash of the URI>/model)
SCORE_SPEC_ID = 1  # the score attribute's id in the spec (attribute ids are per label)
FITTING_TYPES = ("rectangle", "polygon", "any")  # task label types a box or a polygon fits

log = logging.getLogger(__name__)


def cache_root() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                      "cvat-argo")
    return Path(base) / "models"


def local_model(model: str) -> Path:
    """A local folder for ``model``: itself, or an ``s3://`` copy cached by URI (complete copies only)."""
    if not model.startswith("s3://"):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise CvatArgoError(f"model {model} is not a folder: give the convert stage's output (local or s3://)")
        return path
    from ..storage.fetch import fetch

    folder = cache_root() / hashlib.sha256(model.rstrip("/").encode()).hexdigest()[:16]
    done, cached = folder / ".complete", folder / CACHED_MODEL
    if not done.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        fetched = fetch(model.rstrip("/"), folder / "download", progress=False)
        fetched.rename(cached)
        shutil.rmtree(folder / "download", ignore_errors=True)
        done.write_text(model + "\n", encoding="utf-8")
    return cached


def _threshold(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise CvatArgoError(f"{where}: {value!r} is not a score threshold between 0 and 1")
    return float(value)


@dataclass(frozen=True)
class LabelFit:
    """How one model label goes into the task: the shape type declared and emitted, the score attribute."""

    type: str  # rectangle, polygon or any
    score: TaskAttribute | None = None


def _score_attribute(label: TaskLabel) -> TaskAttribute | None:
    """The label's ``score`` attribute when a function can fill it (cvat-sdk accepts its spec), else None."""
    attribute = label.attributes.get("score")
    if attribute is None:
        return None
    fillable = attribute.input_type in ("number", "text") and score_value(0.0, attribute) is not None
    if fillable:
        import cvat_sdk.auto_annotation as cvataa
        from cvat_sdk.attributes import attribute_value_validator

        try:
            attribute_value_validator(cvataa.attribute_spec("score", SCORE_SPEC_ID, attribute.input_type,
                                                            list(attribute.values)))
        except ValueError:  # cvat-sdk takes whole numbers only: 0;1;0.01 cannot be declared
            fillable = False
    if not fillable:
        log.warning("label %r: its score attribute (%s %s) cannot hold a score through cvat-sdk; left empty",
                    label.name, attribute.input_type, ";".join(attribute.values))
        return None
    return attribute


def fit_labels(model_labels: Sequence[str], own_type: str,
               task_labels: Mapping[str, TaskLabel] | None) -> dict[str, LabelFit | None]:
    """Each model label's fit to the task (None: the task label takes no box or polygon); the model's
    own type for labels the task lacks, and for every label when the task is unknown."""
    fits: dict[str, LabelFit | None] = {}
    for name in model_labels:
        task_label = (task_labels or {}).get(name)
        if task_label is None:
            fits[name] = LabelFit(own_type)
        elif task_label.type in FITTING_TYPES:
            fits[name] = LabelFit(task_label.type, _score_attribute(task_label))
        else:
            log.warning("label %r is a %r label in the task: no detection fits it, its detections are dropped",
                        name, task_label.type)
            fits[name] = None
    return fits


def parse_task_labels(labels: Iterable[Any] | Mapping[str, TaskLabel]) -> dict[str, TaskLabel]:
    """Task labels from cvat-sdk (``models.Label``, as ``TaskDataset.labels`` has them), from
    ``/api/labels`` JSON results, or already parsed."""
    if isinstance(labels, Mapping):
        return dict(labels)
    return parse_labels(label.to_dict() if hasattr(label, "to_dict") else label for label in labels)


def _labels_of_the_annotated_task() -> Sequence[Any] | None:
    """The task's labels when cvat-sdk's ``annotate_task`` is the one reading the spec, else None.

    It reads the spec right after loading the task as a ``TaskDataset`` (its local ``dataset``);
    nothing else gives the function the task. Only that caller is looked at.
    """
    frame = inspect.currentframe()
    try:
        for _ in range(4):  # this helper <- ModelFunction.spec <- annotate_task
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            if (frame.f_globals.get("__name__") == "cvat_sdk.auto_annotation.driver"
                    and frame.f_code.co_name == "annotate_task"):
                from cvat_sdk.datasets import TaskDataset

                dataset = frame.f_locals.get("dataset")
                return tuple(dataset.labels) if isinstance(dataset, TaskDataset) else None
        return None
    finally:
        del frame


def _has_masks(detector: Any) -> bool:
    try:
        manifest = ExportedModelManifest.read_if_present(Path(getattr(detector, "model_dir", "")))
    except CvatArgoError:
        return False
    return bool(manifest and manifest.masks)


class ModelFunction:
    """A :class:`cvat_sdk.auto_annotation.DetectionFunction` around a loaded detector.

    ``task_labels``: fit it to these task labels (see :meth:`fitted`); by default it fits itself to
    the task that ``annotate_task`` reads its spec for, and declares the model's own types elsewhere.
    """

    def __init__(self, detector: Any, *, threshold: float = DEFAULT_THRESHOLD, max_detections: int = 100,
                 per_label: Mapping[str, float] | None = None, task_labels: Any = None):
        self.detector = detector
        self.labels: tuple[str, ...] = tuple(detector.labels)
        per_label = dict(per_label or {})
        for name, value in [("threshold", threshold), *((f"threshold of {n!r}", v) for n, v in per_label.items())]:
            _threshold(value, name)
        unknown = [name for name in per_label if name not in self.labels]
        if unknown:
            raise CvatArgoError(f"threshold: {unknown_name_message('label', unknown[0], self.labels)}")
        self.threshold, self.max_detections = threshold, max_detections
        self.thresholds = Thresholds(threshold, per_label)
        self.shape_type = "polygon" if _has_masks(detector) else "rectangle"  # the model's own
        self._task_labels = None if task_labels is None else parse_task_labels(task_labels)
        self._fitted_to = self._task_labels
        self._fits = fit_labels(self.labels, self.shape_type, self._task_labels)

    def fitted(self, labels: Any) -> ModelFunction:
        """The same model, fitted to these task labels (``client.tasks.retrieve(id).get_labels()``)."""
        return ModelFunction(self.detector, threshold=self.threshold, max_detections=self.max_detections,
                             per_label=self.thresholds.per_label, task_labels=labels)

    @property
    def fits(self) -> dict[str, LabelFit | None]:
        """Per model label, how ``detect`` writes it (as the last spec read declared it)."""
        return dict(self._fits)

    @property
    def spec(self):
        import cvat_sdk.auto_annotation as cvataa

        if self._task_labels is None:  # not fitted explicitly: fit to the task being annotated, if any
            found = _labels_of_the_annotated_task()
            task = None if found is None else parse_task_labels(found)
            if task != self._fitted_to:  # annotate_task reads the spec twice: fit (and warn) once
                self._fits, self._fitted_to = fit_labels(self.labels, self.shape_type, task), task
        labels = []
        for index, name in enumerate(self.labels, 1):
            fit = self._fits[name]
            if fit is None:
                continue
            attributes = [] if fit.score is None else [
                cvataa.attribute_spec("score", SCORE_SPEC_ID, fit.score.input_type, list(fit.score.values))]
            labels.append(cvataa.label_spec(name, index, type=fit.type, attributes=attributes))
        return cvataa.DetectionFunctionSpec(labels=labels)

    def thresholds_for(self, conf_threshold: float | None) -> Thresholds:
        """CVAT's threshold, when it gives one, replaces ours as the default and is a floor for the
        per-label ones (a function must return nothing below it)."""
        return self.thresholds if conf_threshold is None else self.thresholds.floored(conf_threshold)

    def detect(self, context: Any, image: PIL.Image.Image) -> Sequence[Any]:
        """Shapes at or above the thresholds (see :meth:`thresholds_for`), fitted to the task's labels."""
        import cvat_sdk.auto_annotation as cvataa
        from cvat_sdk import models

        fits = self._fits
        thresholds = self.thresholds_for(context.conf_threshold)
        # labels the task cannot take never count against max_detections
        thresholds = Thresholds(thresholds.default, {**thresholds.per_label,
                                                     **{name: math.inf for name, fit in fits.items() if fit is None}})
        rgb = ImageOps.exif_transpose(image).convert("RGB")
        (found,) = self.detector.detect([np.asarray(rgb)])
        shapes = detections_to_shapes(found, self.labels, rgb.width, rgb.height, thresholds,
                                      max_detections=self.max_detections,
                                      polygon_labels=[n for n, f in fits.items() if f and f.type != "rectangle"])
        results = []
        for shape in shapes:
            fit = fits[shape.label]
            fitted = fit_to_label(shape, fit.type) if fit is not None else None
            if fitted is None:
                continue
            attributes = []
            value = score_value(shape.score, fit.score) if fit.score and shape.score is not None else None
            if value is not None:
                attributes.append(models.AttributeValRequest(spec_id=SCORE_SPEC_ID, value=value))
            label_id = self.labels.index(shape.label) + 1
            if fitted.kind == "polygon" and fitted.polygon:
                results.append(cvataa.polygon(label_id, [round(v, 2) for v in fitted.polygon], attributes=attributes))
            else:
                results.append(cvataa.rectangle(label_id, [round(v, 2) for v in fitted.box],  # type: ignore[union-attr]
                                                attributes=attributes))
        return results


def create(model: str | None = None, runtime: str = "auto", threshold: float | None = None,
           max_detections: int = 100) -> ModelFunction:
    """The factory ``cvat-cli ... -p model=str:PATH`` calls (``-p threshold=float:0.3`` and so on)."""
    model = model or os.environ.get(MODEL_ENV)
    if not model:
        raise CvatArgoError(f"no model: pass -p model=str:PATH_OR_S3_URI (or set {MODEL_ENV})")
    from ..inference.serving import load_detector

    folder = local_model(model)
    detector = load_detector(folder, runtime=runtime)
    labels = tuple(detector.labels)
    thresholds = model_thresholds(folder, labels)
    if threshold is not None:  # -p threshold=float: explicit, so it replaces every threshold of the model's
        thresholds = parse_thresholds([repr(_threshold(threshold, "threshold"))], labels, thresholds)
    log.info("cvat-argo: score thresholds from %s: %s", thresholds.origin, thresholds.as_dict())
    return ModelFunction(detector, threshold=thresholds.default, max_detections=max_detections,
                         per_label=thresholds.per_label)
