"""The run report: report.md and report.html from one gathering of a run folder's files.

A finished run's folder is built here from the files its stages write (the same names and keys, with
small real images and a real score plot), so every section of the report is exercised without
TensorFlow; a failed run is a real ``cvat_argo run`` on a truncated export.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvat_argo.engines import artifacts, local
from cvat_argo.formats.annotations import ImageRecord, LabelSpec, Shape, TaskMeta
from cvat_argo.formats.cvat_xml.writer import write_cvat_xml
from cvat_argo.inference.outputs import Tally, plot_scores
from cvat_argo.reports import grid
from cvat_argo.reports.plots import label_colour, rgb
from cvat_argo.reports.run import write_run_report
from cvat_argo.request.spec import TrainingRequest

LABELS = ["square", "circle", "triangle"]
GREY = (128, 128, 128)
REQUEST = TrainingRequest.create(source="s3://exports/task-7.zip", args="epochs=3,batch_size=8",
                                 model="ssd-mobilenet-v2-small", machine="cpu")


class _Page(HTMLParser):
    """Every link and image of a page, and the text inside each element with a class."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.open: list[tuple[str, str]] = []
        self.text_of: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        for name in ("href", "src"):
            if values.get(name):
                self.links.append(values[name])
        if tag not in ("img", "br", "meta", "link"):
            self.open.append((tag, values.get("class") or ""))

    def handle_endtag(self, tag):
        while self.open and self.open.pop()[0] != tag:
            pass

    def handle_data(self, data):
        for _, cls in self.open:
            if cls:
                self.text_of[cls] = self.text_of.get(cls, "") + data


def _page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert not page.open, f"unclosed elements: {page.open}"
    return page


def _relative_links_resolve(root: Path, links: list[str]) -> list[str]:
    relative = [link for link in links if "://" not in link and not link.startswith(("#", "/", "mailto:"))]
    for link in relative:
        target = root / link
        assert target.exists(), f"{link} does not resolve from {root}"
        assert target.resolve().is_relative_to(root.resolve()), link
        assert link.endswith("/") == target.is_dir(), link
    return relative


