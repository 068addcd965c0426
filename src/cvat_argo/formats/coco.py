"""COCO 1.0 (``annotations/instances_<subset>.json`` + images), as CVAT and Datumaro export it.

CVAT writes ``category_id`` = label index + 1, boxes as ``[x, y, w, h]``, polygons as
``segmentation`` rings, crowd regions as RLE with ``iscrowd: 1``, and every other attribute under
``attributes`` (``occluded``, ``rotation``, ``score`` ...). The reader yields the same
:class:`~cvat_argo.formats.annotations.ImageRecord` objects as the CVAT XML reader.

Every field is checked when the file is opened: a file that is not what CVAT writes (a list where
an object belongs, ``image_id: "abc"``, a box of three numbers, an annotation of an image or category
the file does not list, two images with one id or one ``file_name``, JSON nested too deeply to read)
is refused with one :class:`DatasetError` line naming the file and the field, e.g.
``instances_default.json: annotations[3].bbox has 3 numbers, not 4 ([x, y, width, height])``.

Image ids and ``file_name`` are unique per file (a subset); a ``file_name`` is also unique across the
files of one export, since all subsets' images are found by name in one ``images/`` tree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .annotations import ImageRecord, LabelSpec, Shape, TaskMeta

#: Where CVAT's "COCO 1.0" export keeps its annotation files (one per subset).
EXPORT_PATTERN = "annotations/instances_*.json"

_SHOWN = 40  # characters of a bad value that an error message quotes


def find_coco_files(root: Path) -> list[Path]:
    """``annotations/instances_*.json`` under root (or root itself when it is a .json file)."""
    if root.is_file():
        return [root] if root.suffix == ".json" else []
    found = sorted(root.glob(EXPORT_PATTERN)) or sorted(root.glob(f"*/{EXPORT_PATTERN}"))
    return found


class CocoReader:
    """All ``instances_*.json`` files of an export, read as one task (subsets concatenated).

    Opening reads and checks every file (raising :class:`DatasetError` at the first fault); the JSON
    itself is not kept, only the records built from it.
    """

    def __init__(self, files: list[Path]):
        if not files:
            raise DatasetError("no COCO annotation file (annotations/instances_<subset>.json) found")
        self.files = files
        documents = [_Document(path, _load(path)) for path in files]
        self.meta = _meta(documents)
        self._records: list[ImageRecord] = []
        names: dict[str, tuple[_Document, int, int]] = {}  # file_name -> (file, index in images, id)
        for document in documents:
            for index, record in document.records():
                first = names.setdefault(record.name, (document, index, record.frame))
                if first != (document, index, record.frame):
                    other = f"images[{first[1]}]" + ("" if first[0] is document else f" of {first[0].path}")
                    raise document.fail(f"images[{index}]", f"(id {record.frame}) and {other} (id {first[2]}) have "
                                        f"one file_name, {_show(record.name)}: one image listed twice")
                self._records.append(record)

    def images(self) -> Iterator[ImageRecord]:
        """Every image of every file, in file order, each with its shapes."""
        return iter(self._records)


def _load(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the annotation file: {exc.strerror or exc}") from None
    try:
        document = json.loads(data)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}): not a COCO instances file") from None
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply to read: not a COCO instances file") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise DatasetError(f"{path}: not usable JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(document, dict) or "images" not in document:
        raise DatasetError(f"{path}: not a COCO instances file (no 'images' list)")
    return document


def _meta(documents: list[_Document]) -> TaskMeta:
    categories: dict[int, str] = {}
    for document in documents:
        for cid, name in document.categories.items():
            if categories.get(cid, name) != name:
                raise DatasetError(f"{document.path}: category id {cid} is both {categories[cid]!r} and {name!r}")
            categories[cid] = name
    by_name: dict[str, int] = {}
    for cid in sorted(categories):
        first = by_name.setdefault(categories[cid], cid)
        if first != cid:
            raise DatasetError(f"{documents[0].path}: category {categories[cid]!r} has two ids, {first} and {cid}")
    labels = tuple(LabelSpec(name=categories[cid]) for cid in sorted(categories))
    return TaskMeta(labels=labels, size=sum(len(d.images) for d in documents))


# --- checking values -----------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A value as an error message quotes it: its repr (JSON's null, true, false), cut short (a name can be
    5,000 characters)."""
    text = json.dumps(value) if value is None or isinstance(value, bool) else repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> int | None:
    """``value`` as a whole number (``3`` or ``3.0``), or None when it is not one."""
    if _is_number(value) and float(value).is_integer():
        return int(value)
    return None


