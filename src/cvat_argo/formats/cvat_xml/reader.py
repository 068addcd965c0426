"""Read "CVAT for images 1.1" and "CVAT for video 1.1" annotations.xml, one image at a time.

Why streaming: a task export can list 20,000 images, and the dataset stage must not hold them all.
The reader walks the file with ``iterparse`` and hands out one :class:`ImageRecord` per ``<image>``,
clearing each element once read, so memory stays flat. Video exports list ``<track>`` elements
instead; those are small, so they are read whole and turned into per-frame records the way CVAT
shows them (interpolated between listed frames, hidden after an ``outside`` frame).

Why defused: annotation files come from users and CVAT servers we do not control. A DOCTYPE can
declare entities that expand to gigabytes ("billion laughs") or fetch URLs, and CVAT never writes
one, so any DOCTYPE or entity declaration is refused outright.

Errors are :class:`DatasetError` and name the file, the image or track, and the line.
"""

from __future__ import annotations

import heapq
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser, iterparse

from ...errors import DatasetError
from ..annotations import Box, ImageRecord, LabelSpec, Shape, TaskMeta
from ..geometry import ellipse_extent, mask_extent, points_extent, rotated_box_extent
from .common import SCORE_ATTRIBUTE

REFUSED_DECLARATIONS = "DOCTYPE/entity declarations are refused (possible XML bomb or external fetch)"

# Shape elements as CVAT writes them (a rectangle is "box"); a skeleton holds point elements.
SHAPE_TAGS = ("box", "polygon", "polyline", "points", "ellipse", "mask", "cuboid", "skeleton")
_CUBOID_CORNERS = tuple(
    f"{axis}{corner}{face}" for face in "12" for corner in ("tl", "bl", "tr", "br") for axis in "xy"
)

CvatFormat = Literal["images", "video"]


# --- XML events with line numbers ----------------------------------------------------------------


class _Located(ET.Element):
    """An element that remembers the line of its start tag, so errors can point at it."""

    line: int = 0


def _events(path: Path) -> Iterator[tuple[str, _Located]]:
    """``(event, element)`` pairs of ``path``, with every XML failure turned into a DatasetError."""
    parsers: list[DefusedXMLParser] = []

    def make_element(tag: str, attrib: dict[str, str]) -> _Located:
        element = _Located(tag, attrib)
        element.line = parsers[0].parser.CurrentLineNumber
        return element

    parser = DefusedXMLParser(
        target=ET.TreeBuilder(element_factory=make_element),
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    parsers.append(parser)
    try:
        yield from iterparse(str(path), events=("start", "end"), parser=parser)
    except DefusedXmlException as exc:
        raise DatasetError(f"{path}: {REFUSED_DECLARATIONS}") from exc
    except ET.ParseError as exc:
        line, column = exc.position
        reason = re.sub(r": line \d+, column \d+$", "", str(exc))
        raise DatasetError(f"{path}: malformed XML at line {line}, column {column + 1}: {reason}") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the annotations file: {exc.strerror or exc}") from exc


def _top_level(path: Path) -> Iterator[tuple[str, _Located]]:
    """Start and end events of the root's children, checking the root is ``<annotations>``.

    An ``end`` event comes with the child's complete subtree; the child is detached from the root
    once the caller has used it, which is what keeps a 20,000-image file in flat memory.
    """
    depth = 0
    root: _Located | None = None
    for event, element in _events(path):
        if event == "start":
            depth += 1
            if depth == 1:
                root = element
                if element.tag != "annotations":
                    raise DatasetError(
                        f"{path}: line {element.line}: the root element is <{_clip(element.tag)}>, expected "
                        "<annotations>: not a CVAT for images/video 1.1 export"
                    )
            elif depth == 2:
                yield event, element
            continue
        depth -= 1
        if depth == 1 and root is not None:
            yield event, element
            element.clear()
            root.remove(element)


def _text(parent: ET.Element, child: str) -> str | None:
    found = parent.find(child)
    if found is None or found.text is None:
        return None
    return found.text.strip() or None


def _short(value: str | None, keep: int = 40) -> str:
    """A value from the file as messages quote it: its repr, cut short (a hostile name can be 5,000 characters)."""
    text = repr(value)
    return text if len(text) <= keep or value is None else f"{text[:keep]}... ({len(value)} characters)"


def _clip(value: str | None, keep: int = 40) -> str:
    """A tag or id as messages show it (unquoted), cut short."""
    text = str(value)
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text)} characters)"


