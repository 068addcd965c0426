"""create-dataset from a live CVAT task (``--cvat-task-id``), against the CVAT server on loopback.

The task's export is a "CVAT for images 1.1" zip made here; its jobs decide which empty frames are
true negatives (a person finished or reviews the job) and which still wait for pre-annotation.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from cvat_argo.cvat.server import connect, reviewed_frames
from cvat_argo.entry import run_step
from cvat_argo.formats.annotations import ImageRecord, LabelSpec, Shape, TaskMeta
from cvat_argo.formats.cvat_xml.writer import write_cvat_xml
from cvat_argo.formats.tfrecord.example import decode_example
from cvat_argo.formats.tfrecord.records import read_records
from cvat_argo.steps import dataset as step
from support.fake_cvat_server import PASSWORD, USERNAME, FakeTask, cvat_server, job, label

pytest.importorskip("cvat_sdk")

LABELS = ("car", "person")
WIDTH, HEIGHT = 64, 48


def _box(name: str, x0: float, y0: float, x1: float, y1: float) -> Shape:
    return Shape(label=name, kind="box", box=(x0, y0, x1, y1))


# frame: shapes. Jobs: 11 = frames 0-2 (accepted), 12 = 3-5 (in validation), 13 = 6-7 (being annotated).
SHAPES = {
    0: (_box("car", 4, 4, 30, 20),),
    1: (_box("person", 10, 5, 20, 40),),
    2: (),  # empty in an accepted job: a true negative
    3: (_box("car", 30, 10, 60, 30), _box("person", 2, 2, 12, 40)),
    4: (),  # empty in a job under review: a true negative
    5: (_box("car", 1, 1, 20, 15),),
    6: (_box("person", 40, 5, 50, 45),),
    7: (),  # empty in a job still being annotated: to pre-annotate
}
NEGATIVES = {"frame_000002.jpg", "frame_000004.jpg"}


def _jpeg(frame: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (WIDTH, HEIGHT), (20 * frame, 90, 140)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def export_zip(tmp_path: Path, shapes_by_frame: dict[int, tuple[Shape, ...]] = SHAPES) -> bytes:
    """The zip CVAT produces for this task: annotations.xml and images/."""
    records = [ImageRecord(frame, f"frame_{frame:06d}.jpg", WIDTH, HEIGHT, shapes)
               for frame, shapes in shapes_by_frame.items()]
    meta = TaskMeta(labels=tuple(LabelSpec(n, "#ff0000", "rectangle") for n in LABELS), name="street", size=len(records))
    write_cvat_xml(tmp_path / "annotations.xml", meta, records)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.write(tmp_path / "annotations.xml", "annotations.xml")
        for record in records:
            archive.writestr(f"images/{record.name}", _jpeg(record.frame))
    return buffer.getvalue()


def fake_task(tmp_path: Path, **fields) -> FakeTask:
    jobs = [
        job(13, 6, 7, stage="annotation", state="in progress"),
        # CVAT's ground-truth job spans the validation frames it holds; finishing it reviews no frame
        job(14, 4, 7, stage="acceptance", state="completed", type_="ground_truth"),
        # page 2 of the job list (2 a page): the reviewed jobs must still be read
        job(11, 0, 2, stage="acceptance", state="completed"),
        job(12, 3, 5, stage="validation", state="new"),
    ]
    frames = [{"name": f"frame_{f:06d}.jpg", "width": WIDTH, "height": HEIGHT} for f in SHAPES]
    fields = {"export_zip": export_zip(tmp_path), "jobs": jobs, "page_size": 2, "name": "street", **fields}
    return FakeTask(7, labels=[label(1, "car", "rectangle"), label(2, "person", "rectangle")], frames=frames,
                    **fields)


def records(out: Path, split: str) -> list[dict]:
    return [decode_example(r) for shard in sorted(out.glob(f"{split}-*.tfrecord")) for r in read_records(shard)]


@pytest.fixture
def work(tmp_path):
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


@pytest.fixture
def polls(monkeypatch):
    """The SDK's waits between export polls, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr("cvat_sdk.core.client.sleep", waits.append)
    return waits


