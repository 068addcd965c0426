"""The convert stage and the serving runtime, on a really trained and really exported tiny model.

One SSD (RetinaNet MobileNetV2) is trained at 128 px for a few dozen steps and converted once per
session (tests/trained_model.py); the tests then check the output layout, the exports against the
trained Keras model, trap 6 (boxes in original pixels) and the self-test's failure path. The input
checks need no TensorFlow and run fast.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cvat_argo.engines import artifacts
from cvat_argo.entry import run_step
from cvat_argo.errors import ConvertError, CvatArgoError, DatasetError, SelfTestError, ServingError
from cvat_argo.export import inputs, output, self_test, tflite
from cvat_argo.export.model_card import model_card
from cvat_argo.inference import serving
from cvat_argo.steps import convert
from support.tiny_dataset import write_tiny_dataset
from support.trained_model import converted_rcnn, converted_ssd


@pytest.fixture(scope="module")
def ssd(tmp_path_factory):
    pytest.importorskip("official", reason="needs the train extra (tf-models-official)")
    return converted_ssd(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(ssd):
    """The trained Keras model from the newest checkpoint: what every export must reproduce."""
    trained = inputs.read_trained_model(ssd.model)
    config = inputs.load_export_config(trained, json.loads((ssd.converted / "model.json").read_text())["score_threshold"])
    return config, trained, self_test.ReferenceModel(config, trained.checkpoint)


@pytest.fixture(scope="module")
def detectors(ssd):
    """One detector per runtime for the module (loading a SavedModel takes seconds)."""
    return {runtime: serving.load_detector(ssd.converted, runtime) for runtime in serving.RUNTIMES}


def odd_image(dataset: Path, height: int, width: int) -> np.ndarray:
    """A validation image stretched to a non-square size other than the model's 128 x 128 input."""
    from PIL import Image

    _, image = self_test.self_test_images(dataset, 1)[0]
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


# --------------------------------------------------------------------------------------------------
# Output layout
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_convert_writes_every_export_with_digests_and_a_model_card(ssd):
    out = ssd.converted
    for name in ("saved_model/saved_model.pb", "model_fp32.tflite", "model_fp16.tflite", "tflite.json",
                 "labels.json", "model.json", "model_card.md", "self_test.json", "params.yaml"):
        assert (out / name).is_file(), name
    assert not out.with_name(out.name + ".partial").exists()
    assert not list(out.glob("tflite-export-*"))  # the intermediate TFLite SavedModel is gone
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["format"] == output.FORMAT and manifest["model"] == "ssd-mobilenet-v2-coco"
    assert manifest["labels"] == ["rectangle", "ellipse", "triangle"] and manifest["input_size"] == 128
    assert manifest["runtimes"] == ["tflite-fp32", "tflite-fp16", "saved_model"]
    assert manifest["tflite"]["available"] is True
    files = {entry["file"]: entry for entry in manifest["exports"]}
    assert {"model_fp32.tflite", "model_fp16.tflite", "tflite.json", "saved_model/saved_model.pb"} <= set(files)
    assert any(name.startswith("saved_model/variables/") for name in files)
    for name, entry in files.items():
        data = (out / name).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest(), name
    # fp16 weights: about half the fp32 file.
    assert files["model_fp16.tflite"]["bytes"] < 0.7 * files["model_fp32.tflite"]["bytes"]
    signature = manifest["saved_model"]["signature"]
    assert signature["input"] == {"name": "images", "dtype": "uint8", "shape": [None, None, None, 3],
                                  "description": signature["input"]["description"]}
    assert manifest["self_test"]["ok"] and manifest["self_test"]["compared_detections"] > 0
    card = (out / "model_card.md").read_text()
    for text in ("ssd-mobilenet-v2-coco", "epochs=20", "| train | 12 |", "AP50", "Training took",
                 "model_fp16.tflite", "`tflite-fp32`", "Self-test"):
        assert text in card, text
    spec = json.loads((out / "tflite.json").read_text())
    assert spec["input"] == {"name": "images", "dtype": "float32", "shape": [1, 128, 128, 3]}
    assert spec["normalization"]["mean"] == pytest.approx([123.675, 116.28, 103.53])
    assert set(spec["outputs"]) == {"boxes", "classes", "scores", "count"} and spec["class_offset"] == 0


