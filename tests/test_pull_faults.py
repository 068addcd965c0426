"""pull-base-model against hostile sources: real loopback servers, real files, real signals.

Each test runs the step as its container does (``run_step(main, argv)``) with TMPDIR pointed at a test
folder, and checks what a user and an operator see: one error line naming the URI and the cap or rule,
the exit code (4 or 2: permanent, never retried; 75 only for an outage), an empty TMPDIR, no output
folder, and nothing else changed beside them.
"""

from __future__ import annotations

import json
import os
import signal
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cvat_argo.entry import run_step
from cvat_argo.errors import DatasetError, TransientError
from cvat_argo.request.catalog import entry_from_parameters
from cvat_argo.steps.pull import main
from cvat_argo.storage.fetch import MODEL_ROOTS_VAR, Limits, fetch
from support.fixtures_servers import hostile_http_server  # noqa: F401

pytestmark = pytest.mark.faults

MODEL = "frcnn-res50-coco"
MiB = 1 << 20


def spec(max_bytes: int) -> str:
    """The model's catalog entry as the pipeline passes it, with a size cap for its base model."""
    entry = entry_from_parameters(MODEL, "").model_dump(mode="json")
    entry["checkpoint"]["max_bytes"] = max_bytes
    return json.dumps(entry)


@dataclass
class Sandbox:
    root: Path  # everything the test and the step may touch lies here
    tmpdir: Path  # TMPDIR of the step
    models: Path  # the only allowed root (CVAT_ARGO_MODEL_ROOTS)
    out: Path

    def tree(self) -> dict[str, int]:
        return {p.relative_to(self.root).as_posix(): (p.lstat().st_size if not p.is_dir() else -1)
                for p in self.root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Sandbox:
    box = Sandbox(tmp_path, tmp_path / "tmp", tmp_path / "models", tmp_path / "run" / "base-model")
    box.tmpdir.mkdir()
    box.models.mkdir()
    monkeypatch.setenv("TMPDIR", str(box.tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the folder it found first
    monkeypatch.setenv(MODEL_ROOTS_VAR, str(box.models))
    monkeypatch.delenv("CVAT_ARGO_STORE", raising=False)
    return box


def pull_step(box: Sandbox, capsys, uri: str, *extra: str) -> tuple[int, str]:
    """Run the step; returns (exit code, stderr)."""
    capsys.readouterr()
    code = run_step(main, ["--model", MODEL, "--uri", uri, *extra, "--out", str(box.out)])
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, exit_code: int, *needles: str) -> str:
    """One error line, the last one (a progress line may come before it), naming what it must name."""
    assert code == exit_code, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def assert_nothing_left(box: Sandbox, before: dict[str, int]) -> None:
    assert list(box.tmpdir.iterdir()) == [], "the step left files in TMPDIR"
    assert not box.out.exists(), "a failed pull left its output folder"
    assert box.tree() == before, "the step changed files outside its output folder"


def fake_checkpoint(folder: Path) -> Path:
    """The file names pull looks for (the bytes do not matter until training reads them)."""
    folder.mkdir(parents=True)
    (folder / "ckpt-1.index").write_bytes(b"index")
    (folder / "ckpt-1.data-00000-of-00001").write_bytes(b"weights")
    return folder


# ------------------------------------------------------------------------------------ size caps


def test_gzip_bomb_stops_at_the_cap(hostile_http_server, sandbox, capsys):  # noqa: F811
    """~1 MB of gzip that decodes to 1 GiB, sent with Content-Encoding although identity was asked for."""
    uri = f"{hostile_http_server.url}/bomb/base.tar.gz"
    before = sandbox.tree()
    code, err = pull_step(sandbox, capsys, uri, "--model-spec", spec(16 * MiB))
    assert_refused(code, err, 4, uri, "16777216 bytes", "checkpoint.max_bytes of model frcnn-res50-coco",
                   "decoded from the gzip")
    assert_nothing_left(sandbox, before)


def test_endless_answer_stops_at_the_cap(hostile_http_server, sandbox, capsys):  # noqa: F811
    uri = f"{hostile_http_server.url}/endless/base.tar.gz"
    before = sandbox.tree()
    code, err = pull_step(sandbox, capsys, uri, "--model-spec", spec(8 * MiB))
    assert_refused(code, err, 4, uri, "refused after receiving more than the size cap of 8388608 bytes")
    assert_nothing_left(sandbox, before)


def test_declared_length_over_the_cap_is_refused_before_the_body(hostile_http_server, sandbox, capsys):  # noqa: F811
    uri = f"{hostile_http_server.url}/large/base.tar.gz"
    before = sandbox.tree()
    code, err = pull_step(sandbox, capsys, uri, "--model-spec", spec(MiB))
    assert_refused(code, err, 4, uri, "declares 2097152 bytes", "more than the size cap of 1048576 bytes")
    assert_nothing_left(sandbox, before)


def test_local_folder_over_the_cap(sandbox, capsys):
    base = fake_checkpoint(sandbox.models / "base")
    (base / "ckpt-1.data-00000-of-00001").write_bytes(bytes(2 * MiB))
    before = sandbox.tree()
    code, err = pull_step(sandbox, capsys, str(base), "--model-spec", spec(MiB))
    assert_refused(code, err, 4, str(base), "more than the size cap of 1048576 bytes")
    assert_nothing_left(sandbox, before)


def test_unasked_encoding_the_cap_cannot_follow_is_refused(hostile_http_server, sandbox, capsys):  # noqa: F811
    uri = f"{hostile_http_server.url}/brotli/base.tar.gz"
    before = sandbox.tree()
    code, err = pull_step(sandbox, capsys, uri)
    assert_refused(code, err, 2, uri, "Content-Encoding 'br' although identity was asked for")
    assert_nothing_left(sandbox, before)


# ---------------------------------------------------------------------------- not an archive


def test_file_of_zeros_is_refused_by_its_first_bytes(sandbox, capsys):
    """tarfile.is_tarfile took 3 s of CPU per 64 MiB of zeros (and called them an empty tar): the type
    now comes from the magic bytes, so zeros are "not an archive" without a scan (benchmark-free check:
    the old code answered "contains no TensorFlow checkpoint")."""
    zeros = sandbox.models / "base.tar"
    with zeros.open("wb") as file:
        file.truncate(64 * MiB)  # sparse: no disk, all zeros
    before = sandbox.tree()
    code, err = pull_step(sandbox, capsys, str(zeros))
    assert_refused(code, err, 4, str(zeros), "is not an archive")
    assert_nothing_left(sandbox, before)


# ---------------------------------------------------------------------------- time and outages


def test_time_cap_is_permanent(hostile_http_server, tmp_path):  # noqa: F811
    uri = f"{hostile_http_server.url}/trickle/slow.tar.gz"  # 1 KiB every 50 ms, for ever
    with pytest.raises(DatasetError, match=r"took longer than the time cap of 1 s; nothing was kept$") as caught:
        fetch(uri, tmp_path / "dl", progress=False, limits=Limits(max_seconds=1.0))
    assert uri in str(caught.value) and not isinstance(caught.value, TransientError)
    assert list((tmp_path / "dl").iterdir()) == []


def test_stalled_read_is_transient(hostile_http_server, tmp_path):  # noqa: F811
    uri = f"{hostile_http_server.url}/stall/base.tar.gz"
    with pytest.raises(TransientError, match="retry later") as caught:
        fetch(uri, tmp_path / "dl", progress=False, limits=Limits(read_timeout=0.5))
    assert uri in str(caught.value)
    assert list((tmp_path / "dl").iterdir()) == []


def test_dropped_connection_stays_transient(hostile_http_server, sandbox, capsys):  # noqa: F811
    uri = f"{hostile_http_server.url}/dropped/base.tar.gz"  # declares 8 MiB, sends 1 MiB, hangs up
    before = sandbox.tree()
    code, err = pull_step(sandbox, capsys, uri)
    assert_refused(code, err, 75, uri, "retry later")
    assert_nothing_left(sandbox, before)


def test_interrupted_download_leaves_nothing(hostile_http_server, sandbox, capsys):  # noqa: F811
    """A real SIGINT in the middle of a download: exit 130, no .partial, no TMPDIR folder, no output."""
    path = "/trickle/interrupted.tar.gz"
    streaming = hostile_http_server.sent_first_piece(path)
    inside = threading.Event()

    def interrupt() -> None:
        if streaming.wait(30) and inside.is_set():
            time.sleep(0.2)  # a few pieces into the file
            os.kill(os.getpid(), signal.SIGINT)

    before = sandbox.tree()
    killer = threading.Thread(target=interrupt, daemon=True)
    killer.start()
    inside.set()
    try:  # the cap (20 s of trickle) ends the test if the signal never comes
        code, err = pull_step(sandbox, capsys, hostile_http_server.url + path, "--model-spec", spec(400 << 10))
    finally:
        inside.clear()
    killer.join(1)
    assert code == 130 and err.strip().splitlines()[-1] == "interrupted", err
    assert_nothing_left(sandbox, before)


# --------------------------------------------------------------------------- local folders


@pytest.mark.parametrize("target", ["file", "folder"])
def test_symlink_inside_a_folder_is_refused(sandbox, capsys, target):
    outside = sandbox.root / "outside"
    outside.mkdir()
    (outside / "shadow").write_text("root:$6$secret")
    base = fake_checkpoint(sandbox.models / "base")
    (base / "leak").symlink_to(outside / "shadow" if target == "file" else outside)
    before = sandbox.tree()
    code, err = pull_step(sandbox, capsys, str(base))
    assert_refused(code, err, 4, str(base), "refused 'leak'", "a symbolic link", "never followed",
                   "nothing was copied")
    assert_nothing_left(sandbox, before)
    assert not [p for p in sandbox.root.rglob("*") if p.is_file() and not p.is_symlink() and b"secret" in p.read_bytes()
                and p != outside / "shadow"]


@pytest.mark.parametrize("where", ["/etc", "file:///etc", "outside", "dotdot", "link-out"])
def test_folders_outside_the_allowed_roots_are_refused(sandbox, capsys, where):
    elsewhere = fake_checkpoint(sandbox.root / "elsewhere" / "base")
    (sandbox.models / "link-out").symlink_to(elsewhere)
    uri = {"outside": str(elsewhere), "dotdot": f"{sandbox.models}/../elsewhere/base",
           "link-out": str(sandbox.models / "link-out")}.get(where, where)
    before = sandbox.tree()
    code, err = pull_step(sandbox, capsys, uri)
    assert_refused(code, err, 2, uri, "must lie in an allowed folder", f"allowed: {sandbox.models}",
                   MODEL_ROOTS_VAR)
    assert_nothing_left(sandbox, before)


@pytest.mark.parametrize("roots", ["/", "/etc", "/var", "/proc/self", "models"])
def test_system_folders_can_never_be_allowed(sandbox, capsys, monkeypatch, roots):
    monkeypatch.setenv(MODEL_ROOTS_VAR, os.pathsep.join([str(sandbox.models), roots]))
    before = sandbox.tree()
    code, err = pull_step(sandbox, capsys, "/etc")
    assert_refused(code, err, 2, MODEL_ROOTS_VAR, repr(roots))
    assert_nothing_left(sandbox, before)


def test_a_tar_under_the_roots_is_pulled(sandbox, capsys):
    """The rules admit what they should: an archive of a checkpoint under an allowed root."""
    base = fake_checkpoint(sandbox.root / "src")
    archive = sandbox.models / "base.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(base, arcname="model")
    code, err = pull_step(sandbox, capsys, str(archive))
    assert code == 0, err
    assert (sandbox.out / "checkpoint" / "model" / "ckpt-1.index").read_bytes() == b"index"
    assert list(sandbox.tmpdir.iterdir()) == []