def _image(path: Path, boxes: list[tuple[str, tuple[float, float, float, float]]]) -> None:
    pixels = np.full((120, 160, 3), 200, np.uint8)
    for _, (x0, y0, x1, y1) in boxes:
        pixels[int(y0):int(y1), int(x0):int(x1)] = (40, 40, 40)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _finished_run(tmp_path: Path, *, upload: dict | None = None) -> local.LocalRun:
    """A run folder as a finished quickstart leaves it: every stage's files, the score and the hidden truth."""
    run = local.prepare(REQUEST, store=str(tmp_path / "runs"), run_id="done")
    dataset = run.artifact(artifacts.DATASET)
    truth = {  # image -> objects the generator drew
        "a.jpg": [("square", (10.0, 10.0, 50.0, 50.0)), ("circle", (90.0, 20.0, 140.0, 70.0))],
        "b.jpg": [("triangle", (20.0, 60.0, 60.0, 100.0))],
    }
    items = []
    for frame, (name, boxes) in enumerate(truth.items()):
        _image(dataset / "unannotated" / name, boxes)
        items.append({"frame": frame, "name": name, "width": 160, "height": 120, "path": f"unannotated/{name}"})
    artifacts.write_json(dataset / artifacts.UNANNOTATED, {"count": len(items), "images": items})
    artifacts.write_json(dataset / artifacts.DATASET_SUMMARY, {
        "labels": LABELS, "images": {"train": 30, "val": 5, "unannotated": 2, "skipped": 1},
        "frames": {"awaiting_review": 0}, "warnings": ["only 40 annotated objects"]})
    Image.new("RGB", (40, 30)).save(dataset / artifacts.DATASET_PLOT)
    model = run.artifact(artifacts.MODEL)
    model.mkdir(parents=True)
    artifacts.write_json(model / artifacts.METRICS, {
        "total_steps": 30, "epochs": 3, "global_batch": 8, "training_seconds": 90,
        "final": {"AP": 0.4321, "AP50": 0.65, "AP75": 0.39, "AP_small": -1.0, "AP_medium": 0.43, "AP_large": -1.0},
        "per_label": {"square": {"AP": 0.5, "AP50": 0.7}, "circle": {"AP": -1.0, "AP50": -1.0}}})
    Image.new("RGB", (40, 30)).save(model / artifacts.TRAINING_PLOT)
    exported = run.artifact(artifacts.EXPORTED)
    exported.mkdir(parents=True)
    artifacts.write_json(exported / artifacts.MODEL_MANIFEST, {"score_threshold": 0.05, "exports": [
        {"file": "model_fp32.tflite", "bytes": 3 * 2**20}, {"file": "saved_model/saved_model.pb", "bytes": 2**20},
        {"file": "saved_model/variables/variables.index", "bytes": 2**19}]})
    (exported / artifacts.MODEL_CARD).write_text("# card\n")
    annotations = run.artifact(artifacts.ANNOTATIONS)
    annotations.mkdir(parents=True)
    # predictions: the square found, a false square on b.jpg; the circle and the triangle missed
    coco = {"categories": [{"id": i + 1, "name": n} for i, n in enumerate(LABELS)],
            "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
            "annotations": [{"image_id": 1, "category_id": 1, "bbox": [11, 9, 40, 41], "score": 0.91},
                            {"image_id": 2, "category_id": 1, "bbox": [100, 10, 30, 30], "score": 0.52}]}
    artifacts.write_json(annotations / artifacts.COCO_JSON, coco)
    records = [ImageRecord(0, "a.jpg", 160, 120, (Shape("square", "box", (11, 9, 51, 50), score=0.91),)),
               ImageRecord(1, "b.jpg", 160, 120, (Shape("square", "box", (100, 10, 130, 40), score=0.52),))]
    write_cvat_xml(annotations / artifacts.CVAT_XML, TaskMeta(labels=tuple(LabelSpec(n) for n in LABELS)), records)
    artifacts.write_json(annotations / artifacts.NEXT_TO_ANNOTATE, {"frames": []})
    tally = Tally(labels=LABELS)
    for record in records:
        tally.add(record)
    tally.add_scores([0.91, 0.52, 0.2, 0.1], [1, 1, 2, 3], LABELS)
    summary = tally.summary(images_per_second=50.0, runtime="tflite-fp32", threshold={"default": 0.5, "per_label": {
        "square": 0.3, "circle": 0.6}}, threshold_origin="model thresholds.json", labels=LABELS)
    summary["upload" if upload else "upload_note"] = upload or "not uploaded: CVAT_HOST is not set"
    artifacts.write_json(annotations / artifacts.ANNOTATION_SUMMARY, summary)
    plot_scores(annotations / artifacts.SCORES_PLOT, summary, summary["threshold"])
    (annotations / artifacts.STAGE_REPORT).write_text("# Pre-annotations\n")
    truth_xml = tmp_path / "truth.xml"
    write_cvat_xml(truth_xml, TaskMeta(labels=tuple(LabelSpec(n) for n in LABELS)), [
        ImageRecord(frame, name, 160, 120, tuple(Shape(label, "box", box) for label, box in boxes))
        for frame, (name, boxes) in enumerate(truth.items())])
    artifacts.write_json(run.root / artifacts.QUICKSTART_SCORE, {"pre_annotations": {
        "images": 2, "objects": 3, "AP": 0.25, "AP50": 0.33, "AR100": 0.33, "truth": str(truth_xml)}})
    for stage in run.pipeline.stages:
        run.stage_dir(stage.name).mkdir(parents=True, exist_ok=True)
        (run.stage_dir(stage.name) / artifacts.STAGE_LOG).write_text("$ python -m ...\n")
        run.results[stage.name] = local.StageResult(stage.name, "succeeded", 12.0, 0, 1)
    return run


