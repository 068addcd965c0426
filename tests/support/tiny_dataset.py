"""A tiny dataset artifact, as the dataset stage writes it, for training tests.

Filled rectangles and ellipses of 2-3 colours on a grey background, with boxes and 0/1 instance
masks, written with our own TFRecord writer (not TensorFlow's) so the training tests also prove that
Model Garden reads what the dataset stage produces. Deterministic: the same seed gives the same bytes.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cvat_argo.formats.label_map import write_labels_json
from cvat_argo.formats.tfrecord.detection import detection_example, encode_mask_png
from cvat_argo.formats.tfrecord.records import ShardedWriter

LABELS = ("rectangle", "ellipse", "triangle")
_COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (40, 80, 230)}


def _draw(kind: int, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], fill: object) -> None:
    x0, y0, x1, y1 = box
    if kind == 1:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif kind == 2:
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    else:
        draw.polygon([(x0, y1 - 1), ((x0 + x1) // 2, y0), (x1 - 1, y1 - 1)], fill=fill)


def _picture(rng: random.Random, num_classes: int):
    """One image of the tiny dataset: 1-3 shapes on grey; (image, boxes, label ids, 0/1 masks as images)."""
    width, height = rng.choice((64, 96, 128)), rng.choice((64, 96, 128))
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    boxes, labels, masks = [], [], []
    for _ in range(rng.randint(1, 3)):
        side_w, side_h = rng.randint(16, width // 2), rng.randint(16, height // 2)
        x0, y0 = rng.randint(0, width - side_w), rng.randint(0, height - side_h)
        box = (x0, y0, x0 + side_w, y0 + side_h)
        kind = rng.randint(1, num_classes)
        _draw(kind, draw, box, _COLOURS[kind])
        mask = Image.new("L", (width, height), 0)
        _draw(kind, ImageDraw.Draw(mask), box, 1)
        boxes.append(box)
        labels.append(kind)
        masks.append(mask)
    return image, boxes, labels, masks


def _example(rng: random.Random, source_id: int, num_classes: int, with_masks: bool) -> bytes:
    image, boxes, labels, masks = _picture(rng, num_classes)
    width, height = image.size
    masks = [encode_mask_png(memoryview(np.asarray(mask, dtype=np.uint8)), width, height) for mask in masks]
    encoded = io.BytesIO()
    image.save(encoded, format="JPEG", quality=90)
    return detection_example(
        encoded=encoded.getvalue(), image_format="jpeg", width=width, height=height, source_id=source_id,
        filename=f"image_{source_id:04d}.jpg", boxes=boxes, labels=labels,
        texts=[LABELS[label - 1] for label in labels], masks_png=masks if with_masks else None,
    )


def write_tiny_dataset(
    out_dir: Path, *, train: int = 12, val: int = 4, num_classes: int = 3, with_masks: bool = True, seed: int = 7,
) -> Path:
    """Write train/val shards, ``labels.json`` and ``dataset.json`` into ``out_dir``; return it."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: dict[str, list[dict[str, object]]] = {}
    source_id = 1000  # numeric and not 0..N-1, so a test can tell ids from positions
    for split, count in (("train", train), ("val", val)):
        with ShardedWriter(out_dir, split, 1) as writer:
            for _ in range(count):
                writer.write(_example(rng, source_id, num_classes, with_masks), 0)
                source_id += 1
        shards[split] = [{"path": info.path.name, "records": info.records, "bytes": info.bytes}
                         for info in writer.shards]
    names = list(LABELS[:num_classes])
    write_labels_json(out_dir / "labels.json", names)
    document = {
        "labels": names,
        "images": {"train": train, "val": val},
        "shards": shards,
    }
    (out_dir / "dataset.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return out_dir


def tiny_photos(count: int, seed: int = 11) -> list[tuple[str, bytes, tuple[int, int]]]:
    """Images like the tiny dataset's, as JPEG files would hold them: (name, bytes, (width, height)).

    For the tests that feed pictures to the tiny trained model: it has only ever seen these.
    """
    rng = random.Random(seed)
    photos = []
    for index in range(count):
        image, _, _, _ = _picture(rng, len(LABELS))
        encoded = io.BytesIO()
        image.save(encoded, format="JPEG", quality=90)
        photos.append((f"photo_{index:04d}.jpg", encoded.getvalue(), image.size))
    return photos