# --- meta ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Head:
    """What the start of the file says: the task meta and which body follows."""

    meta: TaskMeta
    format: CvatFormat
    frame_step: int


def _read_head(path: Path) -> _Head:
    parsed: tuple[TaskMeta, int, bool] | None = None
    body: str | None = None
    events = _top_level(path)
    try:
        for event, element in events:
            if event == "start" and element.tag in ("image", "track"):
                body = element.tag
                break
            if event == "end" and element.tag == "meta":
                parsed = _parse_meta(path, element)  # now: _top_level clears it when we move on
    finally:
        events.close()
    if parsed is None:
        raise DatasetError(f"{path}: no <meta> before the first <image> or <track>: not a CVAT 1.1 export")
    meta, frame_step, is_project = parsed
    if body == "image" or (body is None and meta.original_size is None):
        return _Head(meta, "images", frame_step)
    if is_project:
        raise DatasetError(
            f"{path}: a project export in CVAT for video 1.1 is not supported (its frame numbers restart "
            "per subset): export the project as CVAT for images 1.1, or each task as CVAT for video 1.1"
        )
    return _Head(meta, "video", frame_step)


def _parse_meta(path: Path, meta: _Located) -> tuple[TaskMeta, int, bool]:
    container = next((found for tag in ("task", "job", "project") if (found := meta.find(tag)) is not None), None)
    if container is None:
        raise DatasetError(f"{path}: line {meta.line}: <meta> has no <task>, <job> or <project>")
    is_project = container.tag == "project"
    size = _meta_int(path, container, "size")
    if is_project:
        sizes = [_meta_int(path, task, "size") for task in container.iterfind("tasks/task")]
        size = sum(value for value in sizes if value is not None) if sizes else None
    task_meta = TaskMeta(
        labels=_parse_labels(path, container),
        name=_text(container, "name"),
        size=size,
        mode=_text(container, "mode"),
        start_frame=0 if is_project else _meta_int(path, container, "start_frame") or 0,
        stop_frame=None if is_project else _meta_int(path, container, "stop_frame"),
        original_size=_original_size(path, container if container.find("original_size") is not None else meta),
    )
    return task_meta, _frame_step(_text(container, "frame_filter")), is_project


def _parse_labels(path: Path, container: ET.Element) -> tuple[LabelSpec, ...]:
    """Top-level labels in task order; skeleton sub-labels (with a ``<parent>``) are parts, not classes."""
    labels = []
    for label in container.iterfind("labels/label"):
        name = _text(label, "name")
        if name is None:
            line = getattr(label, "line", "?")
            raise DatasetError(f"{path}: line {line}: a <label> in <meta> has no <name>")
        if _text(label, "parent") is not None:
            continue
        attributes = tuple(
            attribute_name
            for attribute in label.iterfind("attributes/attribute")
            if (attribute_name := _text(attribute, "name")) is not None
        )
        labels.append(LabelSpec(name, _text(label, "color"), _text(label, "type"), attributes))
    return tuple(labels)


def _meta_int(path: Path, parent: ET.Element, child: str) -> int | None:
    text = _text(parent, child)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        line = getattr(parent.find(child), "line", "?")
        raise DatasetError(f"{path}: line {line}: <{child}> is {_short(text)}, expected a whole number") from None


def _original_size(path: Path, parent: ET.Element) -> tuple[int, int] | None:
    found = parent.find("original_size")
    if found is None:
        return None
    width, height = _meta_int(path, found, "width"), _meta_int(path, found, "height")
    if width is None or height is None:
        return None
    return (width, height)


def _frame_step(frame_filter: str | None) -> int:
    """CVAT's ``<frame_filter>step=5</frame_filter>``: the task keeps every 5th video frame."""
    match = re.search(r"step\s*=\s*(\d+)", frame_filter or "")
    return max(1, int(match.group(1))) if match else 1


