"""Score thresholds chosen per label on the validation split (thresholds.json), and everything that uses them.

The choice itself is checked on hand-built detections and ground truth, where the right threshold is
known exactly. The real tiny model (trained for seconds: its thresholds may well sit at the floor)
then shows that convert ships a thresholds.json for every label, chosen from its validation split,
and that pre-annotate, cvat_function and the nuclio bundle use exactly what the file says unless a
threshold is given explicitly.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cvat_argo.errors import ConvertError, CvatArgoError, ServingError
from cvat_argo.export.model_card import threshold_section
from cvat_argo.export.thresholds import (
    GroundTruth,
    check_choice,
    choose_threshold,
    choose_thresholds,
    match_image,
    validation_images,
)
from cvat_argo.inference.outputs import Thresholds, model_thresholds, parse_thresholds
from cvat_argo.inference.serving import Detections
from support.nuclio_harness import run_handler
from support.tiny_dataset import LABELS, write_tiny_dataset

T, F = True, False

# --- the choice, on hand-built detections ------------------------------------------------------------


def test_the_lowest_threshold_reaching_the_target_precision_even_below_a_dip():
    scores = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35]
    hits = [T, F, T, T, T, T, T, T, T, T, F, F, F]  # precision: 1.0, 0.5, ... 0.889, 0.9 at 0.5, then falls
    chosen = choose_threshold(scores, hits, support=10)
    assert chosen.threshold == 0.5 and chosen.reason == "precision 0.9 reached" and chosen.target_reached
    assert (chosen.precision, chosen.recall, chosen.detections, chosen.support) == (0.9, 0.9, 10, 10)
    assert chosen.at_default == {"threshold": 0.5, "precision": 0.9, "recall": 0.9}
    looser = choose_threshold(scores, hits, support=10, target_precision=0.75)
    assert looser.threshold == 0.4 and looser.precision == 0.75  # 9 of 12 kept are right
    stricter = choose_threshold(scores, hits, support=10, target_precision=0.95)
    assert stricter.threshold == 0.95 and (stricter.precision, stricter.recall) == (1.0, 0.1)


def test_equal_scores_are_kept_or_dropped_together():
    scores = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.5, 0.5, 0.5]
    hits = [T] * 9 + [T, F, F]  # at 0.5 all three come in: 10 of 12 (0.83), never 10 of 10
    chosen = choose_threshold(scores, hits, support=11)
    assert chosen.threshold == 0.91 and chosen.precision == 1.0 and chosen.recall == round(9 / 11, 4)
    assert chosen.at_default == {"threshold": 0.5, "precision": round(10 / 12, 4), "recall": round(10 / 11, 4)}


def test_the_floor_bounds_the_choice_and_stands_in_with_a_reason():
    never = choose_threshold([0.8, 0.7, 0.6, 0.5], [F, T, F, T], support=3)
    assert (never.threshold, never.reason, never.target_reached) == (0.3, "floor: precision 0.9 not reached", False)
    assert (never.precision, never.recall, never.detections) == (0.5, round(2 / 3, 4), 4)
    nothing = choose_threshold([0.6], [F], support=0)
    assert (nothing.threshold, nothing.reason, nothing.recall, nothing.precision) == (
        0.3, "no validation objects", None, 0.0)
    assert choose_threshold([], [], support=0).reason == "no validation objects"
    low = choose_threshold([0.2, 0.1], [T, T], support=2)
    assert low.threshold == 0.3 and low.reason == "floor: no validation detection scored 0.3 or more"
    assert (low.precision, low.recall) == (None, 0.0)
    # the lowest qualifying score is under the floor: the lowest one at or above it is taken
    assert choose_threshold([0.9, 0.35, 0.2], [T, T, T], support=3).threshold == 0.35
    assert choose_threshold([0.9, 0.35, 0.2], [T, T, T], support=3, floor=0.4).threshold == 0.9
    assert choose_threshold([0.9, 0.35], [T, T], support=2, floor=0.5).recall == 0.5


def test_a_threshold_is_rounded_down_only_when_that_lets_nothing_else_in():
    assert choose_threshold([0.734567], [T], support=1).threshold == 0.7345
    crowded = choose_threshold([0.734567, 0.73452], [T, F], support=1)  # 0.7345 would keep the wrong one too
    assert crowded.threshold == 0.734567 and crowded.precision == 1.0


def test_bad_parameters_name_the_flag():
    for args, flag in (((1.5, 0.3, 10), "--target-precision"), ((0.9, -0.1, 10), "--threshold-floor"),
                       ((0.9, 0.3, 0), "--threshold-images")):
        with pytest.raises(ConvertError, match=flag):
            check_choice(*args)


def test_matching_is_one_to_one_greedy_by_score_and_ignores_crowds():
    truth = GroundTruth(boxes=np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [70, 0, 90, 20],
                                        [0, 40, 10, 50]], float),
                        classes=np.array([1, 1, 2, 1, 1]), is_crowd=np.array([F, F, F, T, F]))
    found = Detections(
        boxes=np.array([[1, 0, 11, 10],  # 0.9: object 0 (IoU 0.82)
                        [0, 0, 10, 10],  # 0.8: object 0 again, exactly, but it is taken: a duplicate
                        [20, 20, 30, 27],  # 0.7: object 1 (IoU 0.7)
                        [50, 50, 60, 60],  # 0.6: the label-2 object, found as label 1: wrong
                        [71, 0, 90, 20],  # 0.5: inside the crowd region: neither right nor wrong
                        [0, 40, 4, 50],  # 0.4: object 4, IoU 0.4: not enough
                        [50, 50, 60, 61]], np.float32),  # 0.3: the label-2 object
        scores=np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], np.float32),
        classes=np.array([1, 1, 1, 1, 1, 1, 2], np.int32))
    scores, hits, support = match_image(found, truth, 1)
    assert np.allclose(scores, [0.9, 0.8, 0.7, 0.6, 0.4]) and hits == [T, F, T, F, F] and support == 3
    assert match_image(found, truth, 2)[1:] == ([T], 1)
    assert match_image(found, truth, 3) == ([], [], 0)


# --- the choice on a real dataset folder, through a detector whose answers are known ---------------------


class Oracle:
    """Finds every validation object (score 0.8) and, on each image, one 'ellipse' where there is none (0.6).

    It takes the images in the order ``validation_images`` reads them, so a choice that mixed up images,
    label ids or pixel frames would see its 'right' answers miss."""

    runtime, preferred_batch = "oracle", 3

    def __init__(self, truths):
        self.truths = iter(truths)

    def detect(self, images):
        answers = []
        for image in images:
            name, pixels, truth = next(self.truths)
            assert np.array_equal(image, pixels), name
            boxes = np.vstack([truth.boxes, [[0, 0, 3, 3]]]).astype(np.float32)
            answers.append(Detections(boxes, np.array([0.8] * len(truth.classes) + [0.6], np.float32),
                                      np.array([*truth.classes, 2], np.int32)))
        return answers


def test_choose_thresholds_reads_the_validation_split_in_pixels_and_caps_the_images(tmp_path):
    dataset = write_tiny_dataset(tmp_path / "dataset", train=1, val=7)
    truths = list(validation_images(dataset, 10))
    assert len(truths) == 7
    for _, pixels, truth in truths:  # normalised boxes back in pixels, inside their image
        height, width = pixels.shape[:2]
        assert truth.boxes.min() >= 0 and (truth.boxes[:, 2] <= width).all() and (truth.boxes[:, 3] <= height).all()
        assert (truth.boxes[:, 2] - truth.boxes[:, 0] >= 16 - 1e-3).all()  # the generator draws 16 px or more
    document = choose_thresholds(Oracle(truths), dataset, LABELS, max_images=5)
    used = Counter(int(c) for _, _, truth in truths[:5] for c in truth.classes)
    assert document["chosen_on"] == {
        "split": "validation", "images": 5, "validation_images": 7, "max_images": 5, "capped": True,
        "runtime": "oracle", "iou": 0.5, "target_precision": 0.9, "floor": 0.3, "compared_at": 0.5}
    assert set(document["per_label"]) == set(LABELS) and document["default"] == 0.5
    for label_id, name in enumerate(LABELS, 1):
        item = document["labels"][name]
        assert item["support"] == used[label_id] and document["per_label"][name] == item["threshold"]
        if used[label_id] == 0:
            assert (item["threshold"], item["reason"]) == (0.3, "no validation objects")
        else:  # every object found at 0.8; the ellipses' false ones (0.6) stay under the chosen threshold
            assert (item["threshold"], item["precision"], item["recall"]) == (0.8, 1.0, 1.0), name
    ellipse = document["labels"]["ellipse"]
    assert ellipse["at_default"]["precision"] == round(used[2] / (used[2] + 5), 4)
    card = "\n".join(threshold_section(document))
    assert "the first 5 of 7: capped at 5" in card and "| rectangle | 0.8 | 1.00 | 1.00 |" in card
    json.dumps(document)  # what convert writes as thresholds.json


def test_no_validation_split_leaves_every_label_at_the_floor_with_the_reason(tmp_path):
    dataset = write_tiny_dataset(tmp_path / "dataset", train=2, val=0)
    document = choose_thresholds(Oracle([]), dataset, LABELS)
    assert document["chosen_on"]["images"] == 0 and document["per_label"] == dict.fromkeys(LABELS, 0.3)
    assert {item["reason"] for item in document["labels"].values()} == {"no validation objects"}


# --- reading them back, and explicit values winning ---------------------------------------------------


def test_model_thresholds_file_and_its_faults(tmp_path):
    labels = ("person", "car")
    absent = model_thresholds(tmp_path, labels)
    assert (absent.as_dict(), absent.origin) == ({"default": 0.5, "per_label": {}}, "default")
    assert "no thresholds.json" in absent.note
    (tmp_path / "thresholds.json").write_text(json.dumps({"default": 0.5, "per_label": {"person": 0.25, "car": 0.7},
                                                          "labels": {}}))
    chosen = model_thresholds(tmp_path, labels)
    assert (chosen.of("person"), chosen.of("car"), chosen.origin, chosen.note) == (0.25, 0.7, "model thresholds.json",
                                                                                    None)
    (tmp_path / "thresholds.json").write_text(json.dumps({"per_label": {"persn": 0.25}}))
    with pytest.raises(ServingError, match=r"thresholds\.json: unknown label 'persn' \(did you mean 'person'\?\)"):
        model_thresholds(tmp_path, labels)
    for bad in ("{", json.dumps([1]), json.dumps({"per_label": {"car": 2}}), json.dumps({"default": "x"})):
        (tmp_path / "thresholds.json").write_text(bad)
        with pytest.raises(ServingError, match=r"thresholds\.json"):
            model_thresholds(tmp_path, labels)


def test_explicit_thresholds_win_over_the_models():
    labels = ("person", "car", "tree")
    model = Thresholds(0.5, {"person": 0.3, "car": 0.7, "tree": 0.4}, "model thresholds.json")
    assert parse_thresholds([], labels, model) == model
    everything = parse_thresholds(["0.6", "tree=0.2"], labels, model)  # a global value replaces all of them
    assert everything.as_dict() == {"default": 0.6, "per_label": {"tree": 0.2}} and everything.origin == "--threshold"
    one = parse_thresholds(["car=0.9"], labels, model)  # a per-label one only its label
    assert one.as_dict() == {"default": 0.5, "per_label": {"person": 0.3, "car": 0.9, "tree": 0.4}}
    assert one.origin == "model thresholds.json + --threshold"
    assert parse_thresholds(["car=0.9"], labels).origin == "--threshold"
    with pytest.raises(CvatArgoError, match="unknown label 'cat'"):
        parse_thresholds(["cat=0.9"], labels, model)
    # CVAT's own threshold replaces the default and is a floor under the per-label ones
    assert model.floored(0.35).as_dict() == {"default": 0.35, "per_label": {"person": 0.35, "car": 0.7, "tree": 0.4}}


# --- the real tiny model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ssd(tmp_path_factory):
    pytest.importorskip("official", reason="needs the train extra (tf-models-official)")
    from support.trained_model import converted_ssd

    return converted_ssd(tmp_path_factory)


@pytest.fixture(scope="module")
def images(ssd, tmp_path_factory) -> Path:
    """The model's validation and training images as PNG files (lossless: annotate sees the same pixels)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("threshold-images")
    for index, (_, pixels, _) in enumerate(validation_images(ssd.dataset, 100)):
        Image.fromarray(pixels).save(folder / f"val_{index}.png")
    return folder


