"""Hostile and malformed exports: one ``error:`` line naming the file and the field, nothing left behind.

Each case builds an export in a temporary folder (CVAT XML, COCO, a damaged archive) and runs the
dataset step's ``main`` the way its container does (through ``run_step``; a few as a subprocess), then
checks what a user would see and what stays on disk:

- a non-zero exit and exactly one ``error:`` line on stderr, which names the file at fault and the
  field (``annotations[0].image_id``, ``<image> has no width``, the image name ...), and no traceback;
- no output folder (neither ``--out`` nor its ``.partial``) and nothing else written anywhere in the
  test's folder, so a hostile name never reaches a path outside the output.

The qc-report cases at the end check the same for ``python -m cvat_argo qc-report``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from cvat_argo.cvat import qc
from cvat_argo.entry import run_step
from cvat_argo.steps import dataset as step

pytestmark = pytest.mark.faults

HEAD = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><name>t</name><size>2</size><mode>annotation</mode>
    <labels><label><name>car</name></label></labels></task></meta>
"""
BOX = '<box label="car" source="manual" occluded="0" xtl="1" ytl="1" xbr="9" ybr="9" z_order="0"/>'
ANNOTATION = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0, "segmentation": []}
LONG_NAME = "a" * 5000 + ".jpg"


def _jpeg(width: int = 20, height: int = 10) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 90, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


def image(name: str, frame: int = 0, shapes: str = BOX, extra: str = "") -> str:
    return f'<image id="{frame}" name="{name}" width="20" height="10"{extra}>{shapes}</image>\n'


def cvat_export(root: Path, body: str, files: tuple[str, ...] = ("a.jpg",), head: str = HEAD,
                raw: bytes | None = None) -> Path:
    """``root/export/annotations.xml`` (``head`` + ``body``, or ``raw`` bytes) and its images; returns the XML."""
    export = root / "export"
    (export / "images").mkdir(parents=True)
    for name in files:
        (export / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (export / "images" / name).write_bytes(_jpeg())
    xml = export / "annotations.xml"
    xml.write_bytes(raw if raw is not None else (head + body + "</annotations>\n").encode())
    return xml


def coco_document(annotations: list | None = None, images: list | None = None, categories: list | None = None,
                  **extra) -> dict:
    return {"images": images if images is not None else [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10}],
            "annotations": annotations if annotations is not None else [ANNOTATION],
            "categories": categories if categories is not None else [{"id": 1, "name": "car"}], **extra}


def coco_export(root: Path, document: dict | None = None, raw: str | bytes | None = None,
                files: tuple[str, ...] = ("a.jpg",)) -> Path:
    """A CVAT "COCO 1.0" export under ``root/export``; returns its ``instances_default.json``."""
    export = root / "export"
    (export / "annotations").mkdir(parents=True)
    (export / "images" / "default").mkdir(parents=True)
    for name in files:
        (export / "images" / "default" / name).write_bytes(_jpeg())
    path = export / "annotations" / "instances_default.json"
    text = raw if raw is not None else json.dumps(document)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def annotation(**changes) -> dict:
    return {**ANNOTATION, **changes}


def _source(built: Path) -> Path:
    """The export folder of an annotation file built above (the export itself for a folder or an archive)."""
    if built.suffix == ".xml":
        return built.parent
    if built.suffix == ".json":
        return built.parent.parent
    return built


# --- the hostile exports ---------------------------------------------------------------------------
# Each case: (build(root) -> the file the error must name, the texts the error line must hold). A case
# whose fault is the export as a whole (no annotated image) names the export folder.

Build = Callable[[Path], Path]


def _xml_dotdot(root: Path) -> Path:
    (root / "escape.jpg").write_bytes(_jpeg())  # what '../../escape.jpg' would reach from images/
    return cvat_export(root, image("a.jpg") + image("../../escape.jpg", 1, shapes=""))


def _xml_absolute(root: Path) -> Path:
    outside = root / "outside.jpg"
    outside.write_bytes(_jpeg())
    return cvat_export(root, image("a.jpg") + image(str(outside), 1))


def _truncated_zip(root: Path) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("annotations.xml", HEAD + image("a.jpg") + "</annotations>\n")
        archive.writestr("images/a.jpg", _jpeg())
    path = root / "task.zip"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def _coco_directory(root: Path) -> Path:
    path = coco_export(root, coco_document())
    path.unlink()
    path.mkdir()
    return path


