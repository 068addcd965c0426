"""The TFLite export (fp32 and fp16) through Model Garden's TFLite path, run in a second process.

Single-stage models only: :data:`NO_TFLITE_REASON` says why the two-stage R-CNNs have none. The
child process's entry point is here too (:func:`tflite_child_main`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engines import artifacts
from ..entry import run_tensorflow_step
from ..errors import ConvertError
from ..inference import serving
from .inputs import TrainedModel, load_export_config, read_trained_model
from .saved_model import INPUT_NAME, save_options, without_layer_traces

NO_TFLITE_REASON = {
    "faster_rcnn": "Faster R-CNN is a two-stage model: Model Garden's TFLite path (nms_version 'tflite', the "
                   "TFLite_Detection_PostProcess op) covers single-stage RetinaNet heads only, not the region "
                   "proposal and ROI-align stages; serve it with the SavedModel",
    "mask_rcnn": "Mask R-CNN is a two-stage model: Model Garden's TFLite path (nms_version 'tflite', the "
                 "TFLite_Detection_PostProcess op) covers single-stage RetinaNet heads only, not the region "
                 "proposal, ROI-align and mask stages; serve it with the SavedModel",
}


def tflite_postprocessing(config: Any) -> dict[str, Any]:
    """TFLite's NMS set to do what the SavedModel's does: class-agnostic, same threshold, IoU and count.

    TFLite's fast NMS is class-agnostic and keeps the best class of each box
    (``max_classes_per_detection: 1``), which is Model Garden's ``use_class_agnostic_nms`` (see
    :func:`load_export_config`). Its per-class "regular" NMS is no alternative: measured here, it
    returned no detection at all of one of three classes that the SavedModel found with the top scores.
    """
    generator = config.task.model.detection_generator
    return {
        "use_regular_nms": False,
        "max_detections": generator.max_num_detections,
        "max_classes_per_detection": 1,
        "nms_score_threshold": generator.pre_nms_score_threshold,
        "nms_iou_threshold": generator.nms_iou_threshold,
    }


def export_tflite(config: Any, model: TrainedModel, out: Path) -> dict[str, Any]:
    """Model Garden's TFLite path: a batch-1 ``input_type='tflite'`` SavedModel, converted fp32 and fp16."""
    import copy

    from official.vision.serving import detection, export_saved_model_lib, export_tflite_lib

    config = copy.deepcopy(config)
    generator = config.task.model.detection_generator
    generator.nms_version = "tflite"
    generator.use_class_agnostic_nms = False  # Model Garden refuses it with 'tflite': the TFLite op's own is
    generator.tflite_post_processing.override(tflite_postprocessing(config), is_strict=True)
    size = [model.input_size, model.input_size]
    module = detection.DetectionModule(params=config, batch_size=1, input_image_size=size, input_type="tflite",
                                       input_name=INPUT_NAME)
    with tempfile.TemporaryDirectory(prefix="tflite-export-", dir=out) as temp, without_layer_traces():
        export_saved_model_lib.export_inference_graph(
            input_type="tflite", batch_size=1, input_image_size=size, params=config,
            checkpoint_path=str(model.checkpoint), export_dir=temp, export_module=module,
            export_saved_model_subdir=artifacts.SAVED_MODEL_DIR, save_options=save_options())
        for runtime, quant in (("tflite-fp32", None), ("tflite-fp16", "fp16")):
            flatbuffer = export_tflite_lib.convert_tflite_model(
                saved_model_dir=str(Path(temp) / artifacts.SAVED_MODEL_DIR), quant_type=quant, params=config)
            (out / artifacts.TFLITE_FILES[runtime]).write_bytes(flatbuffer)
    interpreter = serving._interpreter_class()(model_path=str(out / artifacts.TFLITE_FILES["tflite-fp32"]))
    runner = interpreter.get_signature_runner("serving_default")
    (input_name, input_details), = runner.get_input_details().items()
    output_names = set(runner.get_output_details())
    outputs = {"boxes": "detection_boxes", "classes": "detection_classes", "scores": "detection_scores",
               "count": "num_detections"}
    missing = set(outputs.values()) - output_names
    if missing:
        raise ConvertError(f"the TFLite model has outputs {sorted(output_names)}, not {sorted(missing)}")
    from official.vision.ops import preprocess_ops

    spec = {
        "signature": "serving_default",
        "input": {"name": input_name, "dtype": np.dtype(input_details["dtype"]).name,
                  "shape": [int(v) for v in input_details["shape"]]},
        "normalization": {"mean": [float(v) for v in preprocess_ops.MEAN_RGB],
                          "stddev": [float(v) for v in preprocess_ops.STDDEV_RGB],
                          "formula": "(rgb - mean) / stddev, per channel, on 0..255 RGB values"},
        "resize": {
            "method": "bilinear, half-pixel centres, no antialiasing (tf.image.resize)",
            "keep_aspect_ratio": True,
            "scaled_size": "scale = min(S / height, S / width); scaled = round(height * scale), round(width * scale)",
            "padding": "place the scaled image at the top left of an S x S input; the rest is 0 (after normalisation)",
            "reference": "official.vision.ops.preprocess_ops.resize_and_crop_image; cvat_argo.inference.serving."
                         "preprocess_for_tflite",
        },
        "outputs": outputs,
        "box_format": "ymin, xmin, ymax, xmax in model-input pixels: divide y by scaled_height / height and x by "
                      "scaled_width / width for original pixels",
        "class_offset": 0,
        "classes": "float; 1-based label ids (labels[class - 1]) after adding class_offset; 0 is background",
        "count": "entries past num_detections are garbage",
        "nms": tflite_postprocessing(config),
    }
    (out / artifacts.TFLITE_MANIFEST).write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return spec


class TFLiteExportProcess:
    """:func:`export_tflite` in a second Python process, while this one exports the SavedModel.

    Both exports are mostly single-threaded graph tracing and conversion, so on a 2-core machine
    side by side they take about as long as the slower one (the quickstart's convert stage went from
    57-61 s to 33-35 s). The child writes its files into the same ``.partial`` folder (no name
    is shared with the SavedModel export) and ends the way every TensorFlow step does
    (:func:`~cvat_argo.entry.run_tensorflow_step`); its log lines go to this step's log.
    """

    def __init__(self, model: Path, out: Path, score_threshold: float) -> None:
        import cvat_argo

        package_root = str(Path(cvat_argo.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self.out = out
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from {__name__} import tflite_child_main; tflite_child_main()",
             str(model), str(out), repr(score_threshold)], env=env)

    def result(self) -> dict[str, Any]:
        """Wait for the child; its ``tflite.json`` spec, or :class:`ConvertError` when it failed."""
        code = self.process.wait()
        if code != 0:
            raise ConvertError(f"the TFLite export (a second process) failed with exit code {code}: its error is in "
                               "the lines above")
        return json.loads((self.out / artifacts.TFLITE_MANIFEST).read_text(encoding="utf-8"))

    def stop(self) -> None:
        """Kill the child if it still runs (this step failed first); its files go with the partial folder."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def tflite_child_main() -> None:
    """Entry point of :class:`TFLiteExportProcess`'s child: ``MODEL_DIR OUT SCORE_THRESHOLD`` in ``sys.argv``."""

    def export(argv: Sequence[str] | None) -> int:
        model_dir, out, score_threshold = argv or ()
        trained = read_trained_model(Path(model_dir))
        export_tflite(load_export_config(trained, float(score_threshold)), trained, Path(out))
        return 0

    run_tensorflow_step(export, sys.argv[1:])

