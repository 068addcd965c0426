"""pull-base-model: a checkpoint this test makes, served from S3 (moto) and HTTP on loopback."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from cvat_argo.entry import run_step
from cvat_argo.errors import CatalogError, CvatArgoError, DatasetError
from cvat_argo.request.catalog import entry_from_parameters
from cvat_argo.steps.pull import main, mirrored, newest_checkpoint, pull
from cvat_argo.storage.fetch import MODEL_ROOTS_VAR
from cvat_argo.storage.store import LocalStore, minio_client, store_from_env
from support.base_models import checkpoint_archive
from support.fixtures_servers import http_server, s3_server  # noqa: F401

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """A folder with ckpt-9 and ckpt-10 (string order would pick ckpt-9), as an earlier run leaves it."""
    folder = tmp_path_factory.mktemp("run") / "checkpoints"
    for step in (9, 10):
        tf.train.Checkpoint(weights=tf.Variable([float(step), 2.0])).write(str(folder / f"ckpt-{step}"))
    return folder


@pytest.fixture(scope="module")
def archive(checkpoints, tmp_path_factory) -> tuple[Path, str]:
    return checkpoint_archive(checkpoints, tmp_path_factory.mktemp("archive") / "base.tar.gz")


def weights(out: Path) -> list[float]:
    manifest = json.loads((out / "base-model.json").read_text())
    return tf.train.load_checkpoint(str(out / manifest["checkpoint"])).get_tensor("weights/.ATTRIBUTES/VARIABLE_VALUE").tolist()


def test_newest_checkpoint_is_numeric(checkpoints):
    assert newest_checkpoint(checkpoints).name == "ckpt-10"


def test_pull_from_http_verifies_and_unpacks(archive, http_server, tmp_path):  # noqa: F811
    path, digest = archive
    (http_server.root / "base.tar.gz").write_bytes(path.read_bytes())
    manifest = pull("frcnn-res50-coco", "", f"{http_server.url}/base.tar.gz", digest, tmp_path / "out")
    assert manifest["sha256"] == digest and manifest["pinned"] and manifest["modules"] == "backbone"
    assert weights(tmp_path / "out") == [10.0, 2.0]
    with pytest.raises(DatasetError, match="sha256"):
        pull("frcnn-res50-coco", "", f"{http_server.url}/base.tar.gz", "0" * 64, tmp_path / "bad")


def test_pull_from_s3_caches_by_digest(archive, s3_server, tmp_path, monkeypatch):  # noqa: F811
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    client = minio_client(s3_server)
    for bucket in ("models", "store"):
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
    path, digest = archive
    client.fput_object("models", "frcnn/base.tar.gz", str(path))
    monkeypatch.setenv("CVAT_ARGO_STORE", "s3://store/cache")
    assert main(["--model", "frcnn-res50-coco", "--uri", "s3://models/frcnn/base.tar.gz", "--sha256", digest,
                 "--out", str(tmp_path / "first")]) == 0
    client.remove_object("models", "frcnn/base.tar.gz")  # the second pull must not need the origin
    manifest = pull("frcnn-res50-coco", "", "s3://models/frcnn/base.tar.gz", digest, tmp_path / "second",
                    store=store_from_env())
    assert manifest["cached"] is True and weights(tmp_path / "second") == [10.0, 2.0]


def test_fine_tune_from_an_earlier_run_folder(checkpoints, tmp_path, monkeypatch):
    """A local run may start from an earlier run's model in its own store folder, with nothing to set."""
    monkeypatch.delenv(MODEL_ROOTS_VAR, raising=False)
    runs = tmp_path / "runs"  # the local engine's layout: <store>/<run-id>/<stage>/<artifact>, request.json
    earlier = runs / "run-1" / "train" / "model"
    shutil.copytree(checkpoints, earlier / "checkpoints")
    (runs / "run-2").mkdir()
    (runs / "run-2" / "request.json").write_text("{}")
    manifest = pull("ssd-mobilenet-v2-coco", "", str(earlier), "", runs / "run-2" / "pull-base-model" / "base-model")
    assert manifest["checkpoint"].endswith("ckpt-10") and not manifest["pinned"]
    # A LocalStore's folder is the run's own too.
    manifest = pull("ssd-mobilenet-v2-coco", "", str(earlier), "", tmp_path / "a", store=LocalStore(runs))
    assert manifest["checkpoint"].endswith("ckpt-10")
    # Seen from elsewhere (no store, not a local run's output), the same folder lies outside every allowed root.
    with pytest.raises(CvatArgoError, match=f"a local base model must lie in an allowed folder .*{MODEL_ROOTS_VAR}"):
        pull("ssd-mobilenet-v2-coco", "", str(earlier), "", tmp_path / "b")
    assert not (tmp_path / "b").exists()
    monkeypatch.setenv(MODEL_ROOTS_VAR, str(runs / "run-1"))  # unless the operator allows it
    assert pull("ssd-mobilenet-v2-coco", "", str(earlier), "", tmp_path / "b")["checkpoint"].endswith("ckpt-10")


