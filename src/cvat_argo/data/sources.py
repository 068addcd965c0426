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
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Protocol

from ..errors import DatasetError
from ..formats.annotations import ImageRecord, TaskMeta
from ..formats.coco import EXPORT_PATTERN as COCO_EXPORT_PATTERN
from ..formats.coco import CocoReader, find_coco_files
from ..formats.cvat_xml.common import EXPORT_XML
from ..formats.cvat_xml.reader import CvatXmlReader
from ..storage.archive import DEFAULT_MAX_BYTES as ARCHIVE_MAX_BYTES
from ..storage.archive import extract, is_archive

EXPORT_MAX_BYTES = ARCHIVE_MAX_BYTES
EXPORT_MAX_SECONDS = 4 * 3600.0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
# No file system holds a file name (one part of a path) or a path longer than these (Linux NAME_MAX, PATH_MAX).
MAX_NAME_PART_BYTES, MAX_NAME_BYTES = 255, 4095
# Archive suffixes: a source named so that is not a readable archive was cut short or damaged on the way.
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz")


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
    annotations: tuple[Path, ...] = ()  # the annotation files read

    @property
    def described(self) -> str:
        """The export as messages name it: its one annotation file, else its folder."""
        return str(self.annotations[0]) if len(self.annotations) == 1 else str(self.root)


def shown_name(name: str, keep: int = 40) -> str:
    """An image name as messages quote it: its repr, cut short (a hostile name can be 5,000 characters)."""
    text = repr(name)
    return text if len(text) <= keep else f"{text[:keep]}... ({len(name)} characters)"


def image_name_problem(name: str) -> str | None:
    """Why an image name from the annotations cannot be a file of the export, or None when it can.

    CVAT names an image by its path relative to the task's data (``path/img.jpg``), and the dataset stage
    finds it under the export's ``images/`` and copies it under its output by that path. So a name must be a
    relative path that stays inside the folder it is joined to and that a file system can hold: not empty,
    no NUL, not absolute, no ``..`` part, no part over 255 bytes and 4,095 bytes at most.
    """
    if not name:
        return "is empty"
    if "\x00" in name:
        return "holds a NUL character"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode text"
    path = PurePosixPath(name)
    if path.is_absolute():
        return "is an absolute path"
    if ".." in path.parts:
        return "climbs out of its folder with '..'"
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long, longer than any path a file system holds ({MAX_NAME_BYTES} bytes)"
    longest = max((len(part.encode("utf-8")) for part in path.parts), default=0)
    if longest > MAX_NAME_PART_BYTES:
        return (f"has a part of {longest} bytes, longer than any file name a file system holds "
                f"({MAX_NAME_PART_BYTES} bytes)")
    return None


class ImageLocator:
    """Maps an image name from the annotations to its file; video frames are found by their stem.

    The one owner of the rule for image names (:func:`image_name_problem`): :meth:`find` refuses a name
    that cannot be a file of the export with a :class:`DatasetError` naming ``described`` (the
    annotation file), so a name never reaches a path outside the export or the output.
    """

    def __init__(self, roots: list[Path], described: str = "the export"):
        self.roots = [r for r in roots if r.is_dir()]
        self.described = described
        self._by_stem: dict[str, Path] | None = None

    def find(self, name: str) -> Path | None:
        problem = image_name_problem(name)
        if problem is not None:
            raise DatasetError(f"{self.described}: image name {shown_name(name)} {problem}: it cannot be a file of "
                               "the export; fix the name in the task (or in the annotation file)")
        relative = Path(name)
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
        from ..storage.fetch import Limits, fetch  # only here: minio and requests cost a local export 0.15 s

        # An export with its images can be far larger than a base model: the same cap as extraction
        # (64 GiB), and the create-dataset stage's own deadline (4 h) as the time cap.
        limits = Limits(max_bytes=EXPORT_MAX_BYTES, max_seconds=EXPORT_MAX_SECONDS, what="the dataset source cap")
        local = fetch(source, work / "download", limits=limits)
    else:
        local = Path(source).expanduser()
    if local.is_file() and is_archive(local):
        local = extract(local, work / "export")
    elif not local.exists():
        raise DatasetError(f"dataset source {source} does not exist")
    elif local.is_file() and _looks_like_archive(local):
        raise DatasetError(f"dataset source {source}: a damaged or truncated archive (not a readable zip or tar): "
                           "download or export it again")
    for fmt in FORMATS:
        found = fmt.locate(local)
        if found is not None:
            name, reader = fmt.open(found)
            described = str(found.files[0]) if len(found.files) == 1 else str(found.root)
            return Export(found.root, reader, name, ImageLocator(found.image_roots, described), tuple(found.files))
    expected = " or ".join(f"{fmt.looks_for} ({fmt.name})" for fmt in FORMATS)
    raise DatasetError(f"dataset source {source}: no {expected} found; export the task with one of these formats")


def _looks_like_archive(path: Path) -> bool:
    """Named or starting like a zip, gzip, bzip2 or xz file (the caller knows it is not a readable one)."""
    if path.name.lower().endswith(_ARCHIVE_SUFFIXES):
        return True
    try:
        with path.open("rb") as file:
            head = file.read(6)
    except OSError:
        return False
    return head.startswith((b"PK", b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))


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
