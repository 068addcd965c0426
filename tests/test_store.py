"""The artifact store and fetch, against a real S3 (moto on loopback) and a real HTTP server.

The same tests run over :class:`LocalStore` and :class:`S3Store`: a run must behave the same whether
its artifacts live in a folder or in a bucket.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import uuid
from pathlib import Path

import boto3
import pytest

from cvat_argo.engines.artifacts import artifact_key
from cvat_argo.errors import CvatArgoError, DatasetError, TransientError
from cvat_argo.storage import fetch as fetch_module
from cvat_argo.storage.fetch import MODEL_ROOTS_VAR, Limits, fetch, local_roots
from cvat_argo.storage.store import (
    LocalStore,
    S3Store,
    Store,
    minio_client,
    store_from_env,
    store_from_url,
)
from support.fixtures_servers import GZIPPED_PAYLOAD, hostile_http_server, http_server, s3_server  # noqa: F401

KEY = "runs/run-1/train/model"


def _bucket(env: dict[str, str]) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    minio_client(env).make_bucket(name)
    return name


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    env = request.getfixturevalue("s3_server")
    return store_from_url(f"s3://{_bucket(env)}/prefix", env)


@pytest.fixture
def tree(tmp_path) -> Path:
    """A nested folder of binary files, one of them big enough for a multipart upload (> 5 MiB)."""
    root = tmp_path / "tree"
    files = {
        "checkpoint": b"ckpt-3",
        "ckpt-3.index": bytes(range(256)),
        "variables/ckpt-3.data-00000-of-00001": os.urandom(6 * 2**20 + 17),
        "logs/train/events.out": b"\x00\xff" * 1000,
        "empty.bin": b"",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ both stores


def test_put_dir_get_dir_round_trip(store, tree, tmp_path):
    assert store.put_dir(tree, KEY, progress=True) == 5
    assert store.get_dir(KEY, tmp_path / "back", progress=True) == 5
    assert _files(tmp_path / "back") == _files(tree)
    assert not list((tmp_path / "back").rglob("*.partial"))


def test_exists_and_list(store, tree):
    store.put_dir(tree, KEY)
    assert store.list(KEY) == sorted(_files(tree))
    assert store.list("runs/run-1") == sorted(f"train/model/{name}" for name in _files(tree))
    assert store.exists(KEY)  # a folder
    assert store.exists(f"{KEY}/checkpoint")  # an object
    assert store.exists("runs")
    assert not store.exists("runs/run-1/tra")  # a name prefix is not a folder
    assert not store.exists("runs/run-2")
    assert store.list("runs/run-2") == []


def test_put_file_get_file(store, tmp_path):
    source = tmp_path / "labels.json"
    source.write_bytes(b'{"1": "car"}')
    store.put_file(source, "runs/run-1/train/labels.json")
    assert store.get_file("runs/run-1/train/labels.json", tmp_path / "out" / "l.json").read_bytes() == b'{"1": "car"}'


def test_refuses_to_overwrite(store, tree, tmp_path):
    store.put_dir(tree, KEY)
    with pytest.raises(CvatArgoError, match=re.escape(f"{KEY} already exists; outputs of a run are never overwritten")):
        store.put_dir(tree, KEY)
    with pytest.raises(CvatArgoError, match="already exists"):
        store.put_file(tree / "checkpoint", f"{KEY}/checkpoint")
    with pytest.raises(CvatArgoError, match="already exists"):
        store.put_file(tree / "checkpoint", KEY)  # a file over a folder
    (tree / "checkpoint").write_bytes(b"ckpt-4")
    assert store.put_dir(tree, KEY, overwrite=True) == 5
    assert store.get_file(f"{KEY}/checkpoint", tmp_path / "c").read_bytes() == b"ckpt-4"


def test_missing_key_names_it(store, tmp_path):
    with pytest.raises(DatasetError, match=re.escape(f"{store.uri('runs/nope/x')} does not exist")):
        store.get_file("runs/nope/x", tmp_path / "x")
    with pytest.raises(DatasetError, match=re.escape(f"{store.uri('runs/nope')} does not exist")):
        store.get_dir("runs/nope", tmp_path / "d")
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "x.partial").exists()


def test_delete_removes_folder_and_nothing_else(store, tree):
    store.put_dir(tree, KEY)
    store.put_dir(tree, "runs/run-1/train/other")
    store.delete(KEY)
    assert not store.exists(KEY)
    assert store.exists("runs/run-1/train/other")
    store.delete("runs/never-there")  # nothing to do


def test_keys_cannot_escape(store, tmp_path):
    with pytest.raises(CvatArgoError, match=re.escape("'..' component")):
        store.get_dir("runs/../../etc", tmp_path)
    with pytest.raises(CvatArgoError, match="empty"):
        store.put_file(tmp_path, "")


def test_missing_local_source(store, tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        store.put_dir(tmp_path / "nope", KEY)
    assert not store.exists(KEY)


def test_repr_and_uri(store):
    assert repr(store) == f"{type(store).__name__}({store.url!r})"
    assert store.uri("a/b") == f"{store.url}/a/b"


# ------------------------------------------------------------------------------------ local store


def test_local_store_ignores_unfinished_copies(tmp_path):
    store = LocalStore(tmp_path)
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "model.bin.partial").write_bytes(b"half")
    assert not store.exists("runs/r")
    with pytest.raises(CvatArgoError, match="reserved"):
        store.put_file(tmp_path / "runs" / "r" / "model.bin.partial", "runs/x.partial")


# --------------------------------------------------------------------------------------- S3 only


def test_store_from_env_reads_the_step_environment(s3_server, tree):  # noqa: F811
    bucket = _bucket(s3_server)
    store = store_from_env({**s3_server, "CVAT_ARGO_STORE": f"s3://{bucket}/pfx"})
    assert isinstance(store, S3Store) and store.url == f"s3://{bucket}/pfx"
    store.put_dir(tree, KEY)
    assert minio_client(s3_server).stat_object(bucket, f"pfx/{KEY}/checkpoint").size == 6
    assert store_from_env({}) is None
    assert isinstance(store_from_env({"CVAT_ARGO_STORE": "/tmp/runs"}), LocalStore)


def test_endpoint_scheme_sets_tls():
    assert not minio_client({"AWS_ENDPOINT_URL": "http://minio.minio.svc:9000"})._base_url.is_https
    assert minio_client({"AWS_ENDPOINT_URL": "https://minio.example.com"})._base_url.is_https
    with pytest.raises(CvatArgoError, match="AWS_ENDPOINT_URL must look like"):
        minio_client({"AWS_ENDPOINT_URL": "minio:9000"})
    with pytest.raises(CvatArgoError, match="AWS_SECRET_ACCESS_KEY is not set"):
        minio_client({"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ACCESS_KEY_ID": "someone"})
    with pytest.raises(CvatArgoError, match="unsupported scheme 'gs'"):
        store_from_url("gs://bucket/prefix")


def test_wrong_secret_names_the_variables_not_the_secret(s3_server, tree):  # noqa: F811
    bucket = _bucket(s3_server)
    secret = "wrong-secret-that-must-not-leak"
    env = {**s3_server, "AWS_SECRET_ACCESS_KEY": secret}
    store = store_from_url(f"s3://{bucket}/p", env)
    for attempt in (lambda: store.put_dir(tree, KEY), lambda: store.list(KEY), lambda: store.exists(KEY)):
        with pytest.raises(CvatArgoError, match="was refused") as caught:
            attempt()
        assert "AWS_SECRET_ACCESS_KEY" in str(caught.value)
        assert secret not in str(caught.value) and s3_server["AWS_ACCESS_KEY_ID"] not in str(caught.value)
        assert not isinstance(caught.value, TransientError)
    assert secret not in repr(store) and secret not in repr(store.client)


def test_unreachable_store_is_transient(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = store_from_url("s3://bucket/p", {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_REGION": "us-east-1",
                                             "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    with pytest.raises(TransientError, match="the store did not answer") as caught:
        store.get_dir(KEY, tmp_path)
    assert caught.value.exit_code == 75


def test_missing_bucket_names_it(s3_server, tmp_path):  # noqa: F811
    store = store_from_url("s3://no-such-bucket/p", s3_server)
    with pytest.raises(DatasetError, match=re.escape("s3://no-such-bucket/p/x does not exist: there is no bucket s3://no-such-bucket")):
        store.list("x")


def test_get_dir_refuses_object_names_that_leave_the_folder(s3_server, tmp_path):  # noqa: F811
    # minio refuses to write such names, but another client can: a hostile bucket must not write outside.
    bucket = _bucket(s3_server)
    boto = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=s3_server["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=s3_server["AWS_SECRET_ACCESS_KEY"])
    store = store_from_url(f"s3://{bucket}", s3_server)
    for key in ("run-1/a/../../evil", "run-2/a\\..\\..\\evil"):
        boto.put_object(Bucket=bucket, Key=key, Body=b"x")
        with pytest.raises(DatasetError, match="cannot be a local file name"):
            store.get_dir(key.split("/")[0], tmp_path / "out" / "deep")
    assert not list(tmp_path.rglob("*evil*"))


def test_artifact_key():
    assert artifact_key("cvat-argo", "wf-x1", "train", "model") == "cvat-argo/wf-x1/train/model"
    assert artifact_key("", "wf-x1", "train", "model") == "wf-x1/train/model"
    with pytest.raises(CvatArgoError, match="stage 'a/b'"):
        artifact_key("p", "r", "a/b", "model")


# ------------------------------------------------------------------------------------------ fetch


def test_fetch_s3_object_and_prefix(s3_server, tree, tmp_path):  # noqa: F811
    bucket = _bucket(s3_server)
    store_from_url(f"s3://{bucket}", s3_server).put_dir(tree, "exports/task-1")
    digest = hashlib.sha256(b"ckpt-3").hexdigest()

    got = fetch(f"s3://{bucket}/exports/task-1/checkpoint", tmp_path / "dl", env=s3_server, expected_sha256=digest)
    assert got == tmp_path / "dl" / "checkpoint" and got.read_bytes() == b"ckpt-3"

    got = fetch(f"s3://{bucket}/exports/task-1/", tmp_path / "dl", env=s3_server)
    assert got == tmp_path / "dl" / "task-1" and _files(got) == _files(tree)

    # A TensorFlow checkpoint prefix: the sibling files come down, the prefix path is returned.
    got = fetch(f"s3://{bucket}/exports/task-1/ckpt-3", tmp_path / "ck", env=s3_server)
    assert got == tmp_path / "ck" / "ckpt-3" and (tmp_path / "ck" / "ckpt-3.index").read_bytes() == bytes(range(256))


def test_fetch_s3_digest_mismatch_removes_the_file(s3_server, tree, tmp_path):  # noqa: F811
    bucket = _bucket(s3_server)
    store_from_url(f"s3://{bucket}", s3_server).put_dir(tree, "x")
    wrong = "0" * 64
    with pytest.raises(DatasetError, match=re.escape(f"s3://{bucket}/x/checkpoint: sha256 is {hashlib.sha256(b'ckpt-3').hexdigest()}, expected {wrong}")):
        fetch(f"s3://{bucket}/x/checkpoint", tmp_path / "dl", env=s3_server, expected_sha256=wrong)
    assert list((tmp_path / "dl").iterdir()) == []


def test_fetch_missing_s3_key(s3_server, tmp_path):  # noqa: F811
    bucket = _bucket(s3_server)
    with pytest.raises(DatasetError, match=f"^{re.escape(f's3://{bucket}/exports/nope.zip')} does not exist$"):
        fetch(f"s3://{bucket}/exports/nope.zip", tmp_path, env=s3_server)


def test_fetch_http(http_server, tmp_path):  # noqa: F811
    data = os.urandom(3 * 2**20 + 5)
    (http_server.root / "export 1.zip").write_bytes(data)
    url = f"{http_server.url}/export%201.zip"

    got = fetch(url, tmp_path / "a", progress=True)
    assert got == tmp_path / "a" / "export 1.zip" and got.read_bytes() == data

    got = fetch(url + "?X-Amz-Signature=s3cr3t", tmp_path / "b", expected_sha256=hashlib.sha256(data).hexdigest())
    assert got.read_bytes() == data

    wrong = "ab" * 32
    with pytest.raises(DatasetError) as caught:
        fetch(url + "?X-Amz-Signature=s3cr3t", tmp_path / "c", expected_sha256=wrong)
    message = str(caught.value)
    assert url in message and wrong in message and hashlib.sha256(data).hexdigest() in message
    assert "s3cr3t" not in message
    assert list((tmp_path / "c").iterdir()) == []  # neither the file nor a .partial


def test_fetch_http_errors(http_server, tmp_path):  # noqa: F811
    with pytest.raises(DatasetError, match=re.escape(f"{http_server.url}/nope.zip does not exist")):
        fetch(f"{http_server.url}/nope.zip", tmp_path)
    with pytest.raises(TransientError, match="HTTP 503"):
        fetch(f"{http_server.url}/status/503", tmp_path)
    with pytest.raises(CvatArgoError, match=re.escape("refused (HTTP 403)")):
        fetch(f"http://user:pa55word@{http_server.url.removeprefix('http://')}/status/403", tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientError):
        fetch(f"http://127.0.0.1:{port}/x.zip", tmp_path)


def test_fetch_gs_reads_public_objects_over_https(http_server, tmp_path, monkeypatch):  # noqa: F811
    (http_server.root / "tf_model_garden").mkdir()
    (http_server.root / "tf_model_garden" / "ckpt.tar.gz").write_bytes(b"weights")
    monkeypatch.setattr(fetch_module, "GCS_PUBLIC_ENDPOINT", http_server.url)
    assert fetch("gs://tf_model_garden/ckpt.tar.gz", tmp_path).read_bytes() == b"weights"


def test_fetch_local_path_is_returned_as_is(tmp_path):
    source = tmp_path / "export.zip"
    source.write_bytes(b"zip")
    assert fetch(str(source), tmp_path / "dl") == source
    assert fetch(source.as_uri(), tmp_path / "dl") == source
    assert not (tmp_path / "dl").exists()
    with pytest.raises(DatasetError, match="sha256 is"):
        fetch(str(source), tmp_path / "dl", expected_sha256="0" * 64)
    assert source.exists()  # the user's own file is never removed
    with pytest.raises(DatasetError, match=re.escape("nope.zip does not exist")):
        fetch(str(tmp_path / "nope.zip"), tmp_path / "dl")
    with pytest.raises(CvatArgoError, match="not 64 hex digits"):
        fetch(str(source), tmp_path / "dl", expected_sha256="abc")


def test_fetch_decodes_an_encoding_the_server_sends_anyway(hostile_http_server, tmp_path):  # noqa: F811
    """identity is asked for; a server that gzips anyway (two members here) is decoded, digest of the file."""
    digest = hashlib.sha256(GZIPPED_PAYLOAD).hexdigest()
    got = fetch(f"{hostile_http_server.url}/gzipped/weights.bin", tmp_path / "dl", progress=False,
                expected_sha256=digest)
    assert got.read_bytes() == GZIPPED_PAYLOAD
    with pytest.raises(DatasetError, match="refused after writing more than the size cap of 1048576 bytes"):
        fetch(f"{hostile_http_server.url}/gzipped/weights.bin", tmp_path / "small", progress=False,
              limits=Limits(max_bytes=2**20, what="a test"))
    assert list((tmp_path / "small").iterdir()) == []


def test_fetch_under_local_roots(tmp_path):
    """With allowed roots a file is returned as it is and a folder is copied, links and all refused."""
    root = tmp_path / "models"
    (root / "base" / "variables").mkdir(parents=True)
    (root / "base" / "variables" / "ckpt-1.data-00000-of-00001").write_bytes(b"w" * 1000)
    (root / "base" / "ckpt-1.index").write_bytes(b"i")
    (root / "base.tar").write_bytes(b"t")
    roots = local_roots({MODEL_ROOTS_VAR: f"{root}{os.pathsep}"})
    assert roots == (root.resolve(),)
    assert fetch(str(root / "base.tar"), tmp_path / "dl", local_roots=roots) == (root / "base.tar").resolve()
    copied = fetch((root / "base").as_uri(), tmp_path / "dl", local_roots=roots)
    assert copied == tmp_path / "dl" / "base" and _files(copied) == _files(root / "base")
    with pytest.raises(DatasetError, match=r"more than the size cap of 1000 bytes \(1000 B; a test\)"):
        fetch(str(root / "base"), tmp_path / "small", local_roots=roots, limits=Limits(max_bytes=1000, what="a test"))
    assert list((tmp_path / "small").iterdir()) == []
    (root / "base" / "variables" / "fifo").unlink(missing_ok=True)
    os.mkfifo(root / "base" / "variables" / "fifo")
    with pytest.raises(DatasetError, match=re.escape("refused 'variables/fifo': not a regular file or folder")):
        fetch(str(root / "base"), tmp_path / "fifo", local_roots=roots)
    with pytest.raises(CvatArgoError, match="must lie in an allowed folder"):
        fetch(str(tmp_path), tmp_path / "dl2", local_roots=roots)
    assert not (tmp_path / "dl2").exists()
    assert fetch(str(tmp_path), tmp_path / "dl2") == tmp_path  # no roots: a user's own path, as it is


def test_fetch_s3_respects_the_size_cap(s3_server, tree, tmp_path):  # noqa: F811
    """Object sizes are checked against the cap before a byte is downloaded."""
    bucket = _bucket(s3_server)
    store_from_url(f"s3://{bucket}", s3_server).put_dir(tree, "m")
    cap = Limits(max_bytes=2**20, what="a test")
    uri = f"s3://{bucket}/m/variables/ckpt-3.data-00000-of-00001"
    with pytest.raises(DatasetError, match=re.escape(f"{uri}: refused: it is {6 * 2**20 + 17} bytes, more than the "
                                                     "size cap of 1048576 bytes")):
        fetch(uri, tmp_path / "dl", env=s3_server, limits=cap)
    with pytest.raises(DatasetError, match=re.escape(f"s3://{bucket}/m/: refused: it holds")):
        fetch(f"s3://{bucket}/m/", tmp_path / "dl", env=s3_server, limits=cap)
    assert not (tmp_path / "dl").exists()
