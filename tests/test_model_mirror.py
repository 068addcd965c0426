"""The model mirror of air-gapped clusters: public checkpoint URLs read from a bucket (moto on loopback).

The pull step runs as its container does, with no network: ``requests`` (every https/gs read) is
refused, so the only way to the checkpoint is the mirror, read through the same minio client production
uses. A second pull of an unpinned source is served by the digest recorded the first time.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from cvat_argo.cli import main as cli_main
from cvat_argo.engines import artifacts
from cvat_argo.engines.local import _step_env
from cvat_argo.engines.pipeline import STORE_CONFIG_MAP, build_pipeline
from cvat_argo.entry import run_step
from cvat_argo.errors import CvatArgoError
from cvat_argo.request.catalog import entry_from_parameters
from cvat_argo.request.spec import DatasetSource, TrainingRequest
from cvat_argo.steps.pull import BY_URI_PREFIX, main, pull
from cvat_argo.storage import fetch as fetch_module
from cvat_argo.storage.mirror import MODEL_MIRROR_VAR, mirror_location, model_mirror, parse_mirror
from cvat_argo.storage.store import minio_client, store_from_env
from support.base_models import checkpoint_archive
from support.fixtures_servers import http_server, s3_server  # noqa: F401

tf = pytest.importorskip("tensorflow")

RETINANET = "https://storage.googleapis.com/tf_model_garden/vision/retinanet/retinanet-resnet50fpn.tar.gz"
PUBLIC = "https://storage.googleapis.com/tf_model_garden/vision/test/base.tar.gz"
MIRROR_KEY = "mirror/storage.googleapis.com/tf_model_garden/vision/test/base.tar.gz"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run") / "checkpoints"
    tf.train.Checkpoint(weights=tf.Variable([7.0, 3.0])).write(str(folder / "ckpt-7"))
    return folder


@pytest.fixture(scope="module")
def archive(checkpoints, tmp_path_factory) -> tuple[Path, str]:
    return checkpoint_archive(checkpoints, tmp_path_factory.mktemp("archive") / "base.tar.gz")


@pytest.fixture
def s3(s3_server, monkeypatch):  # noqa: F811
    """The store environment of a pod, fresh buckets ``models`` (the mirror) and ``store`` (the cache)."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    client = minio_client(s3_server)
    for bucket in ("models", "store"):
        if client.bucket_exists(bucket):
            for obj in client.list_objects(bucket, recursive=True):
                client.remove_object(bucket, obj.object_name)
        else:
            client.make_bucket(bucket)
    monkeypatch.setenv("CVAT_ARGO_STORE", "s3://store/cache")
    monkeypatch.setenv(MODEL_MIRROR_VAR, "s3://models/mirror/")
    return SimpleNamespace(client=client, env=s3_server)


@pytest.fixture
def offline(monkeypatch):
    """No network: any https/gs read (they all go through requests) fails the test."""
    calls: list[str] = []

    def refuse(url, *args, **kwargs):
        calls.append(url)
        raise AssertionError(f"the pull reached the network: {url}")

    monkeypatch.setattr(fetch_module.requests, "get", refuse)
    return calls


def spec(model: str, uri: str, sha256: str | None = None) -> str:
    """The model's catalog entry as the pipeline passes it, with a public https checkpoint."""
    entry = entry_from_parameters(model, "").model_dump(mode="json")
    entry["checkpoint"].update(uri=uri, sha256=sha256)
    return json.dumps(entry)


def weights(out: Path) -> list[float]:
    manifest = json.loads((out / "base-model.json").read_text())
    reader = tf.train.load_checkpoint(str(out / manifest["checkpoint"]))
    return reader.get_tensor("weights/.ATTRIBUTES/VARIABLE_VALUE").tolist()


# -------------------------------------------------------------------------------------------- the mapping


def test_public_urls_map_onto_the_bucket_by_host_and_path():
    mirror = parse_mirror("s3://bucket/mirror")
    assert mirror == "s3://bucket/mirror/"
    assert mirror_location(RETINANET, mirror) == (
        "s3://bucket/mirror/storage.googleapis.com/tf_model_garden/vision/retinanet/retinanet-resnet50fpn.tar.gz")
    # gs:// is its public https address: both spellings share one copy
    assert mirror_location("gs://tf_model_garden/vision/mobilenet/v2_1.0_float/ckpt-180648", mirror) == (
        "s3://bucket/mirror/storage.googleapis.com/tf_model_garden/vision/mobilenet/v2_1.0_float/ckpt-180648")
    assert mirror_location("http://models.local:8080/a/b.tar.gz", "s3://bucket/") == (
        "s3://bucket/models.local:8080/a/b.tar.gz")
    # what the cluster reads where it is is not mirrored
    assert mirror_location("s3://models/x.tar.gz", mirror) is None
    assert mirror_location("/models/x.tar.gz", mirror) is None
    assert parse_mirror("") is None and model_mirror({}) is None
    assert parse_mirror("https://mirror.internal/models") == "https://mirror.internal/models/"


