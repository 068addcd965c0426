"""Pre-annotations into a live CVAT task: appended as ``source="auto"``, never over people's work.

Rules, in this order, per frame of the task:

1. A frame with any *human* object is left alone. Human means any shape, tag or track whose
   ``source`` is not ``"auto"`` (``manual``, ``semi-auto`` (a person corrected a machine shape),
   ``file``, ``consensus``, ...). A track counts on every frame from its first listed frame to its
   last visible one (to the end of the task when no ``outside`` frame closes it).
2. A frame whose machine shapes (``source="auto"``) are all among our predictions gets the
   predictions that are not there yet. A machine shape is "ours" when it has the same label and its
   box is within ``tolerance`` pixels of a prediction's box on every side: that is how a re-run
   recognises what an earlier run added, so re-running never duplicates.
3. A frame with a machine shape that is not ours (another model, another threshold that dropped it)
   is left alone too: adding ours would show people two versions of one object.

Shapes are only ever added (``PATCH .../annotations?action=create``); nothing is updated or deleted.
Requests go through cvat-sdk's API client; responses are read as plain JSON so that servers older
or newer than the SDK work (the SDK 2.80 refuses old servers unless the version check is off).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import DatasetError
from ..formats.annotations import ImageRecord, LabelSpec, Shape
from .server import lenient_json, readable_error

DEFAULT_TOLERANCE = 1.0  # pixels; CVAT keeps coordinates as floats, so a round trip moves nothing
CHUNK_SHAPES = 2000  # shapes per PATCH request


# --- the task as the server describes it ---------------------------------------------------------


@dataclass(frozen=True)
class TaskAttribute:
    id: int
    name: str
    input_type: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskLabel:
    id: int
    name: str
    type: str = "any"
    attributes: Mapping[str, TaskAttribute] = field(default_factory=dict)

    def spec(self) -> LabelSpec:
        """The label as our CVAT XML writer describes it (names of its attributes)."""
        return LabelSpec(self.name, type=self.type, attributes=tuple(self.attributes))


@dataclass(frozen=True)
class ExistingShape:
    frame: int
    label: str
    box: tuple[float, float, float, float]


@dataclass
class TaskState:
    """What the task already holds, reduced to what the upload decides on."""

    human_frames: set[int] = field(default_factory=set)
    auto_shapes: dict[int, list[ExistingShape]] = field(default_factory=lambda: defaultdict(list))


def parse_labels(results: Iterable[Mapping[str, Any]]) -> dict[str, TaskLabel]:
    """Top-level labels from ``GET /api/labels?task_id=`` results (skeleton parts are left out)."""
    labels = {}
    for raw in results:
        if raw.get("parent_id") is not None or raw.get("parent") is not None:
            continue
        attributes = {
            a["name"]: TaskAttribute(int(a["id"]), a["name"], str(a.get("input_type", "text")),
                                     tuple(str(v) for v in a.get("values") or ()))
            for a in raw.get("attributes") or ()
        }
        labels[raw["name"]] = TaskLabel(int(raw["id"]), raw["name"], str(raw.get("type") or "any"), attributes)
    return labels


def _extent(points: Sequence[float]) -> tuple[float, float, float, float]:
    xs, ys = points[0::2], points[1::2]
    return (min(xs), min(ys), max(xs), max(ys))


def parse_annotations(data: Mapping[str, Any], label_names: Mapping[int, str], size: int | None = None) -> TaskState:
    """The task's annotations (``GET /api/tasks/{id}/annotations``) -> human frames, machine shapes."""
    state = TaskState()
    for tag in data.get("tags") or ():
        if tag.get("source") != "auto":
            state.human_frames.add(int(tag["frame"]))
    for raw in data.get("shapes") or ():
        frame = int(raw["frame"])
        if raw.get("source") != "auto":
            state.human_frames.add(frame)
        elif raw.get("points"):
            label = label_names.get(int(raw["label_id"]), f"<label {raw['label_id']}>")
            state.auto_shapes[frame].append(ExistingShape(frame, label, _extent(raw["points"])))
    for track in data.get("tracks") or ():
        if track.get("source") == "auto":
            continue  # a machine track is not ours to match, but not people's work either
        listed = sorted(track.get("shapes") or (), key=lambda s: int(s["frame"]))
        if not listed:
            continue
        first, last = int(listed[0]["frame"]), int(listed[-1]["frame"])
        if listed[-1].get("outside"):
            last -= 1  # hidden from its closing frame on
        elif size is not None:
            last = max(last, size - 1)  # visible to the end of the task
        state.human_frames.update(range(first, last + 1))
    return state


