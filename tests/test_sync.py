"""Checkpoint sync through real outages: moto's S3 behind a TCP proxy that the tests cut and restore.

The store is the production one (``store_from_url`` and the minio client) pointed at the proxy, so a
cut looks to the sync exactly as a MinIO restart or a network partition looks in a cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cvat_argo.engines import artifacts
from cvat_argo.errors import CvatArgoError, TransientError
from cvat_argo.storage.store import LocalStore, Store, minio_client, store_from_url
from cvat_argo.training.sync import CheckpointSync, restore
from support.cut_proxy import CutProxy, s3_proxy  # noqa: F401
from support.fixtures_servers import s3_server  # noqa: F401

pytestmark = pytest.mark.faults

KEY = "runs/run-1/train/resume"
FAST = {"interval": 0.05, "retry_delay": 0.05, "max_delay": 0.2}  # seconds: the production defaults, scaled down
SYNC_LOG = "cvat_argo.training.sync"


def _bucket(env: dict[str, str]) -> str:
    name = f"sync-{uuid.uuid4().hex[:12]}"
    minio_client(env).make_bucket(name)  # straight to moto, not through the proxy
    return name


def write_checkpoint(model_dir: Path, step: int, size: int = 50_000) -> None:
    """What TensorFlow's CheckpointManager writes: data shard and index, then the state file (atomically)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / f"ckpt-{step}.data-00000-of-00001").write_bytes(os.urandom(size))
    (model_dir / f"ckpt-{step}.index").write_bytes(os.urandom(200))
    steps = sorted(int(p.name[5:-6]) for p in model_dir.glob("ckpt-*.index"))
    state = f'model_checkpoint_path: "ckpt-{step}"\n' + "".join(
        f'all_model_checkpoint_paths: "ckpt-{s}"\n' for s in steps)
    (model_dir / "checkpoint.tmp").write_text(state, encoding="utf-8")
    os.replace(model_dir / "checkpoint.tmp", model_dir / "checkpoint")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def stored_state(store: Store, tmp_path: Path) -> str:
    target = tmp_path / f"state-{uuid.uuid4().hex[:6]}"
    store.get_file(f"{KEY}/checkpoint", target)
    return target.read_text(encoding="utf-8")


def assert_store_holds(store: Store, model_dir: Path, tmp_path: Path) -> None:
    """Every checkpoint file of the model folder is in the store, byte for byte."""
    local = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.name.startswith("ckpt-") or p.name == "checkpoint"}
    assert store.list(KEY) == sorted(local)
    back = tmp_path / "back"
    assert restore(store, KEY, back) == len(local)
    assert {p.name: p.read_bytes() for p in back.iterdir()} == local


def sync_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SYNC_LOG]


def test_sync_survives_an_outage_and_every_checkpoint_reaches_the_store(s3_proxy, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, logger=SYNC_LOG)
    bucket = _bucket(s3_proxy.env)
    store = store_from_url(f"s3://{bucket}/prefix", s3_proxy.env)  # through the proxy
    direct = store_from_url(f"s3://{bucket}/prefix", {**s3_proxy.env, "AWS_ENDPOINT_URL": s3_proxy.target_url})
    model_dir = tmp_path / "model"
    with CheckpointSync(model_dir, store, KEY, final_timeout=30, **FAST) as sync:
        write_checkpoint(model_dir, 1)
        wait_for(lambda: "checkpoint" in direct.list(KEY), "the first checkpoint in the store")
        s3_proxy.cut("refuse")  # the store is down: connections refused
        write_checkpoint(model_dir, 2)
        wait_for(lambda: sync.failures >= 2, "two failed syncs while refused")
        s3_proxy.cut("reset")  # now a crashing server: connections reset
        write_checkpoint(model_dir, 3)
        failures = sync.failures
        wait_for(lambda: sync.failures >= failures + 2, "two failed syncs while reset")
        assert sync._thread.is_alive()  # the outage did not kill the thread
        assert 'model_checkpoint_path: "ckpt-1"' in stored_state(direct, tmp_path)  # nothing newer got through
        s3_proxy.restore()
        wait_for(lambda: {"ckpt-3.index", "ckpt-3.data-00000-of-00001"} <= set(direct.list(KEY)), "the catch-up")
        write_checkpoint(model_dir, 4)
    assert_store_holds(direct, model_dir, tmp_path)
    assert 'model_checkpoint_path: "ckpt-4"' in stored_state(direct, tmp_path)
    messages = sync_records(caplog)
    failed = [m for m in messages if " failed: " in m]
    recovered = [m for m in messages if "works again after" in m]
    assert len(failed) == 1 and len(recovered) == 1, messages  # one line per streak, not one per attempt
    assert not [r for r in caplog.records if r.name.startswith("urllib3")]  # nor urllib3's line per retry
    assert "training goes on" in failed[0] and "the store did not answer" in failed[0]
    assert f"after {sync.failures} failed attempts" in recovered[0]
    assert s3_proxy.dropped >= 1  # the reset mode was exercised


