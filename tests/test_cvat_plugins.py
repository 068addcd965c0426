"""The ways back into CVAT: the SDK upload (against a CVAT server on loopback), the auto-annotation
function (checked by cvat-sdk's own validation), the nuclio bundle, and the QC report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cvat_argo.cvat import upload as cvat_upload
from cvat_argo.cvat.server import connect
from cvat_argo.engines.artifacts import write_json
from cvat_argo.errors import CvatArgoError, DatasetError, TransientError
from cvat_argo.formats.annotations import ImageRecord, LabelSpec, Shape, TaskMeta
from cvat_argo.formats.cvat_xml.writer import write_cvat_xml
from cvat_argo.inference.outputs import coco_document
from support.annotate_fixtures import model_labels, trained_exported_model
from support.fake_cvat_server import FakeTask, cvat_server, label
from support.fixtures_servers import s3_server  # noqa: F401
from support.nuclio_harness import run_handler
from support.tiny_dataset import tiny_photos

pytest.importorskip("cvat_sdk")


def auto(label_name: str, box, score: float = 0.9) -> Shape:
    return Shape(label_name, "box", tuple(float(v) for v in box), source="auto", score=score)


def existing(frame: int, label_id: int, box, source: str, type_: str = "rectangle") -> dict:
    return {"type": type_, "occluded": False, "outside": False, "z_order": 0, "rotation": 0.0,
            "points": list(box), "frame": frame, "label_id": label_id, "group": 0, "source": source,
            "attributes": [], "elements": [], "id": 500 + frame}


FRAMES = [{"name": f"img_{i}.jpg", "width": 100, "height": 80} for i in range(9)]


def records() -> list[ImageRecord]:
    """Predictions for frames 0..8, two shapes each."""
    return [ImageRecord(i, f"img_{i}.jpg", 100, 80, (auto("car", (10, 10, 40, 40), 0.87),
                                                      auto("person", (50, 20, 70, 70), 0.55)))
            for i in range(9)]


def task_with_people_work() -> FakeTask:
    task = FakeTask(7, labels=[label(1, "car", "rectangle", score="number"), label(2, "person", "any", score="text"),
                               label(3, "tree")], frames=list(FRAMES))
    task.shapes = [
        existing(1, 1, (1, 1, 5, 5), "manual"),  # a person drew here
        existing(2, 2, (50, 20, 70, 70), "semi-auto"),  # a person corrected a machine shape
        existing(3, 1, (10, 10, 40, 40), "auto"),  # a machine shape where ours would go, but no ledger lists it
        existing(4, 1, (60, 60, 90, 79), "auto"),  # a machine shape that is not ours
        existing(8, 3, (0, 0, 3, 3, 6, 0), "file", "polygon"),  # uploaded from a file
    ]
    task.tags = [{"frame": 5, "label_id": 3, "source": "manual", "group": 0, "attributes": [], "id": 9}]
    task.tracks = [{"frame": 6, "label_id": 3, "source": "manual", "group": 0, "attributes": [], "id": 10,
                    "shapes": [{"frame": 6, "type": "rectangle", "points": [1, 1, 9, 9], "outside": False},
                               {"frame": 7, "type": "rectangle", "points": [1, 1, 9, 9], "outside": True}]}]
    return task


def test_upload_appends_only_on_frames_without_human_shapes_and_never_duplicates():
    task = task_with_people_work()
    with cvat_server(task) as env:
        client = connect(env)
        first = cvat_upload.upload(client, 7, records(), ("car", "person"))
        assert first == {"task_id": 7, "dry_run": False, "created": 4, "frames_created": 2, "frames_human": 5,
                         "frames_other_auto": 2, "already_present": 1, "frames_deleted_in_task": 0,
                         "frames_reviewed": 0, "frames_ours_kept": 0, "frames_ours_edited": 0, "frames_refreshed": 0,
                         "shapes_deleted": 0, "refresh": False, "ledger": None}
        assert [method for method, _, _ in task.requests].count("PATCH") == 1
        (body,) = task.patches
        sent = body["shapes"]
        # 1, 2, 5, 6, 8 have people's work; 3 and 4 machine shapes no ledger calls ours (the upload
        # ledger's rounds are in test_upload_review.py)
        assert sorted({s["frame"] for s in sent}) == [0, 7]
        assert sorted((s["frame"], s["label_id"]) for s in sent) == [(0, 1), (0, 2), (7, 1), (7, 2)]
        assert all(s["source"] == "auto" and "id" not in s for s in sent)
        car = next(s for s in sent if s["label_id"] == 1)
        assert car["type"] == "rectangle" and car["points"] == [10.0, 10.0, 40.0, 40.0]
        assert car["attributes"] == [{"spec_id": 10, "value": "87"}]  # number 0..100: a percentage
        person = next(s for s in sent if s["label_id"] == 2)
        assert person["attributes"] == [{"spec_id": 20, "value": "0.550"}]  # text: three decimals
        # a second run without a ledger leaves every frame with machine shapes alone: it sends nothing
        second = cvat_upload.upload(client, 7, records(), ("car", "person"))
        assert second["created"] == 0 and second["already_present"] == 5 and len(task.patches) == 1
        # nothing but reads and the one append went to the server
        assert {method for method, _, _ in task.requests} == {"GET", "PATCH"}


def test_dry_run_reports_and_sends_nothing():
    task = task_with_people_work()
    with cvat_server(task) as env:
        summary = cvat_upload.upload(connect(env), 7, records(), ("car", "person"), dry_run=True)
    assert summary["created"] == 4 and summary["dry_run"] is True
    assert task.patches == []


def test_labels_the_task_lacks_stop_before_any_change():
    task = task_with_people_work()
    with cvat_server(task) as env, pytest.raises(DatasetError) as error:
        cvat_upload.upload(connect(env), 7, records(), ("car", "person", "bicycle"))
    assert "lacks the model's label(s) 'bicycle'" in str(error.value) and "nothing was uploaded" in str(error.value)
    assert task.patches == []


def test_predictions_for_another_tasks_images_are_refused():
    task = task_with_people_work()
    task.frames = [{"name": f"other_{i}.jpg", "width": 100, "height": 80} for i in range(9)]
    with cvat_server(task) as env, pytest.raises(DatasetError, match=r"frame 0 is 'other_0\.jpg'"):
        cvat_upload.upload(connect(env), 7, records(), ("car", "person"))
    assert task.patches == []


def test_deleted_frames_are_skipped_and_names_match_by_suffix():
    task = task_with_people_work()
    task.frames = [{"name": f"images/img_{i}.jpg", "width": 100, "height": 80} for i in range(9)]
    task.deleted_frames = [0]
    with cvat_server(task) as env:
        summary = cvat_upload.upload(connect(env), 7, records(), ("car", "person"))
    assert summary["frames_deleted_in_task"] == 1
    assert sorted({s["frame"] for s in task.patches[0]["shapes"]}) == [7]


def test_wrong_token_is_a_readable_error():
    task = task_with_people_work()
    with cvat_server(task) as env, pytest.raises(CvatArgoError, match="refused") as error:
        cvat_upload.upload(connect({**env, "CVAT_ACCESS_TOKEN": "wrong"}), 7, records(), ("car",))
    assert "wrong" not in str(error.value)


def test_missing_configuration_is_explained():
    with pytest.raises(CvatArgoError, match="set CVAT_HOST"):
        connect({})
    with pytest.raises(CvatArgoError, match="no CVAT credentials"):
        connect({"CVAT_HOST": "http://127.0.0.1:9"})


def test_a_plain_http_server_named_without_a_scheme_is_a_configuration_error_not_an_outage():
    """CVAT_HOST=host:port is tried over https; a plain-HTTP server fails the TLS handshake on every try.

    It was reported as "did not answer ... will retry" and exited 75, so Argo retried it four times.
    """
    with cvat_server(task_with_people_work()) as env:
        bare = env["CVAT_HOST"].removeprefix("http://")
        client = connect({**env, "CVAT_HOST": bare})
        with pytest.raises(CvatArgoError) as error:
            cvat_upload.upload(client, 7, records(), ("car",))
        with pytest.raises(CvatArgoError) as login:
            connect({"CVAT_HOST": bare, "CVAT_USERNAME": "u", "CVAT_PASSWORD": "secret-pw"})
    for caught in (error.value, login.value):
        assert not isinstance(caught, TransientError) and caught.exit_code != 75
        assert "WRONG_VERSION_NUMBER" in str(caught) and f"set CVAT_HOST=http://{bare}" in str(caught)
        assert "\n" not in str(caught) and "secret-pw" not in str(caught)


@pytest.mark.parametrize("host", ["cvat example.com", "ftp://cvat.example.com", "cvat.example.com:99999", "http://"])
def test_a_malformed_cvat_host_is_refused_before_any_request(host):
    with pytest.raises(CvatArgoError, match="is not a server address"):
        connect({"CVAT_HOST": host, "CVAT_ACCESS_TOKEN": "t"})


@pytest.mark.parametrize("host", ["https://me:s3cret-pw@cvat.example.com", "me:s3cret-pw@cvat.example.com:8080"])
def test_credentials_inside_cvat_host_are_refused_and_never_echoed(host):
    with pytest.raises(CvatArgoError, match="CVAT_HOST holds credentials") as error:
        connect({"CVAT_HOST": host, "CVAT_ACCESS_TOKEN": "t"})
    assert "s3cret-pw" not in str(error.value)


def test_score_values_fit_the_attribute():
    number = cvat_upload.TaskAttribute(1, "score", "number", ("0", "100", "5"))
    assert cvat_upload.score_value(0.87, number) == "85"
    assert cvat_upload.score_value(0.87, cvat_upload.TaskAttribute(1, "score", "select", ("a",))) is None
    assert cvat_upload.score_value(0.87, cvat_upload.TaskAttribute(1, "score", "number", ("0", "1", "0.01"))) == "0.87"


def test_plan_rules_directly():
    from cvat_argo.cvat.ledger import LedgerFrame, LedgerShape

    state = cvat_upload.TaskState(reviewed={4})
    state.present[1].append(Shape("car", "box", (1, 1, 2, 2), source="manual"))
    mine = cvat_upload.ExistingShape(2, "car", (10.4, 10, 40, 40.6), id=5)  # within 1 px of what the ledger lists
    state.present[2].append(auto("car", mine.box))
    state.auto_shapes[2].append(mine)
    ours = {2: LedgerFrame("r1", (LedgerShape("car", (10, 10, 40, 40), 5),))}
    predictions = {f: [auto("car", (10, 10, 40, 40)), auto("car", (0, 0, 5, 5))] for f in (0, 1, 2, 3, 4)}
    predictions[3] = []  # nothing found on frame 3: nothing to decide there
    plan = cvat_upload.plan_upload(predictions, state, ours)
    assert sorted(plan.create) == [0] and plan.frames_human == [1] and plan.frames_reviewed == [4]
    assert plan.frames_ours_kept == [2] and plan.already_present == 1 and plan.delete == {}
    refresh = cvat_upload.plan_upload(predictions, state, ours, refresh=True)
    assert refresh.delete == {2: [mine]} and sorted(refresh.create) == [0, 2] and refresh.frames_refreshed == [2]


# --- qc-report -----------------------------------------------------------------------------------

QC_LABELS = (LabelSpec("car", type="rectangle"), LabelSpec("person", type="rectangle"))


def _reviewed_export(tmp_path: Path) -> tuple[Path, Path]:
    """Our predictions, and the same task after a hand-made review.

    img_0: car accepted, person corrected (moved);  img_1: car deleted, person accepted, a car added;
    img_2: both deleted, a person added;  img_3: was annotated by people before (not pre-annotated).
    """
    predictions = [
        ImageRecord(0, "img_0.jpg", 100, 80, (auto("car", (10, 10, 40, 40), 0.95), auto("person", (50, 10, 70, 70), 0.6))),
        ImageRecord(1, "img_1.jpg", 100, 80, (auto("car", (5, 5, 20, 20), 0.35), auto("person", (30, 10, 60, 70), 0.9))),
        ImageRecord(2, "img_2.jpg", 100, 80, (auto("car", (1, 1, 9, 9), 0.31), auto("person", (60, 5, 90, 75), 0.32))),
    ]
    reviewed = [
        ImageRecord(0, "img_0.jpg", 100, 80, (auto("car", (10, 10, 40, 40), 0.95),
                                               Shape("person", "box", (52, 12, 72, 72), source="semi-auto"))),
        ImageRecord(1, "img_1.jpg", 100, 80, (auto("person", (30, 10, 60, 70), 0.9),
                                               Shape("car", "box", (70, 50, 95, 75), source="manual"))),
        ImageRecord(2, "img_2.jpg", 100, 80, (Shape("person", "box", (10, 10, 30, 60), source="manual"),)),
        ImageRecord(3, "img_3.jpg", 100, 80, (Shape("car", "box", (1, 1, 50, 50), source="manual"),)),
    ]
    meta = TaskMeta(labels=QC_LABELS, name="reviewed", size=4, mode="annotation")
    write_cvat_xml(tmp_path / "predictions.xml", meta, predictions)
    write_json(tmp_path / "coco.json", coco_document([spec.name for spec in QC_LABELS], predictions))
    (tmp_path / "export").mkdir()
    write_cvat_xml(tmp_path / "export" / "annotations.xml", meta, reviewed)
    return tmp_path / "export", tmp_path / "coco.json"


def test_qc_report_on_a_reviewed_export(tmp_path, capsys):
    from cvat_argo.cvat import qc as qc_report

    export, predictions = _reviewed_export(tmp_path)
    code = qc_report.main([str(export), "--predictions", str(predictions), "--out", str(tmp_path / "qc")])
    assert code == 0
    document = json.loads((tmp_path / "qc" / "qc.json").read_text())
    assert document["frames"]["pre_annotated"] == document["frames"]["counted"] == 3  # img_3 was never pre-annotated
    car, person = document["labels"]["car"], document["labels"]["person"]
    assert (car["accepted"], car["corrected"], car["deleted"], car["misses"]) == (1, 0, 2, 1)
    assert (person["accepted"], person["corrected"], person["deleted"], person["misses"]) == (1, 1, 1, 1)
    assert car["acceptance_rate"] == pytest.approx(1 / 3, abs=1e-3) and person["acceptance_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert car["recall"] == pytest.approx(0.5) and person["precision"] == pytest.approx(2 / 3, abs=1e-3)
    assert document["total"]["acceptance_rate"] == pytest.approx(2 / 6, abs=1e-3) and document["retrain"] is True
    # scores .95 .9 .6 kept, .35 .32 .31 deleted: 90% precision from 0.6 on
    assert document["total"]["by_score"]["deleted"][3] == 3 and document["total"]["threshold_for_precision"] == 0.6
    markdown = (tmp_path / "qc" / "qc.md").read_text()
    assert "| car | 3 | 1 | 0 (0) | 2 | 1 | 33% | 50% | 0.95 |" in markdown and "retrain" in markdown
    assert (tmp_path / "qc" / "qc.png").stat().st_size > 1000
    assert "acceptance 33%" in capsys.readouterr().out
    # the XML without score attributes gives the same counts, without the score analysis
    from_xml = qc_report.qc_report(str(export), tmp_path / "qc-xml", tmp_path / "predictions.xml")
    unscored = ("by_score", "threshold_for_precision")
    for name, row in document["labels"].items():
        assert {k: v for k, v in from_xml["labels"][name].items() if k not in unscored} == \
            {k: v for k, v in row.items() if k not in unscored}
        assert from_xml["labels"][name]["by_score"] is None


def test_qc_report_without_predictions_counts_what_people_kept(tmp_path):
    from cvat_argo.cvat import qc as qc_report

    export, _ = _reviewed_export(tmp_path)
    document = qc_report.qc_report(str(export), tmp_path / "qc")
    assert document["frames"]["counted"] == 2  # the images that still hold machine shapes
    assert document["labels"]["car"]["deleted"] is None and document["total"]["accepted"] is None
    # sources alone: 3 machine shapes kept (an auto car, a semi-auto and an auto person), 1 drawn by people
    assert (document["total"]["found_by_model"], document["total"]["misses"]) == (3, 1)
    assert document["total"]["recall"] == pytest.approx(3 / 4)


def test_qc_report_refuses_an_export_without_sources(tmp_path):
    from cvat_argo.cvat import qc as qc_report

    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "instances_default.json").write_text(json.dumps(
        {"images": [], "annotations": [], "categories": [{"id": 1, "name": "car"}]}))
    with pytest.raises(DatasetError, match=r"needs the task exported as CVAT for images 1\.1"):
        qc_report.qc_report(str(tmp_path / "coco"), tmp_path / "qc")


# --- with a real trained model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A converted tiny model: the convert stage's output folder."""
    return trained_exported_model(tmp_path_factory)


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    """A picture like the ones the tiny model trained on (shapes on grey), as a JPEG file."""
    (name, data, _), = tiny_photos(1, seed=11)
    path = tmp_path_factory.mktemp("pictures") / name
    path.write_bytes(data)
    return path


