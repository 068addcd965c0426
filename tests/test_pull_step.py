"""pull-base-model: a checkpoint this test makes, served from S3 (moto) and HTTP on loopback."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from cvat_argo.entry import run_step
from cvat_argo.errors import CatalogError, DatasetError
from cvat_argo.steps.pull import main, mirrored, newest_checkpoint, pull
from cvat_argo.storage.store import LocalStore, minio_client, store_from_env
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
    path = tmp_path_factory.mktemp("archive") / "base.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(checkpoints, arcname="model/checkpoints")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


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


def test_fine_tune_from_an_earlier_run_folder(checkpoints, tmp_path):
    manifest = pull("ssd-mobilenet-v2-coco", "", str(checkpoints.parent), "", tmp_path / "out")
    assert manifest["checkpoint"].endswith("ckpt-10") and not manifest["pinned"]


def test_local_cache_and_mirror(archive, tmp_path):
    path, digest = archive
    mirror = tmp_path / "mirror"
    mirror.mkdir()
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
def test_bad_sources_are_clear(tmp_path, uri, message, capsys):
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz") as tar:
        readme = tmp_path / "README"
        readme.write_text("no weights here")
        tar.add(readme, arcname="README")
    code = run_step(main, ["--model", "frcnn-res50-coco", "--uri", uri.format(tmp=tmp_path),
                           "--out", str(tmp_path / "out")])
    assert code == 4 and message in capsys.readouterr().err
    with pytest.raises(CatalogError, match="unknown model"):
        pull("nope", "", "", "", tmp_path / "x")