# --- what to add ---------------------------------------------------------------------------------


@dataclass
class UploadPlan:
    create: dict[int, list[Shape]] = field(default_factory=dict)
    frames_human: list[int] = field(default_factory=list)
    frames_other_auto: list[int] = field(default_factory=list)
    already_present: int = 0

    @property
    def shapes(self) -> int:
        return sum(len(shapes) for shapes in self.create.values())

    def summary(self, task_id: int, dry_run: bool) -> dict[str, Any]:
        return {"task_id": task_id, "dry_run": dry_run, "created": self.shapes, "frames_created": len(self.create),
                "frames_human": len(self.frames_human), "frames_other_auto": len(self.frames_other_auto),
                "already_present": self.already_present}


def _same(existing: ExistingShape, shape: Shape, tolerance: float) -> bool:
    return existing.label == shape.label and shape.box is not None and all(
        abs(a - b) <= tolerance for a, b in zip(existing.box, shape.box, strict=True))


def plan_upload(predictions: Mapping[int, Sequence[Shape]], state: TaskState,
                tolerance: float = DEFAULT_TOLERANCE) -> UploadPlan:
    """Which predicted shapes to add to which frame (see the module's rules)."""
    plan = UploadPlan()
    for frame in sorted(predictions):
        shapes = predictions[frame]
        if frame in state.human_frames:
            plan.frames_human.append(frame)
            continue
        existing = state.auto_shapes.get(frame, [])
        if not all(any(_same(e, s, tolerance) for s in shapes) for e in existing):
            plan.frames_other_auto.append(frame)
            continue
        new = [s for s in shapes if not any(_same(e, s, tolerance) for e in existing)]
        plan.already_present += len(shapes) - len(new)
        if new:
            plan.create[frame] = new
    return plan


def check_labels(model_labels: Sequence[str], task_labels: Iterable[str], task: str) -> None:
    """Every label the model predicts must exist in the task, by exact name: refuse before any upload."""
    known = list(task_labels)
    missing = [name for name in model_labels if name not in known]
    if missing:
        raise DatasetError(
            f"{task} lacks the model's label(s) {', '.join(repr(m) for m in missing)} (task labels: "
            f"{', '.join(known) or 'none'}): add them to the task in CVAT, or pre-annotate another task; "
            "nothing was uploaded"
        )


def score_value(score: float, attribute: TaskAttribute) -> str | None:
    """The score as the task's ``score`` attribute can hold it; None when it cannot.

    CVAT number attributes are whole numbers ``min;max;step``: 0..100 holds a percentage. A text
    attribute holds the score with three decimals.
    """
    if attribute.input_type == "text":
        return f"{score:.3f}"
    if attribute.input_type == "number" and len(attribute.values) == 3:
        try:
            low, high, step = (float(v) for v in attribute.values)
        except ValueError:
            return None
        if step <= 0 or high <= low:
            return None
        value = low + round(score * (high - low) / step) * step
        value = min(max(value, low), high)
        return str(int(value)) if all(float(v).is_integer() for v in attribute.values) else f"{value:g}"
    return None


def shape_request(shape: Shape, frame: int, label: TaskLabel):
    """The cvat-sdk request object for one of our shapes (rectangle or polygon, source auto)."""
    from cvat_sdk import models

    if shape.kind == "polygon" and shape.polygon:
        kind, points = "polygon", [round(v, 2) for v in shape.polygon]
    else:
        kind, points = "rectangle", [round(v, 2) for v in shape.box]  # type: ignore[union-attr]
    attributes = []
    score_attribute = label.attributes.get("score")
    if score_attribute is not None and shape.score is not None:
        value = score_value(shape.score, score_attribute)
        if value is not None:
            attributes.append(models.AttributeValRequest(spec_id=score_attribute.id, value=value))
    return models.LabeledShapeRequest(type=kind, frame=frame, label_id=label.id, points=points, source="auto",
                                      occluded=False, z_order=0, rotation=0.0, group=0, attributes=attributes)


# --- talking to the server -----------------------------------------------------------------------