class _Context:
    """What cvat-sdk's driver passes to detect()."""

    def __init__(self, threshold=None):
        self.frame_name, self.conf_threshold, self.conv_mask_to_poly = "pic.jpg", threshold, False


@pytest.mark.slow
def test_detection_function_passes_the_sdks_own_validation(exported, picture):
    import logging

    from cvat_sdk import models
    from cvat_sdk.auto_annotation import DetectionFunctionSpec
    from cvat_sdk.auto_annotation.driver import _AnnotationMapper
    from PIL import Image

    from cvat_argo import cvat_function  # the path cvat-cli users type

    function = cvat_function.create(model=str(exported), threshold=0.0)
    spec = function.spec
    assert isinstance(spec, DetectionFunctionSpec)  # its validators ran on construction
    names = model_labels(exported)
    assert [(label.id, label.name, label.type) for label in spec.labels] == [
        (index, name, "rectangle") for index, name in enumerate(names, 1)]
    with Image.open(picture) as image:
        everything = function.detect(_Context(0.0), image)
        scores = sorted(function.detector.detect([np.asarray(image.convert("RGB"))])[0].scores)
        middle = float(scores[len(scores) // 2])
        confident = function.detect(_Context(middle), image)
        default = function.detect(_Context(None), image)
    assert everything and 0 < len(confident) < len(everything) and len(default) == len(everything)
    # the task's labels as the server lists them: other ids, another order, an extra label
    task_labels = [models.Label._from_openapi_data(name=name, id=id_, type="any", attributes=[], sublabels=[])
                   for id_, name in ((31, names[2]), (32, names[0]), (33, names[1]), (34, "person"))]
    mapper = _AnnotationMapper(logging.getLogger("test"), spec.labels, task_labels, allow_unmatched_labels=False,
                               conv_mask_to_poly=False)
    tags, shapes = mapper.validate_and_remap(everything, 5)  # raises BadFunctionError on any violation
    assert tags == [] and len(shapes) == len(everything)
    assert {s.frame for s in shapes} == {5} and {s.source for s in shapes} == {"auto"}
    assert {s.label_id for s in shapes} <= {31, 32, 33}
    width, height = Image.open(picture).size
    for shape in shapes:
        x0, y0, x1, y1 = shape.points
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


@pytest.mark.slow
def test_detection_function_loads_a_model_from_s3(exported, s3_server, tmp_path, monkeypatch):  # noqa: F811
    from cvat_argo.cvat import function as cvat_function
    from cvat_argo.storage.store import minio_client

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CVAT_ARGO_CACHE", str(tmp_path / "cache"))
    client = minio_client()
    client.make_bucket("models")
    for path in exported.rglob("*"):
        if path.is_file():
            client.fput_object("models", f"run-1/exported/{path.relative_to(exported).as_posix()}", str(path))
    function = cvat_function.create(model="s3://models/run-1/exported", runtime="tflite")
    assert tuple(label.name for label in function.spec.labels) == model_labels(exported)
    assert (tmp_path / "cache").is_dir()
    again = cvat_function.local_model("s3://models/run-1/exported")  # cached: nothing fetched twice
    assert again.parent.joinpath(".complete").is_file()


def test_detection_function_needs_a_model(monkeypatch):
    from cvat_argo.cvat import function as cvat_function

    monkeypatch.delenv("CVAT_ARGO_MODEL", raising=False)
    with pytest.raises(CvatArgoError, match="pass -p model=str:PATH_OR_S3_URI"):
        cvat_function.create()


# --- the function in cvat-sdk's own driver, against a task whose labels have types --------------------


def test_function_labels_fit_the_task_labels():
    from cvat_argo.cvat.function import LabelFit, fit_labels
    from cvat_argo.cvat.upload import TaskAttribute, TaskLabel

    def attribute(input_type, *values):
        return {"score": TaskAttribute(9, "score", input_type, values)}

    task = {
        "a": TaskLabel(1, "a", "polygon", attribute("number", "0", "100", "1")),
        "b": TaskLabel(2, "b", "rectangle", attribute("text", "")),
        "c": TaskLabel(3, "c", "any", attribute("number", "0", "1", "0.01")),  # cvat-sdk takes whole numbers only
        "d": TaskLabel(4, "d", "any", attribute("select", "low", "high")),
        "e": TaskLabel(5, "e", "ellipse"),
    }
    fits = fit_labels(("a", "b", "c", "d", "e", "f"), "rectangle", task)
    assert fits == {"a": LabelFit("polygon", task["a"].attributes["score"]),
                    "b": LabelFit("rectangle", task["b"].attributes["score"]),
                    "c": LabelFit("any"), "d": LabelFit("any"),
                    "e": None,  # no box or polygon fits an ellipse label: left out of the spec
                    "f": LabelFit("rectangle")}  # not in the task: the model's own type, cvat-sdk decides
    assert fit_labels(("a", "b"), "polygon", None) == {"a": LabelFit("polygon"), "b": LabelFit("polygon")}


def test_thresholds_file_of_the_model(tmp_path):
    from cvat_argo.inference.outputs import model_thresholds  # the one reader: annotate, function and nuclio

    labels = ("car", "person")
    assert model_thresholds(tmp_path, labels).as_dict() == {"default": 0.5, "per_label": {}}  # none: the default
    (tmp_path / "thresholds.json").write_text(json.dumps({"default": 0.4, "per_label": {"person": 0.25}}))
    assert model_thresholds(tmp_path, labels).as_dict() == {"default": 0.4, "per_label": {"person": 0.25}}
    (tmp_path / "thresholds.json").write_text(json.dumps({"per_label": {"persn": 0.25}}))
    with pytest.raises(CvatArgoError, match=r"thresholds\.json: unknown label 'persn' \(did you mean 'person'\?\)"):
        model_thresholds(tmp_path, labels)
    for bad in ({"per_label": {"car": 1.5}}, {"default": "high"}, {"per_label": {"car": True}}, [0.5]):
        (tmp_path / "thresholds.json").write_text(json.dumps(bad))
        with pytest.raises(CvatArgoError, match=r"thresholds\.json"):
            model_thresholds(tmp_path, labels)


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, bytes, tuple[int, int]]]:
    """Three pictures like the ones the tiny model trained on: (name, JPEG bytes, size)."""
    return tiny_photos(3, seed=12)