@dataclass(eq=False)  # compared by identity: equality would compare whole JSON documents
class _Document:
    """One instances file, checked: its categories, its images, and each image's annotations."""

    path: Path
    document: dict[str, Any]

    def __post_init__(self) -> None:
        self.categories = self._categories()
        self.images = self._list("images")
        self._ids: dict[int, int] = {}  # image id -> index in images
        for index, image in enumerate(self.images):
            self._image_head(index, image)
        self._annotations: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        for index, annotation in enumerate(self._list("annotations")):
            where = f"annotations[{index}]"
            annotation = self._object(annotation, where)
            image_id = _whole(annotation.get("image_id"))
            if "image_id" not in annotation:
                raise self.fail(where, "has no image_id")
            if image_id is None:
                raise self.fail(f"{where}.image_id", f"{_show(annotation['image_id'])} is not an image id")
            if image_id not in self._ids:
                raise self.fail(f"{where}.image_id", f"{image_id} is the id of no image in 'images'")
            self._annotations.setdefault(image_id, []).append((index, annotation))

    def fail(self, where: str, message: str) -> DatasetError:
        return DatasetError(f"{self.path}: {where} {message}")

    def _list(self, key: str) -> list[Any]:
        value = self.document.get(key)
        if value is None and key != "images":
            return []
        if not isinstance(value, list):
            raise self.fail(f"'{key}'", f"is {_kind(value)}, not a list")
        return value

    def _object(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"is {_kind(value)}, not an object")
        return value

    def _categories(self) -> dict[int, str]:
        categories: dict[int, str] = {}
        for index, category in enumerate(self._list("categories")):
            where = f"categories[{index}]"
            category = self._object(category, where)
            cid, name = _whole(category.get("id")), category.get("name")
            if cid is None:
                raise self.fail(f"{where}.id", f"{_show(category.get('id'))} is not a category id")
            if not isinstance(name, str) or not name.strip():
                raise self.fail(f"{where}.name", f"{_show(name)} is not a label name")
            if categories.get(cid, name) != name:
                raise self.fail(where, f"gives category id {cid} a second name: {categories[cid]!r} and {name!r}")
            categories[cid] = name
        return categories

    def _image_head(self, index: int, image: Any) -> None:
        where = f"images[{index}]"
        image = self._object(image, where)
        for key in ("id", "file_name", "width", "height"):
            if key not in image:
                raise self.fail(where, f"has no {key}")
        image_id = _whole(image["id"])
        if image_id is None:
            raise self.fail(f"{where}.id", f"{_show(image['id'])} is not an image id")
        name = image["file_name"]
        if not isinstance(name, str) or not name:
            raise self.fail(f"{where}.file_name", f"{_show(name)} is not a file name")
        for key in ("width", "height"):
            size = _whole(image[key])
            if size is None or size <= 0:
                raise self.fail(f"{where}.{key}", f"{_show(image[key])} is not a positive whole number")
        first = self._ids.setdefault(image_id, index)
        if first != index:
            raise self.fail(f"{where}.id", f"{image_id} is also the id of images[{first}] "
                            f"({_show(self.images[first]['file_name'])}): one id, two images")

    def records(self) -> Iterator[tuple[int, ImageRecord]]:
        """(index in images, record) for every image, its shapes in annotation order."""
        for index, image in enumerate(self.images):
            image_id = int(image["id"])
            shapes = tuple(self._shape(position, annotation)
                           for position, annotation in self._annotations.get(image_id, []))
            yield index, ImageRecord(frame=image_id, name=image["file_name"], width=int(image["width"]),
                                     height=int(image["height"]), shapes=shapes)

    # --- one annotation --------------------------------------------------------------------------

    def _shape(self, index: int, annotation: dict[str, Any]) -> Shape:
        where = f"annotations[{index}]"
        label = self._label(where, annotation)
        x, y, w, h = self._bbox(where, annotation)
        attributes = self._attributes(where, annotation)
        crowd = annotation.get("iscrowd", 0)
        if crowd not in (0, 1):  # True and False compare equal to 1 and 0
            raise self.fail(f"{where}.iscrowd", f"{_show(crowd)} is not 0 or 1")
        if crowd:
            attributes["is_crowd"] = "true"
        polygon = self._segmentation(where, annotation.get("segmentation"), bool(crowd))
        score = annotation.get("score")
        if score is not None and not _is_number(score):
            raise self.fail(f"{where}.score", f"{_show(score)} is not a number")
        return Shape(
            label=label,
            kind="polygon" if polygon else "box",
            box=(x, y, x + w, y + h),
            polygon=polygon,
            rotation=self._rotation(where, attributes),
            occluded=attributes.get("occluded", "").lower() == "true",
            group_id=self._group(where, annotation.get("group")),
            attributes=attributes,
            score=float(score) if score is not None else None,
        )

    def _label(self, where: str, annotation: dict[str, Any]) -> str:
        if "category_id" not in annotation:
            raise self.fail(where, "has no category_id")
        category = _whole(annotation["category_id"])
        if category is None:
            raise self.fail(f"{where}.category_id", f"{_show(annotation['category_id'])} is not a category id")
        if category not in self.categories:
            raise self.fail(f"{where}.category_id", f"{category} is not in 'categories'")
        return self.categories[category]

    def _bbox(self, where: str, annotation: dict[str, Any]) -> tuple[float, float, float, float]:
        if "bbox" not in annotation:
            raise self.fail(where, "has no bbox")
        bbox = annotation["bbox"]
        if not isinstance(bbox, list):
            raise self.fail(f"{where}.bbox", f"is {_kind(bbox)}, not [x, y, width, height]")
        if len(bbox) != 4:
            raise self.fail(f"{where}.bbox", f"has {len(bbox)} numbers, not 4 ([x, y, width, height])")
        for position, value in enumerate(bbox):
            if not _is_number(value):
                raise self.fail(f"{where}.bbox[{position}]", f"{_show(value)} is not a number")
        x, y, w, h = (float(value) for value in bbox)
        if w < 0 or h < 0:
            raise self.fail(f"{where}.bbox", f"has a negative size ({w:g} x {h:g})")
        return x, y, w, h

    def _attributes(self, where: str, annotation: dict[str, Any]) -> dict[str, str]:
        attributes = annotation.get("attributes")
        if attributes is None:
            return {}
        if not isinstance(attributes, dict):
            raise self.fail(f"{where}.attributes", f"is {_kind(attributes)}, not an object")
        return {str(key): str(value) for key, value in attributes.items()}

    def _rotation(self, where: str, attributes: dict[str, str]) -> float:
        text = attributes.get("rotation") or "0"
        try:
            rotation = float(text)
        except ValueError:
            rotation = math.nan
        if not math.isfinite(rotation):
            raise self.fail(f"{where}.attributes.rotation", f"{_show(text)} is not a number")
        return rotation

    def _group(self, where: str, group: Any) -> int | None:
        if not group:  # absent, null, 0 or ""
            return None
        value = _whole(group) if not isinstance(group, str) else (int(group) if group.strip().isdigit() else None)
        if value is None:
            raise self.fail(f"{where}.group", f"{_show(group)} is not a group id")
        return value or None

    def _segmentation(self, where: str, segmentation: Any, crowd: bool) -> tuple[float, ...] | None:
        """The largest polygon ring of a non-crowd annotation; RLE (crowd regions, masks) gives None."""
        where = f"{where}.segmentation"
        if segmentation is None:
            return None
        if isinstance(segmentation, dict):
            self._rle(where, segmentation)
            return None
        if not isinstance(segmentation, list):
            raise self.fail(where, f"is {_kind(segmentation)}, not a list of polygons or an RLE object")
        for position, ring in enumerate(segmentation):
            if not isinstance(ring, list):
                raise self.fail(f"{where}[{position}]", f"is {_kind(ring)}, not a polygon (a list of x, y numbers)")
            for value in ring:
                if not _is_number(value):
                    raise self.fail(f"{where}[{position}]", f"holds {_show(value)}, not a number")
            if len(ring) % 2 or len(ring) < 6:
                raise self.fail(f"{where}[{position}]", f"has {len(ring)} numbers: a polygon needs x, y pairs of "
                                "at least 3 points")
        if not segmentation or crowd:
            return None
        return tuple(float(value) for value in max(segmentation, key=len))

    def _rle(self, where: str, rle: dict[str, Any]) -> None:
        size, counts = rle.get("size"), rle.get("counts")
        if not isinstance(size, list) or len(size) != 2 or any(_whole(v) is None or v < 0 for v in size):
            raise self.fail(f"{where}.size", f"{_show(size)} is not [height, width]")
        if isinstance(counts, list):
            if any(_whole(v) is None or v < 0 for v in counts):
                raise self.fail(f"{where}.counts", "holds something other than run lengths (whole numbers >= 0)")
        elif not isinstance(counts, str):
            raise self.fail(f"{where}.counts", f"is {_kind(counts)}, not run lengths or a compressed RLE string")