def test_final_sync_with_the_store_cut_fails_transiently(s3_proxy, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, logger=SYNC_LOG)
    bucket = _bucket(s3_proxy.env)
    store = store_from_url(f"s3://{bucket}/prefix", s3_proxy.env)
    direct = store_from_url(f"s3://{bucket}/prefix", {**s3_proxy.env, "AWS_ENDPOINT_URL": s3_proxy.target_url})
    model_dir = tmp_path / "model"
    # The error comes from leaving the CheckpointSync block: its last sync.
    with pytest.raises(TransientError) as caught, CheckpointSync(model_dir, store, KEY, final_timeout=1.0, **FAST):
        write_checkpoint(model_dir, 1)
        wait_for(lambda: "checkpoint" in direct.list(KEY), "the first checkpoint in the store")
        s3_proxy.cut("refuse")
        write_checkpoint(model_dir, 2)
    message = str(caught.value)
    assert caught.value.exit_code == 75 and "\n" not in message
    assert message.startswith(f"checkpoint sync: the newest checkpoint ckpt-2 did not reach s3://{bucket}/prefix/{KEY}")
    assert "the store did not answer" in message and "resumes from the store" in message
    # What the store holds is still consistent: a state file naming a checkpoint it has.
    assert 'model_checkpoint_path: "ckpt-1"' in stored_state(direct, tmp_path)
    assert {"ckpt-1.index", "ckpt-1.data-00000-of-00001"} <= set(direct.list(KEY))
    assert len([m for m in sync_records(caplog) if " failed: " in m]) == 1


def test_final_sync_retries_until_the_store_is_back(s3_proxy, tmp_path):  # noqa: F811
    bucket = _bucket(s3_proxy.env)
    store = store_from_url(f"s3://{bucket}/prefix", s3_proxy.env)
    model_dir = tmp_path / "model"
    with CheckpointSync(model_dir, store, KEY, final_timeout=30, **{**FAST, "interval": 3600}) as sync:
        write_checkpoint(model_dir, 1)
        s3_proxy.cut("reset")
        restorer = threading.Timer(1.5, s3_proxy.restore)  # back while the last sync is retrying
        restorer.start()
    restorer.join()
    assert sync.failures >= 1
    assert_store_holds(store_from_url(f"s3://{bucket}/prefix", s3_proxy.env), model_dir, tmp_path)


def test_a_training_error_is_what_propagates(s3_proxy, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, logger=SYNC_LOG)
    store = store_from_url(f"s3://{_bucket(s3_proxy.env)}/prefix", s3_proxy.env)
    model_dir = tmp_path / "model"
    sync = CheckpointSync(model_dir, store, KEY, final_timeout=30, **{**FAST, "interval": 3600})
    with pytest.raises(RuntimeError, match="out of memory"), sync:
        write_checkpoint(model_dir, 1)
        s3_proxy.cut("refuse")
        raise RuntimeError("out of memory")
    assert any("last checkpoint sync" in m and "failed too" in m for m in sync_records(caplog))


def test_refused_credentials_fail_at_once_and_not_as_an_outage(s3_proxy, tmp_path):  # noqa: F811
    env = {**s3_proxy.env, "AWS_SECRET_ACCESS_KEY": "wrong"}
    store = store_from_url(f"s3://{_bucket(s3_proxy.env)}/prefix", env)
    model_dir = tmp_path / "model"
    sync = CheckpointSync(model_dir, store, KEY, final_timeout=30, **{**FAST, "interval": 3600})
    with pytest.raises(CvatArgoError) as caught, sync:
        write_checkpoint(model_dir, 1)
    assert not isinstance(caught.value, TransientError) and caught.value.exit_code == 2
    assert "SignatureDoesNotMatch" in str(caught.value)


class _TrainingMeanwhile(LocalStore):
    """A folder store that runs ``meanwhile`` (what training does concurrently) after uploading ``after``."""

    def __init__(self, root: Path, after: str, meanwhile: Callable[[], None]):
        super().__init__(root)
        self.after, self.meanwhile, self.fired = after, meanwhile, False

    def _upload(self, local, key, bar):
        super()._upload(local, key, bar)
        if key.endswith(f"/{self.after}") and not self.fired:
            self.fired = True
            self.meanwhile()