@pytest.fixture(scope="module")
def detected(exported, photos) -> tuple[str, ...]:
    """The model's labels by how often it finds them on the photos at threshold 0, most found first.

    A tiny model trained for seconds reliably finds one label; which others it finds varies from run to
    run, so the tests below give the label it finds most each type in turn instead of needing two."""
    import io
    from collections import Counter

    from PIL import Image

    from cvat_argo.cvat.function import create

    function = create(model=str(exported), threshold=0.0)
    counts = Counter(function.labels[shape.label_id - 1] for _, blob, _ in photos
                     for shape in function.detect(_Context(0.0), Image.open(io.BytesIO(blob))))
    ranked = sorted(function.labels, key=lambda name: -counts[name])
    assert counts[ranked[0]] > 0, f"the tiny model finds nothing on the photos: {counts}"
    return tuple(ranked)


def photo_task(photos, layout: dict[str, tuple[str, str | None]]) -> FakeTask:
    """A task of the photos whose labels are ``{name: (type, score attribute input type or None)}``."""
    labels = [label(index, name, type_, score=score) for index, (name, (type_, score)) in enumerate(layout.items(), 1)]
    return FakeTask(7, labels=labels, frames=[{"name": name, "width": w, "height": h} for name, _, (w, h) in photos],
                    images={index: blob for index, (_, blob, _) in enumerate(photos)}, chunk_size=2)