@pytest.fixture(scope="module")
def found(ssd, images) -> dict[str, list[float]]:
    """Every detection the TFLite model gives on those images (its export floor up), by label: what annotate,
    cvat_function and the nuclio bundle see with it (the tests below run all three on TFLite)."""
    from PIL import Image

    from cvat_argo.inference.serving import load_detector

    detector = load_detector(ssd.converted, "tflite")
    by_label: dict[str, list[float]] = {name: [] for name in detector.labels}
    for path in sorted(images.iterdir()):
        (detections,) = detector.detect([np.asarray(Image.open(path).convert("RGB"))])
        for score, label_id in zip(detections.scores, detections.classes, strict=True):
            by_label[detector.labels[label_id - 1]].append(float(score))
    assert any(by_label.values()), "the tiny model finds nothing on its own validation images"
    return by_label


def _between(scores: list[float]) -> float:
    """A threshold halfway between two of these scores near their median (about half pass), 0.0 if all are equal."""
    distinct = sorted(set(scores))
    middle = len(distinct) // 2
    return (distinct[middle - 1] + distinct[middle]) / 2 if len(distinct) > 1 else 0.0


def _expected(found: dict[str, list[float]], thresholds: Thresholds) -> Counter:
    """How many shapes of each label those thresholds let through."""
    return Counter({name: sum(score >= thresholds.of(name) for score in scores) for name, scores in found.items()})