def test_local_cache_and_mirror(archive, tmp_path, monkeypatch):
    path, digest = archive
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv(MODEL_ROOTS_VAR, str(mirror))  # a local mirror is a folder the operator allows
    (mirror / "base.tar.gz").write_bytes(path.read_bytes())
    assert mirrored("https://storage.example.com/models/base.tar.gz", str(mirror)) == f"{mirror}/base.tar.gz"
    store = LocalStore(tmp_path / "store")
    pull("frcnn-res50-coco", "", "https://unreachable.invalid/models/base.tar.gz", digest, tmp_path / "a",
         mirror=str(mirror), store=store)
    assert store.exists(f"base-models/{digest}/base-model.json")


@pytest.mark.parametrize(("uri", "message"), [
    ("{tmp}/missing.tar.gz", "does not exist"),
    ("{tmp}/empty.tar.gz", "contains no TensorFlow checkpoint"),
])
def test_bad_sources_are_clear(tmp_path, uri, message, capsys, monkeypatch):
    monkeypatch.setenv(MODEL_ROOTS_VAR, str(tmp_path))
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz") as tar:
        readme = tmp_path / "README"
        readme.write_text("no weights here")
        tar.add(readme, arcname="README")
    code = run_step(main, ["--model", "frcnn-res50-coco", "--uri", uri.format(tmp=tmp_path),
                           "--out", str(tmp_path / "out")])
    assert code == 4 and message in capsys.readouterr().err
    with pytest.raises(CatalogError, match="unknown model"):
        pull("nope", "", "", "", tmp_path / "x")


def test_bare_prefix_over_http_is_one_source_under_one_cap(checkpoints, http_server, tmp_path):  # noqa: F811
    for path in checkpoints.glob("ckpt-10.*"):
        (http_server.root / path.name).write_bytes(path.read_bytes())
    manifest = pull("frcnn-res50-coco", "", f"{http_server.url}/ckpt-10", "", tmp_path / "out")
    assert weights(tmp_path / "out") == [10.0, 2.0] and manifest["checkpoint"] == "checkpoint/ckpt-10"
    index = (checkpoints / "ckpt-10.index").stat().st_size
    entry = json.loads(entry_from_parameters("frcnn-res50-coco", "").model_dump_json())
    entry["checkpoint"]["max_bytes"] = index + 1  # room for the index, not for the index and the weights
    with pytest.raises(DatasetError, match=re.escape(f"{http_server.url}/ckpt-10.data-00000-of-00001: refused")):
        pull("frcnn-res50-coco", json.dumps(entry), f"{http_server.url}/ckpt-10", "", tmp_path / "capped")
    assert not (tmp_path / "capped").exists()
