"""Two rounds of the loop against the CVAT server on loopback, through ``python -m cvat_argo run``.

A generated task (tests/support/fake_cvat_server.py, exported live as CVAT does) has its first frames
annotated by people in a finished job and the rest empty. Round 1 trains on the annotated frames and
uploads pre-annotations. A simulated reviewer then works through the API as a person's edits reach
CVAT: in one job they keep most of our shapes, move one (it stays ``source="auto"``), delete one,
draw a missed object and finish the job; in another job they delete every shape of one frame and
draw on another frame without finishing the job. Round 2 (``--from-run``) must train on exactly the
ground-truth frames, start from round 1's whole model, add shapes only to frames nobody touched and
that never had ours, and qc-report must count exactly what the reviewer did. The stages leave nothing
in their temp folder (TensorFlow's own clean-up never runs: they end with ``os._exit``).
"""

from __future__ import annotations

import json
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import pytest

from cvat_argo import cli
from cvat_argo.cvat.review import AWAITING_REVIEW, GROUND_TRUTH, TO_PRE_ANNOTATE
from cvat_argo.cvat.server import export_task
from cvat_argo.data.synthetic import generate_task
from cvat_argo.engines import artifacts
from cvat_argo.formats.cvat_xml.common import EXPORT_XML
from cvat_argo.formats.cvat_xml.reader import CvatXmlReader
from support.fake_cvat_server import TOKEN, FakeTask, cvat_server, job, label

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]
pytest.importorskip("official", reason="needs the train extra (tf-models-official)")
pytest.importorskip("cvat_sdk")

TASK_ID = 7
IMAGES, ANNOTATED, JOB_SIZE = 120, 72, 12
MODEL = "ssd-mobilenet-v2-small"
#: Enough for the CPU model to find the generated shapes at 128 px (about 360 steps).
ARGS = "epochs=40,batch_size=8,input_size=128"
LABEL_IDS = {"square": 1, "circle": 2, "triangle": 3}


def generated_task(folder: Path) -> FakeTask:
    """The generator's images, the first ANNOTATED frames with their true shapes (as people drew them)."""
    data = generate_task(folder, images=IMAGES, width=160, height=120, seed=3, annotated_fraction=ANNOTATED / IMAGES)
    truth = {record.name: record for record in CvatXmlReader(data.truth).images()}
    with zipfile.ZipFile(data.export) as archive:
        images = {name.removeprefix("images/"): archive.read(name) for name in archive.namelist()
                  if name.startswith("images/")}
        visible = archive.read(EXPORT_XML)
    (folder / "visible.xml").write_bytes(visible)
    annotated = sorted(r.name for r in CvatXmlReader(folder / "visible.xml").images() if r.shapes)
    order = annotated + sorted(set(truth) - set(annotated))  # people's frames first, then the rest
    task = FakeTask(TASK_ID, labels=[label(1, "square", "rectangle"), label(2, "circle", "rectangle"),
                                     label(3, "triangle", "polygon")],
                    frames=[{"name": name, "width": 160, "height": 120} for name in order],
                    images={frame: images[name] for frame, name in enumerate(order)}, live_export=True,
                    name="shapes")
    for frame, name in enumerate(order[:len(annotated)]):
        for shape in truth[name].shapes:
            points = list(shape.polygon) if shape.kind == "polygon" else list(shape.box)
            task.shapes.append({"id": task.next_id, "type": "polygon" if shape.kind == "polygon" else "rectangle",
                                "frame": frame, "label_id": LABEL_IDS[shape.label], "points": points,
                                "source": "manual", "occluded": False, "outside": False, "z_order": 0,
                                "rotation": 0.0, "group": 0, "attributes": [], "elements": []})
            task.next_id += 1
    task.jobs = [job(1, 0, len(annotated) - 1, stage="acceptance", state="completed")] + [
        job(2 + i, start, min(start + JOB_SIZE, IMAGES) - 1)
        for i, start in enumerate(range(len(annotated), IMAGES, JOB_SIZE))]
    return task


