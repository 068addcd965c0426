"""The trained model as a ``cvat_sdk.auto_annotation`` detection function.

One module serves every way CVAT runs such functions::

    cvat-cli task auto-annotate TASK --function-module cvat_argo.cvat_function -p model=str:PATH_OR_S3_URI
    cvat-cli function create-native "shapes detector" --function-module cvat_argo.cvat_function -p model=str:...
    cvat-cli function run-agent FUNCTION_ID --function-module cvat_argo.cvat_function -p model=str:...
    cvat_sdk.auto_annotation.annotate_task(client, task_id, cvat_argo.cvat_function.create(model=...))

``create(model=...)`` takes the convert stage's output folder, locally or as ``s3://bucket/prefix``
(fetched once through :mod:`cvat_argo.storage.fetch` into a cache folder); ``CVAT_ARGO_MODEL`` names
it when no ``-p model=`` is given. Optional parameters: ``runtime`` (auto, tflite, tflite-fp16,
saved_model), ``threshold`` (used when CVAT passes no ``conf_threshold``), ``max_detections``.

The spec lists the model's labels with the model's own ids (1..N, as in ``labels.json``); CVAT maps
them to the task's labels by name. Box models declare ``rectangle`` labels, Mask R-CNN ``polygon``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from PIL import ImageOps

from ..engines.artifacts import ExportedModelManifest
from ..errors import CvatArgoError
from ..inference.outputs import DEFAULT_THRESHOLD, Thresholds, detections_to_shapes

MODEL_ENV = "CVAT_ARGO_MODEL"
CACHE_ENV = "CVAT_ARGO_CACHE"
CACHED_MODEL = "model"  # the folder inside each cache entry (<cache>/<hash of the URI>/model)


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


def _has_masks(detector: Any) -> bool:
    try:
        manifest = ExportedModelManifest.read_if_present(Path(getattr(detector, "model_dir", "")))
    except CvatArgoError:
        return False
    return bool(manifest and manifest.masks)


class ModelFunction:
    """A :class:`cvat_sdk.auto_annotation.DetectionFunction` around a loaded detector."""

    def __init__(self, detector: Any, *, threshold: float = DEFAULT_THRESHOLD, max_detections: int = 100):
        if not 0 <= threshold <= 1:
            raise CvatArgoError(f"threshold {threshold} is not between 0 and 1")
        self.detector = detector
        self.labels: tuple[str, ...] = tuple(detector.labels)
        self.threshold, self.max_detections = threshold, max_detections
        self.shape_type = "polygon" if _has_masks(detector) else "rectangle"

    @cached_property
    def spec(self):
        import cvat_sdk.auto_annotation as cvataa

        return cvataa.DetectionFunctionSpec(
            labels=[cvataa.label_spec(name, index, type=self.shape_type) for index, name in enumerate(self.labels, 1)])

    def detect(self, context: Any, image: PIL.Image.Image) -> Sequence[Any]:
        """Shapes at or above ``context.conf_threshold`` (our default when CVAT gives none)."""
        import cvat_sdk.auto_annotation as cvataa

        threshold = context.conf_threshold if context.conf_threshold is not None else self.threshold
        rgb = ImageOps.exif_transpose(image).convert("RGB")
        (found,) = self.detector.detect([np.asarray(rgb)])
        shapes = detections_to_shapes(found, self.labels, rgb.width, rgb.height, Thresholds(threshold),
                                      max_detections=self.max_detections)
        results = []
        for shape in shapes:
            label_id = self.labels.index(shape.label) + 1
            if self.shape_type == "polygon":
                x0, y0, x1, y1 = shape.box  # type: ignore[misc]
                points = list(shape.polygon or (x0, y0, x1, y0, x1, y1, x0, y1))
                results.append(cvataa.polygon(label_id, [round(v, 2) for v in points]))
            else:
                results.append(cvataa.rectangle(label_id, [round(v, 2) for v in shape.box]))  # type: ignore[union-attr]
        return results


def create(model: str | None = None, runtime: str = "auto", threshold: float = DEFAULT_THRESHOLD,
           max_detections: int = 100) -> ModelFunction:
    """The factory ``cvat-cli ... -p model=str:PATH`` calls (``-p threshold=float:0.3`` and so on)."""
    model = model or os.environ.get(MODEL_ENV)
    if not model:
        raise CvatArgoError(f"no model: pass -p model=str:PATH_OR_S3_URI (or set {MODEL_ENV})")
    from ..inference.serving import load_detector

    return ModelFunction(load_detector(local_model(model), runtime=runtime), threshold=threshold,
                         max_detections=max_detections)