@pytest.fixture()
def hand_model(ssd, found, tmp_path) -> tuple[Path, str, Thresholds]:
    """A copy of the converted model with a thresholds.json written by hand: about half of what the model finds
    most passes, and nothing else below 1.0. What uses the file can be told from what ignores it, whatever the
    training gave (the file of the tiny model itself may well hold the floor for every label)."""
    most = max(found, key=lambda name: len(found[name]))
    model = tmp_path / "model"
    shutil.copytree(ssd.converted, model)
    thresholds = Thresholds(0.5, {name: _between(found[name]) if name == most else 1.0 for name in found})
    (model / "thresholds.json").write_text(json.dumps(thresholds.as_dict()))
    return model, most, thresholds


@pytest.mark.slow
def test_convert_ships_thresholds_for_every_label_chosen_on_validation(ssd):
    from cvat_argo.formats.label_map import read_labels_json
    from cvat_argo.inference.serving import load_detector
    from cvat_argo.storage.digest import file_sha256

    document = json.loads((ssd.converted / "thresholds.json").read_text())
    labels = read_labels_json(ssd.converted / "labels.json")
    assert list(document["per_label"]) == list(document["labels"]) == list(labels)
    detector = load_detector(ssd.converted, "auto")
    assert document["chosen_on"]["images"] == 4 and document["chosen_on"]["runtime"] == detector.runtime
    for name, item in document["labels"].items():
        assert item["threshold"] == document["per_label"][name] >= 0.3
        assert item["reason"] in ("precision 0.9 reached", "floor: precision 0.9 not reached",
                                  "no validation objects", "floor: no validation detection scored 0.3 or more")
    # chosen from the data: the same detector on the same split chooses the same again
    assert choose_thresholds(detector, ssd.dataset, labels) == document
    manifest = json.loads((ssd.converted / "model.json").read_text())
    listed = {entry["file"]: entry for entry in manifest["exports"]}
    assert listed["thresholds.json"]["sha256"] == file_sha256(ssd.converted / "thresholds.json")
    card = (ssd.converted / "model_card.md").read_text()
    assert "## Score thresholds" in card
    assert all(f"| {name} | {document['per_label'][name]:g} |" in card for name in labels)


