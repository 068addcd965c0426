"""qc-report counts each prediction exactly once, on the frames people reviewed.

The story: our predictions go into a task (the export as it looks right after the upload: every
prediction a ``source="auto"`` box), then a simulated reviewer edits that CVAT XML export the way
people and API scripts do: keeps boxes, moves one by 12 px through the API (its source stays
``auto``), relabels one in the UI (``semi-auto``), deletes some, draws two (``manual``), and leaves
one frame untouched. The report must say accepted, corrected, deleted and misses exactly, per label,
with sums that close, and leave the untouched frame out unless ``--reviewed`` names it.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cvat_argo import cli
from cvat_argo.cvat import qc
from cvat_argo.cvat.review import RULE_SOURCES_ONLY, RULE_WITH_JOBS
from cvat_argo.engines.artifacts import write_json
from cvat_argo.errors import DatasetError
from cvat_argo.formats.annotations import ImageRecord, LabelSpec, Shape, TaskMeta
from cvat_argo.formats.cvat_xml.reader import CvatXmlReader
from cvat_argo.formats.cvat_xml.writer import write_cvat_xml
from cvat_argo.inference.outputs import coco_document

LABELS = (LabelSpec("car", type="rectangle"), LabelSpec("person", type="rectangle"))
META = TaskMeta(labels=LABELS, name="review", size=7, mode="annotation")


def auto(label: str, box: tuple[float, ...], score: float) -> Shape:
    return Shape(label, "box", tuple(float(v) for v in box), source="auto", score=score)  # type: ignore[arg-type]


def manual(label: str, box: tuple[float, ...]) -> Shape:
    return Shape(label, "box", tuple(float(v) for v in box), source="manual")  # type: ignore[arg-type]


PREDICTIONS = {
    "img_0.jpg": (auto("car", (10, 10, 50, 50), 0.95), auto("person", (60, 10, 100, 90), 0.85)),
    "img_1.jpg": (auto("car", (20, 20, 60, 60), 0.75), auto("car", (100, 20, 140, 60), 0.45)),
    "img_2.jpg": (auto("person", (10, 10, 40, 90), 0.65), auto("car", (120, 30, 160, 70), 0.25)),
    "img_3.jpg": (auto("car", (30, 30, 70, 70), 0.55), auto("person", (100, 20, 130, 100), 0.35)),
    "img_5.jpg": (auto("car", (40, 40, 80, 80), 0.15),),
    "img_6.jpg": (auto("person", (5, 5, 25, 45), 0.5),),  # a frame of a job that was not exported
}
PEOPLE_BEFORE = {"img_4.jpg": (manual("car", (1, 1, 50, 50)),)}  # annotated by people, never pre-annotated
FRAMES = ["img_0.jpg", "img_1.jpg", "img_2.jpg", "img_3.jpg", "img_4.jpg", "img_5.jpg"]


def record(frame: int, name: str, shapes: tuple[Shape, ...]) -> ImageRecord:
    return ImageRecord(frame, name, 200, 150, shapes)


def write_predictions(folder: Path) -> Path:
    """The pre-annotate stage's output folder: annotations.xml and coco.json (with the scores)."""
    folder.mkdir()
    records = [record(int(name[4]), name, shapes) for name, shapes in PREDICTIONS.items()]
    write_cvat_xml(folder / "annotations.xml", META, records)
    write_json(folder / "coco.json", coco_document([spec.name for spec in LABELS], records))
    return folder


def write_uploaded_export(folder: Path) -> Path:
    """The task exported right after the upload: the predictions as auto boxes (scores are not kept)."""
    folder.mkdir()
    records = []
    for frame, name in enumerate(FRAMES):
        shapes = PEOPLE_BEFORE.get(name) or PREDICTIONS.get(name, ())
        records.append(record(frame, name, tuple(dataclasses.replace(s, score=None) for s in shapes)))
    write_cvat_xml(folder / "annotations.xml", META, records)
    return folder


