"""create-dataset end to end: CVAT exports in (zip, folder, S3, HTTP, COCO, Datumaro-written), TFRecords out."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvat_argo.data.synthetic import generate_task
from cvat_argo.errors import CvatArgoError, DatasetError
from cvat_argo.formats.annotations import ImageRecord, LabelSpec, Shape, TaskMeta
from cvat_argo.formats.cvat_xml.reader import CvatXmlReader
from cvat_argo.formats.cvat_xml.writer import write_cvat_xml
from cvat_argo.formats.tfrecord.example import decode_example
from cvat_argo.formats.tfrecord.records import read_records
from cvat_argo.request.catalog import load_catalog
from cvat_argo.steps import dataset as step
from cvat_argo.storage.store import minio_client
from support.fixtures_servers import http_server, s3_server  # noqa: F401


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return generate_task(tmp_path_factory.mktemp("task"), images=60, annotated_fraction=0.5, seed=3)


def run(source, out: Path, *extra: str) -> dict:
    assert step.main(["--source", str(source), "--out", str(out), *extra]) == 0
    return json.loads((out / "dataset.json").read_text())


def records(out: Path, split: str) -> list[dict]:
    examples = []
    for shard in sorted(out.glob(f"{split}-*.tfrecord")):
        examples += [decode_example(r) for r in read_records(shard)]
    return examples


def truth_boxes(task) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    reader = CvatXmlReader(task.truth)
    return {r.name: [(s.label, s.box) for s in r.shapes] for r in reader.images()}


def test_synthetic_export_end_to_end(task, tmp_path):
    summary = run(task.export, tmp_path / "ds")
    out = tmp_path / "ds"
    assert summary["format"] == "cvat-images" and summary["labels"] == ["square", "circle", "triangle"]
    assert summary["images"]["train"] + summary["images"]["val"] == task.annotated
    assert summary["images"]["unannotated"] == 60 - task.annotated and summary["images"]["skipped"] == 0
    assert sum(sum(c.values()) for c in summary["objects"].values()) == task.objects
    assert (out / "label_map.pbtxt").read_text().startswith("item {\n  id: 1\n  name: 'square'")
    assert json.loads((out / "labels.json").read_text())["labels"][2] == {"id": 3, "name": "triangle"}
    assert (out / "report.md").exists() and (out / "dataset.png").stat().st_size > 1000
    truth = truth_boxes(task)
    seen_ids = set()
    for split in ("train", "val"):
        for example in records(out, split):
            name = example["image/filename"].values[0].decode()
            width, height = example["image/width"].values[0], example["image/height"].values[0]
            source_id = example["image/source_id"].values[0]
            assert source_id.isdigit() and source_id not in seen_ids
            seen_ids.add(source_id)
            got = sorted(zip([t.decode() for t in example["image/object/class/text"].values],
                             zip(example["image/object/bbox/xmin"].values, example["image/object/bbox/ymin"].values,
                                 example["image/object/bbox/xmax"].values, example["image/object/bbox/ymax"].values,
                                 strict=True),
                             strict=True))
            want = sorted((label, (b[0] / width, b[1] / height, b[2] / width, b[3] / height)) for label, b in truth[name])
            assert [g[0] for g in got] == [w[0] for w in want]
            assert np.allclose([g[1] for g in got], [w[1] for w in want], atol=0.01 / 320)
    unannotated = json.loads((out / "unannotated.json").read_text())
    assert unannotated["count"] == 60 - task.annotated
    for item in unannotated["images"]:
        assert (out / item["path"]).is_file() and truth[item["name"]] != []


def test_jpeg_bytes_pass_through_unchanged(task, tmp_path):
    run(task.export, tmp_path / "ds")
    with zipfile.ZipFile(task.export) as archive:
        example = records(tmp_path / "ds", "train")[0]
        name = example["image/filename"].values[0].decode()
        assert example["image/encoded"].values[0] == archive.read(f"images/{name}")


def test_stage_never_imports_tensorflow(task, tmp_path):
    code = ("import sys; from cvat_argo.steps import dataset; "
            f"dataset.main(['--source', {str(task.export)!r}, '--out', {str(tmp_path / 'ds')!r}]); "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False")


def test_model_garden_decoder_reads_our_records(task, tmp_path):
    decoder_module = pytest.importorskip("official.vision.dataloaders.tf_example_decoder")
    import tensorflow as tf

    run(task.export, tmp_path / "ds")
    decoder = decoder_module.TfExampleDecoder()
    raw = next(iter(tf.data.TFRecordDataset(str(next((tmp_path / "ds").glob("train-*.tfrecord"))))))
    decoded = decoder.decode(raw)
    assert decoded["image"].shape == (240, 320, 3)
    assert int(decoded["source_id"]) >= 1
    boxes = decoded["groundtruth_boxes"].numpy()
    assert boxes.shape[1] == 4 and (boxes >= 0).all() and (boxes <= 1).all()
    assert set(decoded["groundtruth_classes"].numpy().tolist()) <= {1, 2, 3}


def test_datumaro_reads_our_tfrecords(task, tmp_path):
    pytest.importorskip("tensorflow")
    import datumaro as dm

    run(task.export, tmp_path / "ds", "--val-fraction", "0.2")
    dataset = dm.Dataset.import_from(str(tmp_path / "ds"), "tf_detection_api")
    names = [c.name for c in dataset.categories()[dm.AnnotationType.label]]
    truth = truth_boxes(task)
    items = list(dataset)
    assert len(items) == task.annotated
    for item in items:
        name = Path(item.id).name
        boxes = sorted((names[a.label], tuple(round(v, 1) for v in (a.x, a.y, a.x + a.w, a.y + a.h)))
                       for a in item.annotations)
        key = next(n for n in truth if Path(n).stem == name or n == name)
        want = sorted((label, tuple(round(v, 1) for v in box)) for label, box in truth[key])
        assert [b[0] for b in boxes] == [w[0] for w in want]
        assert np.allclose([b[1] for b in boxes], [w[1] for w in want], atol=0.2)


def _datumaro_dataset(rng):
    import datumaro as dm

    items = []
    for index in range(6):
        pixels = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
        annotations = [dm.Bbox(5 + index, 6, 20, 15, label=index % 2),
                       dm.Polygon([40, 10, 70, 12, 55, 40], label=1)]
        items.append(dm.DatasetItem(id=f"img{index}", media=dm.Image.from_numpy(pixels), annotations=annotations))
    return dm.Dataset.from_iterable(items, categories=["cat", "dog"])


@pytest.mark.parametrize("fmt", ["cvat", "coco_instances"])
def test_datumaro_written_exports_give_the_same_boxes(tmp_path, fmt):
    dataset = _datumaro_dataset(np.random.default_rng(1))
    dataset.export(str(tmp_path / "export"), fmt, save_media=True)
    summary = run(tmp_path / "export", tmp_path / "ds", "--val-fraction", "0.3")
    assert summary["labels"] == ["cat", "dog"] and summary["format"] == ("cvat-images" if fmt == "cvat" else "coco")
    got = {}
    for split in ("train", "val"):
        for example in records(tmp_path / "ds", split):
            w, h = example["image/width"].values[0], example["image/height"].values[0]
            got[Path(example["image/filename"].values[0].decode()).stem] = sorted(
                (t.decode(), round(x0 * w, 2), round(y0 * h, 2), round(x1 * w, 2), round(y1 * h, 2))
                for t, x0, y0, x1, y1 in zip(example["image/object/class/text"].values,
                                             example["image/object/bbox/xmin"].values,
                                             example["image/object/bbox/ymin"].values,
                                             example["image/object/bbox/xmax"].values,
                                             example["image/object/bbox/ymax"].values, strict=True))
    assert len(got) == 6
    for index in range(6):
        want = sorted([("cat" if index % 2 == 0 else "dog", 5.0 + index, 6.0, 25.0 + index, 21.0),
                       ("dog", 40.0, 10.0, 70.0, 40.0)])
        assert [g[0] for g in got[f"img{index}"]] == [w[0] for w in want]
        assert np.allclose([g[1:] for g in got[f"img{index}"]], [w[1:] for w in want], atol=0.02)


def _export(tmp_path: Path, records_: list[ImageRecord], files: dict[str, bytes], labels=("car", "person"),
            undeclared=()) -> Path:
    """A CVAT export; labels in ``undeclared`` are used by shapes but missing from the task's label list."""
    root = tmp_path / "export"
    (root / "images").mkdir(parents=True)
    meta = TaskMeta(labels=tuple(LabelSpec(n) for n in (*labels, *undeclared)), size=len(records_))
    write_cvat_xml(root / "annotations.xml", meta, records_)
    text = (root / "annotations.xml").read_text()
    for name in undeclared:
        text = re.sub(rf"<label>\s*<name>{name}</name>.*?</label>\s*", "", text, flags=re.S)
    (root / "annotations.xml").write_text(text)
    for name, data in files.items():
        (root / "images" / name).write_bytes(data)
    return root


