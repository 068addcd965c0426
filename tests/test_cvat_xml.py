"""CVAT for images/video 1.1 XML: shape extents, tracks, hostile files, and interop with Datumaro.

The samples in tests/data/cvat/ follow what CVAT's own dumper writes (cvat/apps/dataset_manager/
formats/cvat.py): coordinates as "{:.2f}", masks as "3, 2, 4" run lengths, skeleton sub-labels
with a <parent>, project images with subset/task_id.
"""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import pytest

from cvat_argo.errors import DatasetError
from cvat_argo.formats.annotations import ImageRecord, LabelSpec, Shape, TaskMeta
from cvat_argo.formats.cvat_xml.reader import REFUSED_DECLARATIONS, CvatXmlReader
from cvat_argo.formats.cvat_xml.writer import write_cvat_xml
from cvat_argo.formats.geometry import (
    box_area,
    clip_box,
    ellipse_extent,
    mask_extent,
    points_extent,
    rotated_box_extent,
)

DATA = Path(__file__).parent / "data" / "cvat"
HEAD = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><name>t</name><size>1</size><mode>annotation</mode>
    <labels><label><name>car</name><attributes/></label></labels></task></meta>
"""


def write(tmp_path: Path, body: str, head: str = HEAD) -> Path:
    path = tmp_path / "annotations.xml"
    path.write_text(head + body + "\n</annotations>\n", encoding="utf-8")
    return path


def read_all(path: Path) -> list[ImageRecord]:
    return list(CvatXmlReader(path).images())


def approx_box(box, abs=1e-6):
    return pytest.approx(box, abs=abs)


# --- geometry ------------------------------------------------------------------------------------


def turned_corners_extent(xtl, ytl, xbr, ybr, degrees):
    """Independent expectation: turn the four corners clockwise on screen (y down) and bound them."""
    cx, cy = (xtl + xbr) / 2, (ytl + ybr) / 2
    theta = math.radians(degrees)
    xs, ys = [], []
    for x, y in ((xtl, ytl), (xbr, ytl), (xbr, ybr), (xtl, ybr)):
        dx, dy = x - cx, y - cy
        xs.append(cx + dx * math.cos(theta) - dy * math.sin(theta))
        ys.append(cy + dx * math.sin(theta) + dy * math.cos(theta))
    return (min(xs), min(ys), max(xs), max(ys))


@pytest.mark.parametrize("degrees", [30, -30, 45, 120, 200, 359.5])
def test_rotated_box_extent_matches_turned_corners(degrees):
    assert rotated_box_extent(100, 100, 200, 140, degrees) == approx_box(
        turned_corners_extent(100, 100, 200, 140, degrees)
    )


def test_rotated_box_extent_at_30_degrees_by_hand():
    # Centre (150, 120), 100 x 40: half extents (100 cos30 + 40 sin30) / 2 and (100 sin30 + 40 cos30) / 2.
    half_w = (100 * math.sqrt(3) / 2 + 40 * 0.5) / 2
    half_h = (100 * 0.5 + 40 * math.sqrt(3) / 2) / 2
    assert rotated_box_extent(100, 100, 200, 140, 30) == approx_box(
        (150 - half_w, 120 - half_h, 150 + half_w, 120 + half_h)
    )


def test_quarter_turns_are_exact():
    assert rotated_box_extent(0, 0, 10, 4, 0) == (0, 0, 10, 4)
    assert rotated_box_extent(0, 0, 10, 4, 180) == (0, 0, 10, 4)
    assert rotated_box_extent(0, 0, 10, 4, 90) == (3.0, -3.0, 7.0, 7.0)
    assert rotated_box_extent(0, 0, 10, 4, -270) == (3.0, -3.0, 7.0, 7.0)


@pytest.mark.parametrize("degrees", [0, 30, 90, 135])
def test_ellipse_extent_is_tight(degrees):
    cx, cy, rx, ry = 50.0, 40.0, 30.0, 10.0
    theta = math.radians(degrees)
    samples = [
        (cx + rx * math.cos(t) * math.cos(theta) - ry * math.sin(t) * math.sin(theta),
         cy + rx * math.cos(t) * math.sin(theta) + ry * math.sin(t) * math.cos(theta))
        for t in (2 * math.pi * i / 20000 for i in range(20000))
    ]
    expected = (min(x for x, _ in samples), min(y for _, y in samples),
                max(x for x, _ in samples), max(y for _, y in samples))
    assert ellipse_extent(cx, cy, rx, ry, degrees) == approx_box(expected, abs=1e-3)


def test_points_extent():
    assert points_extent([5, 25, 15, 5, 10, 10]) == (5, 5, 15, 25)
    with pytest.raises(ValueError):
        points_extent([1, 2, 3])


def test_mask_extent_single_row_and_wrapping_runs():
    # 4 x 3 region at (10, 20): skip 5, set 2 -> row 1, columns 1..2.
    assert mask_extent([5, 2, 5], 10, 20, 4, 3) == (11.0, 21.0, 13.0, 22.0)
    # 5 wide: set (0,3),(0,4); then (1,4),(2,0),(2,1) -- the second run wraps to the next row.
    assert mask_extent([3, 2, 4, 3, 88], 10, 20, 5, 20) == (10.0, 20.0, 15.0, 23.0)
    # A mask may start with its set pixels (a 0-long run of 0s) and omit trailing zeros.
    assert mask_extent([0, 1], 0, 0, 3, 3) == (0.0, 0.0, 1.0, 1.0)


def test_mask_extent_empty_and_invalid():
    assert mask_extent([12], 0, 0, 4, 3) is None
    assert mask_extent([5, 0, 7], 0, 0, 4, 3) is None
    with pytest.raises(ValueError, match="more than its 4x3 region"):
        mask_extent([10, 5], 0, 0, 4, 3)
    with pytest.raises(ValueError, match="negative"):
        mask_extent([1, -1], 0, 0, 4, 3)


def test_clip_box_and_area():
    assert clip_box((-5, -5, 50, 20), 40, 30) == (0, 0, 40, 20)
    assert clip_box((50, 50, 60, 60), 40, 30) == (40, 30, 40, 30)
    assert box_area((0, 0, 40, 20)) == 800
    assert box_area((10, 10, 5, 20)) == 0


# --- CVAT for images -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def street() -> tuple[CvatXmlReader, list[ImageRecord]]:
    reader = CvatXmlReader(DATA / "images_all_shapes.xml")
    return reader, list(reader.images())


def test_images_meta(street):
    reader, _ = street
    meta = reader.meta
    assert reader.format == "images"
    assert meta.name == "street scenes" and meta.size == 3 and meta.mode == "annotation"
    assert (meta.start_frame, meta.stop_frame, meta.original_size) == (0, 2, None)
    # Skeleton points (labels with a <parent>) are parts of "dog", not classes of their own.
    assert meta.label_names == ("car", "person", "road", "crate", "dog", "daytime")
    assert meta.labels[0] == LabelSpec("car", "#fa3253", "rectangle", ("color", "score"))


def test_images_are_listed_in_order_with_empty_ones(street):
    _, images = street
    assert [(i.frame, i.name, i.width, i.height) for i in images] == [
        (0, "street/a.jpg", 640, 480), (1, "street/b.jpg", 800, 600), (2, "street/c.jpg", 800, 600)]
    assert images[1].shapes == () and images[1].tags == ()


def test_every_shape_kind_has_its_extent(street):
    _, images = street
    by_kind = [(shape.kind, shape.label, shape.box) for shape in images[0].shapes]
    expected = [
        ("box", "car", (10, 20, 110, 70)),
        ("box", "car", turned_corners_extent(100, 100, 200, 140, 30)),
        ("polygon", "person", (10, 10, 50, 60)),
        ("polyline", "person", (5, 5, 15, 25)),
        ("points", "person", (1, 0.5, 5, 4)),
        ("ellipse", "person", (280, 160, 320, 240)),  # rx 40, ry 20 turned 90 degrees
        ("ellipse", "person", (370, 290, 430, 310)),
        ("mask", "road", (10, 20, 15, 23)),
        ("cuboid", "crate", (20, 15, 90, 80)),
        ("skeleton", "dog", (50, 40, 70, 60)),  # the tail point is outside: not part of the extent
        ("box", "ghost", (1, 2, 3, 4)),  # a label not in the meta is returned; the dataset stage decides
    ]
    assert [(kind, label) for kind, label, _ in by_kind] == [(kind, label) for kind, label, _ in expected]
    for (_, _, box), (_, _, want) in zip(by_kind, expected, strict=True):
        assert box == approx_box(want)


def test_shape_details_are_kept(street):
    _, images = street
    box, rotated, polygon, *_rest = images[0].shapes
    assert (box.source, box.occluded, box.z_order, box.group_id, box.rotation) == ("manual", False, 1, 3, 0.0)
    assert box.attributes == {"color": "red"} and box.score is None
    assert (rotated.source, rotated.occluded, rotated.group_id, rotated.rotation) == ("auto", True, None, 30.0)
    assert rotated.attributes == {"color": "blue", "score": "0.87"} and rotated.score == 0.87
    assert polygon.source == "semi-auto" and polygon.polygon == (10, 10, 50, 10, 30, 60)
    mask = next(shape for shape in images[0].shapes if shape.kind == "mask")
    assert mask.mask == (10, 20, 5, 20, (3, 2, 4, 3, 88))
    ellipse = next(shape for shape in images[0].shapes if shape.kind == "ellipse")
    assert ellipse.rotation == 90.0
    skeleton = next(shape for shape in images[0].shapes if shape.kind == "skeleton")
    assert skeleton.attributes == {"pose": "sitting"}
    assert images[0].tags == ("daytime",)


def test_project_export(tmp_path):
    reader = CvatXmlReader(DATA / "project_images.xml")
    assert reader.format == "images"
    assert reader.meta.name == "fleet" and reader.meta.label_names == ("truck", "bus")
    assert reader.meta.size == 3  # the tasks' sizes together
    images = list(reader.images())
    # Frame numbers restart per subset in a project export, so the same id is not a duplicate.
    assert [(i.frame, i.name, i.width) for i in images] == [
        (0, "depot/1.jpg", 640), (1, "depot/2.jpg", 640), (0, "depot/1.jpg", 320)]
    assert [s.label for i in images for s in i.shapes] == ["truck", "bus"]


def test_job_export_meta(tmp_path):
    head = HEAD.replace("<task>", "<job><id>4</id>").replace("</task>", "</job>")
    path = write(tmp_path, '<image id="5" name="x.png" width="10" height="10"/>', head)
    reader = CvatXmlReader(path)
    assert reader.meta.label_names == ("car",)
    assert [i.frame for i in reader.images()] == [5]


def test_reading_is_streamed_in_flat_memory(tmp_path):
    image = ('<image id="{0}" name="img/{0:06d}.jpg" width="640" height="480"><box label="car" source="manual"'
             ' occluded="0" xtl="1.00" ytl="2.00" xbr="30.00" ybr="40.00" z_order="0">'
             '<attribute name="color">red</attribute></box></image>\n')
    path = write(tmp_path, "".join(image.format(i) for i in range(3000)))
    tracemalloc.start()
    try:
        count = sum(1 for _ in CvatXmlReader(path).images())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 3000
    assert peak < 4 * 2**20  # keeping the parsed tree would take about 10 MiB


# --- CVAT for video ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video() -> tuple[CvatXmlReader, list[ImageRecord]]:
    reader = CvatXmlReader(DATA / "video_tracks.xml")
    return reader, list(reader.images())


def shapes_of(frame: ImageRecord, label: str) -> list[Shape]:
    return [shape for shape in frame.shapes if shape.label == label]


def test_video_frames_cover_the_task(video):
    reader, frames = video
    assert reader.format == "video"
    assert reader.meta.original_size == (1280, 720) and reader.meta.mode == "interpolation"
    assert [f.frame for f in frames] == list(range(10))
    assert [f.name for f in frames][:3] == ["frame_000000", "frame_000001", "frame_000002"]
    assert {(f.width, f.height) for f in frames} == {(1280, 720)}


def test_video_box_is_interpolated_between_keyframes(video):
    _, frames = video
    car_track = [shapes_of(frames[i], "car")[0] for i in range(0, 6)]
    assert [s.box for s in car_track] == [
        (0, 0, 10, 10), (10, 5, 20, 15), (20, 10, 30, 20), (30, 15, 40, 25), (40, 20, 50, 30),
        (40, 20, 50, 30),  # frame 5: moving towards the (identical) outside keyframe at 6
    ]
    assert car_track[2].occluded is False and car_track[2].attributes == {"parked": "false"}
    assert car_track[4].occluded is True and car_track[4].attributes == {"parked": "true"}
    assert {s.source for s in car_track} == {"manual"}


def test_video_nothing_after_outside_and_continuation_to_stop(video):
    _, frames = video
    first_car = [[s.box for s in shapes_of(f, "car") if s.source == "manual"] for f in frames]
    assert first_car[6] == [] and first_car[7] == []  # outside at 6, next listed frame is 8
    assert first_car[8] == first_car[9] == [(100, 100, 110, 110)]  # continues to the stop frame


def test_video_polygons_interpolate_only_with_equal_point_counts(video):
    _, frames = video
    person = [shapes_of(f, "person") for f in frames]
    assert person[0] == []
    assert person[2][0].polygon == (5, 5, 15, 5, 15, 15) and person[2][0].box == (5, 5, 15, 15)
    assert person[2][0].group_id == 2 and person[2][0].source == "auto" and person[2][0].z_order == 1
    assert person[4][0].polygon == person[3][0].polygon  # 3 points then 4: the earlier shape repeats
    assert len(person[6][0].polygon) == 8
    assert person[7] == person[8] == person[9] == []


def test_video_rotation_takes_the_shorter_turn(video):
    _, frames = video
    turning = [s for s in shapes_of(frames[1], "car") if s.source == "semi-auto"]
    assert turning[0].rotation == pytest.approx(0.0)  # 350 -> 10 passes through 0, not 180
    assert turning[0].box == approx_box((200, 200, 300, 220))
    assert [s for f in frames[3:] for s in shapes_of(f, "car") if s.source == "semi-auto"] == []


VIDEO_TASK_META = """<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version><meta><task><size>4</size><mode>interpolation</mode>
<start_frame>100</start_frame><stop_frame>115</stop_frame><frame_filter>step=5</frame_filter>
<labels><label><name>car</name></label></labels>
<original_size><width>64</width><height>48</height></original_size></task></meta>
"""
# A job export puts <original_size> beside <job>, not inside it (JobData._init_meta).
VIDEO_JOB_META = """<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version><meta><job><id>9</id><size>4</size><mode>interpolation</mode>
<start_frame>100</start_frame><stop_frame>115</stop_frame><frame_filter>step=5</frame_filter>
<labels><label><name>car</name></label></labels></job>
<dumped>2024-05-02</dumped><original_size><width>64</width><height>48</height></original_size></meta>
"""


@pytest.mark.parametrize("head", [VIDEO_TASK_META, VIDEO_JOB_META], ids=["task", "job"])
def test_video_frame_step_and_start(tmp_path, head):
    body = """<track id="0" label="car" source="manual">
  <box frame="100" keyframe="1" outside="0" occluded="0" xtl="0" ytl="0" xbr="10" ybr="10" z_order="0"/>
  <box frame="110" keyframe="1" outside="0" occluded="0" xtl="20" ytl="0" xbr="30" ybr="10" z_order="0"/>
