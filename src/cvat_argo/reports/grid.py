"""The pre-annotation grid: unannotated images with the boxes the model put on them, readable at a glance.

Each label has its own colour-blind-safe colour (:data:`.plots.LABEL_COLOURS`), and each box a tag
with the label and score on a filled background, so the text stays readable on light and dark
shapes. Where the truth is known (the quickstart's hidden truth), predictions are matched to it as
COCO AP50 and the convert stage's thresholds match them (same label, IoU >= 0.5, one to one,
highest score first): a found object keeps the plain tag, a false positive gets a black "FP" tag,
and an object the model missed is drawn dashed with a "missed" tag.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .plots import label_colour, rgb

#: Same rule as COCO's AP50 and the convert stage's threshold choice (export/thresholds.py MATCH_IOU).
MATCH_IOU = 0.5
CELL_WIDTH = 300  # pixels of one image in the grid: small images are enlarged so the tags stay sharp
COLUMNS = 4
GAP = 8
LINE = 3
DASH = 8  # dash and gap length of a missed object's outline, in grid pixels

FOUND, FALSE_POSITIVE, MISSED, PREDICTED = "found", "false positive", "missed", "predicted"

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Mark:
    """One box to draw: a prediction (``score`` set) or a truth object the model missed (``kind`` MISSED)."""

    label: str
    box: Box  # x0, y0, x1, y1 in the image's pixels
    kind: str = PREDICTED
    score: float | None = None


@dataclass(frozen=True)
class Picture:
    """One image of the grid and what to draw on it."""

    name: str
    path: Path
    marks: tuple[Mark, ...]


def iou(a: Box, b: Box) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def against_truth(predicted: Sequence[Mark], truth: Sequence[tuple[str, Box]],
                  min_iou: float = MATCH_IOU) -> list[Mark]:
    """Predictions marked found or false positive, plus a MISSED mark for each object no prediction took."""
    taken: set[int] = set()
    marks: list[Mark] = []
    for mark in sorted(predicted, key=lambda m: -(m.score or 0.0)):
        best, best_overlap = -1, min_iou
        for index, (label, box) in enumerate(truth):
            if index in taken or label != mark.label:
                continue
            overlap = iou(mark.box, box)
            if overlap >= best_overlap:
                best, best_overlap = index, overlap
        if best >= 0:
            taken.add(best)
        marks.append(Mark(mark.label, mark.box, FOUND if best >= 0 else FALSE_POSITIVE, mark.score))
    marks += [Mark(label, box, MISSED) for index, (label, box) in enumerate(truth) if index not in taken]
    return marks


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _tag_text(mark: Mark) -> str:
    score = f" {mark.score:.2f}" if mark.score is not None else ""
    if mark.kind == MISSED:
        return f"missed {mark.label}"
    if mark.kind == FALSE_POSITIVE:
        return f"FP {mark.label}{score}"
    return f"{mark.label}{score}"


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light tags, white on dark ones (relative luminance)."""
    r, g, b = background
    return (0, 0, 0) if 0.2126 * r + 0.7152 * g + 0.0722 * b > 140 else (255, 255, 255)


