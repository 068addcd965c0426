"""The TF Object Detection API schema: the ``tf.train.Example`` keys Model Garden's TfExampleDecoder reads.

:func:`detection_example` checks one image's boxes, labels and masks and serializes them with
:mod:`.example`; :func:`encode_mask_png` makes the instance masks in the 0/1 form the Mask R-CNN loss
expects. The image's width and height are checked against its header, read by the one JPEG/PNG
sniffer in :mod:`cvat_argo.data.imagefiles`. The tests check the result against Model Garden's
decoder.
"""

from __future__ import annotations

import hashlib
import math
import operator
import struct
import zlib
from collections.abc import Sequence

from ...data.imagefiles import PNG_MAGIC, jpeg_size, png_size
from .example import BytesList, Feature, FloatList, Int64List, encode_example

_IMAGE_FORMATS = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_mask_png(mask: bytes | bytearray | memoryview, width: int, height: int) -> bytes:
    """A full-image instance mask as an 8-bit grayscale PNG with pixel values 0 and 1.

    ``mask`` is ``width * height`` bytes, row-major, each 0 or 1 (``memoryview(bool_array)`` of a
    C-ordered NumPy array works). The values must be 0/1, not 0/255: Model Garden's decoder turns
    them into floats and the Mask R-CNN loss uses them as binary cross-entropy targets as they are
    (only ``mask_binarize_threshold`` would rescue 0/255, and it is off by default).
    """
    data = memoryview(mask).tobytes()
    if width <= 0 or height <= 0 or len(data) != width * height:
        raise ValueError(f"mask has {len(data)} bytes, expected width * height = {width} * {height}")
    if data.translate(None, b"\x00\x01"):
        raise ValueError("mask values must be 0 or 1")
    rows = b"".join(b"\x00" + data[row * width : (row + 1) * width] for row in range(height))  # filter 0: none
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale, not interlaced
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows, 6)) + _png_chunk(b"IEND", b"")
    return PNG_MAGIC + chunks


def _image_size(encoded: bytes, image_format: str) -> tuple[int, int]:
    return jpeg_size(encoded) if image_format == "jpeg" else png_size(encoded)


def _check_box(index: int, box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"box {index} must be (x_min, y_min, x_max, y_max), got {box!r}")
    x_min, y_min, x_max, y_max = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x_min, y_min, x_max, y_max)):
        raise ValueError(f"box {index} has a non-finite coordinate: {box!r}")
    if not (0 <= x_min < x_max <= width and 0 <= y_min < y_max <= height):
        raise ValueError(
            f"box {index} {tuple(box)!r} is empty or outside the {width}x{height} image;"
            " clip boxes to the image and drop empty ones"
        )
    return x_min, y_min, x_max, y_max


def detection_example(
    *,
    encoded: bytes,
    image_format: str,
    width: int,
    height: int,
    source_id: int,
    filename: str,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    texts: Sequence[str],
    is_crowd: Sequence[bool] | None = None,
    areas: Sequence[float] | None = None,
    masks_png: Sequence[bytes] | None = None,
) -> bytes:
    """A serialized ``tf.train.Example`` with the TF Object Detection API keys Model Garden reads.

    ``boxes`` are (x_min, y_min, x_max, y_max) in pixels of the encoded image and are stored
    normalised to 0..1. ``labels`` are 1-based class ids (0 is background). ``source_id`` must be
    unique in the dataset: Model Garden parses it as a number to match detections to ground truth
    in COCO evaluation, and an empty or non-numeric one silently collides. ``areas`` default to the
    box areas in pixels (pass mask areas for polygons to match COCO's segmentation area).
    ``masks_png`` are single-channel PNGs of the full image size with values 0 and 1 (not 255: see
    :func:`encode_mask_png`), one per box; they are only size-checked here.

    ``width`` and ``height`` are checked against the encoded image's header: a JPEG whose EXIF
    orientation swaps its sides must be re-encoded upright first, because TensorFlow does not apply
    EXIF orientation while CVAT's coordinates do.
    """
    image_format = _IMAGE_FORMATS.get(image_format.lower(), "")
    if not image_format:
        raise ValueError("image_format must be 'jpeg' or 'png'")
    if width <= 0 or height <= 0:
        raise ValueError(f"{filename}: image size must be positive, got {width}x{height}")
    try:
        actual = _image_size(encoded, image_format)
    except ValueError as error:
        raise ValueError(f"{filename}: {error}") from None
    if actual != (width, height):
        raise ValueError(
            f"{filename}: the {image_format.upper()} is {actual[0]}x{actual[1]} but width/height say {width}x{height}"
            " (EXIF orientation? re-encode the image upright first)"
        )
    if isinstance(source_id, bool) or operator.index(source_id) < 0:
        raise ValueError(f"{filename}: source_id must be a non-negative integer, got {source_id!r}")
    count = len(boxes)
    crowd = [False] * count if is_crowd is None else list(is_crowd)
    optional = {"labels": labels, "texts": texts, "is_crowd": crowd}
    if areas is not None:
        optional["areas"] = areas
    if masks_png is not None:
        optional["masks_png"] = masks_png
    for name, values in optional.items():
        if len(values) != count:
            raise ValueError(f"{filename}: {len(values)} {name} for {count} boxes")
    checked = [_check_box(i, box, width, height) for i, box in enumerate(boxes)]
    for i, label in enumerate(labels):
        if isinstance(label, bool) or operator.index(label) < 1:
            raise ValueError(f"{filename}: label {i} must be a 1-based class id, got {label!r}")
    for i, mask in enumerate(masks_png or ()):
        try:
            mask_size = png_size(mask)
        except ValueError as error:
            raise ValueError(f"{filename}: mask {i}: {error}") from None
        if mask_size != (width, height):
            raise ValueError(f"{filename}: mask {i} is {mask_size[0]}x{mask_size[1]}, the image is {width}x{height}")
    box_areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in checked] if areas is None else list(areas)

    features: dict[str, Feature] = {
        "image/encoded": BytesList([encoded]),
        "image/format": BytesList([image_format.encode()]),
        "image/height": Int64List([height]),
        "image/width": Int64List([width]),
        "image/source_id": BytesList([str(operator.index(source_id)).encode()]),
        "image/filename": BytesList([filename.encode("utf-8")]),
        "image/key/sha256": BytesList([hashlib.sha256(encoded).hexdigest().encode()]),
        "image/object/bbox/xmin": FloatList(b[0] / width for b in checked),
        "image/object/bbox/ymin": FloatList(b[1] / height for b in checked),
        "image/object/bbox/xmax": FloatList(b[2] / width for b in checked),
        "image/object/bbox/ymax": FloatList(b[3] / height for b in checked),
        "image/object/class/label": Int64List(labels),
        "image/object/class/text": BytesList(text.encode("utf-8") for text in texts),
        "image/object/area": FloatList(box_areas),
        "image/object/is_crowd": Int64List(int(bool(c)) for c in crowd),
    }
    if masks_png is not None:
        features["image/object/mask"] = BytesList(masks_png)
    return encode_example(features)