# --- shapes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    """Where in the file we are, for error messages: ``file: image 'a.jpg' (id 3), line 12: ...``."""

    path: Path
    where: str

    def error(self, element: ET.Element, message: str) -> DatasetError:
        line = getattr(element, "line", "?")
        return DatasetError(f"{self.path}: {self.where}, line {line}: {message}")

    def number(self, element: ET.Element, name: str, default: float | None = None) -> float:
        text = element.get(name)
        if text is None:
            if default is not None:
                return default
            raise self.error(element, f"<{element.tag}> has no {name}")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise self.error(element, f"<{element.tag}> {name}={_short(text)} is not a number")
        return value

    def integer(self, element: ET.Element, name: str, default: int | None = None) -> int:
        text = element.get(name)
        if text is None:
            if default is not None:
                return default
            raise self.error(element, f"<{element.tag}> has no {name}")
        try:
            return int(text.strip())
        except ValueError:
            raise self.error(element, f"<{element.tag}> {name}={_short(text)} is not a whole number") from None

    def points(self, element: ET.Element) -> tuple[float, ...]:
        text = element.get("points")
        if not text:
            raise self.error(element, f"<{element.tag}> has no points")
        flat: list[float] = []
        for pair in text.split(";"):
            xy = pair.split(",")
            try:
                values = [float(value) for value in xy]
            except ValueError:
                values = []
            if len(values) != 2 or not all(math.isfinite(value) for value in values):
                raise self.error(element, f"<{element.tag}> points {_short(pair)} is not an 'x,y' pair of numbers")
            flat.extend(values)
        return tuple(flat)


@dataclass(frozen=True)
class _Geometry:
    """A shape's outline: its extent, and the numbers interpolation moves (None: not interpolable)."""

    box: Box | None
    rotation: float = 0.0
    polygon: tuple[float, ...] | None = None
    mask: tuple[int, int, int, int, tuple[int, ...]] | None = None
    coords: tuple[float, ...] | None = None


def _outline(kind: str, coords: tuple[float, ...], rotation: float) -> _Geometry:
    """The geometry of a shape CVAT describes by numbers, so parsing and interpolation agree."""
    if kind == "box":
        return _Geometry(rotated_box_extent(*coords, rotation), rotation, coords=coords)
    if kind == "ellipse":
        return _Geometry(ellipse_extent(*coords, rotation), rotation, coords=coords)
    polygon = coords if kind == "polygon" else None
    return _Geometry(points_extent(coords), polygon=polygon, coords=coords)


def _parse_geometry(place: _Place, element: ET.Element) -> _Geometry:
    kind = element.tag
    if kind == "box":
        coords = tuple(place.number(element, name) for name in ("xtl", "ytl", "xbr", "ybr"))
        return _outline(kind, coords, place.number(element, "rotation", 0.0))
    if kind == "ellipse":
        coords = tuple(place.number(element, name) for name in ("cx", "cy", "rx", "ry"))
        return _outline(kind, coords, place.number(element, "rotation", 0.0))
    if kind in ("polygon", "polyline", "points"):
        return _outline(kind, place.points(element), 0.0)
    if kind == "cuboid":
        return _outline(kind, tuple(place.number(element, name) for name in _CUBOID_CORNERS), 0.0)
    if kind == "mask":
        return _parse_mask(place, element)
    if kind == "skeleton":
        return _parse_skeleton(place, element)
    raise place.error(element, f"unknown shape element <{_clip(kind)}> (expected one of {', '.join(SHAPE_TAGS)})")


def _parse_mask(place: _Place, element: ET.Element) -> _Geometry:
    left, top = place.integer(element, "left"), place.integer(element, "top")
    width, height = place.integer(element, "width"), place.integer(element, "height")
    text = element.get("rle")
    if text is None:
        raise place.error(element, "<mask> has no rle")
    try:
        counts = tuple(int(count) for count in text.split(","))  # CVAT writes "3, 5, 2"
        box = mask_extent(counts, left, top, width, height)
    except ValueError as exc:
        raise place.error(element, f"<mask> rle is not valid: {exc}") from None
    return _Geometry(box, mask=(left, top, width, height, counts))


def _parse_skeleton(place: _Place, element: ET.Element) -> _Geometry:
    """A skeleton's extent is that of its visible points; elements with ``outside="1"`` are hidden."""
    boxes = []
    for part in element:
        if part.tag == "attribute":
            continue
        if part.tag not in SHAPE_TAGS or part.tag == "skeleton":
            raise place.error(part, f"unknown skeleton element <{_clip(part.tag)}>")
        part_box = _parse_geometry(place, part).box
        if part.get("outside") != "1" and part_box is not None:
            boxes.append(part_box)
    if not boxes:
        return _Geometry(None)
    return _Geometry(points_extent([value for box in boxes for value in box]))


def _attributes(element: ET.Element, place: _Place) -> dict[str, str]:
    attributes = {}
    for child in element.iterfind("attribute"):
        name = child.get("name")
        if name is None:
            raise place.error(child, "<attribute> has no name")
        attributes[name] = (child.text or "").strip()
    return attributes


def _score(attributes: Mapping[str, str]) -> float | None:
    """A pre-annotation's confidence, kept in a ``score`` attribute (see :func:`write_cvat_xml`)."""
    try:
        value = float(attributes[SCORE_ATTRIBUTE])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _group(place: _Place, element: ET.Element) -> int | None:
    group = place.integer(element, "group_id", 0)
    return group or None


