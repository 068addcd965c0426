"""COCO 1.0 (``annotations/instances_<subset>.json`` + images), as CVAT and Datumaro export it.

CVAT writes ``category_id`` = label index + 1, boxes as ``[x, y, w, h]``, polygons as
``segmentation`` rings, crowd regions as RLE with ``iscrowd: 1``, and every other attribute under
``attributes`` (``occluded``, ``rotation``, ``score`` ...). The reader yields the same
:class:`~cvat_argo.formats.annotations.ImageRecord` objects as the CVAT XML reader.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .annotations import ImageRecord, LabelSpec, Shape, TaskMeta

#: Where CVAT's "COCO 1.0" export keeps its annotation files (one per subset).
EXPORT_PATTERN = "annotations/instances_*.json"


def find_coco_files(root: Path) -> list[Path]:
    """``annotations/instances_*.json`` under root (or root itself when it is a .json file)."""
    if root.is_file():
        return [root] if root.suffix == ".json" else []
    found = sorted(root.glob(EXPORT_PATTERN)) or sorted(root.glob(f"*/{EXPORT_PATTERN}"))
    return found


class CocoReader:
    """All ``instances_*.json`` files of an export, read as one task (subsets concatenated)."""

    def __init__(self, files: list[Path]):
        if not files:
            raise DatasetError("no COCO annotation file (annotations/instances_<subset>.json) found")
        self.files = files
        self._documents = [(path, _load(path)) for path in files]
        self.meta = self._meta()

    def _meta(self) -> TaskMeta:
        categories: dict[int, str] = {}
        for path, document in self._documents:
            for category in document.get("categories", []):
                try:
                    cid, name = int(category["id"]), str(category["name"])
                except (KeyError, TypeError, ValueError):
                    raise DatasetError(f"{path}: category {category!r} needs an integer id and a name") from None
                if categories.get(cid, name) != name:
                    raise DatasetError(f"{path}: category id {cid} is both {categories[cid]!r} and {name!r}")
                categories[cid] = name
        labels = tuple(LabelSpec(name=categories[cid]) for cid in sorted(categories))
        return TaskMeta(labels=labels, size=sum(len(d.get("images", [])) for _, d in self._documents))

    def images(self) -> Iterator[ImageRecord]:
        seen: dict[str, Path] = {}
        for path, document in self._documents:
            names = {int(c["id"]): str(c["name"]) for c in document.get("categories", [])}
            by_image: dict[int, list[dict[str, Any]]] = {}
            for annotation in document.get("annotations", []):
                by_image.setdefault(int(annotation.get("image_id", -1)), []).append(annotation)
            for image in document.get("images", []):
                record = _image(path, image, by_image.get(int(image.get("id", -1)), []), names)
                if record.name in seen:
                    raise DatasetError(f"{path}: image {record.name!r} is listed twice (also in {seen[record.name]})")
                seen[record.name] = path
                yield record


def _load(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(document, dict) or "images" not in document:
        raise DatasetError(f"{path}: not a COCO instances file (no 'images' list)")
    return document


def _image(path: Path, image: dict[str, Any], annotations: list[dict[str, Any]], names: dict[int, str]) -> ImageRecord:
    try:
        frame, name = int(image["id"]), str(image["file_name"])
        width, height = int(image["width"]), int(image["height"])
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{path}: image {image!r} needs id, file_name, width and height") from None
    shapes = []
    for annotation in annotations:
        try:
            shapes.append(_shape(annotation, names))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: image {name!r}: annotation {annotation.get('id')!r} is malformed ({exc})") \
                from None
    return ImageRecord(frame=frame, name=name, width=width, height=height, shapes=tuple(shapes))


def _shape(annotation: dict[str, Any], names: dict[int, str]) -> Shape:
    category = int(annotation["category_id"])
    label = names.get(category, f"<category {category}>")
    x, y, w, h = (float(v) for v in annotation["bbox"])
    attributes = {str(k): str(v) for k, v in (annotation.get("attributes") or {}).items()}
    crowd = bool(annotation.get("iscrowd", 0))
    if crowd:
        attributes["is_crowd"] = "true"
    segmentation = annotation.get("segmentation")
    polygon = None
    if isinstance(segmentation, list) and segmentation and isinstance(segmentation[0], list) and not crowd:
        polygon = tuple(float(v) for v in max(segmentation, key=len))
    score = annotation.get("score")
    return Shape(
        label=label,
        kind="polygon" if polygon else "box",
        box=(x, y, x + w, y + h),
        polygon=polygon,
        rotation=float(attributes.get("rotation", 0) or 0),
        occluded=attributes.get("occluded", "").lower() == "true",
        group_id=int(annotation["group"]) if annotation.get("group") else None,
        attributes=attributes,
        score=float(score) if score is not None else None,
    )