def test_state_file_is_uploaded_as_read_before_the_files_it_names(tmp_path):
    model_dir = tmp_path / "model"
    store = _TrainingMeanwhile(tmp_path / "store", "ckpt-1.index", lambda: write_checkpoint(model_dir, 2))
    write_checkpoint(model_dir, 1)
    sync = CheckpointSync(model_dir, store, KEY)
    sync.sync()
    assert store.fired
    state = (tmp_path / "store" / KEY / "checkpoint").read_text(encoding="utf-8")
    named = state.split('"')[1]
    assert f"{named}.index" in store.list(KEY), (state, store.list(KEY))  # never a state naming a missing checkpoint
    sync.sync()
    assert_store_holds(store, model_dir, tmp_path)


def test_files_removed_by_the_checkpoint_manager_are_not_failures(tmp_path):
    model_dir = tmp_path / "model"

    def keep_one() -> None:  # max_to_keep=1: the manager removes ckpt-1 while the sync is uploading it
        for name in ("ckpt-1.index", "ckpt-1.data-00000-of-00001"):
            (model_dir / name).unlink()

    store = _TrainingMeanwhile(tmp_path / "store", "ckpt-1.data-00000-of-00001", keep_one)
    write_checkpoint(model_dir, 1)
    write_checkpoint(model_dir, 2)
    with CheckpointSync(model_dir, store, KEY, interval=3600) as sync:
        pass
    assert store.fired and sync.failures == 0
    assert sync.newest_files() == ["ckpt-2.data-00000-of-00001", "ckpt-2.index", "checkpoint"]
    assert {"ckpt-2.index", "ckpt-2.data-00000-of-00001", "checkpoint"} <= set(store.list(KEY))


def test_event_files_travel_with_the_checkpoints_and_come_back_after_a_retry(s3_server, tmp_path):  # noqa: F811
    """TensorBoard's runs live beside the checkpoints; a retried pod gets them back with the checkpoints,
    so its sidecar, metrics.json and plot show the whole run, not just the part since the retry."""
    bucket = _bucket(s3_server)
    store = store_from_url(f"s3://{bucket}/prefix", s3_server)
    pod = tmp_path / "pod-1" / "model"
    train = pod / artifacts.TRAIN_EVENTS / "events.out.tfevents.1700000000.pod-1.17.0.v2"
    validation = pod / artifacts.VALIDATION_EVENTS / "events.out.tfevents.1700000001.pod-1.17.1.v2"
    train.parent.mkdir(parents=True)
    train.write_bytes(os.urandom(300))
    (pod / artifacts.TRAIN_EVENTS / "notes.txt").write_text("not an event file")
    with CheckpointSync(pod, store, KEY, interval=3600) as sync:
        write_checkpoint(pod, 1)
        sync.sync()
        with train.open("ab") as handle:  # the writer appends: the grown file must replace the stored one
            handle.write(os.urandom(200))
        validation.parent.mkdir()
        validation.write_bytes(os.urandom(100))
        write_checkpoint(pod, 2)
    events = {f"{artifacts.TRAIN_EVENTS}/{train.name}", f"{artifacts.VALIDATION_EVENTS}/{validation.name}"}
    assert events <= set(store.list(KEY)) and not any(n.endswith("notes.txt") for n in store.list(KEY))

    retried = tmp_path / "pod-2" / "model"  # a new pod: an empty disk
    assert restore(store, KEY, retried) == len(events) + 5  # 2 checkpoints x (index + data) + the state file
    for name in events:
        assert (retried / name).read_bytes() == (pod / name).read_bytes(), name
    assert (retried / "checkpoint").read_bytes() == (pod / "checkpoint").read_bytes()


# ------------------------------------------------------------------------------------- the proxy


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # a cut resets the proxy's end: next connection
                while data := conn.recv(1024):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def _echo(address: tuple[str, int], timeout: float = 2.0) -> bytes:
    with socket.create_connection(address, timeout=timeout) as conn:
        conn.sendall(b"ping")
        return conn.recv(1024)


def test_cut_proxy_refuses_resets_hangs_restores_and_stops_by_itself():
    server, _thread = _echo_server()
    try:
        with CutProxy(server.getsockname(), lifetime=10) as proxy:
            assert _echo(proxy.address) == b"ping"
            proxy.cut("refuse")
            with pytest.raises(ConnectionRefusedError):
                _echo(proxy.address)
            proxy.cut("reset")
            try:
                answer = _echo(proxy.address)
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
                answer = None
            assert answer in (None, b"")  # a reset, or at worst an empty answer: never the echo
            proxy.cut("hang")
            with pytest.raises(TimeoutError):
                _echo(proxy.address, timeout=0.3)
            proxy.restore()
            assert _echo(proxy.address) == b"ping" and proxy.port == proxy.address[1]
        with pytest.raises(RuntimeError, match="not running"):
            proxy.cut()
        short = CutProxy(server.getsockname(), lifetime=0.3).start()
        wait_for(lambda: not short._thread.is_alive(), "the proxy to stop after its lifetime", timeout=5)
        with pytest.raises(ConnectionRefusedError):
            _echo(short.address)
    finally:
        server.close()