def test_a_finished_run_report_links_every_file_and_says_what_to_bring_into_cvat(tmp_path):
    run = _finished_run(tmp_path)
    write_run_report(run)
    page = _page(run.root / artifacts.RUN_REPORT_HTML)
    linked = _relative_links_resolve(run.root, page.links)
    assert {"pre-annotations.png", "pre-annotate/annotations/scores.png", "train/model/training.png",
            "create-dataset/dataset/dataset.png", "pre-annotate/log.txt", "convert/exported/"} <= set(linked)
    box = " ".join(page.text_of["box cvat"].split())
    for name in (artifacts.CVAT_XML, artifacts.COCO_JSON, artifacts.NEXT_TO_ANNOTATE):
        assert f"pre-annotate/annotations/{name}" in page.links and name in box
    assert "Upload annotations" in box and "import_mode=append" in box and "CVAT_HOST is not set" in box
    # the command that adds them through the API is the stage's own, with a task id to fill in
    assert "python -m cvat_argo.steps.annotate --model" in box and "--cvat-task-id TASK_ID" in box
    assert str(run.artifact(artifacts.EXPORTED).resolve()) in box

    markdown = (run.root / artifacts.RUN_REPORT).read_text()
    assert markdown.startswith("# Run done: succeeded")
    _relative_links_resolve(run.root, [m.split(")")[0] for m in markdown.split("](")[1:]])
    html = (run.root / artifacts.RUN_REPORT_HTML).read_text()
    for text in (markdown, html):  # the same facts in both, COCO's -1 as n/a
        assert "-1.0" not in text and "n/a" in text
        assert "0.432" in text and "saved_model/ (1.5 MB)" in text and "returns no detection scoring under 0.05" in text
    assert "| 0.432 | 0.650 | 0.390 | n/a | 0.430 | n/a |" in markdown
    assert "| circle | n/a | n/a |" in markdown
    # per label: shapes kept, every detection the runtime returned, the threshold used
    assert "| square | 2 | 2 | 0.3 |" in markdown and "| circle | 0 | 1 | 0.6 |" in markdown
    # against the hidden truth: objects, found, missed, false positives
    assert "| square | 1 | 1 | 0 | 1 |" in markdown and "| circle | 1 | 0 | 1 | 0 |" in markdown
    assert "| triangle | 1 | 0 | 1 | 0 |" in markdown


def test_a_report_after_an_upload_says_what_went_to_the_task(tmp_path):
    upload = {"task_id": 42, "dry_run": False, "created": 2, "frames_created": 2, "frames_human": 5,
              "frames_other_auto": 1, "already_present": 0}
    run = _finished_run(tmp_path, upload=upload)
    write_run_report(run)
    box = " ".join(_page(run.root / artifacts.RUN_REPORT_HTML).text_of["box cvat"].split())
    assert "added 2 shapes to CVAT task 42 through the API, on 2 frames nobody annotated" in box
    assert "left alone 5 frames with people's shapes" in box and "steps.annotate" not in box


