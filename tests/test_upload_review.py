"""Rounds of pre-annotation against a CVAT server on loopback: what people removed, edited or reviewed
stays as they left it, and the ledger always says what in the task is ours.

Each test plays a sequence a team goes through (upload, review in CVAT, retrain, upload again) and
checks the server's shapes afterwards, shape by shape.
"""

from __future__ import annotations

import copy
import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from cvat_argo.cvat import upload as cvat_upload
from cvat_argo.cvat.ledger import open_ledger
from cvat_argo.cvat.server import connect
from cvat_argo.engines import artifacts
from cvat_argo.engines.local import LocalRun
from cvat_argo.engines.pipeline import build_pipeline
from cvat_argo.entry import run_step
from cvat_argo.errors import CvatArgoError, DatasetError, TransientError
from cvat_argo.formats.annotations import ImageRecord, Shape
from cvat_argo.formats.label_map import write_labels_json
from cvat_argo.request.spec import TrainingRequest
from cvat_argo.steps import annotate as step
from support.fake_cvat_server import FakeTask, cvat_server, job, label
from support.fixtures_servers import s3_server  # noqa: F401

pytest.importorskip("cvat_sdk")

PREFIX = "cvat-argo"
LEDGERS = artifacts.ledgers_root(PREFIX)  # what the pipeline passes as --ledger
MODEL_LABELS = ("car", "person")
FRAMES = [{"name": f"img_{i}.jpg", "width": 100, "height": 80} for i in range(6)]


def labels() -> list[dict[str, Any]]:
    return [label(1, "car", "rectangle"), label(2, "person", "any", score="text")]


def auto(label_name: str, box, score: float = 0.9) -> Shape:
    return Shape(label_name, "box", tuple(float(v) for v in box), source="auto", score=score)


def model(shift: float, frames) -> dict[int, list[Shape]]:
    """A model's predictions on ``frames``: a car and a person on each; another ``shift``, another model."""
    return {f: [auto("car", (10 + f + shift, 10, 40 + f + shift, 40)), auto("person", (50, 20 + shift, 70, 70 + shift))]
            for f in frames}


MODEL_A, MODEL_B = model(0, range(6)), model(3, range(6))  # B: the retrained model, every box 3 px away


def records(predictions: dict[int, list[Shape]]) -> list[ImageRecord]:
    """One record per task frame, as the stage makes them (frames without detections are empty)."""
    return [ImageRecord(f, FRAMES[f]["name"], 100, 80, tuple(predictions.get(f, ()))) for f in range(len(FRAMES))]


def new_task(jobs: list[dict[str, Any]] | None = None) -> FakeTask:
    return FakeTask(7, labels=labels(), frames=list(FRAMES), jobs=jobs if jobs is not None else [job(1, 0, 5)])


def round_(client, store: Path | None, predictions, *, refresh: bool = False, dry_run: bool = False,
           location: str | None = LEDGERS, chunk_shapes: int = cvat_upload.CHUNK_SHAPES) -> dict[str, Any]:
    """One pre-annotation round, as the stage runs it: open the task's ledger, then upload."""
    env = {"CVAT_ARGO_STORE": str(store)} if store is not None else {}
    ledger, _ = open_ledger(location, client.api_map.host, 7, env)
    return cvat_upload.upload(client, 7, records(predictions), MODEL_LABELS, ledger=ledger, refresh=refresh,
                              run="round", dry_run=dry_run, chunk_shapes=chunk_shapes)


def ledger_file(store: Path, client) -> Path:
    return store / artifacts.ledger_key(PREFIX, client.api_map.host, 7)


def ledger_ids(store: Path, client) -> dict[int, list[int]]:
    document = json.loads(ledger_file(store, client).read_text())
    return {int(f): [s["id"] for s in entry["shapes"]] for f, entry in document["frames"].items()}


def server_ids(task: FakeTask) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for shape in task.shapes:
        found.setdefault(shape["frame"], []).append(shape["id"])
    return found


def boxes(task: FakeTask, frame: int) -> list[tuple[int, list[float], str]]:
    return sorted((s["label_id"], s["points"], s["source"]) for s in task.shapes_on(frame))


