"""The SavedModel export: Model Garden's ``image_tensor`` module, wrapped so boxes come in original pixels.

Also the save settings the TFLite export shares (no custom gradients, no per-layer Keras traces)
and the serving signature's input name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engines import artifacts
from .inputs import TrainedModel

INPUT_NAME = "images"


def _original_pixels_module_class() -> type:
    """Model Garden's DetectionModule, with boxes mapped back to the original image (trap 6).

    Model Garden returns ``detection_boxes`` in the frame of its resized, padded input; the mapping
    is in ``image_info`` ([[h, w], [scaled h, scaled w], [y scale, x scale], [y offset, x offset]]).
    Doing it inside the signature makes the SavedModel self-contained: any caller of
    ``serving_default`` gets boxes in the pixels of the images it passed.
    """
    import tensorflow as tf
    from official.vision.serving import detection

    class OriginalPixelsDetectionModule(detection.DetectionModule):
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            outputs = dict(super().serve(images))
            info = outputs["image_info"]
            scale = tf.tile(info[:, 2:3, :], [1, 1, 2])
            offset = tf.tile(info[:, 3:4, :], [1, 1, 2])
            size = tf.tile(info[:, 0:1, :], [1, 1, 2])
            boxes = (outputs["detection_boxes"] + offset) / scale
            outputs["detection_boxes"] = tf.clip_by_value(boxes, 0.0, size)
            outputs["detection_classes"] = tf.cast(outputs["detection_classes"], tf.int32)
            outputs["num_detections"] = tf.cast(outputs["num_detections"], tf.int32)
            return outputs

    return OriginalPixelsDetectionModule


def save_options() -> Any:
    """Serving needs no gradients: not saving the custom-gradient functions makes the export faster."""
    import tensorflow as tf

    return tf.saved_model.SaveOptions(experimental_custom_gradients=False)


def without_layer_traces() -> Any:
    """Keras would also trace and save every layer's call function (for reloading as Keras objects,
    which serving never does): most of the export time. The serving signature is traced as before."""
    from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope

    return keras_option_scope(save_traces=False, in_tf_saved_model_scope=False)


def export_saved_model(config: Any, model: TrainedModel, out: Path) -> dict[str, Any]:
    """``out/saved_model`` (trap 5: the subdir, or Model Garden writes into ``out`` itself) + ``params.yaml``."""
    import tensorflow as tf
    from official.vision.serving import export_saved_model_lib

    size = [model.input_size, model.input_size]
    module = _original_pixels_module_class()(params=config, batch_size=None, input_image_size=size,
                                             input_type="image_tensor", input_name=INPUT_NAME)
    with without_layer_traces():
        export_saved_model_lib.export_inference_graph(
            input_type="image_tensor", batch_size=None, input_image_size=size, params=config,
            checkpoint_path=str(model.checkpoint), export_dir=str(out), export_module=module,
            export_saved_model_subdir=artifacts.SAVED_MODEL_DIR, save_options=save_options())
    signature = tf.saved_model.load(str(out / artifacts.SAVED_MODEL_DIR)).signatures["serving_default"]
    (input_name, input_spec), = signature.structured_input_signature[1].items()
    outputs = {name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
               for name, spec in signature.structured_outputs.items()}
    mapping = {"boxes": "detection_boxes", "scores": "detection_scores", "classes": "detection_classes",
               "count": "num_detections"}
    if "detection_masks" in outputs:
        mapping["masks"] = "detection_masks"
    return {
        "name": "serving_default",
        "input": {"name": input_name, "dtype": input_spec.dtype.name, "shape": input_spec.shape.as_list(),
                  "description": "a batch of RGB images of one size, any size"},
        "outputs": mapping,
        "output_specs": outputs,
        "box_format": "ymin, xmin, ymax, xmax in pixels of the input images (not normalised, not the model's "
                      "resized frame)",
        "classes": "1-based label ids: labels[class - 1]",
        "padding": "slots past num_detections are padding",
    }