def _pixels_along(image: Image.Image, points: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    return [image.getpixel(point) for point in points]


def test_the_grid_draws_missed_objects_dashed_and_false_positives_apart(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (200, 150), GREY).save(path)
    predicted = [grid.Mark("square", (20, 60, 70, 110), score=0.9), grid.Mark("square", (150, 100, 190, 140), score=0.4)]
    truth = [("square", (22, 62, 70, 110)), ("circle", (110, 40, 170, 90))]
    marks = grid.against_truth(predicted, truth)
    assert grid.tally(marks) == {grid.FOUND: 1, grid.FALSE_POSITIVE: 1, grid.MISSED: 1, grid.PREDICTED: 0}
    colours = {label: label_colour(i) for i, label in enumerate(LABELS)}
    drawn = grid.draw_picture(grid.Picture("a.png", path, tuple(marks)), colours, width=200)
    square, circle = rgb(colours["square"]), rgb(colours["circle"])

    # found: a solid outline in the square's colour down its whole left side (tags sit at the top)
    assert set(_pixels_along(drawn, [(21, y) for y in range(80, 110)])) == {square}
    # missed: the circle's right side alternates between its colour and the background
    right = _pixels_along(drawn, [(170, y) for y in range(45, 88)])
    assert circle in right and GREY in right
    runs = sum(1 for a, b in itertools.pairwise(right) if (a == circle) != (b == circle))
    assert runs >= 4  # at least two dashes
    # the false positive's tag is black, with white text; a found object's tag is in its label's colour
    assert (0, 0, 0) in _pixels_along(drawn, [(x, y) for x in range(150, 190) for y in range(80, 100)])
    assert square in _pixels_along(drawn, [(x, y) for x in range(22, 60) for y in range(44, 58)])

    # without the truth every prediction is a plain solid box: nothing is called missed
    plain = grid.draw_picture(grid.Picture("a.png", path, tuple(predicted)), colours, width=200)
    assert circle not in _pixels_along(plain, [(170, y) for y in range(45, 88)])
    out = grid.draw_grid([grid.Picture("a.png", path, tuple(marks))] * 5, LABELS, tmp_path / "grid.png",
                         with_truth=True)
    with Image.open(out) as image:
        assert image.width == 4 * grid.CELL_WIDTH + 5 * grid.GAP and image.height > 2 * 150


def test_a_failed_run_report_names_the_stage_its_error_and_its_log(tmp_path):
    broken = tmp_path / "export.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    store = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "cvat_argo", "run", "--source", str(broken), "--model", "ssd-mobilenet-v2-small",
         "--args", "epochs=1", "--store", str(store), "--run-id", "broken"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, result.stdout + result.stderr
    root = store / "broken"
    page = _page(root / artifacts.RUN_REPORT_HTML)
    _relative_links_resolve(root, page.links)
    failure = " ".join(page.text_of["box failure"].split())
    assert "Stage create-dataset failed" in failure and "export.zip" in failure and "damaged or truncated" in failure
    assert "create-dataset/log.txt" in page.links and str((root / "create-dataset" / "log.txt").resolve()) in failure
    assert "python -m cvat_argo run --resume broken" in failure
    markdown = (root / artifacts.RUN_REPORT).read_text()
    assert markdown.startswith("# Run broken: failed in create-dataset")
    assert "[create-dataset/log.txt](create-dataset/log.txt)" in markdown
    assert "What to bring into CVAT" not in markdown  # nothing was pre-annotated


def test_an_error_with_markup_is_shown_as_text(tmp_path):
    """The HTML is autoescaped: a log line is text, never markup."""
    run = local.prepare(REQUEST, store=str(tmp_path / "runs"), run_id="odd")
    (run.stage_dir("train")).mkdir(parents=True)
    (run.stage_dir("train") / artifacts.STAGE_LOG).write_text("boom\n")
    run.results["train"] = local.StageResult("train", "failed", 3.0, 1, 2, ["step 1", "error: bad <b>value</b> & co"])
    write_run_report(run)
    html = (run.root / artifacts.RUN_REPORT_HTML).read_text()
    assert "bad &lt;b&gt;value&lt;/b&gt; &amp; co" in html and "<b>value</b>" not in html
    assert "Exit code 1 after 2 attempt(s)" in html
    assert "**bad <b>value</b> & co**" in (run.root / artifacts.RUN_REPORT).read_text()


@pytest.mark.parametrize(("low", "high"), [(1.2, 3.5), (0.05, 40.0), (0.3, 0.9)])
def test_log_axes_are_labelled_with_plain_numbers(low, high):
    from cvat_argo.reports.plots import new_figure, plain_log_ticks

    figure, axis = new_figure()
    axis.plot([0, 1], [low, high])
    axis.set_yscale("log")
    plain_log_ticks(axis.yaxis)
    figure.canvas.draw()
    labels = [t.get_text() for t in axis.get_yticklabels(which="both") if t.get_text()]
    assert len(labels) >= 2
    for label in labels:
        float(label.replace(",", ""))  # "2", "0.3", "1,000": never "2x10^0" or "$\\mathdefault{...}$"


def test_the_model_card_shows_coco_minus_one_as_not_measured():
    from cvat_argo.export.model_card import model_card

    manifest = {"model": "m", "experiment": "e", "architecture": "retinanet", "input_size": 128,
                "source": {"step": 10}, "labels": ["a"], "exports": [{"file": "model_fp32.tflite", "bytes": 10}],
                "runtimes": ["tflite-fp32"], "tflite": {"available": True}}
    test = {"images": ["x.jpg"], "score_floor": 0.3, "compared_detections": 1,
            "runtimes": {"tflite-fp32": {"ok": True, "compared": 1}}}
    card = model_card(manifest, {"final": {"AP": 0.5, "AP_large": -1.0}}, {}, test)
    assert "| AP | 0.500 |" in card and "| AP_large | n/a |" in card and "-1.000" not in card
    assert "n/a: the validation split has no objects of that kind" in card


def test_the_score_plot_reads_a_summary_without_detections(tmp_path):
    summary = Tally(labels=LABELS).summary(labels=LABELS)
    plot_scores(tmp_path / "scores.png", summary, {"default": 0.5, "per_label": {}})
    with Image.open(tmp_path / "scores.png") as image:
        assert image.size == (800, 420)
    assert json.loads(json.dumps(summary))["score_histogram"]["of"] == "every detection"