def _parse_shape(place: _Place, element: ET.Element, owner: ET.Element) -> tuple[Shape, _Geometry]:
    """One shape; ``owner`` carries label, source and group (the shape itself, or its track)."""
    geometry = _parse_geometry(place, element)
    attributes = _attributes(element, place)
    shape = Shape(
        label=owner.get("label") or "",
        kind=element.tag,
        box=geometry.box,
        polygon=geometry.polygon,
        mask=geometry.mask,
        rotation=geometry.rotation,
        occluded=element.get("occluded") == "1",
        z_order=place.integer(element, "z_order", 0),
        group_id=_group(place, owner),
        source=owner.get("source") or "manual",
        attributes=attributes,
        score=_score(attributes),
    )
    if not shape.label:
        raise place.error(element, f"<{element.tag}> has no label")
    return shape, geometry


# --- CVAT for images -----------------------------------------------------------------------------


class _ImageChecker:
    """Builds ImageRecords from ``<image>`` elements and refuses repeated ids or names.

    Project exports number frames per subset, and CVAT keeps names unique per subset (it stores each
    subset's images under ``images/<subset>/``), so ids and names only need to be unique per subset.
    Elements are told apart by their position in the file, not their line: a file written on one line
    holds every ``<image>`` on line 1.
    """

    def __init__(self, path: Path):
        self._path = path
        self._count = 0
        self._ids: dict[tuple[str | None, int], tuple[int, int, str]] = {}  # -> (position, line, name)
        self._names: dict[tuple[str | None, str], tuple[int, int, int]] = {}  # -> (position, line, id)

    def record(self, element: _Located) -> ImageRecord:
        name = element.get("name") or ""
        place = _Place(self._path, f"image {_short(name)} (id {_clip(element.get('id'))})")
        if not name:
            raise place.error(element, "<image> has no name")
        frame = place.integer(element, "id")
        width, height = place.integer(element, "width"), place.integer(element, "height")
        if width <= 0 or height <= 0:
            raise place.error(element, f"<image> size {width}x{height} is not positive")
        self._check_unique(place, element, frame, name)
        shapes, tags = [], []
        for child in element:
            if child.tag == "tag":
                if not child.get("label"):
                    raise place.error(child, "<tag> has no label")
                tags.append(child.get("label") or "")
            else:
                shapes.append(_parse_shape(place, child, child)[0])
        return ImageRecord(frame, name, width, height, tuple(shapes), tuple(tags))

    def _check_unique(self, place: _Place, element: _Located, frame: int, name: str) -> None:
        subset = element.get("subset")
        self._count += 1
        position = self._count
        in_subset = f" in subset {_short(subset)}" if subset is not None else ""
        first_id = self._ids.setdefault((subset, frame), (position, element.line, name))
        if first_id[0] != position:
            raise place.error(element, f"duplicate image id {frame}{in_subset}: <image> {_short(first_id[2])} at "
                                        f"line {first_id[1]} has it too")
        first_name = self._names.setdefault((subset, name), (position, element.line, frame))
        if first_name[0] != position:
            raise place.error(element, f"duplicate image name {_short(name)}{in_subset}: <image> id {first_name[2]} "
                                        f"at line {first_name[1]} has it too")


# --- CVAT for video ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Listed:
    """One shape a track lists at one frame."""

    frame: int
    outside: bool
    shape: Shape
    geometry: _Geometry


def _parse_track(path: Path, element: _Located) -> list[_Listed]:
    track_place = _Place(path, f"track {_clip(element.get('id'))} (label {_short(element.get('label'))})")
    listed: dict[int, _Listed] = {}
    for child in element:
        if child.tag not in SHAPE_TAGS:
            raise track_place.error(child, f"unknown shape element <{_clip(child.tag)}> in a <track>")
        frame = track_place.integer(child, "frame")
        place = _Place(path, f"{track_place.where}, frame {frame}")
        if frame in listed:
            raise place.error(child, f"track lists frame {frame} twice")
        shape, geometry = _parse_shape(place, child, element)
        listed[frame] = _Listed(frame, child.get("outside") == "1", shape, geometry)
    return [listed[frame] for frame in sorted(listed)]


def _shortest_turn(start: float, end: float) -> float:
    return (end - start + 180.0) % 360.0 - 180.0