def use(monkeypatch, host: str, **credentials: str) -> None:
    """Point the stage at ``host`` with exactly these credentials (none from the developer's shell)."""
    for name in ("CVAT_HOST", "CVAT_ACCESS_TOKEN", "CVAT_USERNAME", "CVAT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"CVAT_HOST": host, **credentials}.items():
        monkeypatch.setenv(name, value)


def args(out: Path, work: Path, task_id: int = 7) -> list[str]:
    # as the pipeline passes them: an empty --source when the dataset is a task
    return ["--source", "", "--cvat-task-id", str(task_id), "--out", str(out), "--val-fraction", "0.3",
            "--work", str(work)]


@pytest.mark.parametrize("login", ["token", "password"])
def test_live_task_becomes_a_dataset_with_reviewed_empty_frames_as_negatives(tmp_path, work, polls, monkeypatch,
                                                                              capsys, login):
    task = fake_task(tmp_path, pending_polls=2)
    with cvat_server(task) as env:
        if login == "token":
            use(monkeypatch, env["CVAT_HOST"], CVAT_ACCESS_TOKEN=env["CVAT_ACCESS_TOKEN"])
        else:
            use(monkeypatch, env["CVAT_HOST"], CVAT_USERNAME=USERNAME, CVAT_PASSWORD=PASSWORD)
        assert step.main(args(tmp_path / "ds", work)) == 0
    out = tmp_path / "ds"
    summary = json.loads((out / "dataset.json").read_text())

    # the server was asked for this task's export, in the format the stage reads, with the images
    (export,) = task.exports
    assert export["format"] == ["CVAT for images 1.1"] and export["save_images"][0].lower() == "true"
    assert len(polls) == 2  # "started" twice, then "finished"
    paths = [path.split("?")[0] for _, path, _ in task.requests]
    assert ("/api/auth/login" in paths) == (login == "password")
    assert paths.count("/api/jobs") == 2  # both pages
    # the jobs are read before the export: a job finished in between must not turn a frame exported
    # empty (its shapes not drawn yet) into a negative
    assert paths.index("/api/jobs") < paths.index("/api/tasks/7/dataset/export")

    assert summary["labels"] == ["car", "person"] and summary["format"] == "cvat-images"
    assert summary["images"]["train"] + summary["images"]["val"] == 7  # 5 with boxes, 2 negatives
    assert summary["images"]["unannotated"] == 1 and summary["images"]["skipped"] == 0
    totals = {name: sum(split.get(name, 0) for split in summary["objects"].values()) for name in LABELS}
    assert totals == {"car": 3, "person": 3}
    # the dataset names the task, not the download that is gone, and the annotate stage finds its task
    assert summary["source"] == "CVAT task 7" and summary["cvat_task_id"] == 7
    assert "CVAT task 7" in (out / "report.md").read_text()

    unannotated = json.loads((out / "unannotated.json").read_text())
    assert unannotated["count"] == 1
    assert unannotated["images"] == [{"frame": 7, "name": "frame_000007.jpg", "width": WIDTH, "height": HEIGHT,
                                      "path": "unannotated/frame_000007.jpg"}]
    assert (out / "unannotated" / "frame_000007.jpg").read_bytes() == _jpeg(7)

    boxes = {}
    for split in ("train", "val"):
        assert list(out.glob(f"{split}-*.tfrecord")), f"no {split} shard"
        for example in records(out, split):
            boxes[example["image/filename"].values[0].decode()] = len(example["image/object/bbox/xmin"].values)
    assert boxes == {f"frame_{f:06d}.jpg": len(SHAPES[f]) for f in range(7)}
    assert {name for name, count in boxes.items() if count == 0} == NEGATIVES

    assert not list(work.iterdir())  # the downloaded export is gone
    assert "validation images, 1 to pre-annotate, 0 skipped" in capsys.readouterr().out


def test_annotate_stage_finds_the_task_the_dataset_came_from(tmp_path, work, polls, monkeypatch):
    from cvat_argo.steps.annotate import task_id_from_dataset

    task = fake_task(tmp_path)
    with cvat_server(task) as env:
        use(monkeypatch, env["CVAT_HOST"], CVAT_ACCESS_TOKEN=env["CVAT_ACCESS_TOKEN"])
        assert step.main(args(tmp_path / "ds", work)) == 0
    assert task_id_from_dataset(tmp_path / "ds") == 7


def _assert_nothing_left(tmp_path: Path, work: Path) -> None:
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds.partial").exists()
    assert not list(work.iterdir())


def test_wrong_token_names_the_host_and_never_shows_the_token(tmp_path, work, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-token-value-1234"
    task = fake_task(tmp_path)
    with cvat_server(task) as env:
        use(monkeypatch, env["CVAT_HOST"], CVAT_ACCESS_TOKEN=secret)
        code = run_step(step.main, args(tmp_path / "ds", work))
    captured = capsys.readouterr()
    assert code != 0
    message = captured.err.strip()
    assert message.startswith("error: ") and "\n" not in message
    assert env["CVAT_HOST"] in message and "CVAT_ACCESS_TOKEN" in message and "HTTP 401" in message
    for text in (captured.out, captured.err, caplog.text):
        assert secret not in text
    assert task.exports == []  # refused before any export started
    _assert_nothing_left(tmp_path, work)


def test_wrong_password_names_the_variables_and_never_shows_the_password(tmp_path, work, monkeypatch, capsys,
                                                                           caplog):
    caplog.set_level(logging.DEBUG)
    secret = "not-the-passw0rd-5678"
    task = fake_task(tmp_path)
    with cvat_server(task) as env:
        use(monkeypatch, env["CVAT_HOST"], CVAT_USERNAME=USERNAME, CVAT_PASSWORD=secret)
        code = run_step(step.main, args(tmp_path / "ds", work))
    captured = capsys.readouterr()
    assert code != 0
    assert captured.err == (f"error: CVAT at {env['CVAT_HOST']} refused the login (HTTP 400): check CVAT_USERNAME "
                            "and CVAT_PASSWORD\n")
    for text in (captured.out, captured.err, caplog.text):
        assert secret not in text
    assert [path for _, path, _ in task.requests] == ["/api/auth/login"]
    _assert_nothing_left(tmp_path, work)


def test_missing_task_names_the_task(tmp_path, work, monkeypatch, capsys):
    task = fake_task(tmp_path)
    with cvat_server(task) as env:
        use(monkeypatch, env["CVAT_HOST"], CVAT_ACCESS_TOKEN=env["CVAT_ACCESS_TOKEN"])
        code = run_step(step.main, args(tmp_path / "ds", work, task_id=99))
    message = capsys.readouterr().err
    assert code == 4  # a DatasetError: retrying will not make the task appear
    assert "task 99" in message and "not found" in message and env["CVAT_HOST"] in message
    _assert_nothing_left(tmp_path, work)


def test_export_that_fails_on_the_server_is_retried_and_says_so(tmp_path, work, polls, monkeypatch, capsys):
    task = fake_task(tmp_path, export_zip=None)
    with cvat_server(task) as env:
        use(monkeypatch, env["CVAT_HOST"], CVAT_ACCESS_TOKEN=env["CVAT_ACCESS_TOKEN"])
        code = run_step(step.main, args(tmp_path / "ds", work))
    message = capsys.readouterr().err
    assert code == 75
    assert "exporting task 7" in message and "fake: the task has no export_zip" in message
    _assert_nothing_left(tmp_path, work)


def test_export_without_an_annotated_image_writes_nothing(tmp_path, work, polls, monkeypatch, capsys):
    task = fake_task(tmp_path, jobs=[job(11, 0, 7, state="in progress")])
    records_ = [ImageRecord(frame, f"frame_{frame:06d}.jpg", WIDTH, HEIGHT, ()) for frame in range(2)]
    write_cvat_xml(tmp_path / "annotations.xml", TaskMeta(labels=(LabelSpec("car"),), size=2), records_)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.write(tmp_path / "annotations.xml", "annotations.xml")
        for record in records_:
            archive.writestr(f"images/{record.name}", _jpeg(record.frame))
    task.export_zip = buffer.getvalue()
    with cvat_server(task) as env:
        use(monkeypatch, env["CVAT_HOST"], CVAT_ACCESS_TOKEN=env["CVAT_ACCESS_TOKEN"])
        code = run_step(step.main, args(tmp_path / "ds", work))
    message = capsys.readouterr().err
    assert code == 4
    assert "error: no annotated image in CVAT task 7: annotate some images in CVAT first" in message
    _assert_nothing_left(tmp_path, work)


def test_a_task_id_that_is_not_a_number_is_refused_before_any_request(tmp_path, work, monkeypatch, capsys):
    task = fake_task(tmp_path)
    with cvat_server(task) as env:
        use(monkeypatch, env["CVAT_HOST"], CVAT_ACCESS_TOKEN=env["CVAT_ACCESS_TOKEN"])
        code = run_step(step.main, ["--source", "", "--cvat-task-id", "tasks/7", "--out", str(tmp_path / "ds"),
                                    "--work", str(work)])
    assert code != 0
    assert "--cvat-task-id 'tasks/7' is not a task id" in capsys.readouterr().err
    assert task.requests == []
    _assert_nothing_left(tmp_path, work)


def test_a_job_of_chosen_frames_reviews_only_those(tmp_path, work, polls, monkeypatch):
    # CVAT 2.x jobs of chosen frames: job 21 spans 0..4 but holds 0, 2 and 4; 1 and 3 are job 22's
    shapes = {0: (_box("car", 4, 4, 30, 20),), 1: (_box("person", 10, 5, 20, 40),), 2: (), 3: (),
              4: (_box("car", 30, 10, 60, 30),)}
    jobs = [job(21, 0, 4, stage="acceptance", state="completed", included_frames=[0, 2, 4]),
            job(22, 1, 3, stage="annotation", state="in progress", included_frames=[1, 3])]
    task = fake_task(tmp_path, jobs=jobs, export_zip=export_zip(tmp_path, shapes))
    task.frames = task.frames[:5]
    with cvat_server(task) as env:
        use(monkeypatch, env["CVAT_HOST"], CVAT_ACCESS_TOKEN=env["CVAT_ACCESS_TOKEN"])
        assert step.main(args(tmp_path / "ds", work)) == 0
    out = tmp_path / "ds"

    paths = [path.split("?")[0] for _, path, _ in task.requests]
    assert [p for p in paths if p.endswith("/data/meta")] == ["/api/jobs/21/data/meta"]  # reviewed jobs only
    assert paths.index("/api/jobs/21/data/meta") < paths.index("/api/tasks/7/dataset/export")
    boxes = {example["image/filename"].values[0].decode(): len(example["image/object/bbox/xmin"].values)
             for split in ("train", "val") for example in records(out, split)}
    # frame 2 (job 21 holds it) is a negative; frame 3, in job 21's range but job 22's, waits
    assert boxes == {"frame_000000.jpg": 1, "frame_000001.jpg": 1, "frame_000002.jpg": 0, "frame_000004.jpg": 1}
    unannotated = json.loads((out / "unannotated.json").read_text())
    assert [image["frame"] for image in unannotated["images"]] == [3]


def test_reviewed_frames_follow_each_jobs_meta():
    from types import SimpleNamespace

    def job_(id_, start, stop, state="new", stage="annotation", type_="annotation"):
        return SimpleNamespace(id=id_, type=type_, state=state, stage=stage, start_frame=start, stop_frame=stop)

    metas = {
        1: {"included_frames": [0, 2, 4], "deleted_frames": [2], "start_frame": 0, "frame_filter": ""},
        2: {"included_frames": None, "deleted_frames": [6], "start_frame": 5, "frame_filter": ""},
        3: {"deleted_frames": []},  # an older server: no included_frames at all
        # frame filter step=2 from data frame 3: task frames 13..16 are data frames 29..35, 33 is frame 15
        5: {"included_frames": [29, 33], "deleted_frames": [], "start_frame": 29, "frame_filter": "step=2"},
        6: {"included_frames": [], "deleted_frames": []},
    }
    jobs = [job_(1, 0, 4, state="completed"), job_(2, 5, 7, stage="validation"), job_(3, 8, 9, stage="acceptance"),
            job_(4, 10, 12, state="in progress"), job_(5, 13, 16, state="completed"),
            job_(6, 17, 18, state="completed"), job_(7, 0, 18, state="completed", type_="ground_truth")]
    asked: list[int] = []

    def meta(job):
        asked.append(job.id)
        return metas[job.id]

    assert reviewed_frames(jobs, meta) == {0, 4, 5, 7, 8, 9, 13, 15}
    assert asked == [1, 2, 3, 5, 6]  # once per reviewed annotation job, never for the others
    assert reviewed_frames(jobs) == {*range(10), *range(13, 19)}  # without metas: the whole ranges


def test_fake_job_meta_parses_as_the_sdk_model(tmp_path):
    task = fake_task(tmp_path, jobs=[job(21, 0, 4, state="completed", included_frames=[4, 0, 2]),
                                     job(22, 5, 7, state="completed")], deleted_frames=[2, 6])
    with cvat_server(task) as env:
        api = connect(env).api_client.jobs_api
        chosen, _ = api.retrieve_data_meta(21)
        plain, _ = api.retrieve_data_meta(22)
    assert chosen.included_frames == [0, 2, 4] and chosen.deleted_frames == [2] and chosen.size == 3
    assert [f.name for f in chosen.frames] == ["frame_000000.jpg", "placeholder.jpg", "frame_000002.jpg",
                                               "placeholder.jpg", "frame_000004.jpg"]
    assert plain.get("included_frames") is None and plain.deleted_frames == [6] and plain.size == 3


def _auto(shape: Shape) -> Shape:
    return dataclasses.replace(shape, source="auto")


# A second round: our earlier upload left source="auto" shapes; people reviewed some jobs, not all.
SECOND_ROUND = {
    0: (_box("car", 4, 4, 30, 20),),  # drawn by a person (job 11, accepted)
    1: (_auto(_box("person", 10, 5, 20, 40)),),  # ours, in an accepted job: a person reviewed it
    2: (),  # empty in an accepted job: a negative
    3: (_auto(_box("car", 30, 10, 60, 30)),),  # ours, in a job under validation: reviewed
    4: (_box("car", 1, 1, 20, 15),),
    5: (_auto(_box("car", 1, 1, 20, 15)), dataclasses.replace(_box("person", 2, 2, 12, 40), source="semi-auto")),
    6: (_auto(_box("person", 40, 5, 50, 45)),),  # only ours, in a job still being annotated: awaits review
    7: (),  # empty, job still being annotated: to pre-annotate
}


def test_a_second_round_trains_on_ground_truth_only_and_leaves_frames_awaiting_review_alone(
        tmp_path, work, polls, monkeypatch):
    """Issue 12, item 1: the next run counted frames holding only our unreviewed auto shapes as truth."""
    task = fake_task(tmp_path, export_zip=export_zip(tmp_path, SECOND_ROUND))
    with cvat_server(task) as env:
        use(monkeypatch, env["CVAT_HOST"], CVAT_ACCESS_TOKEN=env["CVAT_ACCESS_TOKEN"])
        assert step.main(args(tmp_path / "ds", work)) == 0
    out = tmp_path / "ds"
    summary = json.loads((out / "dataset.json").read_text())
    trained = {example["image/filename"].values[0].decode() for split in ("train", "val")
               for example in records(out, split)}
    assert trained == {f"frame_{f:06d}.jpg" for f in range(6)}  # frame 6 is not truth yet
    unannotated = json.loads((out / "unannotated.json").read_text())
    assert [item["frame"] for item in unannotated["images"]] == [7]  # frame 6 is not ours to redo either
    frames = summary["frames"]
    assert (frames["ground_truth"], frames["awaiting_review"], frames["to_pre_annotate"]) == (6, 1, 1)
    assert frames["rule"].startswith("shape sources and job state")
    assert "1 awaiting review" in (out / "report.md").read_text()
