"""What to annotate next: the ranking on hand-made detections, the links into a CVAT task's jobs
(fake CVAT server), and the pre-annotate stage writing the list and its report section on a real
tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cvat_argo.engines import artifacts
from cvat_argo.entry import run_step
from cvat_argo.errors import CvatArgoError
from cvat_argo.formats.label_map import write_labels_json
from cvat_argo.inference import next_to_annotate as nta
from cvat_argo.inference.outputs import Tally, write_report
from cvat_argo.steps import annotate as step
from support.annotate_fixtures import trained_exported_model

LABELS = ("square", "triangle", "ellipse")
SQUARE, TRIANGLE, ELLIPSE = 1, 2, 3


def add(ranking: nta.Ranking, frame: int | None, found: list[tuple[float, int]], name: str | None = None) -> None:
    """found: (score, 1-based class id) as a runtime returns them."""
    scores = np.asarray([s for s, _ in found], np.float32)
    classes = np.asarray([c for _, c in found], np.int32)
    ranking.add(frame, name or f"img_{frame}.jpg", scores, classes)


# --- the ranking ---------------------------------------------------------------------------------


def test_mid_confidence_frames_rank_above_confident_ones():
    ranking = nta.Ranking(10, LABELS)
    add(ranking, 0, [(0.97, SQUARE), (0.95, TRIANGLE), (0.92, SQUARE)])
    add(ranking, 1, [(0.6, SQUARE), (0.55, ELLIPSE), (0.45, SQUARE)])
    add(ranking, 2, [(0.97, SQUARE), (0.5, TRIANGLE)])
    rows = nta.rows(ranking.ranked())
    assert [r["frame"] for r in rows] == [1, 2, 0]
    # u(s) = 1 - |2s - 1|: 0.8 + 0.9 + 0.9; 0.06 + 1; 0.06 + 0.1 + 0.16
    assert [r["score"] for r in rows] == [2.6, 1.06, 0.32]
    assert rows[2]["why"] == "only confident detections: 3 (0.92-0.97)"
    assert rows[1]["why"] == "1 uncertain detection (0.50) of triangle"
    assert all(r["url"] is None for r in rows)


def test_the_reason_names_count_range_and_labels_most_confident_first():
    ranking = nta.Ranking(10, LABELS)
    add(ranking, 4, [(0.93, SQUARE), (0.62, TRIANGLE), (0.5, ELLIPSE), (0.35, TRIANGLE),
                     (0.1, SQUARE),  # below the floor: background noise, not doubt
                     (0.5, 0), (0.5, 9)])  # padding and an id outside the label map: not objects
    (row,) = nta.rows(ranking.ranked())
    assert row == {"frame": 4, "name": "img_4.jpg", "score": 2.6,  # 0.14 + 0.76 + 1 + 0.7
                   "why": "3 uncertain detections (0.35-0.62) of triangle, ellipse", "url": None}


def test_a_frame_with_nothing_certain_ranks_above_one_with_the_same_doubt_and_a_sure_object():
    ranking = nta.Ranking(10, LABELS)
    add(ranking, 0, [(0.31, ELLIPSE)])
    add(ranking, 1, [(0.31, ELLIPSE), (0.99, SQUARE)])
    add(ranking, 2, [(0.31, ELLIPSE), (0.24, SQUARE)])
    add(ranking, 3, [(0.15, SQUARE), (0.05, SQUARE)])  # nothing above the floor: no signal, not listed
    add(ranking, 5, [(1.0, SQUARE), (1.0, TRIANGLE)])  # nothing but certainty: nothing to learn, not listed
    rows = nta.rows(ranking.ranked())
    assert [(r["frame"], r["score"], r["why"]) for r in rows] == [
        (2, 0.62 + 0.48 + 1.0, "top score 0.31: nothing certain found; 2 uncertain detections (0.24-0.31) of "
                               "ellipse, square"),
        (0, 0.62 + 1.0, "top score 0.31 (ellipse): nothing certain found"),
        (1, 0.64, "1 uncertain detection (0.31) of ellipse"),
    ]


def test_only_the_ten_most_uncertain_detections_count():
    ranking = nta.Ranking(10, LABELS)
    add(ranking, 0, [(0.5, SQUARE)] * 30)  # an undertrained model's pile of coin tosses
    add(ranking, 1, [(0.5, SQUARE)] * 9 + [(0.6, TRIANGLE)] * 20 + [(0.9, ELLIPSE)])
    assert [(r["frame"], r["score"], r["why"]) for r in nta.rows(ranking.ranked())] == [
        (0, 10.0, "30 uncertain detections (0.50) of square"),
        (1, 9.8, "29 uncertain detections (0.50-0.60) of triangle, square")]


def test_ties_go_by_frame_and_frames_without_a_number_come_last():
    ranking = nta.Ranking(10, LABELS)
    for frame in (9, None, 3, 5):
        add(ranking, frame, [(0.4, SQUARE)], name=f"same_{frame}.jpg")
    add(ranking, None, [(0.4, SQUARE)], name="a_first_by_name.jpg")
    assert [(r["frame"], r["name"]) for r in nta.rows(ranking.ranked())] == [
        (3, "same_3.jpg"), (5, "same_5.jpg"), (9, "same_9.jpg"), (None, "a_first_by_name.jpg"),
        (None, "same_None.jpg")]


def test_the_list_keeps_the_top_n_of_a_long_stream():
    rng = np.random.default_rng(3)
    limit, everything = 4, nta.Ranking(1000, LABELS)
    ranking = nta.Ranking(limit, LABELS)
    for frame in rng.permutation(60):  # more than twice the limit, in no order: trimmed as it goes
        found = [(float(s), SQUARE) for s in rng.uniform(0.2, 1.0, size=int(rng.integers(1, 5)))]
        add(ranking, int(frame), found)
        add(everything, int(frame), found)
    assert len(everything.ranked()) == 60
    assert nta.rows(ranking.ranked()) == nta.rows(everything.ranked())[:limit]
    scores = [r["score"] for r in nta.rows(everything.ranked())]
    assert scores == sorted(scores, reverse=True)


def test_zero_lists_nothing_and_a_negative_count_is_refused():
    ranking = nta.Ranking(0, LABELS)
    add(ranking, 0, [(0.5, SQUARE)])
    assert ranking.ranked() == []
    with pytest.raises(CvatArgoError, match=r"^--next -1: "):
        nta.Ranking(-1, LABELS)


def test_a_negative_next_stops_the_stage_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CVAT_HOST", raising=False)
    (tmp_path / "exported").mkdir()
    write_labels_json(tmp_path / "exported" / artifacts.LABELS, LABELS)
    (tmp_path / artifacts.UNANNOTATED).write_text(json.dumps({"count": 0, "images": []}))
    code = run_step(step.main, ["--model", str(tmp_path / "exported"), "--dataset", str(tmp_path),
                                     "--out", str(tmp_path / "out"), "--next", "-1"])
    error = capsys.readouterr().err
    assert code != 0 and error.startswith("error: --next -1: ") and error.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_report_shows_the_top_ten_and_where_the_list_is(tmp_path):
    summary = Tally(labels=list(LABELS)).summary(images_per_second=1.0, runtime="tflite-fp32", max_detections=100,
                                                 threshold={"default": 0.5, "per_label": {}})
    links = nta.FrameLinks("https://cvat.example.com/", 7, [{"id": 21, "start_frame": 0, "stop_frame": 99,
                                                             "type": "annotation"}])
    ranking = nta.Ranking(50, LABELS)
    for frame in range(12):
        add(ranking, frame, [(0.6 + frame / 100, SQUARE)], name=f"dir|{frame}.jpg")
    listed = nta.rows(ranking.ranked(), links)
    write_report(tmp_path, summary, next_to_annotate=listed)
    report = (tmp_path / artifacts.STAGE_REPORT).read_text()
    section = report.split("## Next to annotate", 1)[1]
    assert "The top 10 of 12; the full list, with scores, is in `next-to-annotate.json`." in section
    table = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert table[0] == "| frame | image | why | link |" and len(table) == 11
    assert table[1] == ("| 0 | dir\\|0.jpg | 1 uncertain detection (0.60) of square | "
                        "[open in CVAT](https://cvat.example.com/tasks/7/jobs/21?frame=0) |")
    assert table[-1].startswith("| 9 | dir\\|9.jpg | 1 uncertain detection (0.69) of square |")
    write_report(tmp_path, summary, next_to_annotate=[])
    assert "nothing to suggest (`next-to-annotate.json` is empty)" in (tmp_path / artifacts.STAGE_REPORT).read_text()
    write_report(tmp_path, summary)  # --next 0: no list, no section
    assert "Next to annotate" not in (tmp_path / artifacts.STAGE_REPORT).read_text()


# --- links into CVAT -----------------------------------------------------------------------------


def test_links_open_each_frame_in_its_annotation_job_on_a_cvat_server():
    pytest.importorskip("cvat_sdk")
    from cvat_argo.cvat.server import connect
    from support.fake_cvat_server import FakeTask, cvat_server, job

    # three pages of jobs; a ground-truth job over the whole task is where nobody annotates
    jobs = [job(31, 0, 4), job(32, 5, 9, stage="validation"), job(33, 10, 14, state="completed"),
            job(40, 0, 14, type_="ground_truth", included_frames=[2, 7])]
    task = FakeTask(7, labels=[], frames=[{"name": f"f{i}.jpg", "width": 8, "height": 8} for i in range(15)],
                    jobs=jobs, page_size=2)
    with cvat_server(task) as env:
        links = nta.task_links(connect(env), 7)
    host = env["CVAT_HOST"]
    assert [links.url(frame) for frame in (0, 4, 5, 7, 14)] == [
        f"{host}/tasks/7/jobs/31?frame=0", f"{host}/tasks/7/jobs/31?frame=4", f"{host}/tasks/7/jobs/32?frame=5",
        f"{host}/tasks/7/jobs/32?frame=7", f"{host}/tasks/7/jobs/33?frame=14"]
    assert links.url(15) is None and links.url(None) is None
    listed = [path for method, path, _ in task.requests if path.startswith("/api/jobs")]
    assert len(listed) == 2 and all("task_id=7" in path for path in listed)  # every page, nothing more


def test_links_from_the_jobs_json_of_a_task_with_overlapping_jobs():
    # JobRead JSON as /api/jobs lists it for a task with overlap 2: border frames belong to both jobs
    jobs = [{"id": 6, "start_frame": 8, "stop_frame": 15, "type": "annotation"},
            {"id": 5, "start_frame": 0, "stop_frame": 9, "type": "annotation"}]
    links = nta.FrameLinks("http://cvat:8080", 3, jobs)
    assert [links.job_of(frame) for frame in (0, 8, 9, 10, 15, 16)] == [5, 5, 5, 6, 6, None]


# --- the stage, on a real tiny model -------------------------------------------------------------


PHOTOS = 10
BROKEN = 4  # the photo that does not decode


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return trained_exported_model(tmp_path_factory)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A dataset-stage folder whose photos are the task's even frames (people annotated the odd ones)."""
    import zipfile

    from cvat_argo.data.synthetic import generate_task

    work = tmp_path_factory.mktemp("next-dataset")
    task = generate_task(work / "task", images=PHOTOS, annotated_fraction=0.0, width=192, height=144, seed=11,
                         name="photo")
    folder = work / "dataset"
    listed = []
    with zipfile.ZipFile(task.export) as archive:
        for index in range(PHOTOS):
            name = f"photo_{index:05d}.jpg"
            target = folder / "unannotated" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(f"images/{name}") if index != BROKEN else b"\xff\xd8broken")
            listed.append({"frame": 2 * index, "name": name, "width": 192, "height": 144,
                           "path": f"unannotated/{name}"})
    (folder / artifacts.UNANNOTATED).write_text(json.dumps({"count": len(listed), "images": listed}))
    return folder