class CvatTask:
    """The few task endpoints the upload needs, answers read as JSON."""

    def __init__(self, client: Any, task_id: int):
        self.client, self.task_id = client, int(task_id)
        self.host = client.api_map.host

    def _get(self, what: str, call, *args, **kwargs) -> Any:
        try:
            return lenient_json(call, *args, **kwargs)
        except json.JSONDecodeError:
            raise  # an answer that is not JSON is no request failure
        except Exception as exc:
            raise readable_error(exc, self.host, what) from None

    def labels(self) -> dict[str, TaskLabel]:
        results, page = [], 1
        while True:
            data = self._get(f"task {self.task_id} labels", self.client.api_client.labels_api.list,
                             task_id=self.task_id, page=page)
            results += data.get("results", [])
            if not data.get("next"):
                return parse_labels(results)
            page += 1

    def frames(self) -> tuple[list[str], set[int], int | None]:
        """Frame names (image tasks), deleted frames and the task size."""
        meta = self._get(f"task {self.task_id} data", self.client.api_client.tasks_api.retrieve_data_meta,
                         self.task_id)
        names = [str(f.get("name", "")) for f in meta.get("frames") or ()]
        size = meta.get("size")
        return names, {int(f) for f in meta.get("deleted_frames") or ()}, int(size) if size is not None else None

    def annotations(self) -> dict[str, Any]:
        return self._get(f"task {self.task_id} annotations", self.client.api_client.tasks_api.retrieve_annotations,
                         self.task_id)

    def append(self, requests: list[Any]) -> None:
        from cvat_sdk import models

        try:
            self.client.api_client.tasks_api.partial_update_annotations(
                "create", self.task_id, patched_labeled_data_request=models.PatchedLabeledDataRequest(shapes=requests),
                _parse_response=False)
        except Exception as exc:
            raise readable_error(exc, self.host, f"adding shapes to task {self.task_id}") from None


def _same_name(ours: str, theirs: str) -> bool:
    """CVAT may list ``images/a.jpg`` where an export says ``a.jpg`` (or the reverse)."""
    return ours == theirs or ours.endswith("/" + theirs) or theirs.endswith("/" + ours)


def check_frames(records: Iterable[ImageRecord], names: Sequence[str], deleted: set[int], task: str) -> list[int]:
    """Refuse predictions for another task's images; return our frames the task has deleted."""
    gone = []
    for record in records:
        if record.frame in deleted:
            gone.append(record.frame)
            continue
        if len(names) > 1 and (record.frame >= len(names) or not _same_name(record.name, names[record.frame])):
            found = names[record.frame] if record.frame < len(names) else "no such frame"
            raise DatasetError(f"{task}: frame {record.frame} is {found!r}, the pre-annotations say {record.name!r}: "
                               "the dataset comes from another task (check --cvat-task-id); nothing was uploaded")
    return gone


def upload(client: Any, task_id: int, records: Sequence[ImageRecord], model_labels: Sequence[str], *,
           dry_run: bool = False, tolerance: float = DEFAULT_TOLERANCE, progress: Any = None) -> dict[str, Any]:
    """Add the records' shapes to the task by the module's rules; returns counts (also for a dry run)."""
    task = CvatTask(client, task_id)
    where = f"CVAT task {task_id} at {task.host}"
    labels = task.labels()
    check_labels(model_labels, labels, where)
    names, deleted, size = task.frames()
    gone = set(check_frames(records, names, deleted, where))
    state = parse_annotations(task.annotations(), {label.id: label.name for label in labels.values()}, size)
    predictions = {r.frame: list(r.shapes) for r in records if r.shapes and r.frame not in gone}
    plan = plan_upload(predictions, state, tolerance)
    if not dry_run:
        batch: list[Any] = []
        for frame, shapes in plan.create.items():
            batch += [shape_request(shape, frame, labels[shape.label]) for shape in shapes]
            if len(batch) >= CHUNK_SHAPES:
                task.append(batch)
                if progress is not None:
                    progress.update(len(batch))
                batch = []
        if batch:
            task.append(batch)
            if progress is not None:
                progress.update(len(batch))
    return {**plan.summary(task_id, dry_run), "frames_deleted_in_task": len(gone)}


def task_label_specs(client: Any, task_id: int) -> dict[str, TaskLabel]:
    """The task's labels (for the XML's meta and the label check before inference)."""
    return CvatTask(client, task_id).labels()