def expected(predictions: dict[int, list[Shape]], frame: int) -> list[tuple[int, list[float], str]]:
    return sorted(({"car": 1, "person": 2}[s.label], list(s.box), "auto") for s in predictions[frame])


def by_id(task: FakeTask) -> dict[int, dict[str, Any]]:
    return {shape["id"]: copy.deepcopy(shape) for shape in task.shapes}


def api(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    """A request to the server as any API client (a script, cvat-cli) makes it."""
    request = urllib.request.Request(env["CVAT_HOST"] + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {env['CVAT_ACCESS_TOKEN']}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def shape_as_read(env: dict[str, str], frame: int, label_id: int) -> dict[str, Any]:
    shapes = api(env, "GET", "/api/tasks/7/annotations")["shapes"]
    return next(s for s in shapes if s["frame"] == frame and s["label_id"] == label_id)


def edit(env: dict[str, str], action: str, shapes: list[dict[str, Any]]) -> None:
    api(env, "PATCH", f"/api/tasks/7/annotations?action={action}", {"tags": [], "shapes": shapes, "tracks": []})


def upload_patches(task: FakeTask) -> int:
    return len(task.patches)


# --- what a reviewer deleted -------------------------------------------------------------------------


def test_a_shape_a_reviewer_deleted_never_comes_back(tmp_path):
    task = new_task()
    predictions = {0: MODEL_A[0], 1: MODEL_A[1]}
    with cvat_server(task) as env:
        client = connect(env)
        first = round_(client, tmp_path, predictions)
        assert first["created"] == 4 and first["frames_created"] == 2 and first["shapes_deleted"] == 0
        assert boxes(task, 0) == expected(predictions, 0) and boxes(task, 1) == expected(predictions, 1)
        assert ledger_ids(tmp_path, client) == server_ids(task)  # the ledger knows the server's ids
        car, person = task.shapes_on(0)
        edit(env, "delete", [shape_as_read(env, 0, 2)])  # the reviewer removes the person on frame 0
        assert task.shapes_on(0) == [car]
        after_review = by_id(task)
        for _ in range(2):  # the next round, and the one after
            again = round_(client, tmp_path, predictions)
            assert again["created"] == 0 and again["frames_ours_kept"] == 2 and again["frames_other_auto"] == 0
            assert by_id(task) == after_review and task.shapes_on(0) == [car]
        assert person["id"] not in by_id(task)


# --- a retrained model -------------------------------------------------------------------------------


def test_refresh_replaces_only_frames_nobody_touched(tmp_path):
    task = new_task()
    with cvat_server(task) as env:
        client = connect(env)
        assert round_(client, tmp_path, MODEL_A)["created"] == 12
        # review through the API: frame 1 a box moved (it stays auto), frame 2 a box deleted, frame 3 an
        # auto box added (another tool), frame 4 a person drew a box; frames 0 and 5 nobody touched
        moved = shape_as_read(env, 1, 1)
        edit(env, "update", [{**moved, "points": [p + 5 for p in moved["points"]]}])
        assert shape_as_read(env, 1, 1)["source"] == "auto" and shape_as_read(env, 1, 1)["id"] == moved["id"]
        edit(env, "delete", [shape_as_read(env, 2, 2)])
        edit(env, "create", [{"type": "rectangle", "frame": 3, "label_id": 1, "points": [1, 1, 9, 9],
                              "source": "auto"}])
        edit(env, "create", [{"type": "rectangle", "frame": 4, "label_id": 1, "points": [2, 2, 8, 8]}])
        reviewed = by_id(task)
        sent = upload_patches(task)

        kept = round_(client, tmp_path, MODEL_B)  # retrained, without --refresh: nothing changes
        assert kept["created"] == 0 and kept["shapes_deleted"] == 0 and kept["frames_ours_kept"] == 5
        assert kept["frames_human"] == 1 and by_id(task) == reviewed and upload_patches(task) == sent

        refreshed = round_(client, tmp_path, MODEL_B, refresh=True)
        assert (refreshed["frames_refreshed"], refreshed["frames_ours_edited"], refreshed["frames_human"]) == (2, 3, 1)
        assert refreshed["shapes_deleted"] == 4 and refreshed["created"] == 4
        for frame in (0, 5):  # ours, untouched: now exactly the new model's boxes, the old ones gone
            assert boxes(task, frame) == expected(MODEL_B, frame)
            assert not {s["id"] for s in task.shapes_on(frame)} & set(reviewed)
        for frame in (1, 2, 3, 4):  # a person's edits: exactly as they were
            assert {s["id"]: s for s in task.shapes_on(frame)} == {
                i: s for i, s in reviewed.items() if s["frame"] == frame}
        ledger = ledger_ids(tmp_path, client)
        assert {f: ledger[f] for f in (0, 5)} == {f: server_ids(task)[f] for f in (0, 5)}

        sent = upload_patches(task)
        again = round_(client, tmp_path, MODEL_B, refresh=True)  # the same model again: nothing to redo
        assert again["frames_refreshed"] == 0 and again["frames_ours_kept"] == 2 and again["already_present"] == 4
        assert upload_patches(task) == sent


def test_a_box_deleted_and_drawn_again_in_place_is_not_ours_any_more(tmp_path):
    """Same label, same box, but not the shape we made (the ledger knows its id): a person's work."""
    task = new_task()
    with cvat_server(task) as env:
        client = connect(env)
        round_(client, tmp_path, {0: MODEL_A[0]})
        again = shape_as_read(env, 0, 1)
        edit(env, "delete", [again])
        edit(env, "create", [{k: v for k, v in again.items() if k != "id"}])  # drawn again, source auto
        before = by_id(task)
        summary = round_(client, tmp_path, {0: MODEL_B[0]}, refresh=True)
        assert summary["frames_ours_edited"] == 1 and summary["created"] == 0 and by_id(task) == before


def test_reviewed_jobs_are_never_touched_even_with_refresh(tmp_path):
    task = new_task([job(1, 0, 1), job(2, 2, 3), job(3, 4, 5)])
    first_model = {f: MODEL_A[f] for f in (0, 2, 4)}  # frames 1, 3 and 5 stay empty
    with cvat_server(task) as env:
        client = connect(env)
        assert round_(client, tmp_path, first_model)["frames_created"] == 3
        api(env, "PATCH", "/api/jobs/1", {"state": "completed"})  # a person finished job 1
        moved = api(env, "PATCH", "/api/jobs/2", {"stage": "acceptance"})  # job 2 went to acceptance
        assert (moved["stage"], moved["state"]) == ("acceptance", "new")
        before = by_id(task)
        summary = round_(client, tmp_path, MODEL_B, refresh=True)
        assert summary["frames_reviewed"] == 4 and summary["frames_refreshed"] == 1
        assert summary["frames_created"] == 2 and summary["created"] == 4  # frame 4 refreshed, frame 5 filled
        assert {i: s for i, s in by_id(task).items() if s["frame"] < 4} == {
            i: s for i, s in before.items() if s["frame"] < 4}
        assert task.shapes_on(1) == [] and task.shapes_on(3) == []  # reviewed empty frames stay empty
        assert boxes(task, 4) == expected(MODEL_B, 4) and boxes(task, 5) == expected(MODEL_B, 5)


# --- machine shapes that are not ours ----------------------------------------------------------------


@pytest.mark.parametrize("ledger", ["fresh store", "no --ledger"])
def test_machine_shapes_from_elsewhere_are_left_alone(tmp_path, ledger):
    task = new_task()
    ours = MODEL_A[0][0]
    task.shapes = [  # from another model (one box exactly where ours would go), before any ledger existed
        {"type": "rectangle", "frame": 0, "label_id": 1, "points": list(ours.box), "source": "auto", "id": 1,
         "occluded": False, "z_order": 0, "rotation": 0.0, "group": 0, "attributes": []},
        {"type": "rectangle", "frame": 1, "label_id": 2, "points": [3, 3, 30, 30], "source": "auto", "id": 2,
         "occluded": False, "z_order": 0, "rotation": 0.0, "group": 0, "attributes": []},
    ]
    task.tracks = [{"frame": 3, "label_id": 1, "source": "auto", "group": 0, "attributes": [], "id": 3,
                    "shapes": [{"frame": 3, "type": "rectangle", "points": [1, 1, 9, 9], "outside": False},
                               {"frame": 5, "type": "rectangle", "points": [1, 1, 9, 9], "outside": True}]}]
    before = by_id(task)
    with cvat_server(task) as env:
        client = connect(env)
        location = LEDGERS if ledger == "fresh store" else None
        summary = round_(client, tmp_path / "store", MODEL_A, refresh=True, location=location)
    assert summary["frames_other_auto"] == 4 and summary["already_present"] == 1  # frames 0, 1 and the track's 3, 4
    assert summary["frames_created"] == 2 and summary["created"] == 4  # frames 2 and 5, nobody's
    assert {i: s for i, s in by_id(task).items() if i in before} == before
    assert sorted(s["frame"] for s in task.shapes if s["id"] not in before) == [2, 2, 5, 5]
    assert summary["ledger"] == (None if location is None else str(tmp_path / "store" / artifacts.ledger_key(
        PREFIX, env["CVAT_HOST"], 7)))


# --- an interrupted upload ---------------------------------------------------------------------------


def test_an_interrupted_upload_leaves_a_true_ledger_and_the_rerun_completes_it(tmp_path):
    task = new_task()
    task.patch_failures = {2: 500}  # the server fails the second chunk
    predictions = {f: MODEL_A[f] for f in (0, 1, 2)}
    with cvat_server(task) as env:
        client = connect(env)
        with pytest.raises(TransientError) as failed:
            round_(client, tmp_path, predictions, chunk_shapes=2)
        assert env["CVAT_ACCESS_TOKEN"] not in str(failed.value) and "\n" not in str(failed.value)
        assert boxes(task, 0) == expected(predictions, 0) and len(task.shapes) == 2
        assert ledger_ids(tmp_path, client) == server_ids(task)  # exactly what was created: frame 0

        summary = round_(client, tmp_path, predictions, chunk_shapes=2)
        assert summary["created"] == 4 and summary["frames_ours_kept"] == 1
        for frame in (0, 1, 2):
            assert boxes(task, frame) == expected(predictions, frame)
        assert ledger_ids(tmp_path, client) == server_ids(task)


def test_an_interrupted_refresh_forgets_only_what_it_deleted(tmp_path):
    task = new_task()
    with cvat_server(task) as env:
        client = connect(env)
        round_(client, tmp_path, {f: MODEL_A[f] for f in (0, 1)}, chunk_shapes=2)
        task.patch_failures = {len(task.patches) + 2: 503}  # frame 0's old shapes go, its new ones fail
        with pytest.raises(TransientError):
            round_(client, tmp_path, {f: MODEL_B[f] for f in (0, 1)}, refresh=True, chunk_shapes=2)
        assert task.shapes_on(0) == [] and boxes(task, 1) == expected(MODEL_A, 1)
        assert ledger_ids(tmp_path, client) == server_ids(task)  # frame 0 is nobody's now, frame 1 still ours
        summary = round_(client, tmp_path, {f: MODEL_B[f] for f in (0, 1)}, refresh=True, chunk_shapes=2)
        assert summary["frames_refreshed"] == 1 and summary["frames_created"] == 2
        assert boxes(task, 0) == expected(MODEL_B, 0) and boxes(task, 1) == expected(MODEL_B, 1)
        assert ledger_ids(tmp_path, client) == server_ids(task)


# --- a dry run, and ledgers elsewhere ----------------------------------------------------------------


def test_a_dry_run_changes_nothing_and_writes_no_ledger(tmp_path):
    task = new_task()
    with cvat_server(task) as env:
        client = connect(env)
        dry = round_(client, tmp_path, MODEL_A, dry_run=True)
        assert dry["created"] == 12 and dry["dry_run"] is True
        assert task.patches == [] and not ledger_file(tmp_path, client).exists()
        round_(client, tmp_path, MODEL_A)
        written, shapes = ledger_file(tmp_path, client).read_bytes(), by_id(task)
        dry = round_(client, tmp_path, MODEL_B, refresh=True, dry_run=True)
        assert dry["frames_refreshed"] == 6 and dry["shapes_deleted"] == 12 and dry["created"] == 12
        assert by_id(task) == shapes and ledger_file(tmp_path, client).read_bytes() == written
        assert len(task.patches) == 1


def test_the_ledger_in_s3_carries_rounds(s3_server):  # noqa: F811
    from cvat_argo.storage.store import minio_client, store_from_env

    bucket = f"ledgers-{uuid.uuid4().hex[:12]}"
    minio_client(s3_server).make_bucket(bucket)
    store_env = {**s3_server, "CVAT_ARGO_STORE": f"s3://{bucket}"}
    task = new_task()
    with cvat_server(task) as env:
        client = connect(env)
        for _ in range(2):  # the second round finds the first one's ledger in the bucket
            ledger, note = open_ledger(LEDGERS, client.api_map.host, 7, store_env)
            summary = cvat_upload.upload(client, 7, records({0: MODEL_A[0]}), MODEL_LABELS, ledger=ledger)
            if summary["created"]:
                edit(env, "delete", [shape_as_read(env, 0, 2)])  # reviewed between the rounds
        assert summary["created"] == 0 and summary["frames_ours_kept"] == 1 and len(task.shapes_on(0)) == 1
    key = artifacts.ledger_key(PREFIX, env["CVAT_HOST"], 7)
    assert note == f"ledger s3://{bucket}/{key}" and store_from_env(store_env).exists(key)


def test_ledger_keys_name_the_server_without_its_scheme_or_credentials():
    assert artifacts.ledger_key("p", "https://robot:s3cret@CVAT.example.com:8443/", 3) == \
        "p/ledgers/cvat.example.com_8443/task-3.json"
    assert artifacts.ledger_key("", "http://cvat.example.com", 3) == artifacts.ledger_key("", "cvat.example.com", 3)
    pre_annotate = build_pipeline(TrainingRequest.create(task_id=1)).stage(artifacts.PRE_ANNOTATE)
    run = LocalRun(run_id="r1", root=Path("unused"), pipeline=build_pipeline(TrainingRequest.create(task_id=1)),
                   store_url="s3://bucket/team")
    command = run.resolve(pre_annotate)
    assert command[command.index("--ledger") + 1] == "team/ledgers"  # beside the runs, in every run
    assert command[command.index("--run-id") + 1] == "r1"


# --- a ledger that cannot be trusted -----------------------------------------------------------------


def _stage_inputs(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "exported"
    model.mkdir()
    write_labels_json(model / artifacts.LABELS, MODEL_LABELS)
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / artifacts.UNANNOTATED).write_text(json.dumps({"count": 1, "images": [
        {"frame": 0, "name": "img_0.jpg", "width": 100, "height": 80, "path": "img_0.jpg"}]}))
    return model, dataset


@pytest.mark.parametrize(("content", "message"), [
    ('{"kind": "cvat-argo upload ledger", "version": 1, "frames": {"0": ', "cannot be read"),
    ('{"kind": "cvat-argo upload ledger", "version": 1, "host": "HOST", "task_id": 8, "frames": {}}',
     "belongs to task 8"),
])
def test_a_broken_or_foreign_ledger_stops_the_stage_before_anything_changes(tmp_path, monkeypatch, capsys, content,
                                                                            message):
    model, dataset = _stage_inputs(tmp_path)
    task = new_task()
    with cvat_server(task) as env:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("CVAT_ARGO_STORE", raising=False)
        ledger = tmp_path / "ledger.json"
        ledger.write_text(content.replace("HOST", env["CVAT_HOST"]))
        written = ledger.read_bytes()
        code = run_step(step.main, ["--model", str(model), "--dataset", str(dataset), "--out",
                                         str(tmp_path / "out"), "--cvat-task-id", "7", "--ledger", str(ledger)])
    error = capsys.readouterr().err.strip()
    assert code == DatasetError.exit_code and error.count("\n") == 0
    assert message in error and str(ledger) in error and env["CVAT_ACCESS_TOKEN"] not in error
    assert ledger.read_bytes() == written and task.patches == [] and not (tmp_path / "out").exists()


def test_a_ledgers_root_without_a_store_means_no_ledger_and_says_so(tmp_path):
    ledger, note = open_ledger(LEDGERS, "http://cvat:8080", 7, {})
    assert ledger is None and "CVAT_ARGO_STORE is not set" in note
    with pytest.raises(CvatArgoError, match="cannot name a ledger folder"):
        artifacts.ledger_key("p", "http://", 7)