def _unreadable_image(root: Path) -> Path:
    xml = cvat_export(root, image("a.jpg"))
    (xml.parent / "images" / "a.jpg").write_bytes(b"not a picture")
    return xml.parent  # no field is at fault: the message names the export


CASES: list = [
    # CVAT for images/video 1.1
    pytest.param(lambda r: cvat_export(r, "", raw=b'<?xml version="1.0"?><dataset><meta/></dataset>'),
                 ["the root element is <dataset>, expected <annotations>"], id="xml-wrong-root"),
    pytest.param(lambda r: cvat_export(r, '<image id="0" name="a.jpg" height="10">' + BOX + "</image>"),
                 ["image 'a.jpg' (id 0), line 6: <image> has no width"], id="xml-image-without-width"),
    pytest.param(lambda r: cvat_export(r, image("a.jpg", shapes='<polygon label="car" points="1,1;nan,2;3,4"/>')),
                 ["image 'a.jpg' (id 0)", "<polygon> points 'nan,2' is not an 'x,y' pair"], id="xml-nan-points"),
    pytest.param(lambda r: cvat_export(r, "", raw=b""), ["malformed XML at line 1"], id="xml-empty-file"),
    pytest.param(lambda r: cvat_export(r, image("a.jpg"), head=HEAD.replace("<label><name>car</name></label>", "")),
                 ["the export defines no labels"], id="xml-no-labels"),
    pytest.param(lambda r: cvat_export(r, image("a.jpg") + image("a.jpg", 1)),
                 ["image 'a.jpg' (id 1)", "duplicate image name 'a.jpg': <image> id 0 at line 6"],
                 id="xml-duplicate-name"),
    pytest.param(lambda r: cvat_export(r, image("a.jpg").strip() + image("a.jpg", 1)),
                 ["image 'a.jpg' (id 1), line 6: duplicate image name 'a.jpg': <image> id 0 at line 6"],
                 id="xml-duplicate-name-on-one-line"),
    pytest.param(lambda r: cvat_export(r, image("a.jpg") + image("./a.jpg", 1)),
                 ["images 'a.jpg' (frame 0) and './a.jpg' (frame 1) are both the file images/a.jpg"],
                 id="xml-two-names-one-file"),
    pytest.param(lambda r: cvat_export(r, image("a.jpg", extra=' subset="Train"')
                                       + image("a.jpg", extra=' subset="Validation"')),
                 ["images 'a.jpg' and 'a.jpg' both have frame 0"], id="xml-project-subsets-one-frame"),
    pytest.param(lambda r: cvat_export(r, image("a.jpg") + image(LONG_NAME, 1)),
                 ["image name 'aaaaaaaa", "(5004 characters)", "longer than any path"], id="xml-5000-character-name"),
    pytest.param(_xml_absolute, ["image name '/", "is an absolute path"], id="xml-absolute-name"),
    pytest.param(_xml_dotdot, ["image name '../../escape.jpg' climbs out of its folder"], id="xml-dotdot-name"),
    pytest.param(lambda r: cvat_export(r, '<track id="0" label="car"><box frame="0" outside="0" xtl="1" ytl="1" '
                                          'xbr="9" ybr="9"/></track>'),
                 ["a CVAT for video export needs <original_size>"], id="xml-video-without-size"),
    pytest.param(lambda r: cvat_export(r, "").parent, ["no annotated image in"], id="xml-empty-export"),
    pytest.param(_unreadable_image, ["no usable annotated image", "image a.jpg: not a readable image"],
                 id="xml-only-image-unreadable"),
    # COCO 1.0
    pytest.param(lambda r: coco_export(r, coco_document([ANNOTATION, [1, 2]])),
                 ["annotations[1] is a list, not an object"], id="coco-annotation-is-a-list"),
    pytest.param(lambda r: coco_export(r, coco_document([annotation(image_id="abc")])),
                 ["annotations[0].image_id 'abc' is not an image id"], id="coco-image-id-abc"),
    pytest.param(lambda r: coco_export(r, coco_document([annotation(image_id=None)])),
                 ["annotations[0].image_id null is not an image id"], id="coco-image-id-null"),
    pytest.param(lambda r: coco_export(r, coco_document([annotation(image_id=99)])),
                 ["annotations[0].image_id 99 is the id of no image"], id="coco-annotation-of-no-image"),
    pytest.param(lambda r: coco_export(r, coco_document([annotation(bbox=[1, 2, 3])])),
                 ["annotations[0].bbox has 3 numbers, not 4"], id="coco-bbox-three-numbers"),
    pytest.param(lambda r: coco_export(r, raw=json.dumps(coco_document([annotation(bbox=[1, float("nan"), 5, 5])]))),
                 ["annotations[0].bbox[1] nan is not a number"], id="coco-bbox-nan"),
    pytest.param(lambda r: coco_export(r, coco_document([annotation(bbox=[1, 2, "3", 4])])),
                 ["annotations[0].bbox[2] '3' is not a number"], id="coco-bbox-string"),
    pytest.param(lambda r: coco_export(r, coco_document([annotation(bbox=[1, 2, -3, 4])])),
                 ["annotations[0].bbox has a negative size"], id="coco-bbox-negative-size"),
    pytest.param(lambda r: coco_export(r, coco_document([annotation(category_id=7)])),
                 ["annotations[0].category_id 7 is not in 'categories'"], id="coco-category-missing"),
    pytest.param(lambda r: coco_export(r, coco_document([annotation(segmentation=[[1, 2, 3, 4, 5]])])),
                 ["annotations[0].segmentation[0] has 5 numbers"], id="coco-segmentation-odd"),
    pytest.param(lambda r: coco_export(r, coco_document([annotation(segmentation="x")])),
                 ["annotations[0].segmentation is a string"], id="coco-segmentation-string"),
    pytest.param(lambda r: coco_export(r, coco_document([annotation(attributes=["occluded"])])),
                 ["annotations[0].attributes is a list, not an object"], id="coco-attributes-list"),
    pytest.param(lambda r: coco_export(r, coco_document(images={"a.jpg": 1})),
                 ["'images' is an object, not a list"], id="coco-images-not-a-list"),
    pytest.param(lambda r: coco_export(r, coco_document(images=[{"id": 1, "file_name": "a.jpg", "width": -20,
                                                                 "height": 10}])),
                 ["images[0].width -20 is not a positive whole number"], id="coco-negative-width"),
    pytest.param(lambda r: coco_export(r, coco_document(
        [ANNOTATION, annotation(id=2, image_id=2)],
        [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10},
         {"id": 2, "file_name": "a.jpg", "width": 20, "height": 10}])),
        ["images[1] (id 2) and images[0] (id 1) have one file_name, 'a.jpg'"], id="coco-duplicate-file-name"),
    pytest.param(lambda r: coco_export(r, coco_document(images=[
        {"id": 1, "file_name": "a.jpg", "width": 20, "height": 10},
        {"id": 1, "file_name": "b.jpg", "width": 20, "height": 10}]), files=("a.jpg", "b.jpg")),
        ["images[1].id 1 is also the id of images[0] ('a.jpg')"], id="coco-duplicate-image-id"),
    pytest.param(lambda r: coco_export(r, coco_document(images=[{"id": 1, "file_name": "a\x00.jpg", "width": 20,
                                                                 "height": 10}])),
                 ["image name 'a\\x00.jpg' holds a NUL character"], id="coco-nul-in-file-name"),
    pytest.param(lambda r: coco_export(r, {"images": []}), ["the export defines no labels"], id="coco-no-categories"),
    pytest.param(lambda r: coco_export(r, raw=b'{"images": [], "info": "\xff"}'), ["not UTF-8 text"],
                 id="coco-not-utf8"),
    pytest.param(lambda r: coco_export(r, raw='{"images": [{"id": 1' + "0" * 5000 + "}]}"), ["not usable JSON"],
                 id="coco-5000-digit-number"),
    pytest.param(_coco_directory, ["cannot read the annotation file"], id="coco-file-is-a-folder"),
]

