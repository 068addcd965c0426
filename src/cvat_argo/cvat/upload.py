"""Pre-annotations into a live CVAT task as ``source="auto"`` shapes: never over people's work, and
nothing a person removed ever comes back.

Every frame the model ran on is decided by the first of these rules that holds:

1. **Ground truth** (:func:`cvat_argo.cvat.review.frame_kind`): a frame with any shape, tag or track a
   person made or touched (any ``source`` but ``auto``), or any frame of a job that is completed or in
   the validation or acceptance stage. Never touched, not even with ``refresh``.
2. **Ours**: the task's upload ledger (:mod:`cvat_argo.cvat.ledger`) lists the frame. Left alone, even
   when a reviewer deleted some of our shapes there: what a person removed stays removed. With
   ``refresh`` (opt-in, for a retrained model): if the frame's machine shapes are exactly the ones the
   ledger lists (same count; same label, box within ``tolerance`` pixels, same id where the ledger has
   it), our old shapes are deleted and the new predictions added. A shape moved (through the API it
   stays ``auto``), deleted or added since is a person's edit and ends our right to touch the frame.
3. **Someone else's machine shapes**: ``auto`` shapes (or tags, tracks) the ledger does not list,
   from another model, another tool, or a run whose ledger was lost. Left alone: adding ours would
   show people two versions of one object.
4. **Empty**, in a job nobody finished or reviewed: the predictions are added.

Without a ledger every frame that holds machine shapes falls under rule 3: conservative, never wrong.

Changes are ``PATCH /api/tasks/{id}/annotations`` with ``action=delete`` (our old shapes, by id; only
in a refresh) and ``action=create``, a chunk of frames at a time. After each request the server
accepted, the ledger is saved, so an interrupted upload leaves a ledger that lists exactly what the
task holds of ours, and a re-run adds the rest without duplicates. A dry run sends no change and
writes no ledger. Requests go through cvat-sdk's API client; answers are read as plain JSON so that
servers older or newer than the SDK work (the SDK 2.80 refuses old servers unless the version check
is off).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

from ..errors import DatasetError
from ..formats.annotations import ImageRecord, LabelSpec, Shape
from .ledger import Ledger, LedgerFrame, LedgerShape
from .review import GROUND_TRUTH, MACHINE_SOURCE, frame_kind
from .server import lenient_json, readable_error, reviewed_frames

DEFAULT_TOLERANCE = 1.0  # pixels; CVAT keeps coordinates as floats, so a round trip moves nothing
CHUNK_SHAPES = 2000  # shapes per PATCH request

Box = tuple[float, float, float, float]


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
    """A machine annotation in the task: what matching reads, and what a delete request sends back."""

    frame: int
    label: str
    box: Box | None  # None: a tag or track, never one of ours
    id: int | None = None
    label_id: int | None = None
    type: str = "rectangle"
    points: tuple[float, ...] = ()


@dataclass
class TaskState:
    """What the task already holds, reduced to what the upload decides on."""

    present: dict[int, list[Shape]] = field(default_factory=lambda: defaultdict(list))  # every annotation, by source
    auto_shapes: dict[int, list[ExistingShape]] = field(default_factory=lambda: defaultdict(list))
    reviewed: set[int] = field(default_factory=set)  # frames of completed, validation or acceptance jobs

    def kind(self, frame: int) -> str:
        return frame_kind(self.present.get(frame, ()), frame in self.reviewed)

    def has_human_work(self, frame: int) -> bool:
        return frame_kind(self.present.get(frame, ()), reviewed=False) == GROUND_TRUTH


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


def _extent(points: Sequence[float]) -> Box:
    xs, ys = points[0::2], points[1::2]
    return (min(xs), min(ys), max(xs), max(ys))


def parse_annotations(data: Mapping[str, Any], label_names: Mapping[int, str], size: int | None = None,
                      reviewed: Iterable[int] = ()) -> TaskState:
    """The task's annotations (``GET /api/tasks/{id}/annotations``) and reviewed frames -> a TaskState."""
    state = TaskState(reviewed=set(reviewed))

    def label(raw: Mapping[str, Any]) -> str:
        return label_names.get(int(raw["label_id"]), f"<label {raw['label_id']}>")

    def add(frame: int, raw: Mapping[str, Any], kind: str, machine: ExistingShape | None = None) -> None:
        source = str(raw.get("source") or "manual")
        state.present[frame].append(Shape(label(raw), kind, machine.box if machine else None, source=source))
        if source == MACHINE_SOURCE:
            state.auto_shapes[frame].append(machine or ExistingShape(frame, label(raw), None))

    for tag in data.get("tags") or ():
        add(int(tag["frame"]), tag, "tag")
    for raw in data.get("shapes") or ():
        frame, points = int(raw["frame"]), tuple(float(v) for v in raw.get("points") or ())
        machine = ExistingShape(frame, label(raw), _extent(points) if points else None, raw.get("id"),
                                int(raw["label_id"]), str(raw.get("type") or "rectangle"), points)
        add(frame, raw, str(raw.get("type") or "shape"), machine)
    for track in data.get("tracks") or ():
        listed = sorted(track.get("shapes") or (), key=lambda s: int(s["frame"]))
        if not listed:
            continue
        first, last = int(listed[0]["frame"]), int(listed[-1]["frame"])
        if listed[-1].get("outside"):
            last -= 1  # hidden from its closing frame on
        elif size is not None:
            last = max(last, size - 1)  # visible to the end of the task
        for frame in range(first, last + 1):
            add(frame, track, "track")
    return state


