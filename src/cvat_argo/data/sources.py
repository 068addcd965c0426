"""Finding the annotations and the image files of a CVAT export, wherever it came from.

A source is a local folder or archive, an ``s3://`` object or prefix, or an ``https://`` URL; it is
brought to local disk once (:func:`cvat_argo.storage.store.fetch`), archives are extracted safely, and the
export's format is recognised: CVAT for images/video 1.1 (``annotations.xml``) or COCO 1.0
(``annotations/instances_*.json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from ..formats.coco import CocoReader, find_coco_files
from ..formats.cvat_xml import CvatXmlReader
from ..storage.archive import extract, is_archive

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


@dataclass
class Export:
    root: Path
    reader: CvatXmlReader | CocoReader
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


def open_export(source: str, work: Path) -> Export:
    """Fetch, extract and recognise an export. Raises DatasetError naming the source when it cannot."""
    if "://" in source:
        from ..storage.store import fetch  # only here: minio and requests cost a local export 0.15 s of start-up

        local = fetch(source, work / "download")
    else:
        local = Path(source).expanduser()
    if local.is_file() and is_archive(local):
        local = extract(local, work / "export")
    elif not local.exists():
        raise DatasetError(f"dataset source {source} does not exist")
    root = local if local.is_dir() else local.parent
    xml = _find_xml(root) if local.is_dir() else (local if local.suffix == ".xml" else None)
    if xml is not None:
        reader = CvatXmlReader(xml)
        base = xml.parent
        fmt = "cvat-video" if reader.format == "video" else "cvat-images"
        return Export(base, reader, fmt, ImageLocator([base / "images", base]))
    coco_files = find_coco_files(local)
    if coco_files:
        base = coco_files[0].parent.parent if coco_files[0].parent.name == "annotations" else coco_files[0].parent
        subsets = [base / "images" / f.stem.removeprefix("instances_") for f in coco_files]
        return Export(base, CocoReader(coco_files), "coco", ImageLocator([*subsets, base / "images", base]))
    raise DatasetError(
        f"dataset source {source}: no annotations.xml (CVAT for images/video 1.1) or "
        "annotations/instances_*.json (COCO 1.0) found; export the task with one of these formats"
    )


def _find_xml(root: Path) -> Path | None:
    """``annotations.xml`` (CVAT), else the one ``<subset>.xml`` Datumaro writes, at the top or one level down."""
    for pattern in ("annotations.xml", "*/annotations.xml", "*.xml"):
        found = sorted(root.glob(pattern))
        if len(found) > 1:
            listed = ", ".join(str(p.relative_to(root)) for p in found[:4])
            raise DatasetError(f"{root}: several annotation files ({listed}); give one export")
        if found:
            return found[0]
    return None
