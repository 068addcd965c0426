"""pre-annotate: detections -> shapes, the CVAT XML and COCO outputs (read back by Datumaro and
pycocotools), and the stage end to end on a real tiny model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvat_argo.engines.artifacts import write_json
from cvat_argo.entry import run_step
from cvat_argo.errors import CvatArgoError
from cvat_argo.formats.annotations import ImageRecord, LabelSpec, Shape, TaskMeta
from cvat_argo.formats.cvat_xml.writer import write_cvat_xml
from cvat_argo.inference.outputs import (
    Tally,
    Thresholds,
    coco_document,
    detections_to_shapes,
    fit_to_label,
    mask_to_polygon,
    parse_thresholds,
    plot_scores,
    write_report,
)
from cvat_argo.steps import annotate as step
from support.annotate_fixtures import model_labels, trained_exported_model

LABELS = ("square", "circle", "triangle")

try:  # the real type once the serving module exists; the same fields either way
    from cvat_argo.inference.serving import Detections
except ImportError:  # pragma: no cover - only before serving.py lands

    @dataclass(frozen=True)
    class Detections:  # type: ignore[no-redef]
        boxes: np.ndarray
        scores: np.ndarray
        classes: np.ndarray
        masks: np.ndarray | None = None


def detections(rows, masks=None) -> Detections:
    """rows: (xmin, ymin, xmax, ymax, score, class id)."""
    array = np.asarray(rows, dtype=np.float32).reshape(-1, 6)
    return Detections(boxes=array[:, :4].copy(), scores=array[:, 4].copy(), classes=array[:, 5].astype(np.int32),
                      masks=masks)


# --- thresholds and conversion -------------------------------------------------------------------


def test_thresholds_global_and_per_label():
    thresholds = parse_thresholds(["0.4", "circle=0.2"], LABELS)
    assert thresholds.of("square") == 0.4 and thresholds.of("circle") == 0.2 and thresholds.lowest == 0.2
    assert parse_thresholds([], LABELS).default == 0.5


@pytest.mark.parametrize(("value", "message"), [
    ("circel=0.3", "unknown label 'circel' (did you mean 'circle'?)"),
    ("1.5", "1.5 is not between 0 and 1"),
    ("square=high", "'high' is not a number"),
])
def test_bad_thresholds_name_the_problem(value, message):
    with pytest.raises(CvatArgoError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        parse_thresholds([value], LABELS)


def test_detections_to_shapes_threshold_clip_scale_and_limit():
    found = detections([
        (10, 10, 50, 50, 0.9, 1),
        (-5, 20, 30, 70, 0.6, 2),  # clipped to the image
        (5, 5, 9, 9, 0.35, 2),  # below the default, above circle's threshold
        (0, 0, 10, 10, 0.3, 3),  # below every threshold
        (1, 1, 2, 2, 0.99, 0),  # padding class: never an object
        (1, 1, 2, 2, 0.99, 4),  # outside the label map
        (70, 70, 90, 90, 0.8, 1),  # wholly outside after scaling: dropped
    ])
    shapes = detections_to_shapes(found, LABELS, 100, 60, Thresholds(0.5, {"circle": 0.3}), scale=(2.0, 1.0))
    assert [(s.label, s.box, round(s.score, 2)) for s in shapes] == [
        ("square", (20.0, 10.0, 100.0, 50.0), 0.9),
        ("circle", (0.0, 20.0, 60.0, 60.0), 0.6),
        ("circle", (10.0, 5.0, 18.0, 9.0), 0.35),
    ]
    assert all(s.source == "auto" and s.kind == "box" for s in shapes)
    limited = detections_to_shapes(found, LABELS, 100, 60, Thresholds(0.0), max_detections=2)
    assert [round(s.score, 2) for s in limited] == [0.9, 0.6]  # 0.8 lies outside the 60 px tall image


def test_masks_become_polygons_inside_their_box():
    mask = np.zeros((28, 28), dtype=np.float32)
    mask[7:21, 7:21] = 0.9  # the middle half of the box
    shapes = detections_to_shapes(detections([(100, 40, 156, 96, 0.9, 3)], masks=mask[None]), LABELS, 200, 120,
                                  Thresholds())
    (shape,) = shapes
    assert shape.kind == "polygon" and shape.box == (100.0, 40.0, 156.0, 96.0)
    xs, ys = shape.polygon[0::2], shape.polygon[1::2]
    assert min(xs) == pytest.approx(114, abs=2.5) and max(xs) == pytest.approx(142, abs=2.5)
    assert min(ys) == pytest.approx(54, abs=2.5) and max(ys) == pytest.approx(82, abs=2.5)
    assert mask_to_polygon(np.zeros((28, 28), np.float32), (0, 0, 10, 10)) is None


def test_fit_to_label_types():
    box = Shape("square", "box", (1, 2, 3, 4), source="auto", score=0.7)
    polygon = Shape("square", "polygon", (1, 2, 3, 4), polygon=(1, 2, 3, 2, 2, 4), source="auto", score=0.7)
    assert fit_to_label(box, "any") is box and fit_to_label(polygon, None) is polygon
    assert fit_to_label(polygon, "rectangle").kind == "box"
    as_polygon = fit_to_label(box, "polygon")
    assert as_polygon.polygon == (1, 2, 3, 2, 3, 4, 1, 4) and as_polygon.score == 0.7
    assert fit_to_label(box, "points") is None


# --- files ---------------------------------------------------------------------------------------

RECORDS = [
    ImageRecord(4, "img_a.jpg", 120, 80, (
        Shape("square", "box", (10.004, 5.5, 40.25, 30.75), source="auto", score=0.91),
        Shape("triangle", "polygon", (50, 10, 90, 60), polygon=(50, 60, 70, 10, 90, 60), source="auto", score=0.55),
    )),
    ImageRecord(7, "sub/img_b.jpg", 64, 48, (Shape("circle", "box", (1, 2, 30.5, 40), source="auto", score=0.62),)),
    ImageRecord(9, "img_c.jpg", 64, 48, ()),
]


def _with_images(folder: Path, records) -> None:
    for record in records:  # Datumaro's CVAT importer wants each image
        (folder / "images" / record.name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (record.width, record.height)).save(folder / "images" / record.name)


def test_xml_loads_in_datumaro_with_identical_boxes_labels_and_sources(tmp_path):
    dm = pytest.importorskip("datumaro")
    specs = tuple(LabelSpec(name, type="any") for name in LABELS)
    write_cvat_xml(tmp_path / "annotations.xml", TaskMeta(labels=specs, size=3, mode="annotation"), RECORDS)
    text = (tmp_path / "annotations.xml").read_text()
    assert 'source="auto"' in text and "score" not in text  # no score attribute in this task's labels
    _with_images(tmp_path, RECORDS)
    dataset = dm.Dataset.import_from(str(tmp_path), "cvat")
    names = dataset.categories()[dm.AnnotationType.label]
    items = {item.id: item for item in dataset}
    assert set(items) == {"img_a", "sub/img_b", "img_c"}
    for record in RECORDS:
        item = items[record.name.rsplit(".", 1)[0]]
        assert item.attributes["frame"] == record.frame
        got = sorted((names[a.label].name, a.get_bbox()) for a in item.annotations)
        want = sorted((s.label, (s.box[0], s.box[1], s.box[2] - s.box[0], s.box[3] - s.box[1])) for s in record.shapes)
        assert [g[0] for g in got] == [w[0] for w in want]
        for (_, g), (_, w) in zip(got, want, strict=True):
            assert g == pytest.approx(w, abs=0.01)


def test_xml_for_a_task_with_score_attributes_keeps_scores(tmp_path):
    dm = pytest.importorskip("datumaro")
    specs = tuple(LabelSpec(name, type="any", attributes=("score",)) for name in LABELS)
    write_cvat_xml(tmp_path / "annotations.xml", TaskMeta(labels=specs, size=3), RECORDS)
    _with_images(tmp_path, RECORDS)
    dataset = dm.Dataset.import_from(str(tmp_path), "cvat")
    scores = sorted(round(a.attributes["score"], 2) for item in dataset for a in item.annotations)
    assert scores == [0.55, 0.62, 0.91]


def test_coco_loads_in_pycocotools_with_scores(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    write_json(tmp_path / "coco.json", coco_document(LABELS, RECORDS))
    coco = COCO(str(tmp_path / "coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(LABELS)
    image = coco.loadImgs([5])[0]
    assert image["file_name"] == "img_a.jpg"
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[5]))
    assert [a["bbox"] for a in annotations] == [[10.004, 5.5, 30.246, 25.25], [50, 10, 40, 50]]
    assert [a["score"] for a in annotations] == [0.91, 0.55]
    assert annotations[1]["segmentation"] == [[50, 60, 70, 10, 90, 60]] and annotations[1]["area"] == 1000.0
    assert annotations[0]["attributes"]["source"] == "auto"
    # as detection results against itself: a perfect AP proves the boxes, ids and scores are consistent
    results = coco.loadRes([{k: a[k] for k in ("image_id", "category_id", "bbox", "score")}
                            for a in coco.loadAnns(coco.getAnnIds())])
    evaluation = COCOeval(coco, results, "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[1] == pytest.approx(1.0)  # AP50


def test_summary_plot_and_report(tmp_path):
    tally = Tally(labels=LABELS)
    for record in RECORDS:
        tally.add(record)
    # every detection the runtime returned counts in the histogram, kept or not; unknown ids do not
    tally.add_scores([0.93, 0.41, 0.07, 0.5], [1, 2, 2, 4], LABELS)
    tally.skip("broken.jpg", "cannot be decoded")
    summary = tally.summary(images_per_second=123.4, runtime="tflite-fp32", threshold=Thresholds(0.5).as_dict(),
                            max_detections=100, upload_note="not uploaded: CVAT_HOST is not set")
    assert summary["shapes_per_label"] == {"square": 1, "circle": 1, "triangle": 1}
    assert summary["images"] == 3 and summary["images_with_shapes"] == 2 and summary["shapes"] == 3
    assert summary["score_histogram"]["counts"] == {"square": [0] * 18 + [1, 0], "circle": [0, 1] + [0] * 6 + [1] + [0] * 11}
    plot_scores(tmp_path / "scores.png", summary, summary["threshold"])
    write_report(tmp_path, summary)
    assert (tmp_path / "scores.png").stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert "broken.jpg: cannot be decoded" in report and "123.4 images/s" in report


# --- the stage's own parts -----------------------------------------------------------------------


def test_decode_drafts_large_jpegs_and_reports_bad_files(tmp_path):
    Image.new("RGB", (1600, 1200), (200, 10, 10)).save(tmp_path / "big.jpg", quality=90)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    big = step.decode(step.Item(0, "big.jpg", tmp_path / "big.jpg", 1600, 1200), (256, 256))
    # decoded at 1/4 (400x300, still >= 256 on the long side), then resized to the model's 256x192
    assert big.problem is None and big.pixels.shape == (192, 256, 3)
    assert big.scale == (6.25, 6.25) and (big.width, big.height) == (1600, 1200)
    assert tuple(big.pixels[100, 100]) == pytest.approx((200, 10, 10), abs=3)
    full = step.decode(step.Item(0, "big.jpg", tmp_path / "big.jpg", 1600, 1200), None)
    assert full.pixels.shape == (1200, 1600, 3) and full.scale == (1.0, 1.0)
    broken = step.decode(step.Item(1, "broken.jpg", tmp_path / "broken.jpg"), (256, 256))
    assert broken.problem.startswith("cannot be decoded")
    assert step.decode(step.Item(2, "gone.jpg", tmp_path / "gone.jpg"), None).problem == "file not found"
    wrong = step.decode(step.Item(3, "big.jpg", tmp_path / "big.jpg", 800, 600), None)
    assert wrong.problem == "the task says 800x600, the file is 1600x1200"


def test_decode_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: CVAT shows 100x200
    image.save(tmp_path / "turned.jpg", exif=exif)
    decoded = step.decode(step.Item(0, "turned.jpg", tmp_path / "turned.jpg", 100, 200), None)
    assert decoded.problem is None and decoded.pixels.shape == (200, 100, 3)


def test_decoded_in_order_keeps_order_across_threads(tmp_path):
    items = []
    for index in range(25):
        path = tmp_path / f"{index:02d}.png"
        Image.new("RGB", (8 + index, 8), (index, 0, 0)).save(path)
        items.append(step.Item(index, path.name, path))
    out = list(step.decoded_in_order(items, workers=3, target=None))
    assert [d.item.frame for d in out] == list(range(25)) and [d.width for d in out] == [8 + i for i in range(25)]


def test_unannotated_listing_and_task_id(tmp_path):
    (tmp_path / "unannotated.json").write_text(json.dumps(
        {"count": 1, "images": [{"frame": 3, "name": "a/b.jpg", "width": 10, "height": 20,
                                 "path": "unannotated/a/b.jpg"}]}))
    (item,) = step.read_unannotated(tmp_path)
    assert item == step.Item(3, "a/b.jpg", tmp_path / "unannotated/a/b.jpg", 10, 20)
    assert step.task_id_from_dataset(tmp_path) is None
    (tmp_path / "dataset.json").write_text(json.dumps({"cvat_task_id": "42"}))
    assert step.task_id_from_dataset(tmp_path) == 42


def test_model_folder_without_labels_is_refused(tmp_path):
    (tmp_path / "exported").mkdir()
    with pytest.raises(CvatArgoError, match=r"has no labels\.json"):
        step.load(tmp_path / "exported", "auto")
    code = run_step(step.main, ["--model", str(tmp_path / "exported"), "--dataset", str(tmp_path),
                                     "--out", str(tmp_path / "out")])
    assert code == 4 and not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# --- the stage end to end, on a real tiny model --------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return trained_exported_model(tmp_path_factory)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A dataset-stage-like folder: 12 synthetic photos to pre-annotate, one of them broken."""
    import zipfile

    from cvat_argo.data.synthetic import generate_task

    work = tmp_path_factory.mktemp("annotate-dataset")
    # 192x144: small enough that no JPEG draft decoding happens, so boxes compare exactly with direct calls
    task = generate_task(work / "task", images=12, annotated_fraction=0.0, width=192, height=144, seed=5,
                         name="photo")
    folder = work / "dataset"
    listed = []
    with zipfile.ZipFile(task.export) as archive:
        for frame in range(12):
            name = f"photo_{frame:05d}.jpg"
            target = folder / "unannotated" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(f"images/{name}") if frame != 4 else b"\xff\xd8\xff\xe0broken")
            listed.append({"frame": frame, "name": name, "width": 192, "height": 144,
                           "path": f"unannotated/{name}"})
    (folder / "unannotated.json").write_text(json.dumps({"count": len(listed), "images": listed}))
    return folder