# --- what to change ------------------------------------------------------------------------------


@dataclass
class UploadPlan:
    create: dict[int, list[Shape]] = field(default_factory=dict)
    delete: dict[int, list[ExistingShape]] = field(default_factory=dict)  # a refresh: our old shapes
    frames_human: list[int] = field(default_factory=list)  # people's shapes, tags or tracks
    frames_reviewed: list[int] = field(default_factory=list)  # no people's shapes, but a reviewed job
    frames_ours_kept: list[int] = field(default_factory=list)  # ours (ledger), left as they are
    frames_ours_edited: list[int] = field(default_factory=list)  # ours, edited since: --refresh leaves them
    frames_refreshed: list[int] = field(default_factory=list)  # ours, replaced by the new predictions
    frames_other_auto: list[int] = field(default_factory=list)  # machine shapes the ledger does not list
    already_present: int = 0  # predictions already in the task, on frames left alone

    @property
    def shapes(self) -> int:
        return sum(len(shapes) for shapes in self.create.values())

    def summary(self, task_id: int, dry_run: bool) -> dict[str, Any]:
        return {"task_id": task_id, "dry_run": dry_run, "created": self.shapes, "frames_created": len(self.create),
                "frames_human": len(self.frames_human), "frames_other_auto": len(self.frames_other_auto),
                "already_present": self.already_present, "frames_reviewed": len(self.frames_reviewed),
                "frames_ours_kept": len(self.frames_ours_kept), "frames_ours_edited": len(self.frames_ours_edited),
                "frames_refreshed": len(self.frames_refreshed),
                "shapes_deleted": sum(len(shapes) for shapes in self.delete.values())}


def _same(existing: ExistingShape, label: str, box: Sequence[float] | None, tolerance: float) -> bool:
    return existing.label == label and existing.box is not None and box is not None and all(
        abs(a - b) <= tolerance for a, b in zip(existing.box, box, strict=True))


def _matched(existing: Sequence[ExistingShape], wanted: Sequence[tuple[str, Sequence[float] | None, int | None]],
             tolerance: float) -> int:
    """How many of ``wanted`` (label, box, id or None) have their own shape in ``existing``, one to one."""
    left, found = list(existing), 0
    for label, box, shape_id in wanted:
        match = next((e for e in left if _same(e, label, box, tolerance) and shape_id in (None, e.id)), None)
        if match is not None:
            left.remove(match)
            found += 1
    return found


def _exactly(existing: Sequence[ExistingShape], wanted: Sequence[tuple[str, Sequence[float] | None, int | None]],
             tolerance: float) -> bool:
    return len(existing) == len(wanted) == _matched(existing, wanted, tolerance)


def plan_upload(predictions: Mapping[int, Sequence[Shape]], state: TaskState,
                ours: Mapping[int, LedgerFrame] | None = None, *, refresh: bool = False,
                tolerance: float = DEFAULT_TOLERANCE) -> UploadPlan:
    """What to add to (and, in a refresh, delete from) which frame: the module's rules, in order.

    ``predictions`` holds every frame the model ran on, empty ones too: a refresh removes our old
    shapes from a frame where the new model finds nothing. ``ours``: the ledger's frames.
    """
    plan, ours = UploadPlan(), ours or {}
    for frame in sorted(predictions):
        shapes = list(predictions[frame])
        entry = ours.get(frame)
        if not shapes and not (refresh and entry is not None):
            continue  # nothing to add, nothing to replace
        if state.kind(frame) == GROUND_TRUTH:
            (plan.frames_human if state.has_human_work(frame) else plan.frames_reviewed).append(frame)
            continue
        existing = state.auto_shapes.get(frame, [])
        if entry is None and not existing:
            plan.create[frame] = shapes
            continue
        predicted = [(s.label, s.box, None) for s in shapes]
        listed = [(s.label, s.box, s.id) for s in entry.shapes] if entry is not None else []
        if entry is not None and refresh and _exactly(existing, listed, tolerance):
            if _exactly(existing, predicted, tolerance):  # the new model proposes what is there already
                plan.frames_ours_kept.append(frame)
                plan.already_present += len(shapes)
                continue
            plan.delete[frame] = list(existing)
            if shapes:
                plan.create[frame] = shapes
            plan.frames_refreshed.append(frame)
            continue
        if entry is None:
            plan.frames_other_auto.append(frame)
        else:
            (plan.frames_ours_edited if refresh else plan.frames_ours_kept).append(frame)
        plan.already_present += _matched(existing, predicted, tolerance)
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