class Reviewer:
    """A person's edits as they reach CVAT through its API (what the UI sends, minus the UI's re-marking)."""

    def __init__(self, host: str, task: FakeTask):
        self.host, self.task = host, task

    def _send(self, method: str, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.host}{path}", data=json.dumps(body).encode(), method=method,
                                         headers={"Authorization": f"Bearer {TOKEN}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def move(self, shape: dict, dx: float) -> None:
        moved = {**shape, "points": [v + dx if i % 2 == 0 else v for i, v in enumerate(shape["points"])]}
        self._send("PATCH", f"/api/tasks/{TASK_ID}/annotations?action=update",
                   {"version": 0, "tags": [], "shapes": [moved], "tracks": []})

    def delete(self, *shapes: dict) -> None:
        self._send("PATCH", f"/api/tasks/{TASK_ID}/annotations?action=delete",
                   {"version": 0, "tags": [], "shapes": list(shapes), "tracks": []})

    def draw(self, frame: int, label_name: str, box: tuple[float, float, float, float]) -> None:
        shape = {"type": "rectangle", "frame": frame, "label_id": LABEL_IDS[label_name], "points": list(box),
                 "source": "manual", "occluded": False, "z_order": 0, "attributes": []}
        self._send("PATCH", f"/api/tasks/{TASK_ID}/annotations?action=create",
                   {"version": 0, "tags": [], "shapes": [shape], "tracks": []})

    def finish(self, job_id: int) -> None:
        self._send("PATCH", f"/api/jobs/{job_id}", {"state": "completed"})


def frame_kinds(task: FakeTask) -> dict[int, str]:
    """What each frame is, by the issue's rule, worked out here from the server's state."""
    reviewed = {frame for j in task.jobs if j["state"] == "completed" or j["stage"] in ("validation", "acceptance")
                for frame in range(j["start_frame"], j["stop_frame"] + 1)}
    kinds = {}
    for frame in range(len(task.frames)):
        sources = {shape["source"] for shape in task.shapes_on(frame)}
        if frame in reviewed or sources - {"auto"}:
            kinds[frame] = GROUND_TRUTH
        else:
            kinds[frame] = AWAITING_REVIEW if sources else TO_PRE_ANNOTATE
    return kinds


def snapshot(task: FakeTask, frames) -> dict[int, list[tuple]]:
    return {frame: sorted((s["id"], s["label_id"], s["source"], tuple(s["points"])) for s in task.shapes_on(frame))
            for frame in frames}


def run(*argv: str) -> None:
    assert cli.main(list(argv)) == 0


def test_two_rounds_of_review(tmp_path, monkeypatch):
    task = generated_task(tmp_path / "task")
    runs = tmp_path / "runs"
    scratch = tmp_path / "tmp"  # the stages' TMPDIR: TensorFlow's leftovers must not outlive them
    scratch.mkdir()
    tempfile.gettempdir()  # this process keeps its own temp folder
    with cvat_server(task) as env:
        for name, value in {**env, "TMPDIR": str(scratch)}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("CVAT_ARGO_STORE", raising=False)

        # ---- round 1: trained on the people's frames, pre-annotates the rest
        run("run", "--task-id", str(TASK_ID), "--model", MODEL, "--args", ARGS, "--store", str(runs),
            "--run-id", "round-1")
        first = artifacts.read_json(runs / "round-1" / artifacts.CREATE_DATASET / artifacts.DATASET
                                    / artifacts.DATASET_SUMMARY, "dataset summary")
        assert {kind: first["frames"][kind] for kind in (GROUND_TRUTH, AWAITING_REVIEW, TO_PRE_ANNOTATE)} == {
            GROUND_TRUTH: ANNOTATED, AWAITING_REVIEW: 0, TO_PRE_ANNOTATE: IMAGES - ANNOTATED}
        assert first["images"]["train"] + first["images"]["val"] == ANNOTATED
        ours = [s for s in task.shapes if s["source"] == "auto"]
        assert ours and all(s["frame"] >= ANNOTATED for s in ours)
        ledger = json.loads(next((runs / artifacts.LEDGERS).rglob(f"task-{TASK_ID}.json")).read_text())
        assert sum(len(frame["shapes"]) for frame in ledger["frames"].values()) == len(ours)

        # ---- the review: one job reviewed and finished, another one only touched
        by_job = {j["id"]: [s for s in ours if j["start_frame"] <= s["frame"] <= j["stop_frame"]] for j in task.jobs[1:]}
        reviewed_job = max(by_job, key=lambda j: len(by_job[j]))
        kept = by_job[reviewed_job]
        assert len(kept) >= 3, "round 1 found too little to review: the model did not learn the shapes"
        reviewer = Reviewer(env["CVAT_HOST"], task)
        moved, deleted = kept[0], kept[1]
        width = moved["points"][2] - moved["points"][0] if moved["type"] == "rectangle" else 20.0
        reviewer.move(moved, dx=round(0.2 * width, 2))  # IoU 0.67: a correction, not a new object
        reviewer.delete(deleted)
        job_frames = range(next(j for j in task.jobs if j["id"] == reviewed_job)["start_frame"],
                           next(j for j in task.jobs if j["id"] == reviewed_job)["stop_frame"] + 1)
        reviewer.draw(job_frames[0], "square", (1.0, 1.0, 9.0, 9.0))  # a small object the model missed
        reviewer.finish(reviewed_job)
        other = next(j for j in sorted(by_job, key=lambda j: -len(by_job[j])) if j != reviewed_job and by_job[j])
        cleared = by_job[other][0]["frame"]
        reviewer.delete(*[s for s in task.shapes_on(cleared)])  # a reviewer removed all of our shapes there
        touched = next(f for f in range(len(task.frames)) if f >= ANNOTATED and f not in job_frames
                       and f != cleared and task.shapes_on(f))
        touched_ours = len(task.shapes_on(touched))  # left as they were: accepted when qc-report counts the frame
        reviewer.draw(touched, "circle", (100.0, 60.0, 130.0, 90.0))  # a human edit: the frame is theirs now

        # ---- round 2: from round 1's model, on exactly the ground truth, touching only what it may
        kinds = frame_kinds(task)
        before = snapshot(task, range(len(task.frames)))
        run("run", "--task-id", str(TASK_ID), "--from-run", "round-1", "--args", ARGS, "--store", str(runs),
            "--run-id", "round-2")
        second = artifacts.read_json(runs / "round-2" / artifacts.CREATE_DATASET / artifacts.DATASET
                                     / artifacts.DATASET_SUMMARY, "dataset summary")
        expected = {kind: sum(k == kind for k in kinds.values()) for kind in (GROUND_TRUTH, AWAITING_REVIEW,
                                                                               TO_PRE_ANNOTATE)}
        assert {kind: second["frames"][kind] for kind in expected} == expected
        assert second["images"]["train"] + second["images"]["val"] == expected[GROUND_TRUTH]
        assert second["images"]["unannotated"] == expected[TO_PRE_ANNOTATE]
        base = artifacts.BaseModelManifest.read(runs / "round-2" / artifacts.PULL_BASE_MODEL / artifacts.BASE_MODEL)
        assert base.modules == "all" and base.labels == ["square", "circle", "triangle"]
        assert "init_checkpoint_modules: all" in (runs / "round-2" / artifacts.TRAIN / artifacts.MODEL
                                                  / artifacts.MODEL_PARAMS).read_text()
        after = snapshot(task, range(len(task.frames)))
        ledgered = {int(frame) for frame in ledger["frames"]}
        for frame in range(len(task.frames)):
            if kinds[frame] != TO_PRE_ANNOTATE or frame in ledgered:
                assert after[frame] == before[frame], f"round 2 changed frame {frame} ({kinds[frame]})"
            else:
                assert all(shape[2] == "auto" for shape in after[frame])
        assert not task.shapes_on(cleared), "round 2 brought back shapes a reviewer deleted"

        # ---- qc-report on the reviewed job: every prediction counted once, as the reviewer acted
        export, _ = export_task(TASK_ID, tmp_path / "export")
        predictions = runs / "round-1" / artifacts.PRE_ANNOTATE / artifacts.ANNOTATIONS
        reviewed = f"{job_frames[0]}-{job_frames[-1]}"
        run("qc-report", str(export), "--predictions", str(predictions), "--reviewed", reviewed,
            "--out", str(tmp_path / "qc"))
    assert sorted(scratch.rglob("*")) == [], "the stages left files in their temp folder"
    report = json.loads((tmp_path / "qc" / artifacts.QC_JSON).read_text())
    total = report["total"]
    # Counted: the reviewed job, and the frame a person drew on (a human edit makes it reviewed); not
    # the cleared frame (nothing left to compare) nor frames whose shapes nobody touched.
    predictions = len(kept) + touched_ours
    assert (total["predictions"], total["accepted"], total["corrected"], total["deleted"], total["misses"]) == (
        predictions, predictions - 2, 1, 1, 2), total
    # Left out as awaiting review: the other frames that hold only machine shapes, round 1's or round 2's.
    assert report["frames"]["awaiting_review"] == sum(
        1 for frame in range(ANNOTATED, IMAGES) if frame not in job_frames and frame != touched
        and task.shapes_on(frame) and all(shape["source"] == "auto" for shape in task.shapes_on(frame)))