def review_in_cvat(export: Path) -> None:
    """Edit the export as people did in CVAT; frame 3 nobody touched."""
    xml = export / "annotations.xml"
    edited = []
    for image in CvatXmlReader(xml).images():
        shapes = list(image.shapes)
        if image.name == "img_0.jpg":  # person moved 12 px to the right through the API: stays auto
            x0, y0, x1, y1 = shapes[1].box  # type: ignore[misc]
            shapes[1] = dataclasses.replace(shapes[1], box=(x0 + 12, y0, x1 + 12, y1))
        elif image.name == "img_1.jpg":  # the second car is a person (UI: semi-auto), and one more person
            shapes[1] = dataclasses.replace(shapes[1], label="person", source="semi-auto")
            shapes.append(manual("person", (150, 80, 190, 140)))
        elif image.name == "img_2.jpg":  # the car was wrong; a car the model missed
            del shapes[1]
            shapes.append(manual("car", (50, 100, 90, 140)))
        elif image.name == "img_5.jpg":  # the only prediction was wrong
            shapes = []
        edited.append(dataclasses.replace(image, shapes=tuple(shapes)))
    write_cvat_xml(xml, CvatXmlReader(xml).meta, edited)


@pytest.fixture
def reviewed(tmp_path: Path) -> tuple[Path, Path]:
    predictions = write_predictions(tmp_path / "pre-annotate")
    export = write_uploaded_export(tmp_path / "export")
    review_in_cvat(export)
    return export, predictions


def counts(row: dict) -> tuple[int, ...]:
    return tuple(row[key] for key in ("predictions", "accepted", "corrected", "relabelled", "deleted", "misses",
                                      "reviewed_shapes"))


def assert_sums_close(document: dict) -> None:
    rows = [*document["labels"].values(), document["total"]]
    for row in rows:
        assert row["accepted"] + row["corrected"] + row["deleted"] == row["predictions"]
    for key in ("predictions", "accepted", "corrected", "deleted", "misses", "reviewed_shapes"):
        assert sum(row[key] for row in document["labels"].values()) == document["total"][key]
    total = document["total"]
    assert total["accepted"] + total["corrected"] + total["misses"] == total["reviewed_shapes"]