</track>"""
    frames = read_all(write(tmp_path, body, head))
    assert [(f.frame, f.name) for f in frames] == [
        (100, "frame_000100"), (105, "frame_000105"), (110, "frame_000110"), (115, "frame_000115")]
    assert [f.shapes[0].box for f in frames] == [(0, 0, 10, 10), (10, 0, 20, 10), (20, 0, 30, 10), (20, 0, 30, 10)]


# --- refused and broken files --------------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<annotations><meta><task><name>&lol9;</name></task></meta></annotations>
"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE annotations [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<annotations><meta><task><name>&secret;</name></task></meta></annotations>
"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"])
def test_doctype_and_entities_are_refused(tmp_path, text):
    path = tmp_path / "annotations.xml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError) as error:
        CvatXmlReader(path)
    assert str(error.value) == f"{path}: {REFUSED_DECLARATIONS}"
    assert "DOCTYPE/entity declarations are refused (possible XML bomb or external fetch)" in str(error.value)


def test_malformed_xml_names_line_and_column(tmp_path):
    path = write(tmp_path, '<image id="0" name="a.jpg" width="10" height="10">\n<box label="car"\n</image>')
    with pytest.raises(DatasetError, match=r"annotations\.xml: malformed XML at line 8, column 1: not well-formed"):
        read_all(path)


def test_malformed_meta_fails_on_open(tmp_path):
    path = tmp_path / "annotations.xml"
    path.write_text("<annotations><meta><task></meta></annotations>", encoding="utf-8")
    with pytest.raises(DatasetError, match="malformed XML at line 1, column 28: mismatched tag"):
        CvatXmlReader(path)


def test_missing_width_is_refused_with_image_and_line(tmp_path):
    path = write(tmp_path, '<image id="0" name="a.jpg" width="10" height="10"/>\n<image id="1" name="b.jpg" height="10"/>')
    with pytest.raises(DatasetError, match=r"annotations\.xml: image 'b\.jpg' \(id 1\), line 7: <image> has no width"):
        read_all(path)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ('<image id="0" name="a.jpg" width="1" height="1"/>\n<image id="1" name="a.jpg" width="1" height="1"/>',
         r"image 'a\.jpg' \(id 1\), line 7: duplicate image name 'a\.jpg': <image> id 0 at line 6 has it too"),
        ('<image id="3" name="a.jpg" width="1" height="1"/>\n<image id="3" name="b.jpg" width="1" height="1"/>',
         r"image 'b\.jpg' \(id 3\), line 7: duplicate image id 3: <image> 'a\.jpg' at line 6 has it too"),
        # One line holds both elements: they are told apart by position, not by line.
        ('<image id="0" name="a.jpg" width="1" height="1"/><image id="1" name="a.jpg" width="1" height="1"/>',
         r"image 'a\.jpg' \(id 1\), line 6: duplicate image name 'a\.jpg': <image> id 0 at line 6 has it too"),
        ('<image id="0" name="a.jpg" subset="Train" width="1" height="1"/>\n'
         '<image id="1" name="a.jpg" subset="Train" width="1" height="1"/>',
         r"duplicate image name 'a\.jpg' in subset 'Train': <image> id 0 at line 6 has it too"),
    ],
    ids=["name", "id", "one-line", "same-subset"],
)
def test_duplicate_images_are_refused(tmp_path, images, message):
    with pytest.raises(DatasetError, match=message):
        read_all(write(tmp_path, images))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ('<box label="car" xtl="1" ytl="two" xbr="3" ybr="4"/>', "<box> ytl='two' is not a number"),
        ('<box label="car" xtl="1" ytl="nan" xbr="3" ybr="4"/>', "<box> ytl='nan' is not a number"),
        ('<box label="car" xtl="1" ytl="2" xbr="3"/>', "<box> has no ybr"),
        ('<polygon label="car" points="1,2;3"/>', "<polygon> points '3' is not an 'x,y' pair of numbers"),
        ('<mask label="car" rle="1, x" left="0" top="0" width="2" height="2"/>', "<mask> rle is not valid"),
        ('<circle label="car" r="3"/>', "unknown shape element <circle>"),
        ('<box xtl="1" ytl="2" xbr="3" ybr="4"/>', "<box> has no label"),
    ],
    ids=["non-numeric", "nan", "missing-coordinate", "odd-points", "bad-rle", "unknown-element", "no-label"],
)
def test_bad_shapes_are_refused_with_image_and_line(tmp_path, shape, message):
    path = write(tmp_path, f'<image id="0" name="a.jpg" width="10" height="10">\n  {shape}\n</image>')
    with pytest.raises(DatasetError) as error:
        read_all(path)
    assert str(error.value).startswith(f"{path}: image 'a.jpg' (id 0), line 7: ")
    assert message in str(error.value)


def test_root_must_be_annotations(tmp_path):
    path = tmp_path / "annotations.xml"
    path.write_text('<?xml version="1.0"?>\n<dataset><image/></dataset>', encoding="utf-8")
    with pytest.raises(DatasetError, match="line 2: the root element is <dataset>, expected <annotations>"):
        CvatXmlReader(path)


def test_bad_track_names_track_and_frame(tmp_path):
    head = HEAD.replace("</task>", "<original_size><width>8</width><height>8</height></original_size></task>")
    path = write(tmp_path, '<track id="4" label="car">\n<box frame="2" xtl="a" ytl="0" xbr="1" ybr="1"/>\n</track>', head)
    with pytest.raises(DatasetError, match=r"track 4 \(label 'car'\), frame 2, line 7: <box> xtl='a' is not a number"):
        read_all(path)


def test_images_and_tracks_are_not_mixed(tmp_path):
    body = '<image id="0" name="a.jpg" width="1" height="1"/>\n<track id="0" label="car"/>'
    with pytest.raises(DatasetError, match=r"line 7: <track> in a file of <image> elements"):
        read_all(write(tmp_path, body))


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="cannot read the annotations file"):
        CvatXmlReader(tmp_path / "nope.xml")


# --- writer --------------------------------------------------------------------------------------

META = TaskMeta(
    labels=(LabelSpec("car", "#fa3253", "rectangle", ("score",)), LabelSpec("person", None, None, ("color",))),
    name="pre-annotations",
    size=2,
)
RECORDS = [
    ImageRecord(0, "a.jpg", 64, 48, (
        Shape("car", "box", (1.234, 2.5, 30.0, 40.006), score=0.934, source="auto", z_order=1, group_id=2),
        Shape("person", "polygon", (1, 1, 5, 9), polygon=(1, 1, 5, 1, 3, 9), score=0.5,
              attributes={"color": "red", "undeclared": "x"}),
        Shape("person", "box", (3, 3, 9, 9), score=0.7, occluded=True),
    )),
    ImageRecord(1, "sub/b.jpg", 32, 24, tags=("car",)),
]


def test_writer_round_trip(tmp_path):
    path = tmp_path / "annotations.xml"
    assert write_cvat_xml(path, META, RECORDS) == 2
    reader = CvatXmlReader(path)
    assert reader.format == "images"
    assert reader.meta.label_names == ("car", "person") and reader.meta.name == "pre-annotations"
    images = list(reader.images())
    assert [(i.frame, i.name, i.width, i.height, i.tags) for i in images] == [
        (0, "a.jpg", 64, 48, ()), (1, "sub/b.jpg", 32, 24, ("car",))]
    for got, sent in zip(images[0].shapes, RECORDS[0].shapes, strict=True):
        assert (got.label, got.kind, got.source, got.occluded, got.z_order, got.group_id) == (
            sent.label, sent.kind, sent.source, sent.occluded, sent.z_order, sent.group_id)
        assert got.box == approx_box(sent.box, abs=0.01)
    car, person, person_box = images[0].shapes
    assert car.score == 0.93 and car.attributes == {"score": "0.93"}
    assert person.polygon == (1, 1, 5, 1, 3, 9)
    assert person.attributes == {"color": "red"}  # undeclared attributes and unasked-for scores are left out
    assert person_box.score is None
    text = path.read_text(encoding="utf-8")
    assert '<attribute name="score">0.93</attribute>' in text
    assert '<box label="car" source="auto" occluded="0" xtl="1.23" ytl="2.50" xbr="30.00" ybr="40.01" z_order="1" group_id="2">' in text
    assert not (tmp_path / "annotations.xml.partial").exists()


def test_writer_refuses_rotated_boxes_and_leaves_no_file(tmp_path):
    path = tmp_path / "annotations.xml"
    rotated = ImageRecord(0, "a.jpg", 10, 10, (Shape("car", "box", (0, 0, 5, 5), rotation=30),))
    with pytest.raises(ValueError, match="cannot write a box"):
        write_cvat_xml(path, META, [rotated])
    assert list(tmp_path.iterdir()) == []


# --- Datumaro interop ----------------------------------------------------------------------------


def test_datumaro_reads_what_we_write(tmp_path):
    dm = pytest.importorskip("datumaro")
    from PIL import Image as PilImage

    write_cvat_xml(tmp_path / "annotations.xml", META, RECORDS)
    for record in RECORDS:  # Datumaro's CVAT importer insists on finding each image
        (tmp_path / "images" / record.name).parent.mkdir(parents=True, exist_ok=True)
        PilImage.new("RGB", (record.width, record.height)).save(tmp_path / "images" / record.name)
    dataset = dm.Dataset.import_from(str(tmp_path), "cvat")
    labels = dataset.categories()[dm.AnnotationType.label]
    items = {item.id: item for item in dataset}
    assert set(items) == {"a", "sub/b"}
    boxes = [(labels[ann.label].name, ann.get_bbox()) for ann in items["a"].annotations
             if ann.type == dm.AnnotationType.bbox]
    expected = [(s.label, (s.box[0], s.box[1], s.box[2] - s.box[0], s.box[3] - s.box[1]))
                for s in RECORDS[0].shapes if s.kind == "box"]
    assert [name for name, _ in boxes] == [name for name, _ in expected]
    for (_, got), (_, want) in zip(boxes, expected, strict=True):
        assert got == pytest.approx(want, abs=0.01)
    car = next(ann for ann in items["a"].annotations if ann.type == dm.AnnotationType.bbox)
    assert car.attributes["score"] == pytest.approx(0.93)  # declared as a number attribute
    polygon = next(ann for ann in items["a"].annotations if ann.type == dm.AnnotationType.polygon)
    assert polygon.points == pytest.approx([1, 1, 5, 1, 3, 9])
    assert [labels[ann.label].name for ann in items["sub/b"].annotations] == ["car"]


def test_we_read_what_datumaro_writes(tmp_path):
    dm = pytest.importorskip("datumaro")
    import numpy as np
    from datumaro.components.annotation import Bbox, LabelCategories, Mask, Polygon, RotatedBbox
    from datumaro.components.media import Image

    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[5:9, 10:13] = 1
    dataset = dm.Dataset.from_iterable(
        [
            dm.DatasetItem(id="cam/img1", media=Image.from_numpy(np.zeros((40, 60, 3), np.uint8)), annotations=[
                Bbox(1.5, 2.25, 10, 20, label=0, group=4, z_order=2, attributes={"occluded": True}),
                Polygon([1, 1, 20, 1, 10, 15], label=1),
                Mask(mask, label=1),
                RotatedBbox(30, 20, 10, 4, 30, label=0),
            ]),
            dm.DatasetItem(id="img2", media=Image.from_numpy(np.zeros((30, 50, 3), np.uint8))),
        ],
        categories={dm.AnnotationType.label: LabelCategories.from_iterable(["car", "person"])},
    )
    dataset.export(str(tmp_path), "cvat", save_media=True)
    reader = CvatXmlReader(tmp_path / "default.xml")
    assert reader.format == "images" and reader.meta.label_names == ("car", "person")
    images = list(reader.images())
    assert [(i.name, i.width, i.height) for i in images] == [("cam/img1.jpg", 60, 40), ("img2.jpg", 50, 30)]
    box, polygon, mask_shape, rotated = images[0].shapes
    assert (box.label, box.box, box.occluded, box.group_id, box.z_order) == ("car", (1.5, 2.25, 11.5, 22.25), True, 4, 2)
    assert box.source == "manual"  # Datumaro writes no source
    assert (polygon.label, polygon.box) == ("person", (1, 1, 20, 15))
    assert mask_shape.box == (10, 5, 13, 9)  # Datumaro writes a whole-image mask; same row-major RLE
    assert rotated.rotation == 30 and rotated.box == approx_box(turned_corners_extent(25, 18, 35, 22, 30))
    assert images[1].shapes == ()
