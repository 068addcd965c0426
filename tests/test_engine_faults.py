"""The local engine under faults: a store that fails, signals, SIGKILL, a second engine, reused run ids.

The engine runs for real (its scheduler, subprocesses, locks, signal handling, manifests, uploads to
a moto S3 server, status and report) over stand-in stages (``support.fake_stage``) that finish in
milliseconds or sleep on request, so each fault is quick to provoke. Every engine runs as its own
process with a timeout: a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cvat_argo.engines import artifacts, local
from cvat_argo.engines.pipeline import build_pipeline
from cvat_argo.request.spec import TrainingRequest
from cvat_argo.storage.store import minio_client
from support.cut_proxy import s3_proxy  # noqa: F401
from support.engine_driver import REQUEST
from support.fixtures_servers import s3_server  # noqa: F401

pytestmark = pytest.mark.faults

TESTS = Path(__file__).resolve().parent
STAGES = {stage.name: stage for stage in build_pipeline(REQUEST).stages}


def _env(plan: dict | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CVAT_ARGO_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env["CVAT_ARGO_FAKE_PLAN"] = json.dumps(plan or {})
    return {**env, **(extra or {})}


def _driver(store: str, run_id: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "support.engine_driver", "--store", store, "--run-id", run_id, *extra]


def _run(store: str, run_id: str, *extra: str, plan: dict | None = None, env: dict | None = None,
         timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The engine as its own process; an s3:// store keeps its work folder in ``cwd``/runs."""
    return subprocess.run(_driver(store, run_id, *extra), env=_env(plan, env), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _start(store: str, run_id: str, *extra: str, plan: dict | None = None, env: dict | None = None,
           cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(_driver(store, run_id, *extra), env=_env(plan, env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd)


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / artifacts.RECORD_STATUS / artifacts.STATUS / artifacts.STATUS_FILE).read_text())


def test_fake_pipeline_runs_and_resumes_as_the_real_one_does(tmp_path):
    """The baseline the faults below depart from: every stage runs, a resume skips them all."""
    first = _run(str(tmp_path), "base")
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "base"
    for name, stage in STAGES.items():
        assert artifacts.StageManifest.read(run_dir / name).inputs.keys() == {source.name for source in stage.inputs}
    assert _status(run_dir)["status"] == "Succeeded"
    again = _run(str(tmp_path), "base", "--resume")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("outputs complete and unchanged, skipped") == len(artifacts.STAGE_NAMES)


def test_an_upload_that_fails_fails_its_stage_and_the_engine_does_not_hang(tmp_path, s3_server):  # noqa: F811
    """Finding 1: the worker thread died, execute() waited for ever, and the stage counted as complete."""
    store = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/p"
    result = _run(store, "upload", env=s3_server, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Exception in thread" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "no-such-bucket" in error_lines[0], result.stderr
    run_dir = tmp_path / "runs" / "upload"
    # At least one ran; neither reached the store. The first failure stops the other stage, which
    # may not have started by then (the two start side by side).
    started = [stage for stage in (artifacts.CREATE_DATASET, artifacts.PULL_BASE_MODEL)
               if (run_dir / stage / "pid").exists()]
    assert started, result.stderr
    for stage in (artifacts.CREATE_DATASET, artifacts.PULL_BASE_MODEL):
        assert not (run_dir / stage / artifacts.STAGE_MANIFEST).exists(), stage
    assert _status(run_dir)["status"] == "Failed"
    resumed = _run(store, "upload", "--resume", env=s3_server, cwd=tmp_path)
    assert "outputs complete and unchanged, skipped" not in resumed.stderr  # nothing counts as done


def test_outputs_and_checkpoint_keys_go_under_the_stores_prefix(tmp_path, s3_server):  # noqa: F811
    bucket = f"runs-{uuid.uuid4().hex[:8]}"
    minio_client(s3_server).make_bucket(bucket)
    result = _run(f"s3://{bucket}/team", "s3run", env=s3_server, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = {o.object_name for o in minio_client(s3_server).list_objects(bucket, recursive=True)}
    for name, stage in STAGES.items():
        assert f"team/s3run/{name}/{stage.outputs[0]}/data.txt" in names, names
        assert (tmp_path / "runs" / "s3run" / name / artifacts.STAGE_MANIFEST).exists()


def test_a_store_cut_while_a_stage_runs_leaves_it_unfinished_and_resume_completes(tmp_path, s3_proxy):  # noqa: F811
    """Finding 1: after an outage during convert, resume skipped convert although nothing reached the bucket."""
    bucket = f"runs-{uuid.uuid4().hex[:8]}"
    minio_client(s3_proxy.env).make_bucket(bucket)
    store = f"s3://{bucket}/p"
    engine = _start(store, "outage", plan={"convert": {"sleep": 3}}, env=s3_proxy.env, cwd=tmp_path)
    _wait_for(tmp_path / "runs" / "outage" / artifacts.CONVERT / "pid")
    s3_proxy.cut("refuse")  # convert finishes while the store is away: its upload fails, twice
    _, stderr = engine.communicate(timeout=300)
    assert engine.returncode == 75, stderr
    assert "stage convert failed" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "runs" / "outage" / artifacts.CONVERT / artifacts.STAGE_MANIFEST).exists()
    s3_proxy.restore()
    resumed = _run(store, "outage", "--resume", env=s3_proxy.env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "convert: runs again (not finished)" in resumed.stderr
    names = {o.object_name for o in minio_client(s3_proxy.env).list_objects(bucket, recursive=True)}
    assert f"p/outage/{artifacts.CONVERT}/{artifacts.EXPORTED}/data.txt" in names, names


def test_checkpoints_are_kept_under_the_stores_prefix(tmp_path):
    """Finding 4: with --store s3://bucket/p, the train step synced to cvat-argo/<run>/... at the bucket root."""
    run = local.prepare(REQUEST, store="s3://bucket/team/runs", run_id="r1")
    try:
        command = run.resolve(run.pipeline.stage(artifacts.TRAIN))
        key = command[command.index("--resume-key") + 1]
        assert key == artifacts.checkpoint_key("team/runs", "r1") == "team/runs/r1/train/model"
    finally:
        import shutil

        shutil.rmtree(run.root, ignore_errors=True)
    folder_run = local.prepare(REQUEST, store=str(tmp_path), run_id="r2")
    command = folder_run.resolve(folder_run.pipeline.stage(artifacts.TRAIN))
    # A folder store's prefix is the runs folder itself: the key is where the checkpoints already lie.
    assert command[command.index("--resume-key") + 1] == str(tmp_path.resolve() / "r2" / "train" / "model")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_stages_records_the_status_and_exits_with_its_code(tmp_path, signum, code):
    """Finding 2 and 10: children outlived the engine; SIGTERM exited 143 with no status; Ctrl-C wrote none."""
    engine = _start(str(tmp_path), "sig", plan={"train": {"sleep": 120}})
    pid_file = tmp_path / "sig" / artifacts.TRAIN / "pid"
    _wait_for(pid_file)
    child = int(pid_file.read_text())
    engine.send_signal(signum)
    _, stderr = engine.communicate(timeout=60)
    assert engine.returncode == code, stderr
    assert _gone_within(child, 5), "the training stage outlived its engine"
    assert "Traceback" not in stderr
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "--resume sig" in stderr
    status = _status(tmp_path / "sig")
    assert status["status"] == "Failed" and status["failures"][0]["displayName"] == artifacts.TRAIN
    assert (tmp_path / "sig" / artifacts.RUN_REPORT).exists()
    resumed = _run(str(tmp_path), "sig", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "create-dataset: outputs complete and unchanged, skipped" in resumed.stderr
    assert _status(tmp_path / "sig")["status"] == "Succeeded"


def test_sigkill_of_the_engine_takes_its_stages_with_it(tmp_path):
    engine = _start(str(tmp_path), "kill", plan={"train": {"sleep": 120}})
    pid_file = tmp_path / "kill" / artifacts.TRAIN / "pid"
    _wait_for(pid_file)
    child = int(pid_file.read_text())
    engine.kill()
    engine.communicate(timeout=30)
    assert _gone_within(child, 5), "the training stage outlived its SIGKILLed engine"
    resumed = _run(str(tmp_path), "kill", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "kill" / artifacts.PRE_ANNOTATE / artifacts.ANNOTATIONS / "data.txt").read_text())


def test_a_second_engine_on_the_same_run_refuses_in_one_line(tmp_path):
    engine = _start(str(tmp_path), "busy", plan={"train": {"sleep": 120}})
    try:
        _wait_for(tmp_path / "busy" / artifacts.TRAIN / "pid")
        second = _run(str(tmp_path), "busy", "--resume")
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "is being run by another engine (pid" in lines[0], second.stderr
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.communicate(timeout=60)


def test_a_transient_failure_exits_75_after_the_retries(tmp_path):
    """Finding 10: the engine exited 1 when the failing stage had failed transiently."""
    result = _run(str(tmp_path), "flaky", plan={"pull-base-model": {"exit": 75}})
    assert result.returncode == 75, result.stderr
    assert "transient failure (exit 75), retry 1/1" in result.stderr
    assert "stage pull-base-model failed with exit code 75 after 2 attempt(s)" in result.stderr


def test_a_retrained_model_is_converted_and_used_again_on_resume(tmp_path):
    """Finding 5: convert and pre-annotate were skipped after train re-ran, so the export was stale."""
    assert _run(str(tmp_path), "stale", plan={"train": {"token": "one"}}).returncode == 0
    run_dir = tmp_path / "stale"
    (run_dir / artifacts.TRAIN / artifacts.STAGE_MANIFEST).unlink()  # train did not finish: it runs again
    resumed = _run(str(tmp_path), "stale", "--resume", plan={"train": {"token": "two"}})
    assert resumed.returncode == 0, resumed.stderr
    assert "convert: runs again (its input model changed since it ran)" in resumed.stderr
    assert "pre-annotate: runs again (its input exported changed since it ran)" in resumed.stderr
    final = json.loads((run_dir / artifacts.PRE_ANNOTATE / artifacts.ANNOTATIONS / "data.txt").read_text())
    assert '\\"two\\"' in final["inputs"][0]  # pre-annotate saw the export of the retrained model


def test_a_truncated_stage_manifest_reruns_the_stage_and_a_truncated_request_is_one_line(tmp_path):
    """Finding 8: a truncated manifest.json or request.json on resume was a traceback."""
    assert _run(str(tmp_path), "cut").returncode == 0
    run_dir = tmp_path / "cut"
    manifest = run_dir / artifacts.CONVERT / artifacts.STAGE_MANIFEST
    manifest.write_text(manifest.read_text()[:20])
    resumed = _run(str(tmp_path), "cut", "--resume")
    assert resumed.returncode == 0 and "convert: runs again (manifest.json is unreadable)" in resumed.stderr
    request = run_dir / artifacts.RUN_REQUEST
    request.write_text(request.read_text()[:30])
    broken = _run(str(tmp_path), "cut", "--resume")
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert broken.stderr.strip().count("\n") == 0 and "request cannot be read" in broken.stderr


@pytest.mark.parametrize("run_id", ["../../escape", "/abs/path", "two\nlines", ".hidden", "a" * 101, "x/y"])
def test_unsafe_run_ids_are_refused_and_nothing_is_written(tmp_path, run_id):
    """Finding 3: --run-id ../../x, absolute paths and newlines wrote outside the store."""
    store = tmp_path / "store"
    result = subprocess.run([sys.executable, "-m", "cvat_argo", "run", "--source", str(tmp_path / "e.zip"),
                             "--run-id", run_id, "--store", str(store)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: run id ") and result.stderr.count("\n") == 1
    assert not store.exists() and not (tmp_path / "escape").exists()


def test_a_reused_run_id_with_another_request_is_refused_and_the_run_is_untouched(tmp_path):
    """Finding 3: a reused --run-id overwrote request.json and trained new data from the old checkpoints."""
    first = local.prepare(REQUEST, store=str(tmp_path), run_id="same")
    saved = (first.root / artifacts.RUN_REQUEST).read_text()
    other = TrainingRequest.create(source="s3://exports/other.zip", args="epochs=5", model="ssd-mobilenet-v2-small",
                                   machine="cpu")
    with pytest.raises(local.CvatArgoError, match=r"already exists .* for another request .* --resume same"):
        local.prepare(other, store=str(tmp_path), run_id="same")
    assert (first.root / artifacts.RUN_REQUEST).read_text() == saved
    again = local.prepare(REQUEST, store=str(tmp_path), run_id="same")  # the same request: a resume
    assert again.resumed and (first.root / artifacts.RUN_REQUEST).read_text() == saved


def test_a_stage_that_fails_for_good_stops_the_stages_beside_it_and_is_the_one_reported(tmp_path):
    """Issue 14: create-dataset failed in seconds, but the run was reported after pull-base-model's retries."""
    plan = {artifacts.CREATE_DATASET: {"sleep": 1, "exit": 4}, artifacts.PULL_BASE_MODEL: {"sleep": 600}}
    result = _run(str(tmp_path), "first-cause", plan=plan)  # would time out if pull-base-model were waited for
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith("error: stage create-dataset failed with exit code 4"), result.stderr
    assert "pull-base-model stopped (create-dataset failed)" in result.stderr
    run_dir = tmp_path / "first-cause"
    pulled = run_dir / artifacts.PULL_BASE_MODEL
    assert not (pulled / artifacts.BASE_MODEL).exists() and not (pulled / artifacts.STAGE_MANIFEST).exists()
    assert _gone_within(int((pulled / "pid").read_text()), 10)
    assert [f["displayName"] for f in _status(run_dir)["failures"]] == [artifacts.CREATE_DATASET]
    assert f"{artifacts.TRAIN} started" not in result.stderr  # nothing after them started