#: What a box model's shapes become on each type of task label.
SHAPE_OF = {"polygon": "polygon", "rectangle": "rectangle", "any": "rectangle"}


def check_uploaded(task: FakeTask, layout: dict[str, tuple[str, str | None]], photos) -> dict[str, int]:
    """Every uploaded shape fits its label (type, score attribute); the number of shapes per label."""
    counts = dict.fromkeys(layout, 0)
    by_id = {item["id"]: item for item in task.labels}
    for shape in task.uploaded_shapes:
        task_label = by_id[shape["label_id"]]
        type_, score = layout[task_label["name"]]
        counts[task_label["name"]] += 1
        assert shape["source"] == "auto" and 0 <= shape["frame"] < len(photos)
        assert shape["type"] == SHAPE_OF[type_], (task_label["name"], type_, shape)
        if shape["type"] == "polygon":  # a box's four corners, clockwise from the top left
            x0, y0, x1, _, _, y1, _, _ = shape["points"]
            assert shape["points"] == [x0, y0, x1, y0, x1, y1, x0, y1] and x0 < x1 and y0 < y1
        else:
            assert len(shape["points"]) == 4
        values = {a["spec_id"]: a["value"] for a in shape.get("attributes", [])}
        if score is None:
            assert values == {}
        else:
            (value,) = values.values()
            assert list(values) == [task_label["attributes"][0]["id"]]
            if score == "number":
                assert value.isdigit() and 0 <= int(value) <= 100  # a percentage, as the stage writes it
            else:
                assert len(value.split(".")[-1]) == 3 and 0 <= float(value) <= 1
    assert len(task.shapes) == sum(counts.values()) and all("id" in s for s in task.shapes)  # the server kept them
    return counts