@pytest.mark.slow
def test_converting_again_replaces_our_previous_output_but_nothing_else(ssd, tmp_path):
    output.check_output_folder(ssd.converted)  # an earlier convert output may be replaced
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConvertError, match="refusing to overwrite"):
        convert.run(ssd.model, ssd.dataset, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------------
# Exports against the trained model
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_saved_model_signature_gives_original_pixel_boxes_like_the_keras_model(ssd, reference):
    """A plain tf.saved_model.load caller, a non-square image of another size than the input."""
    import tensorflow as tf

    _, _, keras = reference
    image = odd_image(ssd.dataset, 150, 260)
    signature = tf.saved_model.load(str(ssd.converted / "saved_model")).signatures["serving_default"]
    outputs = signature(images=tf.constant(np.stack([image, image])))
    count = int(outputs["num_detections"][0])
    assert outputs["detection_classes"].dtype == tf.int32 and count > 0
    boxes = outputs["detection_boxes"][0, :count].numpy()  # ymin, xmin, ymax, xmax
    scores = outputs["detection_scores"][0, :count].numpy()
    np.testing.assert_allclose(outputs["detection_boxes"][1, :count].numpy(), boxes)  # batch of 2
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # some lie wholly in the padding
    boxes, scores = boxes[nonempty], scores[nonempty]
    want = keras.detect(image)
    assert len(want) == len(boxes) > 0
    np.testing.assert_allclose(scores, want.scores, atol=1e-4)
    np.testing.assert_allclose(boxes[:, [1, 0, 3, 2]], want.boxes, atol=0.05)
    assert boxes[:, 3].max() > 128  # x beyond the model's 128 px frame: original pixels
    assert (boxes[:, [1, 3]] <= 260).all() and (boxes[:, [0, 2]] <= 150).all()


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["tflite-fp32", "tflite-fp16", "saved_model"])
def test_every_runtime_reproduces_the_trained_model(ssd, reference, detectors, runtime):
    config, _, keras = reference
    detector = detectors[runtime]
    assert detector.runtime == runtime and detector.labels == ("rectangle", "ellipse", "triangle")
    images = [odd_image(ssd.dataset, 150, 260), odd_image(ssd.dataset, 200, 90)] + [
        image for _, image in self_test.self_test_images(ssd.dataset, 2)]
    found = detector.detect(images)
    compared = 0
    for image, got in zip(images, found, strict=True):
        assert got.boxes.dtype == np.float32 and got.classes.dtype == np.int32 and got.masks is None
        assert np.all(np.diff(got.scores) <= 0) and ((got.classes >= 1) & (got.classes <= 3)).all()
        want, candidates = keras.run(image)
        result = self_test.compare_runtime(config, runtime, want, candidates, got, image.shape[:2])
        assert result["ok"], result
        compared += result["matched"]
    # The comparison compared something: at least 2 detections per image. The fixture's 60 training
    # steps are not seeded, so how many detections clear the floor varies between runs (10 to 30 seen).
    assert compared >= 2 * len(images), compared
    # The self-test inside the stage said the same.
    test = json.loads((ssd.converted / "self_test.json").read_text())
    assert test["ok"] and test["runtimes"][runtime]["ok"] and test["runtimes"][runtime]["compared"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["tflite-fp32", "saved_model"])
def test_twice_the_image_gives_twice_the_boxes(ssd, detectors, runtime):
    """Trap 6: without the rescale, boxes stay in the 128 px model frame whatever the image size.

    A 256 x 160 image and its 2x pixel-repeated copy resize to exactly the same model input (bilinear
    with half-pixel centres samples the same source pixels), so the detections are the same and only
    the boxes scale.
    """
    detector = detectors[runtime]
    small = odd_image(ssd.dataset, 256, 160)
    large = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    one, two = detector.detect([small, large])
    assert len(one) > 0 and len(one) == len(two)
    np.testing.assert_allclose(two.scores, one.scores, atol=1e-5)
    np.testing.assert_allclose(two.boxes, 2 * one.boxes, atol=0.05)
    assert one.boxes[:, 3].max() > 128 or two.boxes[:, 3].max() > 256