def shape_points(shape: Shape) -> tuple[str, list[float]]:
    """(CVAT shape type, points) as we send one of our shapes: a polygon's outline, else a box's corners."""
    if shape.kind == "polygon" and shape.polygon:
        return "polygon", [round(v, 2) for v in shape.polygon]
    return "rectangle", [round(v, 2) for v in shape.box]  # type: ignore[union-attr]


def shape_request(shape: Shape, frame: int, label: TaskLabel):
    """The cvat-sdk request object for one of our shapes (rectangle or polygon, source auto)."""
    from cvat_sdk import models

    kind, points = shape_points(shape)
    attributes = []
    score_attribute = label.attributes.get("score")
    if score_attribute is not None and shape.score is not None:
        value = score_value(shape.score, score_attribute)
        if value is not None:
            attributes.append(models.AttributeValRequest(spec_id=score_attribute.id, value=value))
    return models.LabeledShapeRequest(type=kind, frame=frame, label_id=label.id, points=points, source="auto",
                                      occluded=False, z_order=0, rotation=0.0, group=0, attributes=attributes)


def delete_request(shape: ExistingShape):
    """The request naming one of our old shapes for ``action=delete`` (CVAT deletes by id; the serializer
    still wants the shape's type, frame and label)."""
    from cvat_sdk import models

    return models.LabeledShapeRequest(id=shape.id, type=shape.type, frame=shape.frame, label_id=shape.label_id,
                                      points=list(shape.points), source=MACHINE_SOURCE)


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

    def _pages(self, what: str, call, **kwargs) -> list[dict[str, Any]]:
        results, page = [], 1
        while True:
            data = self._get(what, call, page=page, **kwargs)
            results += data.get("results", [])
            if not data.get("next"):
                return results
            page += 1

    def labels(self) -> dict[str, TaskLabel]:
        return parse_labels(self._pages(f"task {self.task_id} labels", self.client.api_client.labels_api.list,
                                        task_id=self.task_id))

    def frames(self) -> tuple[list[str], set[int], int | None]:
        """Frame names (image tasks), deleted frames and the task size."""
        meta = self._get(f"task {self.task_id} data", self.client.api_client.tasks_api.retrieve_data_meta,
                         self.task_id)
        names = [str(f.get("name", "")) for f in meta.get("frames") or ()]
        size = meta.get("size")
        return names, {int(f) for f in meta.get("deleted_frames") or ()}, int(size) if size is not None else None

    def reviewed(self) -> set[int]:
        """Frames of the task's jobs that are completed or in validation/acceptance (the state the server reports)."""
        jobs_api = self.client.api_client.jobs_api
        jobs = [SimpleNamespace(**job) for job in self._pages(f"task {self.task_id} jobs", jobs_api.list,
                                                                task_id=self.task_id)]
        return reviewed_frames(jobs, lambda job: self._get(f"job {job.id} data", jobs_api.retrieve_data_meta, job.id))

    def annotations(self) -> dict[str, Any]:
        return self._get(f"task {self.task_id} annotations", self.client.api_client.tasks_api.retrieve_annotations,
                         self.task_id)

    def _patch(self, action: str, requests: list[Any], what: str) -> dict[str, Any]:
        from cvat_sdk import models

        try:
            _, response = self.client.api_client.tasks_api.partial_update_annotations(
                action, self.task_id, patched_labeled_data_request=models.PatchedLabeledDataRequest(shapes=requests),
                _parse_response=False)
        except Exception as exc:
            raise readable_error(exc, self.host, f"{what} task {self.task_id}") from None
        try:
            answer = json.loads(response.data or b"{}")
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {}

    def append(self, requests: list[Any]) -> list[dict[str, Any]]:
        """Create the shapes; returns the shapes the server says it created (with their ids), if it says."""
        return list(self._patch("create", requests, "adding shapes to").get("shapes") or ())

    def delete(self, requests: list[Any]) -> None:
        self._patch("delete", requests, "deleting our old shapes from")


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