def sdk_client(env: dict[str, str], cache: Path):
    from cvat_sdk import Client
    from cvat_sdk.core.client import AccessTokenCredentials, Config

    client = Client(env["CVAT_HOST"], config=Config(cache_dir=cache), check_server_version=False)
    client.login(AccessTokenCredentials(env["CVAT_ACCESS_TOKEN"]))
    return client


class FixedDetector:
    """A model whose answer is fixed in advance (the real ``Detections`` type), the same for every image:
    the function's fitting, cvat-sdk's driver and the server run for real, without TensorFlow."""

    def __init__(self, model_dir: Path, labels: tuple[str, ...], masks: bool):
        from cvat_argo.inference.serving import Detections

        self.model_dir, self.labels = model_dir, labels
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "model.json").write_text(json.dumps({"format": "cvat-argo/convert", "runtimes": ["saved_model"],
                                                          "masks": masks}))
        self.found = Detections(
            boxes=np.array([[2, 2, 30, 20], [10, 10, 40, 40], [5, 5, 15, 15], [1, 1, 5, 5]], np.float32),
            scores=np.array([0.9, 0.8, 0.6, 0.4], np.float32), classes=np.array([1, 2, 3, 4], np.int32),
            masks=np.stack([np.tri(8, dtype=np.float32)] * 4) if masks else None)  # a triangle in each box

    def detect(self, images):
        return [self.found for _ in images]