@pytest.mark.slow
def test_tflite_preprocessing_matches_tensorflow_resize(ssd):
    import tensorflow as tf
    from official.vision.ops import preprocess_ops

    image = odd_image(ssd.dataset, 150, 260)
    ours, scale = serving.preprocess_for_tflite(image, 128)
    normalised = preprocess_ops.normalize_image(tf.cast(image, tf.float32), offset=preprocess_ops.MEAN_RGB,
                                                scale=preprocess_ops.STDDEV_RGB)
    theirs, info = preprocess_ops.resize_and_crop_image(normalised, [128, 128], padded_size=[128, 128])
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4)
    np.testing.assert_allclose(scale, info.numpy()[2], rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Self-test failure
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_self_test_catches_an_export_that_differs_from_the_checkpoint(ssd, reference, tmp_path):
    """Corrupt one weight of the reference model: every runtime now disagrees, and the stage fails."""
    config, trained, _ = reference
    tampered = self_test.ReferenceModel(config, trained.checkpoint)
    (bias,) = [weight for weight in tampered.model.head._classifier.weights if "bias" in weight.name]
    bias.assign(bias + np.linspace(-1.0, 1.0, bias.shape[0], dtype=np.float32))
    images = self_test.self_test_images(ssd.dataset, 2)
    report = self_test.self_test(config, trained, ssd.converted, images, ["tflite-fp32", "saved_model"], tampered)
    assert not report["ok"]
    failed = report["runtimes"]["saved_model"]["images"][0]
    assert failed["missing_in_export"] or failed["extra_in_export"]
    partial = tmp_path / "out.partial"
    partial.mkdir()
    with pytest.raises(SelfTestError, match=r"saved_model.*self_test.json"):
        self_test.check_self_test(report, partial)
    assert json.loads((partial / "self_test.json").read_text())["ok"] is False


# --------------------------------------------------------------------------------------------------
# Bad input (fast: checked before TensorFlow is imported)
# --------------------------------------------------------------------------------------------------


def fake_model(folder: Path, *, manifest: bool = True, params: bool = True, checkpoint: bool = True) -> Path:
    from cvat_argo.request.catalog import builtin_catalog

    folder.mkdir(parents=True)
    entry = builtin_catalog().model("ssd-mobilenet-v2-coco")
    if manifest:
        (folder / "model.json").write_text(json.dumps({
            "model": entry.name, "model_spec": entry.model_dump(mode="json"), "experiment": entry.experiment,
            "labels": ["rectangle", "ellipse", "triangle"], "input_size": 128, "num_classes": 4, "arguments": ""}))
    if params:
        (folder / "params.yaml").write_text("task: {}\n")
    if checkpoint:
        for name in ("ckpt-9.index", "ckpt-9.data-00000-of-00001", "ckpt-10.index", "ckpt-10.data-00000-of-00001"):
            (folder / name).write_bytes(b"")
    return folder


@pytest.mark.parametrize(("missing", "message"), [
    ("manifest", r"model\.json is missing"),
    ("params", r"params\.yaml is missing"),
    ("checkpoint", r"no checkpoint"),
])
def test_an_incomplete_model_folder_is_named(tmp_path, missing, message):
    model = fake_model(tmp_path / "model", **{missing: False})
    dataset = write_tiny_dataset(tmp_path / "dataset", train=1, val=1)
    with pytest.raises(ConvertError, match=message) as error:
        convert.run(model, dataset, tmp_path / "out")
    assert str(tmp_path / "model") in str(error.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_newest_checkpoint_is_by_step_number(tmp_path):
    model = fake_model(tmp_path / "model")
    prefix, step = inputs.newest_checkpoint(model)
    assert (prefix.name, step) == ("ckpt-10", 10)


def test_dataset_without_labels_or_with_other_labels_is_named(tmp_path, capsys):
    model = fake_model(tmp_path / "model")
    dataset = write_tiny_dataset(tmp_path / "dataset", train=1, val=1)
    (dataset / "labels.json").unlink()
    code = run_step(convert.main, ["--model", str(model), "--dataset", str(dataset), "--out", str(tmp_path / "o")])
    assert code == DatasetError.exit_code
    assert f"{dataset / 'labels.json'} is missing" in capsys.readouterr().err
    other = write_tiny_dataset(tmp_path / "two", train=1, val=1, num_classes=2)
    with pytest.raises(DatasetError, match=r"labels \['rectangle', 'ellipse'\] differ"):
        convert.run(model, other, tmp_path / "out")


def test_a_failed_tflite_export_process_fails_the_stage_with_its_error(tmp_path, capfd):
    """The TFLite export runs in a child process: its error reaches the log and the stage fails."""
    out = tmp_path / "out.partial"
    out.mkdir()
    export = tflite.TFLiteExportProcess(tmp_path / "no-model", out, 0.05)
    with pytest.raises(ConvertError, match=f"TFLite export .* failed with exit code {ConvertError.exit_code}"):
        export.result()
    assert f"error: {tmp_path / 'no-model'}: the model folder does not exist" in capfd.readouterr().err
    assert not (out / artifacts.TFLITE_MANIFEST).exists()


def test_load_detector_names_what_is_missing(tmp_path):
    with pytest.raises(ServingError, match="not a folder"):
        serving.load_detector(tmp_path / "nothing")
    folder = tmp_path / "converted"
    folder.mkdir()
    with pytest.raises(ServingError, match=r"model\.json is missing"):
        serving.load_detector(folder)
    (folder / "model.json").write_text(json.dumps({"format": output.FORMAT, "runtimes": ["saved_model"]}))
    with pytest.raises(ServingError, match=r"labels\.json is missing"):
        serving.load_detector(folder)
    shutil.copy(write_tiny_dataset(tmp_path / "dataset", train=1, val=1) / "labels.json", folder)
    with pytest.raises(ServingError, match=r"runtime tflite-fp32 is not available .* has: saved_model"):
        serving.load_detector(folder, "tflite")
    with pytest.raises(ServingError, match="unknown runtime 'onnx'"):
        serving.load_detector(folder, "onnx")
    assert isinstance(ServingError("x"), CvatArgoError)


def test_numpy_resize_is_tensorflows_bilinear_on_a_known_case():
    """Half-pixel centres: 4 -> 2 averages pixel pairs; 2 -> 4 interpolates at 1/4 and 3/4."""
    row = np.array([[0.0, 10.0, 20.0, 30.0]], np.float32)[:, :, None].repeat(3, axis=2)
    np.testing.assert_allclose(serving.resize_bilinear(row, 1, 2)[0, :, 0], [5.0, 25.0])
    pair = np.array([[0.0, 8.0]], np.float32)[:, :, None].repeat(3, axis=2)
    np.testing.assert_allclose(serving.resize_bilinear(pair, 1, 4)[0, :, 0], [0.0, 2.0, 6.0, 8.0])
    assert serving.letterbox_scale(150, 260, 128) == (74, 128)


def test_detections_are_sorted_clipped_and_background_dropped():
    boxes = np.array([[5, -3, 20, 40], [0, 0, 10, 10], [1, 1, 2, 2]], np.float32)  # ymin, xmin, ymax, xmax
    result = serving._finish(boxes, np.array([0.2, 0.9, 0.5]), np.array([1.0, 2.0, 0.0]), (15, 30), 3)
    np.testing.assert_array_equal(result.classes, [2, 1])
    np.testing.assert_allclose(result.scores, [0.9, 0.2])
    np.testing.assert_allclose(result.boxes, [[0, 0, 10, 10], [0, 5, 30, 15]])


# --------------------------------------------------------------------------------------------------
# R-CNN: SavedModel only
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rcnn_converts_to_saved_model_only_and_says_why_no_tflite(tmp_path_factory):
    pytest.importorskip("official", reason="needs the train extra (tf-models-official)")
    rcnn = converted_rcnn(tmp_path_factory)
    manifest = json.loads((rcnn.converted / "model.json").read_text())
    assert manifest["runtimes"] == ["saved_model"]
    assert manifest["tflite"]["available"] is False and "two-stage" in manifest["tflite"]["reason"]
    assert not list(rcnn.converted.glob("*.tflite"))
    assert "No TFLite export: Faster R-CNN is a two-stage model" in (rcnn.converted / "model_card.md").read_text()
    with pytest.raises(ServingError, match=r"tflite-fp32 is not available.*two-stage"):
        serving.load_detector(rcnn.converted, "tflite")
    detector = serving.load_detector(rcnn.converted)  # auto: the SavedModel
    assert detector.runtime == "saved_model"
    (found,) = detector.detect([odd_image(rcnn.dataset, 70, 110)])
    assert found.boxes.shape[1:] == (4,) and found.masks is None
    assert (found.boxes[:, [0, 2]] <= 110).all() and (found.boxes[:, [1, 3]] <= 70).all()


def test_the_model_card_warns_when_the_self_test_compared_nothing():
    """A self-test that compared zero detections proves little: the card says so, where people read it."""
    manifest = {"model": "m", "experiment": "e", "architecture": "retinanet", "input_size": 128,
                "source": {"step": 10}, "labels": ["a"], "exports": [{"file": "model_fp32.tflite", "bytes": 10}],
                "runtimes": ["tflite-fp32"], "tflite": {"available": True}}
    test = {"images": ["x.jpg", "y.jpg"], "score_floor": 0.3, "compared_detections": 0,
            "runtimes": {"tflite-fp32": {"ok": True, "compared": 0}}}
    card = model_card(manifest, {}, {}, test)
    assert "**Warning: the self-test compared no detections.** Nothing scored 0.3 or more on the 2 images" in card
    compared = model_card(manifest, {}, {}, {**test, "compared_detections": 4,
                                             "runtimes": {"tflite-fp32": {"ok": True, "compared": 4}}})
    assert "Warning" not in compared
