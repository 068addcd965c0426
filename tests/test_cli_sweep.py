"""Every command given bad input, as a user's shell runs it: fail fast, fail once, leave nothing behind.

Each case runs ``python -m cvat_argo ...`` (or a step module) in a fresh folder with a clean environment
(no CVAT_*, ARGO_*, AWS_* or CVAT_ARGO_* variables, HOME inside the test's folder) and expects: a
non-zero exit with the code the failure deserves, exactly one line on stderr, ``error: ...``, naming the
value at fault, no traceback anywhere, and nothing written: no run folder, no output folder, no file
changed. The cases that need a server (CVAT, S3) talk to real ones on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cvat_argo.engines import artifacts, local, preflight
from cvat_argo.request.spec import TrainingRequest
from cvat_argo.storage.store import minio_client
from support.fake_cvat_server import PASSWORD, USERNAME, FakeTask, cvat_server
from support.fixtures_servers import s3_server  # noqa: F401

pytestmark = pytest.mark.faults

SCRUBBED = ("CVAT_", "ARGO_", "AWS_")  # CVAT_ARGO_* starts with CVAT_
COCO = {"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}], "annotations": [],
        "categories": [{"id": 1, "name": "car"}]}
RESUMABLE = "round-1"  # a run made by the fixture, saved with epochs=20 on the cpu machine


def _env(tmp_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED)}
    env["HOME"] = str(tmp_path / "home")
    return {**env, **(extra or {})}


def _run(tmp_path: Path, argv: list[str], extra_env: dict[str, str] | None = None,
         module: str = "cvat_argo") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=tmp_path, env=_env(tmp_path, extra_env),
                          capture_output=True, text=True, timeout=120)


def _tree(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``root`` but HOME, with a file's size and modification time."""
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None
            for path in root.rglob("*") if path.relative_to(root).parts[0] != "home"}