@pytest.mark.parametrize("masks", [False, True], ids=["boxes", "mask-rcnn"])
def test_sdk_driver_gets_each_label_in_its_type_with_its_score(masks, tmp_path):
    import cvat_sdk.auto_annotation as cvataa

    from cvat_argo.cvat.function import ModelFunction

    names = ("car", "person", "tree", "sign")
    function = ModelFunction(FixedDetector(tmp_path / "model", names, masks), threshold=0.3)
    assert {label.type for label in function.spec.labels} == {"polygon" if masks else "rectangle"}  # no task: own
    task = FakeTask(7, labels=[label(1, "car", "polygon", score="number"), label(2, "person", "rectangle", score="text"),
                               label(3, "tree", "any"), label(4, "sign", "ellipse")],
                    frames=[{"name": f"img_{i}.jpg", "width": 64, "height": 48} for i in range(3)], chunk_size=2)
    with cvat_server(task) as env:
        cvataa.annotate_task(sdk_client(env, tmp_path / "cache"), 7, function)
    shapes = {(s["frame"], s["label_id"]): s for s in task.uploaded_shapes}
    assert sorted(shapes) == [(frame, label_id) for frame in range(3) for label_id in (1, 2, 3)]  # no ellipse
    car, person, tree = shapes[0, 1], shapes[0, 2], shapes[0, 3]
    assert car["type"] == "polygon" and car["attributes"] == [{"spec_id": 10, "value": "90"}]
    if masks:  # the mask's outline, inside the box
        assert len(car["points"]) >= 6 and car["points"] != [2, 2, 30, 2, 30, 20, 2, 20]
        assert all(2 <= x <= 30 for x in car["points"][0::2]) and all(2 <= y <= 20 for y in car["points"][1::2])
    else:  # the box's corners
        assert car["points"] == [2, 2, 30, 2, 30, 20, 2, 20]
    assert person["type"] == "rectangle" and person["points"] == [10, 10, 40, 40]  # a mask's box on a rectangle label
    assert person["attributes"] == [{"spec_id": 20, "value": "0.800"}]
    assert tree["type"] == ("polygon" if masks else "rectangle") and tree["attributes"] == []  # any: the model's own
    assert all(s["source"] == "auto" for s in shapes.values())


