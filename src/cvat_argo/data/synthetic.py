"""A realistic-looking CVAT task export, generated: the quickstart's data, and the tests' and benchmarks'.

Shapes of a few classes on textured, lit backgrounds with clutter, as a "CVAT for images 1.1" zip
(``annotations.xml`` + ``images/``). Part of the images is annotated (squares and circles as boxes,
triangles as polygons, as a person would draw them); the rest is listed with no shapes, as a CVAT
task that is only partly done. The hidden truth of the unannotated images is written beside the
zip, so that pre-annotations can be scored.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..formats.annotations import ImageRecord, LabelSpec, Shape, TaskMeta
from ..formats.cvat_xml.common import EXPORT_XML
from ..formats.cvat_xml.writer import write_cvat_xml

LABELS = (LabelSpec("square", "#e6194b", "rectangle"), LabelSpec("circle", "#3cb44b", "rectangle"),
          LabelSpec("triangle", "#4363d8", "polygon"))


@dataclass(frozen=True)
class SyntheticTask:
    export: Path  # the zip
    truth: Path  # annotations.xml with every image annotated (the hidden truth)
    images: int
    annotated: int
    objects: int


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 190, size=3)
    tilt = rng.uniform(-0.25, 0.25, size=(2, 3))
    pixels = base + xx[..., None] * tilt[0] * 255 / width + yy[..., None] * tilt[1] * 255 / height
    pixels += rng.normal(0, 12, size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):  # clutter: lines that are not objects
        color = tuple(int(c) for c in rng.integers(0, 255, size=3))
        draw.line([tuple(rng.uniform(0, (width, height))) for _ in range(2)], fill=color, width=int(rng.integers(1, 4)))
    return image


def _draw_object(draw: ImageDraw.ImageDraw, rng: np.random.Generator, label: str, width: int, height: int) -> Shape:
    size = float(rng.uniform(0.12, 0.32) * min(width, height))
    cx, cy = (float(rng.uniform(size / 2, dim - size / 2)) for dim in (width, height))
    color = tuple(int(c) for c in rng.integers(0, 255, size=3))
    outline = tuple(max(0, c - 60) for c in color)
    half = size / 2
    if label == "square":
        box = (cx - half, cy - half, cx + half, cy + half)
        draw.rectangle(box, fill=color, outline=outline, width=2)
        return Shape(label=label, kind="box", box=box)
    if label == "circle":
        box = (cx - half, cy - half, cx + half, cy + half)
        draw.ellipse(box, fill=color, outline=outline, width=2)
        return Shape(label=label, kind="box", box=box)
    angle = float(rng.uniform(0, 2 * math.pi))
    points = [(cx + half * math.cos(angle + k * 2 * math.pi / 3), cy + half * math.sin(angle + k * 2 * math.pi / 3))
              for k in range(3)]
    draw.polygon(points, fill=color, outline=outline)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    flat = tuple(v for point in points for v in point)
    return Shape(label=label, kind="polygon", box=(min(xs), min(ys), max(xs), max(ys)), polygon=flat)


def generate_task(
    out_dir: Path,
    *,
    images: int = 300,
    annotated_fraction: float = 0.6,
    width: int = 320,
    height: int = 240,
    max_objects: int = 3,
    seed: int = 0,
    name: str = "shapes",
    jpeg_quality: int = 90,
) -> SyntheticTask:
    """Write ``<out_dir>/<name>.zip`` (the CVAT export) and ``<out_dir>/<name>-truth.xml``."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    export, truth = out_dir / f"{name}.zip", out_dir / f"{name}-truth.xml"
    annotated_count = round(images * annotated_fraction)
    annotated_frames = set(rng.permutation(images)[:annotated_count].tolist())
    records, visible, objects = [], [], 0
    with zipfile.ZipFile(export, "w", compression=zipfile.ZIP_STORED) as archive:
        for frame in range(images):
            image = _background(rng, width, height)
            draw = ImageDraw.Draw(image)
            count = int(rng.integers(1, max_objects + 1))
            shapes = tuple(_draw_object(draw, rng, LABELS[int(rng.integers(len(LABELS)))].name, width, height)
                           for _ in range(count))
            file_name = f"{name}_{frame:05d}.jpg"
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=jpeg_quality)
            archive.writestr(f"images/{file_name}", buffer.getvalue())
            record = ImageRecord(frame=frame, name=file_name, width=width, height=height, shapes=shapes)
            records.append(record)
            keep = frame in annotated_frames
            objects += len(shapes) if keep else 0
            visible.append(record if keep else ImageRecord(frame, file_name, width, height))
        meta = TaskMeta(labels=LABELS, name=name, size=images, mode="annotation", stop_frame=images - 1)
        staged = out_dir / f".{name}-annotations.xml"
        write_cvat_xml(staged, meta, visible)
        archive.write(staged, EXPORT_XML)
        staged.unlink()
    write_cvat_xml(truth, meta, records)
    return SyntheticTask(export=export, truth=truth, images=images, annotated=annotated_count, objects=objects)