def _listed(out: Path) -> list[dict]:
    document = json.loads((out / artifacts.NEXT_TO_ANNOTATE).read_text())
    assert document["count"] == len(document["frames"])
    return document["frames"]


@pytest.mark.slow
def test_stage_writes_the_ranked_list_and_its_report_section(exported, dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CVAT_HOST", raising=False)
    out = tmp_path / "out"
    assert step.main(["--model", str(exported), "--dataset", str(dataset), "--out", str(out),
                      "--threshold", "0.05"]) == 0
    rows = _listed(out)
    assert rows, "the tiny model's mid-range scores leave doubt on some frame"
    frame_of = {f"photo_{i:05d}.jpg": 2 * i for i in range(PHOTOS) if i != BROKEN}  # what was pre-annotated
    assert all(row["name"] in frame_of and row["frame"] == frame_of[row["name"]] for row in rows)
    assert len({row["name"] for row in rows}) == len(rows)
    assert [(-r["score"], r["frame"]) for r in rows] == sorted((-r["score"], r["frame"]) for r in rows)
    assert all(r["score"] > 0 and r["why"] and r["url"] is None for r in rows)
    summary = json.loads((out / artifacts.ANNOTATION_SUMMARY).read_text())
    assert summary["next_to_annotate"] == len(rows)
    report = (out / artifacts.STAGE_REPORT).read_text()
    top = rows[0]
    assert "## Next to annotate" in report and f"| {top['frame']} | {top['name']} | {top['why']} |  |" in report
    assert f"next to annotate: {len(rows)} frames" in capsys.readouterr().out
    # the same detections ranked by hand: the stage fed the ranking every detection, before thresholds
    from PIL import Image

    from cvat_argo.inference.serving import load_detector

    detector = load_detector(exported, runtime="tflite")
    by_hand = nta.Ranking(nta.DEFAULT_COUNT, detector.labels)
    for name, frame in frame_of.items():
        (found,) = detector.detect([np.asarray(Image.open(dataset / "unannotated" / name).convert("RGB"))])
        by_hand.add(frame, name, found.scores, found.classes)
    expected = {row["name"]: row["score"] for row in nta.rows(by_hand.ranked())}
    assert all(row["score"] == pytest.approx(expected[row["name"]], abs=0.05) for row in rows)

    # the ranking sees every detection, whatever the threshold: --next 2 under a high one keeps the first two
    assert step.main(["--model", str(exported), "--dataset", str(dataset), "--out", str(tmp_path / "two"),
                      "--threshold", "0.9", "--next", "2"]) == 0
    assert json.loads((tmp_path / "two" / artifacts.ANNOTATION_SUMMARY).read_text())["shapes"] < summary["shapes"]
    assert _listed(tmp_path / "two") == rows[:2]
    assert step.main(["--model", str(exported), "--dataset", str(dataset), "--out", str(tmp_path / "none"),
                      "--threshold", "0.05", "--next", "0"]) == 0
    assert not (tmp_path / "none" / artifacts.NEXT_TO_ANNOTATE).exists()
    assert "Next to annotate" not in (tmp_path / "none" / artifacts.STAGE_REPORT).read_text()


@pytest.mark.slow
def test_stage_links_each_listed_frame_to_its_job_in_the_task(exported, dataset, tmp_path):
    from support.fake_cvat_server import FakeTask, cvat_server, job, label

    frames = [{"name": f"photo_{i // 2:05d}.jpg" if i % 2 == 0 else f"annotated_{i:05d}.jpg", "width": 192,
               "height": 144} for i in range(2 * PHOTOS)]
    task = FakeTask(7, labels=[label(i + 1, name) for i, name in enumerate(step.read_model_labels(exported))],
                    frames=frames, jobs=[job(51, 0, 9, state="completed"), job(52, 10, 19)])
    with cvat_server(task) as env:
        summary = step.run(step.Options(model=exported, dataset=dataset, out=tmp_path / "out", thresholds=["0.05"],
                                        cvat_task_id=7, env=env))
    assert summary["upload"]["created"] > 0
    rows = _listed(tmp_path / "out")
    assert rows and all(row["url"] == f"{env['CVAT_HOST']}/tasks/7/jobs/{51 if row['frame'] <= 9 else 52}"
                                      f"?frame={row['frame']}" for row in rows)
    assert "[open in CVAT](" in (tmp_path / "out" / artifacts.STAGE_REPORT).read_text()