def test_fake_server_refuses_what_cvat_refuses(tmp_path):
    from cvat_sdk import exceptions, models

    task = FakeTask(7, labels=[label(1, "car", "rectangle", score="number")], frames=list(FRAMES))

    def shape(label_id: int, spec_id: int) -> models.LabeledShapeRequest:
        return models.LabeledShapeRequest(type="rectangle", frame=0, label_id=label_id, points=[1, 1, 5, 5],
                                          attributes=[models.AttributeValRequest(spec_id=spec_id, value="50")])

    with cvat_server(task) as env:
        client = sdk_client(env, tmp_path / "cache")
        for bad, message in ((shape(2, 10), "label_id `2` is invalid"), (shape(1, 20), "spec_id `20` is invalid")):
            with pytest.raises(exceptions.ApiException) as error:
                client.tasks.api.partial_update_annotations(
                    "create", 7, patched_labeled_data_request=models.PatchedLabeledDataRequest(shapes=[bad]))
            assert error.value.status == 400 and message in error.value.body
        assert task.shapes == []
        client.tasks.api.partial_update_annotations(
            "create", 7, patched_labeled_data_request=models.PatchedLabeledDataRequest(shapes=[shape(1, 10)]))
    (kept,) = task.shapes
    assert kept["source"] == "manual" and kept["occluded"] is False and kept["attributes"][0]["value"] == "50"


@pytest.mark.slow
def test_sdk_driver_annotates_polygon_rectangle_and_any_labels_with_scores(exported, photos, detected, tmp_path):
    """cvat-sdk's own annotate_task refused the function on any task with a polygon label ("label 'x' has
    type 'rectangle' in the function, but 'polygon' in the dataset"), and no score attribute was filled."""
    import cvat_sdk.auto_annotation as cvataa

    from cvat_argo import cvat_function

    most, rest = detected[0], detected[1:]
    layouts = [  # the label the model finds takes every type and both score attribute kinds in turn
        {most: ("polygon", "number"), **{name: ("rectangle", None) for name in rest}},
        {most: ("any", "text"), **{name: ("polygon", "number") for name in rest}},
        {most: ("rectangle", "number"), **{name: ("any", "text") for name in rest}},
    ]
    for number, layout in enumerate(layouts):
        task = photo_task(photos, layout)
        with cvat_server(task) as env:
            client = sdk_client(env, tmp_path / f"cache-{number}")
            cvataa.annotate_task(client, 7, cvat_function.create(model=str(exported), threshold=0.0))
        counts = check_uploaded(task, layout, photos)  # every shape, of any label, fits its label
        assert counts[most] > 0, counts
        assert [method for method, path, _ in task.requests if "annotations" in path] == ["PATCH"]


@pytest.mark.slow
def test_function_fitted_explicitly_and_the_models_thresholds_file(exported, photos, detected, tmp_path):
    import io
    import shutil

    from PIL import Image

    from cvat_argo.cvat.function import create

    most, other, rest = detected[0], detected[1], detected[2:]
    model = tmp_path / "model"
    shutil.copytree(exported, model)
    (model / "thresholds.json").write_text(json.dumps({"default": 1.0, "per_label": {most: 0.0}}))
    images = [Image.open(io.BytesIO(blob)) for _, blob, _ in photos]

    def found(function, conf=None) -> set[str]:
        return {function.labels[shape.label_id - 1] for image in images for shape in function.detect(_Context(conf), image)}

    from_file = create(model=str(model))
    assert found(from_file) == {most}  # the file's default (1.0) for all but its per-label 0.0
    assert found(create(model=str(model), threshold=1.0)) == set()  # -p threshold=float:1.0 replaces all of the file
    assert found(from_file, 1.0) == set()  # CVAT's threshold is a floor under every per-label one
    # fitted to given labels, without any driver: the spec declares the task's types and score attribute
    fitted = from_file.fitted([label(4, most, "polygon", score="text"), label(5, other, "ellipse"),
                              *(label(6 + index, name, "rectangle") for index, name in enumerate(rest))])
    spec = {item.name: item for item in fitted.spec.labels}
    assert spec[most].type == "polygon" and [a.name for a in spec[most].attributes] == ["score"]
    assert other not in spec and all(spec[name].type == "rectangle" for name in rest)  # an ellipse takes no box
    shapes = [shape for image in images for shape in fitted.detect(_Context(None), image)]
    assert shapes and all(fitted.labels[s.label_id - 1] == most for s in shapes)
    assert all(shape.type.value == "polygon" and len(shape.attributes) == 1 for shape in shapes)