# --- carrying the plan out -----------------------------------------------------------------------


def _chunks(plan: UploadPlan, limit: int) -> Iterator[list[int]]:
    """The changed frames in order, in groups of at most ``limit`` shapes to add (a frame is never split)."""
    frames: list[int] = []
    size = 0
    for frame in sorted(set(plan.create) | set(plan.delete)):
        weight = max(len(plan.create.get(frame, ())), len(plan.delete.get(frame, ())), 1)
        if frames and size + weight > limit:
            yield frames
            frames, size = [], 0
        frames.append(frame)
        size += weight
    if frames:
        yield frames


def _created(sent: Sequence[tuple[int, Shape, int]],
             answer: Sequence[Mapping[str, Any]]) -> dict[int, list[LedgerShape]]:
    """Our shapes as the ledger records them, with the ids the server gave them (matched by frame, label
    and points, since a server may answer in another order)."""
    ids: dict[tuple[int, int, tuple[float, ...]], list[int]] = defaultdict(list)
    for raw in answer:
        if raw.get("id") is not None:
            key = (int(raw["frame"]), int(raw["label_id"]), tuple(round(float(v), 2) for v in raw.get("points") or ()))
            ids[key].append(int(raw["id"]))
    entries: dict[int, list[LedgerShape]] = defaultdict(list)
    for frame, shape, label_id in sent:
        points = shape_points(shape)[1]
        found = ids.get((frame, label_id, tuple(points)))
        entries[frame].append(LedgerShape(shape.label, _extent(points), found.pop(0) if found else None))
    return entries


def _apply(task: CvatTask, plan: UploadPlan, labels: Mapping[str, TaskLabel], ledger: Ledger | None, run: str,
           chunk_shapes: int, progress: Any) -> None:
    """Send the plan, chunk by chunk; save the ledger after every request the server accepted."""
    for frames in _chunks(plan, chunk_shapes):
        doomed = [shape for frame in frames for shape in plan.delete.get(frame, ())]
        if doomed:
            task.delete([delete_request(shape) for shape in doomed])
            if ledger is not None:
                ledger.deleted(frame for frame in frames if frame in plan.delete)
                ledger.save()
        sent = [(frame, shape, labels[shape.label].id) for frame in frames for shape in plan.create.get(frame, ())]
        if not sent:
            continue
        answer = task.append([shape_request(shape, frame, labels[shape.label]) for frame, shape, _ in sent])
        if ledger is not None:
            for frame, entries in _created(sent, answer).items():
                ledger.created(frame, run, entries)
            ledger.save()
        if progress is not None:
            progress.update(len(sent))


def upload(client: Any, task_id: int, records: Sequence[ImageRecord], model_labels: Sequence[str], *,
           ledger: Ledger | None = None, refresh: bool = False, run: str = "", dry_run: bool = False,
           tolerance: float = DEFAULT_TOLERANCE, progress: Any = None,
           chunk_shapes: int = CHUNK_SHAPES) -> dict[str, Any]:
    """Carry the records' shapes into the task by the module's rules; returns counts (also for a dry run).

    ``ledger``: the task's ledger (:func:`cvat_argo.cvat.ledger.open_ledger`), None for none; ``run``: the
    name the ledger records for what this upload creates (default: the time of the upload).
    """
    task = CvatTask(client, task_id)
    where = f"CVAT task {task_id} at {task.host}"
    labels = task.labels()
    check_labels(model_labels, labels, where)
    names, deleted, size = task.frames()
    gone = set(check_frames(records, names, deleted, where))
    reviewed = task.reviewed()
    state = parse_annotations(task.annotations(), {label.id: label.name for label in labels.values()}, size,
                              reviewed)
    predictions = {r.frame: list(r.shapes) for r in records if r.frame not in gone}
    plan = plan_upload(predictions, state, ledger.frames if ledger is not None else None, refresh=refresh,
                       tolerance=tolerance)
    if not dry_run:
        run = run or "upload " + datetime.now(timezone.utc).isoformat(timespec="seconds")
        _apply(task, plan, labels, ledger, run, chunk_shapes, progress)
    return {**plan.summary(task_id, dry_run), "frames_deleted_in_task": len(gone), "refresh": refresh,
            "ledger": ledger.where if ledger is not None else None}


def task_label_specs(client: Any, task_id: int) -> dict[str, TaskLabel]:
    """The task's labels (for the XML's meta and the label check before inference)."""
    return CvatTask(client, task_id).labels()