def _jpeg(width=64, height=48, color=(200, 30, 30), exif_orientation=None) -> bytes:
    image = Image.new("RGB", (width, height), (20, 20, 20))
    buffer = io.BytesIO()
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    image.save(buffer, format="JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def _box(label, x0, y0, x1, y1):
    return Shape(label=label, kind="box", box=(x0, y0, x1, y1))


def test_exif_rotated_image_keeps_boxes_on_the_objects(tmp_path):
    # The file is stored landscape (64x48) with orientation 6; CVAT shows it portrait (48x64) and the
    # box was drawn on the portrait view, around a red square at the top right of what CVAT shows.
    stored = Image.new("RGB", (64, 48), (20, 20, 20))
    stored.paste((220, 20, 20), (0, 0, 16, 16))  # top-left of the stored image = top-right once turned clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif)
    shown_box = (32, 0, 48, 16)
    records_ = [ImageRecord(0, "rot.jpg", 48, 64, (_box("car", *shown_box),)),
                ImageRecord(1, "plain.jpg", 64, 48, (_box("car", 1, 1, 20, 20),))]
    root = _export(tmp_path, records_, {"rot.jpg": buffer.getvalue(), "plain.jpg": _jpeg()})
    summary = run(root, tmp_path / "ds", "--val-fraction", "0.5")
    assert summary["converted_images"] == {"EXIF orientation 6 applied": 1}
    for split in ("train", "val"):
        for example in records(tmp_path / "ds", split):
            if example["image/filename"].values[0] != b"rot.jpg":
                continue
            pixels = np.asarray(Image.open(io.BytesIO(example["image/encoded"].values[0])))
            assert pixels.shape == (64, 48, 3)
            x0, y0, x1, y1 = shown_box
            inside = pixels[y0 + 3:y1 - 3, x0 + 3:x1 - 3]
            assert inside[..., 0].mean() > 180 and inside[..., 1].mean() < 60


def test_skips_are_listed_and_strict_refuses_them(tmp_path):
    records_ = [
        ImageRecord(0, "ok.jpg", 64, 48, (_box("car", 1, 1, 30, 30), _box("dog", 2, 2, 9, 9),
                                          _box("person", 70, 50, 90, 60))),
        ImageRecord(1, "missing.jpg", 64, 48, (_box("car", 1, 1, 5, 5),)),
        ImageRecord(2, "wrong-size.jpg", 640, 480, (_box("car", 1, 1, 5, 5),)),
        ImageRecord(3, "broken.jpg", 64, 48, (_box("car", 1, 1, 5, 5),)),
        ImageRecord(4, "ok2.jpg", 64, 48, (_box("person", 1, 1, 30, 30),)),
        ImageRecord(5, "empty.jpg", 64, 48, ()),
    ]
    files = {"ok.jpg": _jpeg(), "wrong-size.jpg": _jpeg(), "broken.jpg": b"\xff\xd8\xff\xe0 not a jpeg",
             "ok2.jpg": _jpeg(), "empty.jpg": _jpeg()}
    root = _export(tmp_path, records_, files, undeclared=("dog",))
    assert "<name>dog</name>" not in (root / "annotations.xml").read_text()
    summary = run(root, tmp_path / "ds")
    reasons = {s["item"]: s["reason"] for s in summary["skipped"]}
    assert reasons["image missing.jpg"] == "file not found in the export"
    assert reasons["image wrong-size.jpg"] == "the annotations say 640x480, the file is 64x48"
    assert reasons["image broken.jpg"].startswith("corrupt")
    assert reasons["label dog"] == "1 shape(s) with a label the task does not define: dropped"
    assert summary["dropped_shapes"] == {"label not in the task": 1, "zero area after clipping to the image": 1}
    # each label is in one image only, yet one image is still kept for validation
    assert summary["images"] == {"train": 1, "val": 1, "unannotated": 1, "skipped": 4}
    assert any("fewer than 100" in w for w in summary["warnings"])
    assert any(w.startswith("label car has only 1 annotated objects") for w in summary["warnings"])
    with pytest.raises(DatasetError, match=r"image missing.jpg: file not found in the export \(--strict\)"):
        step.run(step.Options(source=str(root), out=tmp_path / "strict", strict=True))
    assert not (tmp_path / "strict").exists() and not (tmp_path / "strict.partial").exists()


PLOT_LOG = "CVAT_ARGO_TEST_PLOT_LOG"


def logged_plot(path: Path, summary: dict, box_sizes: list) -> None:
    """Stands in for dataset_report.plot: appends what it was asked to draw (from the child or the stage)."""
    with open(os.environ[PLOT_LOG], "a") as log:
        log.write(json.dumps({"objects": summary["objects"], "boxes": len(box_sizes)}) + "\n")


def test_the_plot_shows_what_was_written_when_an_image_fails_only_in_the_write_pass(tmp_path, monkeypatch):
    """The plot is drawn from the plan while the records are written; an image whose header is fine but
    whose pixels do not decode (a truncated BMP, converted in the write pass) makes the stage redraw it."""
    bmp = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 90, 90)).save(bmp, format="BMP")
    records_ = [ImageRecord(0, "ok.jpg", 64, 48, (_box("car", 1, 1, 30, 30),)),
                ImageRecord(1, "ok2.jpg", 64, 48, (_box("person", 1, 1, 30, 30),)),
                ImageRecord(2, "cut.bmp", 64, 48, (_box("car", 5, 5, 20, 20),))]
    files = {"ok.jpg": _jpeg(), "ok2.jpg": _jpeg(), "cut.bmp": bmp.getvalue()[:2000]}
    log = tmp_path / "plots.jsonl"
    monkeypatch.setenv(PLOT_LOG, str(log))
    monkeypatch.setattr(step, "plot", logged_plot)
    summary = run(_export(tmp_path, records_, files), tmp_path / "ds")
    assert {s["item"] for s in summary["skipped"]} == {"image cut.bmp"}
    drawn = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(drawn) == 2  # from the plan, then again from what the write pass really wrote
    assert drawn[0]["boxes"] == 3 and drawn[1]["boxes"] == 2
    assert drawn[1]["objects"] == summary["objects"] != drawn[0]["objects"]