def _annotate(model: Path, images: Path, out: Path, *thresholds: str) -> tuple[dict, Counter]:
    from cvat_argo.steps import annotate

    flags = [item for value in thresholds for item in ("--threshold", value)]
    assert annotate.main(["--model", str(model), "--images", str(images), "--out", str(out), "--runtime", "tflite",
                          *flags]) == 0
    summary = json.loads((out / "summary.json").read_text())
    coco = json.loads((out / "coco.json").read_text())
    names = {category["id"]: category["name"] for category in coco["categories"]}
    for annotation in coco["annotations"]:  # no shape under its label's threshold
        name = names[annotation["category_id"]]
        assert annotation["score"] >= round(Thresholds(**summary["threshold"]).of(name), 4) - 1e-4, name
    return summary, Counter(summary["shapes_per_label"])


@pytest.mark.slow
def test_pre_annotate_uses_the_models_thresholds_unless_told_otherwise(ssd, images, found, hand_model, tmp_path,
                                                                       capsys):
    chosen = json.loads((ssd.converted / "thresholds.json").read_text())
    summary, _ = _annotate(ssd.converted, images, tmp_path / "chosen")
    assert summary["threshold"] == {"default": chosen["default"], "per_label": chosen["per_label"]}
    assert summary["threshold_origin"] == "model thresholds.json" and summary["threshold_note"] is None
    assert "thresholds (model thresholds.json)" in capsys.readouterr().out

    model, most, hand = hand_model
    summary, counts = _annotate(model, images, tmp_path / "hand")
    assert summary["threshold"] == hand.as_dict() and counts == _expected(found, hand)  # exactly what the file says
    summary, counts = _annotate(model, images, tmp_path / "global", "0.0")  # a global value replaces them all
    assert summary["threshold"] == {"default": 0.0, "per_label": {}} and summary["threshold_origin"] == "--threshold"
    assert counts == Counter({name: len(scores) for name, scores in found.items()})
    other = next(name for name in found if name != most)
    summary, counts = _annotate(model, images, tmp_path / "one", f"{other}=0.0")  # only that label's
    assert summary["threshold_origin"] == "model thresholds.json + --threshold"
    one = Thresholds(0.5, {**hand.per_label, other: 0.0})
    assert summary["threshold"] == one.as_dict() and counts == _expected(found, one)

    (model / "thresholds.json").unlink()  # a model converted before thresholds were chosen
    summary, counts = _annotate(model, images, tmp_path / "old")
    assert summary["threshold"] == {"default": 0.5, "per_label": {}} and summary["threshold_origin"] == "default"
    assert "no thresholds.json" in summary["threshold_note"]
    assert counts == _expected(found, Thresholds(0.5))


