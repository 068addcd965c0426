"""Write "CVAT for images 1.1" annotations.xml: pre-annotations and synthetic tasks for CVAT to import.

The file is streamed (one ``<image>`` at a time, nothing held) and appears only when complete, so a
failed run never leaves a half file to upload.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

from ..annotations import ImageRecord, LabelSpec, Shape, TaskMeta
from .common import SCORE_ATTRIBUTE

_SCORE_VALUES = "0\n1\n0.01"  # CVAT stores a number attribute's min, max and step one per line


class _XmlOut:
    """An indented XML stream: elements are written as they come, nothing is held."""

    def __init__(self, stream: IO[str]):
        from xml.sax.saxutils import XMLGenerator  # here: it imports urllib.request, 20 ms a reader never needs

        self._xml = XMLGenerator(stream, "utf-8", short_empty_elements=True)
        self._depth = 0
        self._at_start = True  # the root follows the XML declaration's own newline
        self._xml.startDocument()

    def open(self, tag: str, attrs: Mapping[str, str] | None = None) -> None:
        self._indent()
        self._xml.startElement(tag, dict(attrs or {}))
        self._depth += 1

    def close(self, tag: str) -> None:
        self._depth -= 1
        self._indent()
        self._xml.endElement(tag)

    def leaf(self, tag: str, text: str = "", attrs: Mapping[str, str] | None = None) -> None:
        self._indent()
        self._xml.startElement(tag, dict(attrs or {}))
        self._xml.characters(text)
        self._xml.endElement(tag)

    def end(self) -> None:
        self._xml.ignorableWhitespace("\n")
        self._xml.endDocument()

    def _indent(self) -> None:
        if not self._at_start:
            self._xml.ignorableWhitespace("\n" + "  " * self._depth)
        self._at_start = False


def write_cvat_xml(path: Path, meta: TaskMeta, images: Iterable[ImageRecord]) -> int:
    """Write ``images`` as CVAT for images 1.1 to ``path``; returns how many images were written.

    Boxes (not rotated), polygons and masks are written with coordinates as ``{:.2f}``, like CVAT.
    A shape's ``score`` becomes ``<attribute name="score">`` when its label declares a ``score``
    attribute (CVAT keeps no confidence of its own). The file appears only when complete: it is
    written to ``path.partial`` and renamed, so a failed run never leaves a half file to upload.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    labels = {label.name: label for label in meta.labels}
    count = 0
    try:
        with partial.open("w", encoding="utf-8") as stream:
            out = _XmlOut(stream)
            out.open("annotations")
            out.leaf("version", "1.1")
            _write_meta(out, meta)
            for image in images:
                _write_image(out, image, labels)
                count += 1
            out.close("annotations")
            out.end()
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return count


def _write_meta(out: _XmlOut, meta: TaskMeta) -> None:
    out.open("meta")
    out.open("task")
    if meta.name is not None:
        out.leaf("name", meta.name)
    if meta.size is not None:
        out.leaf("size", str(meta.size))
    out.leaf("mode", meta.mode or "annotation")
    out.leaf("start_frame", str(meta.start_frame))
    if meta.stop_frame is not None:
        out.leaf("stop_frame", str(meta.stop_frame))
    out.open("labels")
    for label in meta.labels:
        _write_label(out, label)
    out.close("labels")
    if meta.original_size is not None:
        out.open("original_size")
        out.leaf("width", str(meta.original_size[0]))
        out.leaf("height", str(meta.original_size[1]))
        out.close("original_size")
    out.close("task")
    out.close("meta")


def _write_label(out: _XmlOut, label: LabelSpec) -> None:
    out.open("label")
    out.leaf("name", label.name)
    if label.color is not None:
        out.leaf("color", label.color)
    out.leaf("type", label.type or "any")
    out.open("attributes")
    for name in label.attributes:
        is_score = name == SCORE_ATTRIBUTE
        out.open("attribute")
        out.leaf("name", name)
        out.leaf("mutable", "False")
        out.leaf("input_type", "number" if is_score else "text")
        out.leaf("default_value", "0" if is_score else "")
        out.leaf("values", _SCORE_VALUES if is_score else "")
        out.close("attribute")
    out.close("attributes")
    out.close("label")


def _write_image(out: _XmlOut, image: ImageRecord, labels: Mapping[str, LabelSpec]) -> None:
    out.open("image", {"id": str(image.frame), "name": image.name, "width": str(image.width),
                       "height": str(image.height)})
    for shape in image.shapes:
        _write_shape(out, image, shape, labels)
    for tag in image.tags:
        out.leaf("tag", attrs={"label": tag, "source": "manual"})
    out.close("image")


def _write_shape(out: _XmlOut, image: ImageRecord, shape: Shape, labels: Mapping[str, LabelSpec]) -> None:
    spec = labels.get(shape.label)
    if spec is None:
        raise ValueError(f"image {image.name!r}: label {shape.label!r} is not among the meta labels")
    attrs = {"label": shape.label, "source": shape.source, "occluded": str(int(shape.occluded))}
    attrs.update(_shape_geometry(image, shape))
    attrs["z_order"] = str(shape.z_order)
    if shape.group_id:
        attrs["group_id"] = str(shape.group_id)
    children = _attribute_values(shape, spec)
    if not children:
        out.leaf(shape.kind, attrs=attrs)
        return
    out.open(shape.kind, attrs)
    for name, value in children.items():
        out.leaf("attribute", value, {"name": name})
    out.close(shape.kind)


def _shape_geometry(image: ImageRecord, shape: Shape) -> dict[str, str]:
    if shape.kind == "box" and shape.box is not None and not shape.rotation % 360:
        return dict(zip(("xtl", "ytl", "xbr", "ybr"), (f"{value:.2f}" for value in shape.box), strict=True))
    if shape.kind == "polygon" and shape.polygon:
        pairs = zip(shape.polygon[0::2], shape.polygon[1::2], strict=True)
        return {"points": ";".join(f"{x:.2f},{y:.2f}" for x, y in pairs)}
    if shape.kind == "mask" and shape.mask is not None:
        left, top, width, height, counts = shape.mask
        return {"rle": ", ".join(map(str, counts)), "left": str(left), "top": str(top),
                "width": str(width), "height": str(height)}
    raise ValueError(
        f"image {image.name!r}: cannot write a {shape.kind} (rotation {shape.rotation}): the writer takes "
        "axis-aligned boxes, polygons and masks, the shapes a detector produces"
    )


def _attribute_values(shape: Shape, spec: LabelSpec) -> dict[str, str]:
    """The ``<attribute>`` children: those the label declares, the score from ``shape.score``."""
    values = {}
    for name in spec.attributes:
        if name == SCORE_ATTRIBUTE and shape.score is not None:
            values[name] = f"{shape.score:.2f}"
        elif name in shape.attributes:
            values[name] = str(shape.attributes[name])
    return values