def test_the_plot_is_drawn_once_when_the_write_pass_skips_nothing(task, tmp_path, monkeypatch):
    log = tmp_path / "plots.jsonl"
    monkeypatch.setenv(PLOT_LOG, str(log))
    monkeypatch.setattr(step, "plot", logged_plot)
    summary = run(task.export, tmp_path / "ds")
    drawn = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(drawn) == 1 and drawn[0]["objects"] == summary["objects"]
    assert drawn[0]["boxes"] == summary["boxes"]["count"]


def test_empty_frames_as_negatives_and_label_selection(task, tmp_path):
    summary = run(task.export, tmp_path / "neg", "--empty-frames", "negatives")
    assert summary["images"]["unannotated"] == 0
    assert summary["images"]["train"] + summary["images"]["val"] == 60
    summary = run(task.export, tmp_path / "sel", "--labels", "shape", "--rename", "square=shape",
                  "--rename", "circle=shape")
    assert summary["labels"] == ["shape"]
    assert summary["dropped_shapes"]["label not selected"] > 0


def test_many_shards_when_asked(task, tmp_path):
    summary = run(task.export, tmp_path / "ds", "--shard-mb", "0.05")
    names = [s["file"] for s in summary["shards"]["train"]]
    assert len(names) > 3 and names[0] == f"train-00000-of-{len(names):05d}.tfrecord"
    assert sum(s["records"] for s in summary["shards"]["train"]) == summary["images"]["train"]