# Run as ``python -m cvat_argo.steps.dataset``, as the container runs it.
SUBPROCESS_CASES: list = [
    pytest.param(lambda r: coco_export(r, raw='{"images": ' + "[" * 100_000 + "]" * 100_000 + "}"),
                 ["JSON nested too deeply to read"], id="coco-100000-nested-lists"),
    pytest.param(lambda r: coco_export(r, coco_document(images=[{"id": 1, "file_name": LONG_NAME, "width": 20,
                                                                 "height": 10}])),
                 ["image name 'aaaaaaaa", "(5004 characters)"], id="coco-5000-character-name"),
    pytest.param(_truncated_zip, ["a damaged or truncated archive"], id="truncated-zip"),
]


def _tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def _check(stderr: str, named: Path, expected: list[str]) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    for text in [str(named), *expected]:
        assert text in errors[0], f"{text!r} not in {errors[0]!r}"


def _prepare(tmp_path: Path, build: Build) -> tuple[Path, Path, Path, list[str], set[str]]:
    named = build(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    argv = ["--source", str(_source(named)), "--out", str(out), "--work", str(work)]
    return named, out, work, argv, _tree(tmp_path)


def _nothing_left(tmp_path: Path, out: Path, before: set[str]) -> None:
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    assert _tree(tmp_path) == before, "files appeared or vanished outside the output folder"


@pytest.mark.parametrize(("build", "expected"), CASES)
def test_dataset_step_refuses_malformed_export(tmp_path, capsys, build: Build, expected: list[str]):
    named, out, _, argv, before = _prepare(tmp_path, build)
    code = run_step(step.main, argv)
    _check(capsys.readouterr().err, named, expected)
    assert code != 0
    _nothing_left(tmp_path, out, before)


@pytest.mark.parametrize(("build", "expected"), SUBPROCESS_CASES)
def test_dataset_module_refuses_malformed_export(tmp_path, build: Build, expected: list[str]):
    named, out, _, argv, before = _prepare(tmp_path, build)
    done = subprocess.run([sys.executable, "-m", "cvat_argo.steps.dataset", *argv], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _check(done.stderr, named, expected)
    assert done.returncode != 0
    _nothing_left(tmp_path, out, before)


# --- qc-report -------------------------------------------------------------------------------------


def _reviewed_export(root: Path) -> Path:
    shapes = '<box label="car" source="auto" occluded="0" xtl="1" ytl="1" xbr="9" ybr="9" z_order="0"/>'
    return cvat_export(root, image("a.jpg", shapes=shapes))


def test_qc_report_refuses_malformed_predictions(tmp_path, capsys):
    xml = _reviewed_export(tmp_path)
    predictions = tmp_path / "coco.json"
    predictions.write_text(json.dumps(coco_document([annotation(image_id="abc")])))
    out = tmp_path / "qc"
    before = _tree(tmp_path)
    code = run_step(qc.main, [str(xml.parent), "--predictions", str(predictions), "--out", str(out)])
    _check(capsys.readouterr().err, predictions, ["annotations[0].image_id 'abc' is not an image id"])
    assert code != 0
    _nothing_left(tmp_path, out, before)


def test_qc_report_refuses_a_file_as_out(tmp_path, capsys):
    xml = _reviewed_export(tmp_path)
    out = tmp_path / "taken"
    out.write_text("someone's notes\n")
    before = _tree(tmp_path)
    code = run_step(qc.main, [str(xml.parent), "--out", str(out)])
    _check(capsys.readouterr().err, out, ["is a file, not a folder"])
    assert code != 0
    assert out.read_text() == "someone's notes\n" and _tree(tmp_path) == before


# --- what CVAT and Datumaro write still reads ------------------------------------------------------


def test_coco_fields_as_cvat_writes_them_still_read(tmp_path):
    """The checks refuse only what no exporter writes: RLE counts as a list or a string, crowd regions,
    attributes of any JSON value, a group, a score, integral floats as ids and sizes, null attributes."""
    from cvat_argo.formats.coco import CocoReader

    rle = {"size": [10, 20], "counts": [0, 5, 195]}
    document = coco_document(
        [annotation(attributes={"occluded": True, "rotation": 12.5, "track_id": [1]}, group=3, score=0.25,
                    segmentation=[[1, 1, 9, 1, 5, 8]]),
         annotation(id=2, iscrowd=1, segmentation=rle),
         annotation(id=3, iscrowd=True, segmentation={"size": [10, 20], "counts": "0`0"}, attributes=None),
         annotation(id=4, image_id=2.0, bbox=[0, 0, 0, 0])],
        [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10},
         {"id": 2.0, "file_name": "b/c.jpg", "width": 20.0, "height": 10}])
    path = coco_export(tmp_path, document)
    records = list(CocoReader([path]).images())
    assert [(r.frame, r.name, r.width, r.height) for r in records] == [(1, "a.jpg", 20, 10), (2, "b/c.jpg", 20, 10)]
    first = records[0].shapes[0]
    assert first.kind == "polygon" and first.rotation == 12.5 and first.occluded and first.group_id == 3
    assert first.score == 0.25 and first.box == (1.0, 1.0, 6.0, 6.0)
    assert [s.attributes.get("is_crowd") for s in records[0].shapes] == [None, "true", "true"]
    assert records[1].shapes[0].box == (0.0, 0.0, 0.0, 0.0)