def test_each_prediction_counts_once_and_the_untouched_frame_awaits_review(reviewed, tmp_path, capsys):
    export, predictions = reviewed
    assert cli.main(["qc-report", str(export), "--predictions", str(predictions), "--out", str(tmp_path / "qc")]) == 0
    document = json.loads((tmp_path / "qc" / "qc.json").read_text())

    frames = document["frames"]
    assert (frames["pre_annotated"], frames["counted"], frames["awaiting_review"], frames["awaiting_predictions"],
            frames["empty_unreviewed"], frames["not_in_export"]) == (5, 3, 1, 2, 1, 1)
    assert frames["rule"] == RULE_SOURCES_ONLY and frames["reviewed"] is None
    car, person, total = document["labels"]["car"], document["labels"]["person"], document["total"]
    # predictions, accepted, corrected, relabelled, deleted, misses, reviewed shapes
    assert counts(car) == (4, 2, 1, 1, 1, 1, 3)  # the relabelled car is corrected, under car
    assert counts(person) == (2, 1, 1, 0, 0, 1, 4)  # the moved person is corrected, whatever its source says
    assert counts(total) == (6, 3, 2, 1, 1, 2, 7)
    assert_sums_close(document)
    assert (car["precision"], person["precision"], total["precision"]) == (0.5, 1.0, pytest.approx(4 / 6, abs=1e-4))
    assert (car["recall"], person["recall"], total["recall"]) == (pytest.approx(2 / 3, abs=1e-4), 0.5,
                                                                   pytest.approx(4 / 7, abs=1e-4))
    # car scores .95 kept, .75 kept, .45 relabelled, .25 deleted: 90% precision from 0.75 on
    assert (car["threshold_for_precision"], person["threshold_for_precision"],
            total["threshold_for_precision"]) == (0.75, 0.65, 0.65)
    bands = total["by_score"]
    assert bands["accepted"] == [0, 0, 0, 0, 0, 0, 1, 1, 0, 1]
    assert bands["corrected"] == [0, 0, 0, 0, 1, 0, 0, 0, 1, 0]
    assert bands["deleted"] == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert car["by_score"]["acceptance"][4] == 0.0 and car["by_score"]["acceptance"][9] == 1.0

    out = capsys.readouterr().out
    assert "6 predictions: 3 accepted, 2 corrected (1 relabelled), 1 deleted; 2 misses" in out
    assert "1 awaiting review" in out and "--reviewed" in out
    markdown = (tmp_path / "qc" / "qc.md").read_text()
    assert "| car | 4 | 2 | 1 (1) | 1 | 1 | 50% | 67% | 0.75 |" in markdown
    assert "| **all** | 6 | 3 | 2 (1) | 1 | 2 | 67% | 57% | 0.65 |" in markdown
    assert RULE_SOURCES_ONLY in markdown and "1 awaiting review (2 predictions, not counted)" in markdown
    png = (tmp_path / "qc" / "qc.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_reviewed_frames_count_accepted_frames_and_empty_ones(reviewed, tmp_path):
    export, predictions = reviewed
    everything = qc.qc_report(str(export), tmp_path / "all", predictions, reviewed_frames=qc.ReviewedFrames.parse("all"))
    frames = everything["frames"]
    assert (frames["counted"], frames["awaiting_review"], frames["empty_unreviewed"]) == (5, 0, 0)
    assert frames["rule"] == RULE_WITH_JOBS and frames["reviewed"] == "all"
    car, person, total = everything["labels"]["car"], everything["labels"]["person"], everything["total"]
    assert counts(car) == (6, 3, 1, 1, 2, 1, 4)  # frame 3's car accepted, frame 5's car deleted
    assert counts(person) == (3, 2, 1, 0, 0, 1, 5)
    assert counts(total) == (9, 5, 2, 1, 2, 2, 9)
    assert_sums_close(everything)
    assert (car["precision"], car["recall"], person["precision"], person["recall"]) == (0.5, 0.75, 1.0, 0.6)
    assert (car["threshold_for_precision"], person["threshold_for_precision"],
            total["threshold_for_precision"]) == (0.55, 0.35, 0.55)

    # ranges name the frames of the completed jobs: 0-2 leaves frame 3 awaiting review, 3,5 counts it
    first_jobs = qc.qc_report(str(export), tmp_path / "0-2", predictions,
                              reviewed_frames=qc.ReviewedFrames.parse("0-2"))
    assert (first_jobs["frames"]["counted"], first_jobs["frames"]["awaiting_review"]) == (3, 1)
    assert counts(first_jobs["total"]) == (6, 3, 2, 1, 1, 2, 7)
    later = qc.qc_report(str(export), tmp_path / "3,5", predictions, reviewed_frames=qc.ReviewedFrames.parse("0-3, 5"))
    assert later["labels"] == everything["labels"]


def test_a_move_below_the_iou_is_one_deletion_and_one_miss(reviewed, tmp_path):
    export, predictions = reviewed
    strict = qc.qc_report(str(export), tmp_path / "qc", predictions, min_iou=0.6)  # the moved person: IoU 0.54
    # Unmatched, the moved box is an auto shape we did not propose: nothing on frame 0 says a person
    # looked at it (another model's box would look the same), so only a named review counts it.
    assert strict["frames"]["counted"] == 2 and strict["frames"]["awaiting_review"] == 2
    named = {"reviewed_frames": qc.ReviewedFrames.parse("0-2,5")}
    loose = qc.qc_report(str(export), tmp_path / "loose", predictions, **named)["labels"]["person"]
    strict = qc.qc_report(str(export), tmp_path / "strict", predictions, min_iou=0.6, **named)
    person = strict["labels"]["person"]
    # the same person: corrected at IoU 0.3; one deletion (the prediction) and one miss (the moved box) at 0.6
    assert counts(person) == (loose["predictions"], loose["accepted"], loose["corrected"] - 1, loose["relabelled"],
                              loose["deleted"] + 1, loose["misses"] + 1, loose["reviewed_shapes"])
    assert_sums_close(strict)


def test_a_shape_matches_the_prediction_of_its_own_label_first(tmp_path):
    """A car and a person proposed on one object; people kept the person, a little off. The car box
    overlaps it more, but the person proposal is the one that was kept (corrected), the car deleted."""
    predictions = tmp_path / "coco.json"
    proposed = [record(0, "img_0.jpg", (auto("car", (0, 0, 40, 40), 0.6), auto("person", (4, 0, 44, 40), 0.7)))]
    write_json(predictions, coco_document([spec.name for spec in LABELS], proposed))
    (tmp_path / "export").mkdir()
    write_cvat_xml(tmp_path / "export" / "annotations.xml", META,
                   [record(0, "img_0.jpg", (Shape("person", "box", (0, 0, 40, 40), source="semi-auto"),))])
    document = qc.qc_report(str(tmp_path / "export"), tmp_path / "qc", predictions)
    assert counts(document["labels"]["car"]) == (1, 0, 0, 0, 1, 0, 0)
    assert counts(document["labels"]["person"]) == (1, 0, 1, 0, 0, 0, 1)
    assert document["labels"]["person"]["recall"] == 1.0


def test_predictions_imported_as_a_file_and_left_alone_await_review(tmp_path):
    predictions = write_predictions(tmp_path / "pre-annotate")
    export = tmp_path / "export"
    export.mkdir()
    write_cvat_xml(export / "annotations.xml", META,
                   [record(int(name[4]), name, tuple(dataclasses.replace(s, source="file", score=None) for s in shapes))
                    for name, shapes in PREDICTIONS.items() if name != "img_6.jpg"])
    document = qc.qc_report(str(export), tmp_path / "qc", predictions)
    assert (document["frames"]["counted"], document["frames"]["awaiting_review"]) == (0, 5)
    assert document["total"]["predictions"] == 0 and document["total"]["precision"] is None
    assert (tmp_path / "qc" / "qc.md").is_file()


def test_counts_that_do_not_close_stop_the_report():
    broken = qc.Review(with_predictions=True, labels={"car": qc.LabelTally(predictions=3, accepted=2, deleted=2)})
    with pytest.raises(qc.CountingError, match=r"car.*accepted 2 \+ corrected 0 \+ deleted 2 != predictions 3"):
        qc.check_sums(broken)
    closed = qc.Review(with_predictions=True, labels={"car": qc.LabelTally(predictions=4, accepted=2, deleted=2,
                                                                          reviewed=3, found=2, misses=1)})
    qc.check_sums(closed)


def test_threshold_for_precision():
    kept, dropped = ("accepted", True), ("deleted", False)
    assert qc.threshold_for_precision([(0.9, *dropped), (0.5, *kept)]) is None  # the best score was wrong
    assert qc.threshold_for_precision([]) is None
    # ties: a threshold keeps both 0.7s or neither
    ranked = [(0.95, *kept), *[(0.8, *kept)] * 8, (0.7, *kept), (0.7, *dropped), (0.2, *dropped)]
    assert qc.threshold_for_precision(ranked) == 0.7  # 10 of 11 from 0.7 on, 10 of 12 from 0.2
    assert qc.threshold_for_precision(ranked[:-1], target=1.0) == 0.8


def test_the_cli_refuses_bad_inputs_in_one_line(reviewed, tmp_path):
    export, predictions = reviewed
    summary = predictions / "summary.json"
    summary.write_text(json.dumps({"images": 5, "shapes": 9}))
    cases = [
        ([str(tmp_path / "nowhere.zip"), "--predictions", str(predictions)], str(tmp_path / "nowhere.zip"),
         "does not exist"),
        ([str(export), "--predictions", str(summary)], str(summary), "'images'"),
        ([str(export), "--predictions", str(export / "annotations.xml")], str(export / "annotations.xml"),
         "not the pre-annotate stage's output"),
        ([str(export), "--predictions", str(predictions), "--reviewed", "5-2"], "--reviewed", "'5-2'"),
        ([str(export), "--predictions", str(predictions), "--reviewed", "40-50"], "--reviewed 40-50",
         "names no frame"),
    ]
    for argv, named, why in cases:
        out = tmp_path / "qc"
        done = subprocess.run([sys.executable, "-m", "cvat_argo", "qc-report", *argv, "--out", str(out)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == DatasetError.exit_code, done.stderr
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("error: "), done.stderr
        assert named in errors[0] and why in errors[0], errors[0]
        assert not out.exists()  # nothing written for bad input