def _interpolate(first: _Listed, second: _Listed, frame: int) -> Shape:
    """``first``'s shape moved towards ``second`` for a frame between them, as CVAT does.

    Boxes, ellipses and cuboids move linearly (rotation along the shorter turn); polygons,
    polylines and points only when both list as many points. Anything else repeats ``first``.
    """
    a, b = first.geometry.coords, second.geometry.coords
    if a is None or b is None or len(a) != len(b) or first.shape.kind != second.shape.kind:
        return first.shape
    t = (frame - first.frame) / (second.frame - first.frame)
    coords = tuple(start + (end - start) * t for start, end in zip(a, b, strict=True))
    rotation = (first.geometry.rotation + _shortest_turn(first.geometry.rotation, second.geometry.rotation) * t) % 360
    geometry = _outline(first.shape.kind, coords, rotation)
    return replace(first.shape, box=geometry.box, polygon=geometry.polygon, rotation=geometry.rotation)


def _frames_between(frames: range, after: int, before: int) -> range:
    """The task frames strictly between ``after`` and ``before``."""
    first = frames.start + max(0, (after - frames.start) // frames.step + 1) * frames.step
    return range(first, min(before, frames.stop), frames.step)


def _track_shapes(listed: list[_Listed], frames: range) -> Iterator[tuple[int, Shape]]:
    """``(frame, shape)`` for every frame a track is visible on, in frame order."""
    for index, current in enumerate(listed):
        if current.outside:
            continue  # hidden from here until the next listed frame
        following = listed[index + 1] if index + 1 < len(listed) else None
        if current.frame in frames:
            yield current.frame, current.shape
        end = following.frame if following is not None else frames.stop
        for frame in _frames_between(frames, current.frame, end):
            yield frame, current.shape if following is None else _interpolate(current, following, frame)


# --- the reader ----------------------------------------------------------------------------------


class CvatXmlReader:
    """A CVAT for images/video 1.1 ``annotations.xml``: its meta, and its images one at a time.

    Opening reads only the ``<meta>`` (and peeks at the first body element to tell images from
    video); :meth:`images` reads the file again from the start each time it is called.
    """

    def __init__(self, path: Path):
        self._path = Path(path)
        self._head = _read_head(self._path)

    @property
    def meta(self) -> TaskMeta:
        return self._head.meta

    @property
    def format(self) -> CvatFormat:
        """``images`` when the file lists ``<image>`` elements, ``video`` when it lists ``<track>``."""
        return self._head.format

    def images(self) -> Iterator[ImageRecord]:
        """Every image (or video frame) in file (or frame) order, each with all its shapes."""
        if self._head.format == "video":
            return self._video_frames()
        return self._image_elements()

    def _body(self, tag: str) -> Iterator[_Located]:
        """The complete ``<image>`` or ``<track>`` elements; a file that mixes the two is refused."""
        other = "track" if tag == "image" else "image"
        for event, element in _top_level(self._path):
            if element.tag == other:
                raise DatasetError(f"{self._path}: line {element.line}: <{other}> in a file of <{tag}> elements")
            if event == "end" and element.tag == tag:
                yield element

    def _image_elements(self) -> Iterator[ImageRecord]:
        checker = _ImageChecker(self._path)
        for element in self._body("image"):
            yield checker.record(element)

    def _video_frames(self) -> Iterator[ImageRecord]:
        tracks = [_parse_track(self._path, element) for element in self._body("track")]
        if self.meta.original_size is None:
            raise DatasetError(f"{self._path}: a CVAT for video export needs <original_size> in its <meta>")
        width, height = self.meta.original_size
        frames = self._frame_range(tracks)
        merged = heapq.merge(*(_track_shapes(track, frames) for track in tracks), key=lambda item: item[0])
        pending = next(merged, None)
        for frame in frames:
            shapes = []
            while pending is not None and pending[0] == frame:
                shapes.append(pending[1])
                pending = next(merged, None)
            yield ImageRecord(frame, f"frame_{frame:06d}", width, height, tuple(shapes))

    def _frame_range(self, tracks: list[list[_Listed]]) -> range:
        """The task's frames: ``start_frame`` on in steps of the frame filter, ``size`` of them.

        ``size`` is trusted before ``stop_frame``: Datumaro writes ``stop_frame`` one past the end.
        """
        meta, step = self.meta, self._head.frame_step
        if meta.size is not None:
            stop = meta.start_frame + (meta.size - 1) * step
        elif meta.stop_frame is not None:
            stop = meta.stop_frame
        else:
            stop = max((listed.frame for track in tracks for listed in track), default=meta.start_frame - 1)
        return range(meta.start_frame, stop + 1, step)