def _refused(result: subprocess.CompletedProcess, code: int, *named: str) -> str:
    """The one error line of a refusal, checked: exit code, one line, no traceback, names ``named``."""
    shown = f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert result.returncode == code, shown
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for text in named:
        assert text in lines[0], shown
    return lines[0]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A user's folder: an export that exists, a plain file, and one saved run to resume."""
    (tmp_path / "home").mkdir()
    (tmp_path / "coco.json").write_text(json.dumps(COCO), encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a folder\n", encoding="utf-8")
    request = TrainingRequest.create(source=str(tmp_path / "coco.json"), args="epochs=20",
                                     model="ssd-mobilenet-v2-small", machine="cpu")
    local.prepare(request, store=str(tmp_path / "runs"), run_id=RESUMABLE)
    return tmp_path


RESUME = ["run", "--resume", RESUMABLE]
STEPS = "cvat_argo.steps."
CASES = [
    # (id, argv, exit code, what the error line must name, module)
    ("models-unknown-model", ["models", "--json", "no-such-model"], 2, ["no-such-model"], None),
    ("models-missing-catalog", ["models", "--catalog", "/nonexistent.yaml"], 2, ["/nonexistent.yaml"], None),
    ("mirror-models-http-target", ["mirror-models", "--to", "https://example.com/mirror/"], 2, ["--to"], None),
    ("mirror-models-unknown-model", ["mirror-models", "--to", "s3://mirror/m/", "no-such-model"], 2,
     ["no-such-model"], None),
    ("machines-missing-catalog", ["machines", "--catalog", "missing.yaml"], 2, ["missing.yaml"], None),
    ("plan-unknown-model", ["plan", "--task-id", "1", "--model", "no-such-model"], 2, ["no-such-model"], None),
    ("plan-unknown-machine", ["plan", "--task-id", "1", "--machine", "gpu-99"], 2, ["gpu-99"], None),
    ("plan-bad-args-key", ["plan", "--task-id", "1", "--args", "epoch=3"], 2, ["'epoch'", "epochs"], None),
    ("plan-bad-args-value", ["plan", "--task-id", "1", "--args", "epochs=-1"], 2, ["epochs=-1"], None),
    ("plan-missing-args-file", ["plan", "--task-id", "1", "--args-file", "/nonexistent.yaml"], 2,
     ["--args-file /nonexistent.yaml"], None),
    ("plan-bad-val-fraction", ["plan", "--task-id", "1", "--val-fraction", "1.5"], 2, ["val_fraction"], None),
    ("render-out-onto-a-file", ["render", "--out", "notes.txt"], 2, ["notes.txt"], None),
    ("render-out-under-a-file", ["render", "--out", "notes.txt/templates"], 2, ["notes.txt/templates"], None),
    ("submit-without-argo-server", ["submit", "--source", "s3://exports/task.zip"], 3, ["ARGO_SERVER"], None),
    ("submit-unknown-model", ["submit", "--task-id", "1", "--model", "no-such-model"], 2, ["no-such-model"], None),
    ("run-missing-source", ["run", "--source", "/nonexistent.zip"], 4, ["--source /nonexistent.zip"], None),
    ("run-missing-file-url-source", ["run", "--source", "file:///nonexistent.zip"], 4, ["/nonexistent.zip"], None),
    ("run-task-without-cvat-host", ["run", "--task-id", "42"], 2, ["--task-id 42", "CVAT_HOST"], None),
    ("run-cvat-port-not-a-number", ["run", "--task-id", "42", "--server-host", "cvat.example", "--server-port", "http"],
     2, ["--server-port 'http'"], None),
    ("run-cvat-two-ports", ["run", "--task-id", "42", "--server-host", "cvat.example:8080", "--server-port", "80"], 2,
     ["--server-port 80", "--server-host"], None),
    ("run-cvat-auth-without-password", ["run", "--task-id", "42", "--server-host", "cvat.example", "--auth", "alice"],
     2, ["--auth alice", "PASS", "CVAT_PASSWORD"], None),
    ("run-cvat-org-without-server", ["run", "--task-id", "42", "--org", "acme"], 2, ["--org", "--server-host"], None),
    ("run-cvat-bad-org", ["run", "--task-id", "42", "--server-host", "cvat.example", "--auth", "alice:pw", "--org",
                          "acme corp"], 2, ["--org 'acme corp'"], None),
    ("run-cvat-missing-ca-bundle", ["run", "--task-id", "42", "--server-host", "cvat.example", "--auth", "alice:pw",
                                    "--ca-bundle", "missing.pem"], 2, ["--ca-bundle missing.pem"], None),
    ("run-cvat-ca-bundle-not-pem", ["run", "--task-id", "42", "--server-host", "cvat.example", "--auth", "alice:pw",
                                    "--ca-bundle", "notes.txt"], 2, ["--ca-bundle notes.txt", "PEM"], None),
    ("run-unknown-model", ["run", "--source", "coco.json", "--model", "no-such-model"], 2, ["no-such-model"], None),
    ("run-unknown-machine", ["run", "--source", "coco.json", "--machine", "gpu-99"], 2, ["gpu-99"], None),
    ("run-bad-args-key", ["run", "--source", "coco.json", "--args", "learning_rate=0.1"], 2, ["'learning_rate'"],
     None),
    ("run-store-is-a-file", ["run", "--source", "coco.json", "--store", "notes.txt"], 2, ["--store notes.txt"], None),
    ("run-missing-base-model", ["run", "--source", "coco.json", "--base-model", "/nonexistent/ckpt"], 4,
     ["--base-model /nonexistent/ckpt"], None),
    ("run-unsafe-run-id", ["run", "--source", "coco.json", "--run-id", "../escape"], 2, ["'../escape'"], None),
    ("run-from-missing-run", ["run", "--source", "coco.json", "--from-run", "round-0"], 2, ["--from-run round-0"],
     None),
    ("run-resume-missing-run", ["run", "--resume", "no-such-run"], 2, ["no-such-run"], None),
    ("run-resume-other-args", [*RESUME, "--args", "epochs=50"], 2, ["epochs=20", "epochs=50", "--run-id NEW"], None),
    ("run-resume-other-machine", [*RESUME, "--machine", "gpu-1"], 2, ["--machine cpu", "gpu-1"], None),
    ("run-resume-other-source", [*RESUME, "--task-id", "7"], 2, ["CVAT task 7"], None),
    ("run-resume-other-val-fraction", [*RESUME, "--val-fraction", "0.3"], 2, ["--val-fraction 0.1", "0.3"], None),
    ("run-resume-other-run-id", [*RESUME, "--run-id", "round-2"], 2, ["--run-id round-2"], None),
    ("quickstart-zero-epochs", ["quickstart", "--epochs", "0"], 2, ["epochs=0"], None),
    ("quickstart-zero-images", ["quickstart", "--images", "0"], 2, ["--images 0"], None),
    ("quickstart-zero-batch", ["quickstart", "--batch-size", "0"], 2, ["batch_size=0"], None),
    ("quickstart-odd-input-size", ["quickstart", "--input-size", "100"], 2, ["input_size=100"], None),
    ("quickstart-negative-seed", ["quickstart", "--seed", "-1"], 2, ["--seed -1"], None),
    ("quickstart-store-is-a-file", ["quickstart", "--store", "notes.txt"], 2, ["--store notes.txt"], None),
    ("nuclio-bundle-missing-model", ["nuclio-bundle", "/nonexistent", "--out", "bundle"], 2, ["/nonexistent"], None),
    ("qc-report-given-coco", ["qc-report", "coco.json"], 4, ["coco.json", "CVAT for images"], None),
    ("qc-report-missing-export", ["qc-report", "/nonexistent.zip"], 4, ["/nonexistent.zip"], None),
    ("step-dataset-missing-source", ["--source", "/nonexistent.zip", "--out", "out"], 4, ["/nonexistent.zip"],
     "dataset"),
    ("step-pull-unknown-model", ["--model", "no-such-model", "--out", "out"], 2, ["no-such-model"], "pull"),
    ("step-train-missing-dataset", ["--model", "ssd-mobilenet-v2-small", "--dataset", "/nonexistent", "--out", "out"],
     4, ["--dataset /nonexistent"], "train"),
    ("step-convert-missing-model", ["--model", "/nonexistent", "--dataset", "/nonexistent2", "--out", "out"], 2,
     ["/nonexistent"], "convert"),
    ("step-annotate-missing-model", ["--model", "/nonexistent", "--dataset", "/nonexistent2", "--out", "out"], 4,
     ["--model /nonexistent"], "annotate"),
]


@pytest.mark.parametrize(("argv", "code", "named", "step"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(workdir, argv, code, named, step):
    before = _tree(workdir)
    result = _run(workdir, argv, module=STEPS + step if step else "cvat_argo")
    _refused(result, code, *named)
    assert _tree(workdir) == before  # no run folder, no output folder, the saved run untouched


def test_the_sweep_covers_every_command_and_step():
    """A command added to the CLI, or a step added to the pipeline, needs its bad-input case here."""
    from cvat_argo.cli import build_parser

    commands = {name for action in build_parser()._subparsers._group_actions for name in action.choices}
    covered = {case[1][0] for case in CASES if case[4] is None}
    assert commands <= covered, commands - covered
    step_modules = {path.stem for path in (Path(local.__file__).parents[1] / "steps").glob("*.py")}
    assert step_modules - {"__init__", "status"} <= {case[4] for case in CASES}  # status has no input to miss


def test_resume_with_the_saved_flags_repeated_goes_ahead(workdir):
    """The same flags as the saved request are no change: the run resumes (and fails on this export's content)."""
    result = _run(workdir, [*RESUME, "--source", "coco.json", "--args", "epochs=20", "--machine", "cpu",
                            "--model", "ssd-mobilenet-v2-small"])
    assert "was started with" not in result.stderr, result.stderr
    assert "stage create-dataset failed" in result.stderr, result.stderr
    assert (workdir / "runs" / RESUMABLE / artifacts.CREATE_DATASET / artifacts.STAGE_LOG).exists()


# --------------------------------------------------------------------------------- a CVAT server


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(("variables", "code", "named"), [
    ({"CVAT_HOST": "not a host"}, 2, ["CVAT_HOST 'not a host'"]),
    ({"CVAT_HOST": "ftp://cvat.example"}, 2, ["CVAT_HOST"]),
    ({"CVAT_HOST": "http://127.0.0.1:9"}, 2, ["CVAT_ACCESS_TOKEN", "CVAT_USERNAME"]),
], ids=["host-not-an-address", "host-wrong-scheme", "no-credentials"])
def test_a_cvat_task_without_a_usable_server_setting_is_refused_before_the_run(workdir, variables, code, named):
    before = _tree(workdir)
    _refused(_run(workdir, ["run", "--task-id", "42"], variables), code, "--task-id 42", *named)
    assert _tree(workdir) == before


def test_a_cvat_server_that_refuses_the_token_or_lacks_the_task_is_permanent(workdir):
    task = FakeTask(id=42, labels=[], frames=[])
    with cvat_server(task) as env:
        preflight.check_cvat_task(42, env)  # the task is there: a token, or a user name and password, pass
        preflight.check_cvat_task(42, {"CVAT_HOST": env["CVAT_HOST"], "CVAT_USERNAME": USERNAME,
                                       "CVAT_PASSWORD": PASSWORD})
        before = _tree(workdir)
        wrong = {**env, "CVAT_ACCESS_TOKEN": "wrong-secret-token"}
        line = _refused(_run(workdir, ["run", "--task-id", "42"], wrong), 2, "--task-id 42", "HTTP 401")
        assert "wrong-secret-token" not in line  # never echoed
        _refused(_run(workdir, ["run", "--task-id", "43"], env), 4, "--task-id 43", "not found")
        assert _tree(workdir) == before


def test_cvat_cli_flags_reach_the_server_and_credentials_are_never_echoed(workdir, tmp_path_factory):
    """cvat-cli's flags (--server-host, --auth USER with PASS, --org, --ca-bundle, --insecure) drive the
    check before the run: a task the server lacks is refused as not found, so the login went through."""
    task = FakeTask(id=42, labels=[], frames=[], organization="acme")
    before = _tree(workdir)
    with cvat_server(task) as env:
        flags = ["run", "--task-id", "43", "--server-host", env["CVAT_HOST"], "--auth", USERNAME]
        _refused(_run(workdir, [*flags, "--org", "acme"], {"PASS": PASSWORD}), 4, "--task-id 43", "not found")
        assert task.org_contexts[-1] == "acme"
        _refused(_run(workdir, [*flags, "--org", "nope"], {"PASS": PASSWORD}), 2, "no such organization", "--org")
        line = _refused(_run(workdir, flags, {"PASS": "wrong-s3cret-pw"}), 2, "refused the login (HTTP 400)", "--auth")
        assert "wrong-s3cret-pw" not in line
        line = _refused(_run(workdir, [*flags[:-1], f"{USERNAME}:wrong-s3cret-pw"]), 2, "refused the login")
        assert "wrong-s3cret-pw" not in line
    tls = tmp_path_factory.mktemp("tls")  # outside the user's folder, which must stay as it was
    with cvat_server(task, tls_dir=tls) as env:
        flags = ["run", "--task-id", "43", "--server-host", env["CVAT_HOST"].removeprefix("https://")]
        token = {"CVAT_ACCESS_TOKEN": env["CVAT_ACCESS_TOKEN"]}
        _refused(_run(workdir, flags, token), 2, "CERTIFICATE_VERIFY_FAILED", "--ca-bundle", "--insecure")
        _refused(_run(workdir, [*flags, "--ca-bundle", str(tls / "ca.pem")], token), 4, "not found")
        result = _run(workdir, [*flags, "--insecure"], token)
        warning, refusal = result.stderr.strip().splitlines()
        assert warning.startswith("warning: CVAT at https://127.0.0.1:") and "not verified (--insecure or CVAT_INSECURE=1)" in warning
        assert result.returncode == 4 and "not found" in refusal and "Traceback" not in result.stderr
    assert _tree(workdir) == before


def test_a_cvat_server_that_does_not_answer_is_an_outage(workdir):
    before = _tree(workdir)
    env = {"CVAT_HOST": f"http://127.0.0.1:{_closed_port()}", "CVAT_ACCESS_TOKEN": "token"}
    _refused(_run(workdir, ["run", "--task-id", "42"], env), 75, "--task-id 42", "did not answer")
    assert _tree(workdir) == before


# ------------------------------------------------------------------------------------ an S3 store


def _objects(env: dict[str, str], bucket: str) -> list[str]:
    return [o.object_name for o in minio_client(env).list_objects(bucket, recursive=True)]


def test_an_s3_store_is_probed_before_the_run_and_the_probe_leaves_nothing(workdir, s3_server):  # noqa: F811
    bucket = f"runs-{uuid.uuid4().hex[:8]}"
    minio_client(s3_server).make_bucket(bucket)
    preflight.check_store(f"s3://{bucket}/team", s3_server)  # writable: passes
    assert _objects(s3_server, bucket) == []
    before = _tree(workdir)
    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/team"
    _refused(_run(workdir, ["run", "--source", "coco.json", "--store", missing], s3_server), 4,
             f"--store {missing}", "no bucket")
    wrong_key = {**s3_server, "AWS_SECRET_ACCESS_KEY": "wrong-secret-key"}
    line = _refused(_run(workdir, ["run", "--source", "coco.json", "--store", f"s3://{bucket}/team"], wrong_key),
                    2, f"--store s3://{bucket}/team", "AWS_SECRET_ACCESS_KEY")
    assert "wrong-secret-key" not in line
    _refused(_run(workdir, ["run", "--source", f"s3://{bucket}/exports/task-9.zip"], s3_server), 4,
             f"--source s3://{bucket}/exports/task-9.zip")
    assert _tree(workdir) == before  # not even the local work folder of an s3:// store
    assert _objects(s3_server, bucket) == []


def test_an_s3_store_that_does_not_answer_is_an_outage(workdir):
    before = _tree(workdir)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}", "AWS_ACCESS_KEY_ID": "key",
           "AWS_SECRET_ACCESS_KEY": "secret", "AWS_REGION": "us-east-1"}
    _refused(_run(workdir, ["run", "--source", "coco.json", "--store", "s3://runs/team"], env), 75,
             "--store s3://runs/team", "did not answer")
    assert _tree(workdir) == before