class _Context:
    """What cvat-sdk's driver passes to detect()."""

    def __init__(self, threshold=None):
        self.frame_name, self.conf_threshold, self.conv_mask_to_poly = "val.png", threshold, False


@pytest.mark.slow
def test_cvat_function_uses_the_models_thresholds_unless_given_one(ssd, images, found, hand_model):
    pytest.importorskip("cvat_sdk")
    from PIL import Image

    from cvat_argo import cvat_function

    chosen = json.loads((ssd.converted / "thresholds.json").read_text())
    assert cvat_function.create(model=str(ssd.converted), runtime="tflite").thresholds.as_dict() == {
        "default": chosen["default"], "per_label": chosen["per_label"]}
    model, _, hand = hand_model
    pictures = [Image.open(path) for path in sorted(images.iterdir())]

    def labels_found(function, conf=None) -> Counter:
        return Counter(function.labels[shape.label_id - 1] for picture in pictures
                       for shape in function.detect(_Context(conf), picture))

    from_file = cvat_function.create(model=str(model), runtime="tflite")
    assert from_file.thresholds.as_dict() == hand.as_dict() and labels_found(from_file) == _expected(found, hand)
    everything = cvat_function.create(model=str(model), runtime="tflite", threshold=0.0)  # -p threshold= replaces all
    assert everything.thresholds.as_dict() == {"default": 0.0, "per_label": {}}
    assert labels_found(everything) == Counter({name: len(scores) for name, scores in found.items()})
    floor = 0.5  # CVAT's --conf-threshold: nothing below it, whatever the file says
    assert labels_found(from_file, floor) == _expected(found, hand.floored(floor))


HANDLER_RUN = r"""
labels = []
for path in sys.argv[2:]:
    answer = main.handler(context, Event(json.dumps({"image": encoded(path), "threshold": None}).encode()))
    labels += [shape["label"] for shape in json.loads(answer["body"])]
print(json.dumps({"labels": labels, "log": context.logger.lines}))
"""


def _bundle_labels(bundle: Path, images: Path) -> Counter:
    return Counter(run_handler(bundle, HANDLER_RUN, *sorted(images.iterdir()))["labels"])


@pytest.mark.slow
def test_nuclio_bundle_uses_the_models_thresholds_unless_given_one(images, found, hand_model, tmp_path):
    from cvat_argo.cvat import nuclio

    model, _, hand = hand_model
    result = nuclio.bundle(model, tmp_path / "fn")  # auto: the TFLite model
    assert result["threshold_origin"] == "model thresholds.json" and result["thresholds"] == hand.as_dict()
    assert (tmp_path / "fn" / "model" / "thresholds.json").is_file()
    assert _bundle_labels(tmp_path / "fn", images) == _expected(found, hand)
    assert nuclio.main([str(model), "--out", str(tmp_path / "all"), "--threshold", "0.0"]) == 0
    assert _bundle_labels(tmp_path / "all", images) == Counter({name: len(scores) for name, scores in found.items()})
