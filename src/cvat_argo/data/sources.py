"""Finding the annotations and the image files of a CVAT export, wherever it came from.

A source is a local folder or archive, an ``s3://`` object or prefix, or an ``https://`` URL; it is
brought to local disk once (:func:`cvat_argo.storage.fetch.fetch`), archives are extracted safely, and
the export's format is recognised by walking :data:`FORMATS` in order: the first whose ``locate`` finds
its annotation files wins, and its ``open`` gives a :class:`Reader`. The dataset stage and ``qc-report``
see only :class:`Export` and :class:`Reader`, never a concrete reader class.

Adding an annotation format is one entry in :data:`FORMATS`: a ``locate`` function that says whether a
local path (a folder, or a single file) holds the format and where its annotation files and images are
(a :class:`Located`, or None), and an ``open`` function that reads them into a reader with ``meta`` and
``images()`` (see :class:`Reader`) and names the format as ``dataset.json`` will report it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from ..errors import DatasetError
from ..formats.annotations import ImageRecord, TaskMeta
from ..formats.coco import EXPORT_PATTERN as COCO_EXPORT_PATTERN
from ..formats.coco import CocoReader, find_coco_files
from ..formats.cvat_xml.common import EXPORT_XML
from ..formats.cvat_xml.reader import CvatXmlReader
from ..storage.archive import extract, is_archive

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


class Reader(Protocol):
    """What a stage needs from an annotation reader; the readers of ``formats/`` match it by shape."""

    @property
    def meta(self) -> TaskMeta:
        """The task's labels in order (``meta.label_names``) and its number of images (``meta.size``)."""
        ...

    def images(self) -> Iterator[ImageRecord]:
        """Every image with all its shapes, one at a time, from the first image on each call."""
        ...


@dataclass
class Export:
    root: Path
    reader: Reader
    format: str  # "cvat-images", "cvat-video" or "coco"
    locator: ImageLocator


class ImageLocator:
    """Maps an image name from the annotations to its file; video frames are found by their stem."""

    def __init__(self, roots: list[Path]):
        self.roots = [r for r in roots if r.is_dir()]
        self._by_stem: dict[str, Path] | None = None

    def find(self, name: str) -> Path | None:
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            return None
        for root in self.roots:
            candidate = root / relative
            if candidate.is_file():
                return candidate
        return self._stems().get(relative.stem if relative.suffix else name)

    def _stems(self) -> dict[str, Path]:
        if self._by_stem is None:
            self._by_stem = {}
            for root in self.roots:
                for folder, _dirs, files in os.walk(root):
                    for file in files:
                        path = Path(folder, file)
                        if path.suffix.lower() in IMAGE_SUFFIXES:
                            self._by_stem.setdefault(path.stem, path)
        return self._by_stem


@dataclass(frozen=True)
class Located:
    """Where a format's ``locate`` found an export: its annotation files, its root, and where its images lie
    (in the order the image names are looked up)."""

    files: list[Path]
    root: Path
    image_roots: list[Path]


class Format(NamedTuple):
    """One annotation format an export can come in."""

    name: str  # as CVAT's export menu names it
    looks_for: str  # what ``locate`` looks for, as the error for an unrecognised export lists it
    locate: Callable[[Path], Located | None]  # a local folder or file -> where the format's files are, or None
    open: Callable[[Located], tuple[str, Reader]]  # -> (format as dataset.json names it, the reader)


def _locate_cvat_xml(local: Path) -> Located | None:
    xml = _find_xml(local) if local.is_dir() else (local if local.suffix == ".xml" else None)
    if xml is None:
        return None
    return Located([xml], xml.parent, [xml.parent / "images", xml.parent])


def _open_cvat_xml(found: Located) -> tuple[str, Reader]:
    reader = CvatXmlReader(found.files[0])
    return ("cvat-video" if reader.format == "video" else "cvat-images"), reader


def _locate_coco(local: Path) -> Located | None:
    files = find_coco_files(local)
    if not files:
        return None
    base = files[0].parent.parent if files[0].parent.name == "annotations" else files[0].parent
    subsets = [base / "images" / f.stem.removeprefix("instances_") for f in files]
    return Located(files, base, [*subsets, base / "images", base])


def _open_coco(found: Located) -> tuple[str, Reader]:
    return "coco", CocoReader(found.files)


FORMATS: tuple[Format, ...] = (
    Format("CVAT for images/video 1.1", EXPORT_XML, _locate_cvat_xml, _open_cvat_xml),
    Format("COCO 1.0", COCO_EXPORT_PATTERN, _locate_coco, _open_coco),
)


def open_export(source: str, work: Path) -> Export:
    """Fetch, extract and recognise an export. Raises DatasetError naming the source when it cannot."""
    if "://" in source:
        from ..storage.fetch import fetch  # only here: minio and requests cost a local export 0.15 s of start-up

        local = fetch(source, work / "download")
    else:
        local = Path(source).expanduser()
    if local.is_file() and is_archive(local):
        local = extract(local, work / "export")
    elif not local.exists():
        raise DatasetError(f"dataset source {source} does not exist")
    for fmt in FORMATS:
        found = fmt.locate(local)
        if found is not None:
            name, reader = fmt.open(found)
            return Export(found.root, reader, name, ImageLocator(found.image_roots))
    expected = " or ".join(f"{fmt.looks_for} ({fmt.name})" for fmt in FORMATS)
    raise DatasetError(f"dataset source {source}: no {expected} found; export the task with one of these formats")


def _find_xml(root: Path) -> Path | None:
    """``annotations.xml`` (CVAT), else the one ``<subset>.xml`` Datumaro writes, at the top or one level down."""
    for pattern in (EXPORT_XML, f"*/{EXPORT_XML}", "*.xml"):
        found = sorted(root.glob(pattern))
        if len(found) > 1:
            listed = ", ".join(str(p.relative_to(root)) for p in found[:4])
            raise DatasetError(f"{root}: several annotation files ({listed}); give one export")
        if found:
            return found[0]
    return None
