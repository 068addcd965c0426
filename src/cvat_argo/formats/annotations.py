"""The in-memory form of annotations that every reader produces and every writer consumes.

Readers (CVAT XML, COCO) stream :class:`ImageRecord` objects one image at a time, so a stage never
holds a whole task in memory. Coordinates are pixels in the image as CVAT displays it (EXIF
orientation applied), x to the right, y down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

Box = tuple[float, float, float, float]  # x_min, y_min, x_max, y_max

# Shape kinds as CVAT names them (a rotated box is a "box" with rotation != 0).
SHAPE_KINDS = ("box", "polygon", "polyline", "points", "ellipse", "mask", "cuboid", "skeleton")
SOURCES = ("manual", "auto", "semi-auto", "file", "consensus")


@dataclass(frozen=True)
class Shape:
    """One annotated object. ``box`` is its extent (unclipped); None when it has none (an empty mask)."""

    label: str
    kind: str
    box: Box | None
    polygon: tuple[float, ...] | None = None  # flat x0, y0, x1, y1, ... for polygons
    mask: tuple[int, int, int, int, tuple[int, ...]] | None = None  # left, top, width, height, RLE counts
    rotation: float = 0.0
    occluded: bool = False
    z_order: int = 0
    group_id: int | None = None
    source: str = "manual"
    attributes: Mapping[str, str] = field(default_factory=dict)
    score: float | None = None


@dataclass(frozen=True)
class ImageRecord:
    """One image (frame) and its shapes, in the order the export lists them."""

    frame: int
    name: str
    width: int
    height: int
    shapes: tuple[Shape, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSpec:
    name: str
    color: str | None = None
    type: str | None = None
    attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskMeta:
    """What the export says about the task: its labels in order, and its size."""

    labels: tuple[LabelSpec, ...]
    name: str | None = None
    size: int | None = None
    mode: str | None = None  # "annotation" (images) or "interpolation" (video)
    start_frame: int = 0
    stop_frame: int | None = None
    original_size: tuple[int, int] | None = None  # (width, height) of video frames

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)