@pytest.mark.parametrize(("content", "message"), [
    ("<annotations><image id='0' name='a.jpg' width='10'", "line"),
    ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx">]><annotations>&x;</annotations>', "DOCTYPE"),
])
def test_bad_xml_is_refused_and_writes_nothing(tmp_path, content, message):
    root = tmp_path / "export"
    root.mkdir()
    (root / "annotations.xml").write_text(content)
    with pytest.raises(DatasetError, match=message):
        step.run(step.Options(source=str(root), out=tmp_path / "ds"))
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds.partial").exists()


def test_archive_escaping_its_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("annotations.xml", "<annotations/>")
        zf.writestr("../escape.txt", "x")
    with pytest.raises(DatasetError, match="escape"):
        step.run(step.Options(source=str(archive), out=tmp_path / "ds"))
    assert not (tmp_path / "escape.txt").exists()


def test_nothing_annotated_and_existing_output_are_refused(tmp_path, task):
    root = _export(tmp_path, [ImageRecord(0, "a.jpg", 64, 48, ())], {"a.jpg": _jpeg()})
    with pytest.raises(DatasetError, match="no annotated image"):
        step.run(step.Options(source=str(root), out=tmp_path / "ds"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(CvatArgoError, match="exists and is not empty"):
        step.run(step.Options(source=str(task.export), out=tmp_path / "full"))
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_cli_exit_codes(tmp_path, capsys):
    from cvat_argo.entry import run_step

    assert run_step(step.main, ["--source", str(tmp_path / "nope.zip"), "--out", str(tmp_path / "ds")]) == 4
    assert "does not exist" in capsys.readouterr().err


def test_sources_on_s3_and_http(task, tmp_path, s3_server, http_server, monkeypatch):  # noqa: F811
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    client = minio_client(s3_server)
    if not client.bucket_exists("exports"):
        client.make_bucket("exports")
    client.fput_object("exports", "team/task.zip", str(task.export))
    summary = run("s3://exports/team/task.zip", tmp_path / "from-s3")
    assert summary["images"]["train"] + summary["images"]["val"] == task.annotated
    (http_server.root / "task.zip").write_bytes(task.export.read_bytes())
    summary = run(f"{http_server.url}/task.zip", tmp_path / "from-http")
    assert summary["images"]["unannotated"] == 60 - task.annotated


def test_video_export_frames_map_to_files(tmp_path):
    sample = Path(__file__).parent / "data" / "cvat" / "video_tracks.xml"
    reader = CvatXmlReader(sample)
    width, height = reader.meta.original_size
    root = tmp_path / "video"
    (root / "images").mkdir(parents=True)
    (root / "annotations.xml").write_bytes(sample.read_bytes())
    frames = list(reader.images())
    for record in frames:
        (root / "images" / f"{record.name}.PNG").write_bytes(_png(width, height))
    summary = run(root, tmp_path / "ds", "--val-fraction", "0.3")
    # A frame with any shape a person made is truth; one with only the auto track awaits review.
    truth = [r for r in frames if any(s.source != "auto" for s in r.shapes)]
    auto_only = [r for r in frames if r.shapes and r not in truth]
    empty = [r for r in frames if not r.shapes]
    assert auto_only, "the sample must hold a frame with only machine shapes"
    assert summary["format"] == "cvat-video"
    assert summary["images"]["train"] + summary["images"]["val"] == len(truth)
    assert summary["images"]["unannotated"] == len(empty)
    assert {k: v for k, v in summary["frames"].items() if k != "rule"} == {
        "ground_truth": len(truth), "awaiting_review": len(auto_only), "to_pre_annotate": len(empty)}
    assert summary["frames"]["rule"].startswith("shape sources only")
    total = sum(len(r.shapes) for r in truth)
    assert sum(sum(c.values()) for c in summary["objects"].values()) + sum(summary["dropped_shapes"].values()) == total


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 90, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_instance_masks_for_mask_rcnn(tmp_path):
    triangle = Shape(label="car", kind="polygon", box=(10, 5, 40, 35), polygon=(10, 35, 25, 5, 40, 35))
    square = _box("person", 2, 2, 8, 12)
    root = _export(tmp_path, [ImageRecord(0, "a.jpg", 64, 48, (triangle, square)),
                              ImageRecord(1, "b.jpg", 64, 48, (square,))], {"a.jpg": _jpeg(), "b.jpg": _jpeg()})
    spec = load_catalog(env={}).model("maskrcnn-res50-coco").model_dump_json()
    summary = run(root, tmp_path / "ds", "--model", "maskrcnn-res50-coco", "--model-spec", spec)
    assert summary["options"]["masks"] is True
    example = next(e for split in ("train", "val") for e in records(tmp_path / "ds", split)
                   if e["image/filename"].values[0] == b"a.jpg")
    masks = [np.asarray(Image.open(io.BytesIO(png))) for png in example["image/object/mask"].values]
    assert [m.shape for m in masks] == [(48, 64), (48, 64)] and all(set(np.unique(m)) <= {0, 1} for m in masks)
    assert masks[0][30, 25] == 1 and masks[0][8, 12] == 0  # inside the triangle, outside it but inside its box
    assert masks[1].sum() == 6 * 10
    assert example["image/object/area"].values[0] == pytest.approx(masks[0].sum())
    plain = run(root, tmp_path / "plain")
    assert plain["options"]["masks"] is False
