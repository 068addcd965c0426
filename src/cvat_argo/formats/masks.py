"""Instance masks for Mask R-CNN, rasterised from what people drew in CVAT.

Polygons are filled, CVAT's RLE masks are expanded over their region, and shapes without an outline
(boxes, ellipses' extents) fill their box: every object gets a full-image 0/1 mask, as Model
Garden's decoder expects with ``include_mask``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .annotations import Box, Shape


def rle_region(counts: tuple[int, ...], width: int, height: int) -> np.ndarray:
    """CVAT's mask RLE: run lengths over a width x height region, row-major, starting with zeros."""
    flat = np.zeros(width * height, dtype=np.uint8)
    position, value = 0, 0
    for run in counts:
        if value:
            flat[position:position + run] = 1
        position += run
        value ^= 1
    return flat.reshape(height, width)


def instance_mask(shape: Shape, box: Box, width: int, height: int) -> np.ndarray:
    """A (height, width) uint8 array of 0/1 for one object; ``box`` is its clipped extent."""
    mask = np.zeros((height, width), dtype=np.uint8)
    if shape.polygon is not None and len(shape.polygon) >= 6:
        canvas = Image.new("L", (width, height), 0)
        points = list(zip(shape.polygon[0::2], shape.polygon[1::2], strict=True))
        ImageDraw.Draw(canvas).polygon(points, fill=1, outline=1)
        mask = np.asarray(canvas, dtype=np.uint8).copy()
    elif shape.mask is not None:
        left, top, region_width, region_height, counts = shape.mask
        region = rle_region(counts, region_width, region_height)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + region_width, width), min(top + region_height, height)
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] = region[y0 - top:y1 - top, x0 - left:x1 - left]
    if not mask.any():  # a box, or an outline too thin to cover a pixel: the box itself
        x0, y0, x1, y1 = (round(v) for v in box)
        mask[max(y0, 0):max(y1, y0 + 1), max(x0, 0):max(x1, x0 + 1)] = 1
    return mask
