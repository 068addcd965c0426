"""Axis-aligned extents of CVAT shapes, so every shape kind can feed a box detector.

A detector learns axis-aligned boxes, but CVAT users draw rotated boxes, ellipses, polygons, masks,
cuboids and skeletons. Each function here reduces one of those to the tight :data:`Box` that
encloses it, in image pixels (x to the right, y down). They are pure functions of numbers: no XML,
no numpy, so the readers and the tests can check them against hand-computed values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cvat_argo.formats.annotations import Box


def rotated_box_extent(xtl: float, ytl: float, xbr: float, ybr: float, rotation_degrees: float) -> Box:
    """The box enclosing CVAT's box ``xtl..xbr, ytl..ybr`` turned by ``rotation_degrees`` about its centre.

    CVAT turns clockwise on screen; the extent of a rectangle is the same for either direction, so
    the sign does not matter here. Multiples of 90 degrees are computed exactly (no 1e-16 noise), as
    most "rotated" boxes in practice are not rotated at all.
    """
    x_min, x_max = sorted((xtl, xbr))
    y_min, y_max = sorted((ytl, ybr))
    cx, cy = (x_min + x_max) / 2, (y_min + y_max) / 2
    width, height = x_max - x_min, y_max - y_min
    quarter_turns, remainder = divmod(rotation_degrees, 90.0)
    if remainder == 0:
        if int(quarter_turns) % 2 == 0:
            return (x_min, y_min, x_max, y_max)
        return (cx - height / 2, cy - width / 2, cx + height / 2, cy + width / 2)
    theta = math.radians(rotation_degrees)
    cos, sin = abs(math.cos(theta)), abs(math.sin(theta))
    half_w = (width * cos + height * sin) / 2
    half_h = (width * sin + height * cos) / 2
    return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def points_extent(flat_xy: Sequence[float]) -> Box:
    """The box enclosing points given flat as ``x0, y0, x1, y1, ...`` (polygons, polylines, cuboids)."""
    if not flat_xy or len(flat_xy) % 2:
        raise ValueError(f"expected a non-empty, even number of coordinates, got {len(flat_xy)}")
    xs, ys = flat_xy[0::2], flat_xy[1::2]
    return (min(xs), min(ys), max(xs), max(ys))


def ellipse_extent(cx: float, cy: float, rx: float, ry: float, rotation_degrees: float = 0) -> Box:
    """The exact box enclosing an ellipse with radii ``rx``, ``ry`` turned by ``rotation_degrees``.

    For a turned ellipse the half width is ``sqrt((rx cos t)^2 + (ry sin t)^2)``, not the extent of
    its turned bounding box, which would be too loose by up to 41 %.
    """
    theta = math.radians(rotation_degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    rx, ry = abs(rx), abs(ry)
    half_w = math.hypot(rx * cos, ry * sin)
    half_h = math.hypot(rx * sin, ry * cos)
    return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def mask_extent(rle_counts: Sequence[int], left: int, top: int, width: int, height: int) -> Box | None:
    """The tight box of the set pixels of a CVAT XML mask, or None when no pixel is set.

    CVAT stores a mask as run lengths over its ``width`` x ``height`` region in row-major order,
    starting with a run of 0s (which may be 0 long). The result is in image pixels with exclusive
    maximum edges (``x_max`` = last set column + 1), like a box drawn around whole pixels. Walks the
    runs only, so a large sparse mask costs no more than its run count.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"mask region must be positive, got width={width} height={height}")
    row_min = col_min = math.inf
    row_max = col_max = -math.inf
    position = 0
    for index, run in enumerate(rle_counts):
        if run < 0:
            raise ValueError(f"negative run length {run} in mask RLE")
        if index % 2 and run:
            first, last = position, position + run - 1
            first_row, last_row = divmod(first, width)[0], divmod(last, width)[0]
            row_min, row_max = min(row_min, first_row), max(row_max, last_row)
            if first_row == last_row:
                col_min, col_max = min(col_min, first % width), max(col_max, last % width)
            else:  # the run wraps onto the next row, so it touches both the first and last column
                col_min, col_max = 0, width - 1
        position += run
    if position > width * height:
        raise ValueError(f"mask RLE covers {position} pixels, more than its {width}x{height} region")
    if row_max < 0:
        return None
    return (float(left + col_min), float(top + row_min), float(left + col_max + 1), float(top + row_max + 1))


def clip_box(box: Box, width: float, height: float) -> Box:
    """``box`` clipped to the image ``0..width, 0..height``; a box wholly outside becomes zero-area."""
    x_min, y_min, x_max, y_max = box
    x_min, x_max = (min(max(value, 0.0), width) for value in (x_min, x_max))
    y_min, y_max = (min(max(value, 0.0), height) for value in (y_min, y_max))
    return (x_min, y_min, x_max, y_max)


def box_area(box: Box) -> float:
    """Area of ``box``; 0 for an empty or inverted one, so callers can filter degenerate shapes."""
    x_min, y_min, x_max, y_max = box
    return max(0.0, x_max - x_min) * max(0.0, y_max - y_min)