@pytest.mark.parametrize("value", [
    "ftp://bucket/mirror", "bucket/mirror", "s3://ab/mirror", "s3://bucket/../other",
    "https://user:hunter2@mirror.internal/models", "https://mirror.internal/models?X-Amz-Signature=hunter2",
])
def test_a_bad_setting_is_one_line_naming_it_without_credentials(value):
    with pytest.raises(CvatArgoError) as caught:
        model_mirror({MODEL_MIRROR_VAR: value})
    message = str(caught.value)
    assert message.startswith(MODEL_MIRROR_VAR) and "\n" not in message and "hunter2" not in message


def test_a_bad_setting_fails_the_step_before_it_writes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(MODEL_MIRROR_VAR, "s3://user:hunter2@bucket/mirror")
    code = run_step(main, ["--model", "frcnn-res50-coco", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and MODEL_MIRROR_VAR in err and "hunter2" not in err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- the pull step


def test_pull_reads_the_mirror_offline_and_the_recorded_digest_serves_the_next_pull(
        archive, s3, offline, tmp_path, capsys):
    path, digest = archive
    s3.client.fput_object("models", MIRROR_KEY, str(path))
    model_spec = spec("frcnn-res50-coco", PUBLIC)  # a catalog entry with an https URL and no pinned digest

    assert main(["--model", "frcnn-res50-coco", "--model-spec", model_spec, "--out", str(tmp_path / "first")]) == 0
    manifest = json.loads((tmp_path / "first" / artifacts.BASE_MODEL_MANIFEST).read_text())
    assert manifest["uri"] == PUBLIC  # the URL it stands for
    assert manifest["mirror"] == f"s3://models/{MIRROR_KEY}"  # where it was read
    assert manifest["sha256"] == digest and manifest["pinned"] is False and "cache" not in manifest
    assert weights(tmp_path / "first") == [7.0, 3.0]
    assert "the mirror's copy" in capsys.readouterr().out
    # the cache, and the digest recorded for the URL
    record = next(o.object_name for o in s3.client.list_objects("store", prefix=f"cache/{BY_URI_PREFIX}/",
                                                                recursive=True))
    assert json.loads(s3.client.get_object("store", record).read()) == {"uri": PUBLIC, "sha256": digest}

    # The mirror's copy is gone: only the cache, found by the recorded digest, can serve the second pull.
    s3.client.remove_object("models", MIRROR_KEY)
    manifest = pull("frcnn-res50-coco", model_spec, "", "", tmp_path / "second", store=store_from_env())
    assert manifest["cached"] is True and manifest["cache"] == f"base-models/{digest}"
    assert manifest["uri"] == PUBLIC and manifest["sha256"] == digest and manifest["mirror"] is None
    assert weights(tmp_path / "second") == [7.0, 3.0]
    assert offline == []


def test_a_pinned_digest_is_checked_on_the_mirrors_copy(archive, s3, offline, tmp_path, capsys):
    path, digest = archive
    s3.client.fput_object("models", MIRROR_KEY, str(path))
    code = run_step(main, ["--model", "frcnn-res50-coco", "--model-spec", spec("frcnn-res50-coco", PUBLIC, "0" * 64),
                           "--out", str(tmp_path / "bad")])
    assert code == 4 and "sha256" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    manifest = pull("frcnn-res50-coco", spec("frcnn-res50-coco", PUBLIC, digest), "", "", tmp_path / "good")
    assert manifest["pinned"] is True and manifest["mirror"] == f"s3://models/{MIRROR_KEY}"


def test_a_copy_missing_from_the_mirror_names_the_key_and_the_url(s3, offline, tmp_path, capsys):
    code = run_step(main, ["--model", "frcnn-res50-coco", "--model-spec", spec("frcnn-res50-coco", PUBLIC),
                           "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 4 and "\n" not in err, err
    assert MODEL_MIRROR_VAR in err and f"key {MIRROR_KEY} in bucket models" in err and PUBLIC in err
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in err and s3.env["AWS_ACCESS_KEY_ID"] not in err
    assert not (tmp_path / "out").exists()


def test_a_built_in_model_from_gs_reads_its_checkpoint_prefix_from_the_mirror(checkpoints, s3, offline, tmp_path):
    """ssd-mobilenet-v2-coco as built in: gs://tf_model_garden/.../ckpt-180648, a bare prefix, not pinned."""
    uri = entry_from_parameters("ssd-mobilenet-v2-coco", "").checkpoint.uri
    assert uri is not None and uri.startswith("gs://")
    key = mirror_location(uri, "s3://models/mirror/").removeprefix("s3://models/")
    for suffix in (".index", ".data-00000-of-00001"):
        s3.client.fput_object("models", key + suffix, str(checkpoints / f"ckpt-7{suffix}"))
    manifest = pull("ssd-mobilenet-v2-coco", "", "", "", tmp_path / "out", store=store_from_env())
    assert manifest["uri"] == uri and manifest["mirror"] == f"s3://models/{key}" and manifest["cached"] is False
    assert weights(tmp_path / "out") == [7.0, 3.0]
    again = pull("ssd-mobilenet-v2-coco", "", "", "", tmp_path / "again", store=store_from_env())
    assert again["cached"] is True and again["sha256"] == manifest["sha256"]


def test_the_older_mirror_flag_still_looks_up_by_name_and_wins(archive, s3, offline, tmp_path):
    path, digest = archive
    s3.client.fput_object("models", "flat/base.tar.gz", str(path))
    manifest = pull("frcnn-res50-coco", spec("frcnn-res50-coco", PUBLIC), "", "", tmp_path / "out",
                    mirror="s3://models/flat/")
    assert manifest["mirror"] == "s3://models/flat/base.tar.gz" and manifest["uri"] == PUBLIC
    assert manifest["sha256"] == digest


def test_without_the_setting_nothing_changes(archive, http_server, s3, monkeypatch, tmp_path):  # noqa: F811
    path, _digest = archive
    monkeypatch.setenv(MODEL_MIRROR_VAR, "")  # the ConfigMap's empty key
    (http_server.root / "plain.tar.gz").write_bytes(path.read_bytes())
    manifest = pull("frcnn-res50-coco", spec("frcnn-res50-coco", f"{http_server.url}/plain.tar.gz"), "", "",
                    tmp_path / "out")
    assert manifest["uri"] == f"{http_server.url}/plain.tar.gz" and manifest["mirror"] is None


# --------------------------------------------------------------------------------- filling it, the settings


def test_mirror_models_fills_the_mirror_that_an_offline_pull_reads(archive, http_server, s3, tmp_path,  # noqa: F811
                                                                    monkeypatch, capsys):
    path, digest = archive
    (http_server.root / "models").mkdir(exist_ok=True)
    (http_server.root / "models" / "mine.tar.gz").write_bytes(path.read_bytes())
    origin = f"{http_server.url}/models/mine.tar.gz"
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("models:\n  - name: mine\n    extends: frcnn-res50-coco\n"
                       f"    checkpoint: {{uri: '{origin}', sha256: '{digest}'}}\n")
    assert cli_main(["mirror-models", "--to", "s3://models/filled", "--catalog", str(catalog), "mine"]) == 0
    host = origin.removeprefix("http://").split("/", 1)[0]
    assert f"copied {origin} -> s3://models/filled/{host}/models/mine.tar.gz" in capsys.readouterr().out
    assert cli_main(["mirror-models", "--to", "s3://models/filled", "--catalog", str(catalog), "mine"]) == 0
    assert "have s3://models/filled/" in capsys.readouterr().out  # a second run copies nothing

    (http_server.root / "models" / "mine.tar.gz").unlink()  # the origin is out of reach now
    monkeypatch.setenv(MODEL_MIRROR_VAR, "s3://models/filled/")
    manifest = pull("frcnn-res50-coco", spec("frcnn-res50-coco", origin, digest), "", "", tmp_path / "out")
    assert manifest["uri"] == origin and manifest["mirror"] == f"s3://models/filled/{host}/models/mine.tar.gz"

    assert cli_main(["mirror-models", "--to", "https://mirror.internal/models"]) == 2  # only a bucket is filled
    assert "--to" in capsys.readouterr().err


def test_the_setting_reaches_the_pull_step_on_both_engines(monkeypatch):
    pipeline = build_pipeline(TrainingRequest(source=DatasetSource(cvat_task_id=1)))
    env = {var.name: var for var in pipeline.stage(artifacts.PULL_BASE_MODEL).env}
    mirror = env[MODEL_MIRROR_VAR]
    assert (mirror.source, mirror.object_name, mirror.key) == ("config-map", STORE_CONFIG_MAP, "model-mirror")
    monkeypatch.setenv(MODEL_MIRROR_VAR, "s3://models/mirror/")
    assert _step_env(SimpleNamespace(store_url="runs"))[MODEL_MIRROR_VAR] == "s3://models/mirror/"