def _direct(exported: Path, dataset: Path, threshold: float) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    """What the model finds when called directly, image by image, fully decoded."""
    from cvat_argo.inference.serving import load_detector

    detector = load_detector(exported, runtime="tflite")
    found = {}
    for item in json.loads((dataset / "unannotated.json").read_text())["images"]:
        try:
            pixels = np.asarray(Image.open(dataset / item["path"]).convert("RGB"))
        except OSError:
            continue
        (result,) = detector.detect([pixels])
        result = result.above(threshold)
        found[item["name"]] = [(detector.labels[c - 1], tuple(float(v) for v in box))
                               for c, box in zip(result.classes, result.boxes, strict=True)][:100]
    return found


def _corners(xywh) -> tuple[float, ...]:
    x, y, w, h = xywh
    return (x, y, x + w, y + h)


def _iou(a, b) -> float:
    ix, iy = max(0, min(a[2], b[2]) - max(a[0], b[0])), max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union else 0.0


@pytest.mark.slow
def test_stage_end_to_end(exported, dataset, tmp_path, capsys):
    dm = pytest.importorskip("datumaro")
    from pycocotools.coco import COCO

    out = tmp_path / "annotations"
    code = step.main(["--model", str(exported), "--dataset", str(dataset), "--out", str(out), "--threshold", "0.05",
                      "--workers", "2"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["annotations.xml", "coco.json", "next-to-annotate.json",
                                                     "report.md", "scores.png", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 11 and summary["runtime"] == "tflite-fp32"
    assert summary["skipped"] == [{"name": "photo_00004.jpg", "reason": summary["skipped"][0]["reason"]}]
    assert summary["skipped"][0]["reason"].startswith("cannot be decoded")
    assert summary["threshold"] == {"default": 0.05, "per_label": {}} and summary["images_per_second"] > 0
    assert summary["upload_note"] == "not uploaded: CVAT_HOST is not set"
    # the XML, read by Datumaro (what CVAT uses), has exactly the predicted boxes (0.01 px) and labels
    document = json.loads((out / "coco.json").read_text())
    files = {image["id"]: image["file_name"] for image in document["images"]}
    predicted: dict[str, list] = {name: [] for name in files.values()}
    names_by_id = {c["id"]: c["name"] for c in document["categories"]}
    for annotation in document["annotations"]:
        predicted[files[annotation["image_id"]]].append((names_by_id[annotation["category_id"]],
                                                         tuple(annotation["bbox"])))
    assert len(predicted) == 11 and summary["shapes"] == sum(len(v) for v in predicted.values()) > 0
    for name in predicted:
        (out / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (192, 144)).save(out / "images" / name)
    imported = dm.Dataset.import_from(str(out), "cvat")
    names = imported.categories()[dm.AnnotationType.label]
    got = {item.id + ".jpg": sorted((names[a.label].name, a.get_bbox()) for a in item.annotations)
           for item in imported}
    assert set(got) == set(predicted)
    for name, shapes in predicted.items():
        left = list(got[name])
        assert len(left) == len(shapes)
        for label_name, box in shapes:  # one to one: same label, every corner within 0.01 px
            index = next(i for i, (g_label, g_box) in enumerate(left)
                         if g_label == label_name and max(abs(a - b) for a, b in zip(_corners(g_box), _corners(box),
                                                                                     strict=True)) < 0.01)
            left.pop(index)
    # and they are the model's detections: the stage's own decoding agrees with a direct call
    direct = _direct(exported, dataset, 0.05)
    for name, shapes in direct.items():
        ours = [(label, (x, y, x + w, y + h)) for label, (x, y, w, h) in predicted[name]]
        confident = shapes[:5]  # the strongest ones: near the threshold a score may cross it either way
        matched = sum(any(lo == ld and _iou(bo, bd) > 0.9 for lo, bo in ours) for ld, bd in confident)
        assert matched >= 0.8 * len(confident), name
    assert 'source="auto"' in (out / "annotations.xml").read_text()
    coco = COCO(str(out / "coco.json"))
    assert len(coco.getAnnIds()) == summary["shapes"] and all("score" in a for a in coco.dataset["annotations"])
    assert "pre-annotated 11 images" in capsys.readouterr().out


@pytest.mark.slow
def test_stage_keeps_scores_for_a_task_whose_labels_have_them(exported, dataset, tmp_path):
    from collections import Counter

    # the label the tiny model finds most gets the score attribute (and a polygon type), the others not
    found = Counter(label for shapes in _direct(exported, dataset, 0.0).values() for label, _ in shapes)
    first = found.most_common(1)[0][0]
    second, third = (name for name in model_labels(exported) if name != first)
    task_labels = (LabelSpec(first, type="polygon", attributes=("score",)), LabelSpec(second, type="rectangle"),
                   LabelSpec(third, type="any"), LabelSpec("person", type="rectangle"))
    write_cvat_xml(tmp_path / "task.xml", TaskMeta(labels=task_labels), [])
    out = tmp_path / "out"
    assert step.main(["--model", str(exported), "--dataset", str(dataset), "--out", str(out), "--task-meta",
                      str(tmp_path / "task.xml"), "--threshold", "0.0", "--threshold", f"{third}=0.5"]) == 0
    from cvat_argo.formats.cvat_xml.reader import CvatXmlReader

    reader = CvatXmlReader(out / "annotations.xml")
    assert reader.meta.label_names == (first, second, third, "person")  # the task's labels, in its order
    shapes = [s for r in reader.images() for s in r.shapes]
    assert any(s.label == first for s in shapes)
    # the label with a score attribute carries the scores; it is a polygon label, so boxes became polygons
    assert all(s.score is not None and s.kind == "polygon" for s in shapes if s.label == first)
    assert all(s.score is None and s.kind == "box" for s in shapes if s.label != first)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"]["per_label"] == {third: 0.5} and summary["shapes_per_label"]["person"] == 0
    # the histogram counts every detection: all of those at threshold 0, and for `third` also those under 0.5
    counts = summary["score_histogram"]["counts"]
    for name in (first, second):
        assert sum(counts.get(name, [])) == summary["shapes_per_label"][name]
    low = counts.get(third, [0] * 20)[:10]  # bins under 0.5
    assert sum(low) == sum(counts.get(third, [])) - summary["shapes_per_label"][third]


@pytest.mark.slow
def test_stage_uploads_to_a_task_and_leaves_people_work_alone(exported, dataset, tmp_path, monkeypatch, capsys):
    from support.fake_cvat_server import FakeTask, cvat_server, label

    frames = [{"name": f"photo_{i:05d}.jpg", "width": 192, "height": 144} for i in range(12)]
    first, second, third = model_labels(exported)
    task = FakeTask(7, labels=[label(1, first), label(2, second), label(3, third, score="number")], frames=frames)
    task.shapes = [{"type": "rectangle", "frame": 0, "label_id": 1, "points": [1, 1, 9, 9], "source": "manual",
                    "occluded": False, "z_order": 0, "rotation": 0.0, "group": 0, "attributes": [], "id": 1}]
    with cvat_server(task) as env:
        ledger = tmp_path / "ledger.json"
        options = step.Options(model=exported, dataset=dataset, out=tmp_path / "out", thresholds=["0.05"],
                               cvat_task_id=7, env=env, ledger=str(ledger), run_id="round-1")
        summary = step.run(options)
        upload = summary["upload"]
        assert upload["created"] > 0 and upload["frames_human"] == 1 and upload["ledger"] == str(ledger)
        sent = [s for body in task.patches for s in body["shapes"]]
        assert len(sent) == upload["created"] and 0 not in {s["frame"] for s in sent}
        listed = json.loads(ledger.read_text())["frames"]  # the ledger lists what the server holds, by id
        assert {int(f): sorted(s["id"] for s in e["shapes"]) for f, e in listed.items()} == {
            f: sorted(s["id"] for s in task.shapes if s["frame"] == f) for f in {s["frame"] for s in sent}}
        assert {e["run"] for e in listed.values()} == {"round-1"}
        # the next round, from the command line: our frames are ours, and the same model has nothing to redo
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert step.main(["--model", str(exported), "--dataset", str(dataset), "--out", str(tmp_path / "again"),
                          "--threshold", "0.05", "--cvat-task-id", "7", "--ledger", str(ledger), "--refresh"]) == 0
        again = json.loads((tmp_path / "again" / "summary.json").read_text())["upload"]
        assert again["created"] == 0 and again["already_present"] == upload["created"]
        assert again["frames_ours_kept"] == upload["frames_created"] and again["frames_refreshed"] == 0
        assert f"refreshed 0 (0 old shapes deleted); ledger {ledger}" in capsys.readouterr().out
        assert "CVAT" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_labels_the_task_lacks_stop_the_stage_before_inference(exported, dataset, tmp_path):
    from support.fake_cvat_server import FakeTask, cvat_server, label

    task = FakeTask(7, labels=[label(1, name) for name in model_labels(exported)[:2]], frames=[])
    with cvat_server(task) as env:
        options = step.Options(model=exported, dataset=dataset, out=tmp_path / "out", cvat_task_id=7, env=env)
        with pytest.raises(CvatArgoError, match="lacks the model's label"):
            step.run(options)
    assert task.patches == [] and not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.slow
def test_stage_on_a_folder_of_images(exported, dataset, tmp_path):
    out = tmp_path / "out"
    assert step.main(["--model", str(exported), "--images", str(dataset / "unannotated"), "--out", str(out),
                      "--runtime", "tflite-fp16", "--max-detections", "1", "--threshold", "0.0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 11 and summary["shapes"] == 11 and summary["runtime"] == "tflite-fp16"


@pytest.mark.slow
def test_stage_with_the_saved_model_in_batches(exported, dataset, tmp_path):
    out = tmp_path / "out"
    assert step.main(["--model", str(exported), "--dataset", str(dataset), "--out", str(out), "--runtime",
                      "saved_model", "--threshold", "0.05", "--batch-size", "4"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runtime"] == "saved_model" and summary["batch_size"] == 4 and summary["images"] == 11
    assert summary["shapes"] > 0 and len(summary["skipped"]) == 1