def _dashed_rectangle(draw, box: Box, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)),
                               ((x0, y1), (x0, y0))):
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(1, int(length // DASH))
        for step in range(0, steps, 2):
            t0, t1 = step / steps, min(1.0, (step + 1) / steps)
            draw.line((ax + (bx - ax) * t0, ay + (by - ay) * t0, ax + (bx - ax) * t1, ay + (by - ay) * t1),
                      fill=colour, width=LINE)


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _tag(draw, font, box: Box, text: str, background: tuple[int, int, int], foreground: tuple[int, int, int],
         size: tuple[int, int], placed: list[Box]) -> None:
    """The tag above the box, else below it, else inside its top edge, else lower down: never over another tag."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left + 6, bottom - top + 4
    x = min(max(0.0, box[0]), max(0.0, size[0] - width))
    candidates = [box[1] - height, box[3], box[1]] + [box[1] + k * height for k in range(1, 8)]
    spots = [(x, min(max(0.0, y), max(0.0, size[1] - height))) for y in candidates]
    free = [spot for spot in spots if not any(_overlaps((*spot, spot[0] + width, spot[1] + height), other)
                                              for other in placed)]
    x, y = (free or spots)[0]
    placed.append((x, y, x + width, y + height))
    draw.rectangle((x, y, x + width, y + height), fill=background)
    draw.text((x + 3 - left, y + 2 - top), text, font=font, fill=foreground)


def draw_picture(picture: Picture, colours: Mapping[str, str], width: int = CELL_WIDTH):
    """The image scaled to ``width`` pixels with its marks drawn: a PIL image."""
    from PIL import Image, ImageDraw

    image = Image.open(picture.path).convert("RGB")
    scale = width / image.width
    image = image.resize((width, max(1, round(image.height * scale))), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    font = _font(13)
    # misses under predictions, and tags after every outline so no outline crosses a tag
    ordered = sorted(picture.marks, key=lambda m: m.kind != MISSED)
    boxes = [tuple(v * scale for v in mark.box) for mark in ordered]
    for mark, box in zip(ordered, boxes, strict=True):
        colour = rgb(colours.get(mark.label, "#000000"))
        if mark.kind == MISSED:
            _dashed_rectangle(draw, box, colour)  # type: ignore[arg-type]
        else:
            draw.rectangle(box, outline=colour, width=LINE)
    placed: list[Box] = []
    for mark, box in sorted(zip(ordered, boxes, strict=True), key=lambda pair: (pair[1][1], pair[1][0])):
        colour = rgb(colours.get(mark.label, "#000000"))
        if mark.kind == FALSE_POSITIVE:
            background, foreground = (0, 0, 0), (255, 255, 255)
        else:
            background, foreground = colour, _text_colour(colour)
        _tag(draw, font, box, _tag_text(mark), background, foreground, image.size, placed)  # type: ignore[arg-type]
    return image


def _legend(labels: Sequence[str], colours: Mapping[str, str], with_truth: bool, width: int):
    from PIL import Image, ImageDraw

    font = _font(14)
    entries: list[tuple[str, str]] = [(label, colours[label]) for label in labels]
    keys = (["solid + score: found (a true positive)", "black FP tag: false positive (nothing there)",
             "dashed, 'missed': an object the model did not find"] if with_truth
            else ["solid + score: a pre-annotation (the shape CVAT gets)"])
    image = Image.new("RGB", (width, 30 + 22 * len(keys)), "white")
    draw = ImageDraw.Draw(image)
    x = 4
    for label, colour in entries:
        draw.rectangle((x, 6, x + 18, 22), fill=rgb(colour))
        draw.text((x + 24, 6), label, font=font, fill=(0, 0, 0))
        x += 40 + int(draw.textlength(label, font=font))
    for row, key in enumerate(keys):
        draw.text((4, 30 + 22 * row), key, font=font, fill=(0, 0, 0))
    return image


def draw_grid(pictures: Sequence[Picture], labels: Sequence[str], out: Path, *, with_truth: bool) -> Path:
    """``pictures`` in rows of :data:`COLUMNS`, each with its file name, and a legend of colours and marks."""
    from PIL import Image, ImageDraw

    colours = {label: label_colour(index) for index, label in enumerate(labels)}
    drawn = [draw_picture(picture, colours) for picture in pictures]
    columns = min(COLUMNS, len(drawn))
    caption = 18
    cell_height = max(image.height for image in drawn) + caption
    rows = (len(drawn) + columns - 1) // columns
    width = columns * CELL_WIDTH + (columns + 1) * GAP
    legend = _legend(labels, colours, with_truth, width - 2 * GAP)
    grid = Image.new("RGB", (width, rows * (cell_height + GAP) + GAP + legend.height + GAP), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(12)
    for index, (picture, image) in enumerate(zip(pictures, drawn, strict=True)):
        x = GAP + (index % columns) * (CELL_WIDTH + GAP)
        y = GAP + (index // columns) * (cell_height + GAP)
        grid.paste(image, (x, y))
        draw.text((x, y + image.height + 2), picture.name, font=font, fill=(60, 60, 60))
    grid.paste(legend, (GAP, rows * (cell_height + GAP) + GAP))
    grid.save(out)
    return out


def tally(marks: Iterable[Mark]) -> dict[str, int]:
    """How many marks of each kind: found, false positive, missed (and plain predictions)."""
    counts = {FOUND: 0, FALSE_POSITIVE: 0, MISSED: 0, PREDICTED: 0}
    for mark in marks:
        counts[mark.kind] += 1
    return counts