@pytest.mark.slow
def test_cvat_cli_auto_annotate_runs_the_function_on_a_polygon_task(exported, photos, detected, tmp_path):
    """The README's line: ``cvat-cli task auto-annotate TASK --function-module cvat_argo.cvat_function``."""
    import subprocess
    import sys

    pytest.importorskip("cvat_cli", reason="needs cvat-cli (the cvat extra)")
    from support.fake_cvat_server import PASSWORD, USERNAME

    most, rest = detected[0], detected[1:]
    layout = {most: ("polygon", "number"), **{name: ("any", "text") for name in rest}}
    task = photo_task(photos, layout)
    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CVAT_", "PASS"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / "cache"), XDG_CONFIG_HOME=str(home / "config"),
               TF_CPP_MIN_LOG_LEVEL="2")
    with cvat_server(task) as server:
        host, port = server["CVAT_HOST"].rsplit(":", 1)
        result = subprocess.run(
            [sys.executable, "-m", "cvat_cli", "--server-host", host, "--server-port", port,
             "--auth", f"{USERNAME}:{PASSWORD}", "task", "auto-annotate", "7",
             "--function-module", "cvat_argo.cvat_function", "-p", f"model=str:{exported}",
             "-p", "threshold=float:0.0"],
            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = check_uploaded(task, layout, photos)
    assert counts[most] > 0, counts
    assert ("POST", "/api/auth/login") in {(method, path) for method, path, _ in task.requests}


HANDLER_RUN = r"""
ok = main.handler(context, Event(json.dumps({"image": encoded(sys.argv[2]), "threshold": 0.05}).encode()))
bad = main.handler(context, Event({"threshold": 0.05}))
print(json.dumps({"ok": ok, "bad": bad, "package": cvat_argo.__file__, "log": context.logger.lines}))
"""


@pytest.mark.slow
def test_nuclio_bundle_handler_answers_like_cvat_expects(exported, picture, tmp_path):

    import yaml
    from PIL import Image

    from cvat_argo.cvat import nuclio
    from cvat_argo.inference.serving import load_detector

    # --threshold replaces the model's thresholds.json (the request's 0.05 is then a floor at the same value)
    assert nuclio.main([str(exported), "--out", str(tmp_path / "fn"), "--name", "Shapes detector",
                        "--threshold", "0.05"]) == 0
    function = yaml.safe_load((tmp_path / "fn" / "function.yaml").read_text())
    assert function["metadata"]["annotations"]["type"] == "detector"
    assert function["metadata"]["name"] == "cvat-argo-shapes-detector"
    assert json.loads(function["metadata"]["annotations"]["spec"]) == [
        {"id": index, "name": name, "type": "rectangle"} for index, name in enumerate(model_labels(exported), 1)]
    assert function["spec"]["handler"] == "main:handler"
    assert "ai-edge-litert" in function["spec"]["build"]["directives"]["preCopy"][0]["value"]
    bundled = {p.name for p in (tmp_path / "fn" / "model").iterdir()}
    assert {"labels.json", "model.json", "model_fp32.tflite", "tflite.json"} <= bundled
    assert not bundled & {"saved_model", "model_fp16.tflite"}  # only the runtime the function uses
    answer = run_handler(tmp_path / "fn", HANDLER_RUN, picture)
    assert answer["package"].startswith(str(tmp_path / "fn"))  # the bundled modules, not the installed package
    assert answer["ok"]["status_code"] == 200 and answer["ok"]["content_type"] == "application/json"
    shapes = json.loads(answer["ok"]["body"])
    assert shapes and all(set(s) == {"confidence", "label", "points", "type"} for s in shapes)
    assert all(s["type"] == "rectangle" and len(s["points"]) == 4 and float(s["confidence"]) >= 0.05 for s in shapes)
    # the same detections as the model gives in this process
    detector = load_detector(exported, runtime="tflite")
    (found,) = detector.detect([np.asarray(Image.open(picture).convert("RGB"))])
    found = found.above(0.05)
    assert [s["label"] for s in shapes] == [detector.labels[c - 1] for c in found.classes]
    assert np.allclose([s["points"] for s in shapes], found.boxes, atol=0.01)
    assert answer["bad"]["status_code"] == 400 and "image" in answer["bad"]["body"]


def test_nuclio_bundle_refuses_a_folder_that_is_not_a_model(tmp_path):
    from cvat_argo.cvat import nuclio

    (tmp_path / "empty").mkdir()
    with pytest.raises(CvatArgoError, match=r"has no model\.json and labels\.json"):
        nuclio.bundle(tmp_path / "empty", tmp_path / "fn")
    assert not (tmp_path / "fn").exists() and not (tmp_path / "fn.partial").exists()
