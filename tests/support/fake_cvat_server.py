"""A CVAT server on 127.0.0.1 with the task endpoints the stages use, recording every request.

It answers as CVAT 2.x does (2.42 where the versions differ). Every request but the login and
``GET /api/server/about`` needs the bearer token ``TOKEN`` (what cvat-cli sends for
``CVAT_ACCESS_TOKEN``) or the session of a login (``POST /api/auth/login`` with ``USERNAME``/``PASSWORD``,
what ``cvat-cli --auth USER:PASS`` does, sets the ``sessionid`` and ``csrftoken`` cookies; a POST,
PATCH or PUT then also needs the ``X-CSRFToken`` header, as Django checks it). The endpoints:

* the upload: ``/api/labels?task_id=`` (labels typed ``any``/``rectangle``/``polygon``/..., with their
  attributes, see ``label()``), ``/api/tasks/{id}/data/meta``, ``/api/tasks/{id}/annotations``
  GET, ``PATCH ?action=create`` (appends; the answer lists the created objects with their new ids),
  ``PATCH ?action=update`` (replaces the objects with those ids by the ones sent: a shape keeps the
  ``source`` the request names, ``manual`` when it names none, as CVAT's serializer does; only CVAT's
  UI turns an edited ``auto`` shape into ``semi-auto``), ``PATCH ?action=delete`` (removes the objects
  with those ids; ids the task lacks are ignored) and ``PUT`` (replaces everything). Changes are kept,
  so a second run sees what the first one did, and they are checked as CVAT checks them: every shape
  needs ``type``, ``frame`` and ``label_id`` (the serializer's required fields, also for a delete), and
  what is created needs a ``label_id`` of the task and attribute ``spec_id``s of that label
  (``JobAnnotation``), else a 400 and nothing changes. ``FakeTask.patch_failures`` makes the n-th
  PATCH (1-based) fail with a status and change nothing, as an outage mid-upload does. CVAT itself
  does not compare a shape's type with its label's type: cvat-sdk's auto-annotation driver does that
  on the client, against the label types served here;
* the media cvat-sdk's ``TaskDataset`` (the auto-annotation driver) reads: ``GET /api/tasks/{id}/data
  ?type=chunk&number=&quality=`` (a zip of the chunk's images, ``FakeTask.chunk_size`` frames a chunk)
  and ``?type=frame&number=`` (one image); a frame's image is ``FakeTask.images[frame]`` (encoded
  bytes), or a grey JPEG of the frame's size;
* ``GET /api/server/about`` (``SERVER_VERSION``; cvat-cli asks) and ``POST /api/auth/logout``;
* the export: ``GET /api/tasks/{id}`` (the task with the fields CVAT sends, as cvat-sdk's strict
  ``TaskRead`` parses it), ``POST /api/tasks/{id}/dataset/export?format=&save_images=`` (202 and
  an ``rq_id``), ``GET /api/requests/{rq_id}`` (``started`` for ``FakeTask.pending_polls`` polls, then
  ``finished`` with a ``result_url``, or ``failed`` when the task has no ``export_zip``) and that
  URL (the zip, as an attachment; with ``FakeTask.live_export`` made from the task's current
  annotations by ``live_export_zip``, as CVAT does);
* the jobs: ``GET /api/jobs?task_id=&page=``, ``FakeTask.page_size`` jobs a page, as ``JobRead``,
  ``GET /api/jobs/{id}``, ``PATCH /api/jobs/{id}`` with ``stage`` and/or ``state`` (what a reviewer's
  "finish the job" or "send to acceptance" does: a new stage without a state resets the state to
  ``new`` and the status follows the stage, as CVAT's ``JobWriteSerializer`` does), and
  ``GET /api/jobs/{id}/data/meta`` (``DataMetaRead``: the job's ``included_frames`` when ``job()`` was
  given them, else null as for a plain range; the task's ``deleted_frames`` within the job).

Any other path, or another task's id, is a 404 like CVAT's.

Organizations are modelled as CVAT's IAM treats a member who neither owns the task nor is assigned to
it: the request's organization context is the ``org`` query parameter or the ``X-Organization``
header (both, with different values: a 400; a slug the server lacks: a 404 "... organization does not
exist.", as ``get_organization`` answers). A task of an organization (``FakeTask.organization``) is
read by id in any context, but the lists filtered by it (``/api/jobs``, ``/api/labels``) are empty
outside that organization's context, as the sandbox filter leaves them. ``FakeTask.org_contexts``
records each authenticated request's context (None: none given). ``cvat_server(task, tls_dir=...)``
serves https with a throwaway CA written to ``tls_dir / "ca.pem"``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

TOKEN = "test-token"
USERNAME, PASSWORD = "annotator", "test-password"
SESSION, CSRF = "fake-session-id", "fake-csrf-token"
DATE = "2024-05-02T09:30:00.000000Z"
SERVER_VERSION = "2.42.0"
# A few of the names CVAT 2.x lists in /api/server/annotation/formats; it refuses any other with a 400.
EXPORT_FORMATS = ("CVAT for images 1.1", "CVAT for video 1.1", "COCO 1.0", "Datumaro 1.0", "YOLO 1.1")
JOB_FRAMES = "_included_frames"  # the key of a job dict's included frames: not a JobRead field


@dataclass
class FakeTask:
    id: int
    labels: list[dict[str, Any]]
    frames: list[dict[str, Any]]
    shapes: list[dict[str, Any]] = field(default_factory=list)
    tags: list[dict[str, Any]] = field(default_factory=list)
    tracks: list[dict[str, Any]] = field(default_factory=list)
    deleted_frames: list[int] = field(default_factory=list)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path+query, JSON body)
    name: str = "fake task"
    export_zip: bytes | None = None  # what an export produces; None: the export request fails (unless live)
    live_export: bool = False  # the export is made from the task as it is now (live_export_zip)
    jobs: list[dict[str, Any]] = field(default_factory=list)  # JobRead dicts, see job()
    page_size: int = 10  # CVAT's default
    pending_polls: int = 0  # polls of an export request answered "started" before it finishes
    images: dict[int, bytes] = field(default_factory=dict)  # frame: encoded image (else a grey JPEG)
    chunk_size: int = 72  # frames per data chunk (CVAT's data_chunk_size)
    patch_failures: dict[int, int] = field(default_factory=dict)  # n-th PATCH (1-based): HTTP status to fail with
    next_id: int = 1000  # ids of created objects: never reused, as a database sequence
    organization: str | None = None  # the slug of the organization the task belongs to (None: a personal task)
    org_contexts: list[str | None] = field(default_factory=list)  # each authenticated request's org context

    @property
    def patches(self) -> list[dict[str, Any]]:
        return [body for method, _, body in self.requests if method == "PATCH"]

    @property
    def uploaded_shapes(self) -> list[dict[str, Any]]:
        """Every shape a PATCH ``action=create`` or a PUT sent, in order (as sent, without ids)."""
        return [shape for method, path, body in self.requests
                if body and urlsplit(path).path.rstrip("/") == f"/api/tasks/{self.id}/annotations"
                and (method == "PUT" or (method == "PATCH" and "action=create" in urlsplit(path).query))
                for shape in body.get("shapes", [])]

    def shapes_on(self, frame: int) -> list[dict[str, Any]]:
        """The shapes the task holds on ``frame``, in the order they were made."""
        return [shape for shape in self.shapes if shape["frame"] == frame]

    @property
    def exports(self) -> list[dict[str, list[str]]]:
        """The query of every export request, parsed (``{"format": [...], "save_images": [...]}``)."""
        return [parse_qs(urlsplit(path).query) for method, path, _ in self.requests
                if method == "POST" and urlsplit(path).path.rstrip("/") == f"/api/tasks/{self.id}/dataset/export"]


def task_read(task: FakeTask, host: str) -> dict[str, Any]:
    """``GET /api/tasks/{id}`` as CVAT 2.x answers it for an image task owned by ``admin``."""
    completed = sum(j["state"] == "completed" for j in task.jobs)
    validation = sum(j["stage"] == "validation" for j in task.jobs)
    return {
        "url": f"{host}/api/tasks/{task.id}", "id": task.id, "name": task.name, "project_id": None,
        "project_name": None, "mode": "annotation", "owner": _user(host), "assignee": None, "bug_tracker": "",
        "created_date": DATE, "updated_date": DATE, "overlap": 0, "segment_size": 0, "status": "annotation",
        "data_chunk_size": task.chunk_size, "data_compressed_chunk_type": "imageset",
        "data_original_chunk_type": "imageset",
        "guide_id": None, "size": len(task.frames), "image_quality": 70, "data": task.id, "dimension": "2d",
        "subset": "", "organization": 1 if task.organization else None, "target_storage": None,
        "source_storage": None,
        "jobs": {"count": len(task.jobs), "completed": completed, "validation": validation,
                 "url": f"{host}/api/jobs?task_id={task.id}"},
        "labels": {"url": f"{host}/api/labels?task_id={task.id}"},
        "assignee_updated_date": None, "validation_mode": None,
    }


def job(id_: int, start_frame: int, stop_frame: int, *, stage: str = "annotation", state: str = "new",
        type_: str = "annotation", task_id: int = 7, host: str = "http://localhost:8080",
        included_frames: list[int] | None = None) -> dict[str, Any]:
    """A job as ``/api/jobs`` lists it (JobRead); ``stage``: annotation, validation or acceptance;
    ``state``: new, in progress, rejected or completed; ``type_``: annotation or ground_truth.
    ``included_frames``: the frames of start..stop the job holds (CVAT's specific-frames segment), kept
    under ``JOB_FRAMES`` for its data meta and left out of the JobRead the server sends."""
    frames = {JOB_FRAMES: sorted(included_frames)} if included_frames is not None else {}
    return {**frames,
        "url": f"{host}/api/jobs/{id_}", "id": id_, "task_id": task_id, "project_id": None, "assignee": None,
        "guide_id": None, "dimension": "2d", "bug_tracker": None, "status": stage, "stage": stage, "state": state,
        "mode": "annotation", "start_frame": start_frame,
        "frame_count": stop_frame - start_frame + 1 if included_frames is None else len(included_frames),
        "stop_frame": stop_frame, "data_chunk_size": 72, "data_compressed_chunk_type": "imageset",
        "data_original_chunk_type": "imageset", "created_date": DATE, "updated_date": DATE,
        "issues": {"url": f"{host}/api/issues?job_id={id_}", "count": 0},
        "labels": {"url": f"{host}/api/labels?job_id={id_}"}, "type": type_, "organization": None,
        "target_storage": None, "source_storage": None, "assignee_updated_date": None, "parent_job_id": None,
    }


def job_meta(task: FakeTask, job_: dict[str, Any]) -> dict[str, Any]:
    """``GET /api/jobs/{id}/data/meta`` as CVAT 2.x answers it for an image task without a frame filter
    (data frame numbers are then task frame numbers): the images of start..stop, a placeholder for each
    one the job does not hold."""
    start, stop, included = job_["start_frame"], job_["stop_frame"], job_.get(JOB_FRAMES)
    held = range(start, stop + 1) if included is None else set(included)
    frames = [{"width": f.get("width", 0), "height": f.get("height", 0), "related_files": 0,
               "name": f["name"] if n in held else "placeholder.jpg"}
              for n, f in enumerate(task.frames) if start <= n <= stop]
    return {"chunks_updated_date": DATE, "chunk_size": 72, "size": len(held), "image_quality": 70,
            "start_frame": start, "stop_frame": stop, "frame_filter": "", "frames": frames,
            "deleted_frames": sorted(set(task.deleted_frames).intersection(held)), "included_frames": included,
            "chapters": None, "storage": "local", "cloud_storage_id": None}


def task_meta(task: FakeTask) -> dict[str, Any]:
    """``GET /api/tasks/{id}/data/meta`` (``DataMetaRead``) for an image task without a frame filter."""
    return {"chunks_updated_date": DATE, "chunk_size": task.chunk_size, "size": len(task.frames),
            "image_quality": 70, "start_frame": 0, "stop_frame": len(task.frames) - 1, "frame_filter": "",
            "frames": [{"width": 0, "height": 0, "related_files": 0, **f} for f in task.frames],
            "deleted_frames": task.deleted_frames, "included_frames": None,
            "chapters": None, "storage": "local", "cloud_storage_id": None}


def about() -> dict[str, Any]:
    """``GET /api/server/about`` as CVAT answers it."""
    return {"name": "Computer Vision Annotation Tool", "description": "CVAT is completely re-designed and "
            "re-implemented version of Video Annotation Tool from Irvine, California, USA.",
            "version": SERVER_VERSION, "logo_url": "/api/assets/logo", "subtitle": "Open Data Annotation Platform"}


def frame_image(task: FakeTask, frame: int) -> bytes:
    """The frame's image file: ``task.images[frame]``, or a grey JPEG of the frame's size."""
    if frame in task.images:
        return task.images[frame]
    import io

    from PIL import Image

    meta = task.frames[frame]
    out = io.BytesIO()
    Image.new("RGB", (meta.get("width") or 64, meta.get("height") or 48), (128, 128, 128)).save(out, "JPEG")
    return out.getvalue()


def chunk_zip(task: FakeTask, number: int) -> bytes | None:
    """An "imageset" chunk as CVAT builds it: the chunk's frames, in order, as ``{index:06d}.{ext}``."""
    import io
    import zipfile

    frames = range(number * task.chunk_size, min((number + 1) * task.chunk_size, len(task.frames)))
    if number < 0 or not frames:
        return None
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for index in frames:
            ext = task.frames[index]["name"].rsplit(".", 1)[-1].lower() if index in task.images else "jpg"
            archive.writestr(f"{index:06d}.{ext}", frame_image(task, index))
    return out.getvalue()


def live_export_zip(task: FakeTask) -> bytes:
    """"CVAT for images 1.1" with images, as CVAT 2.x writes it from the task's current annotations.

    Written here with ElementTree, not with our own writer, so that a round trip through the stages
    tests our reader against CVAT's layout: ``<image>`` per frame with ``<box>`` (xtl/ytl/xbr/ybr) and
    ``<polygon>`` (``points="x,y;x,y"``) children carrying ``label``, ``source``, ``occluded`` and
    ``z_order``; the task's labels with their types in ``<meta><task>``; the images under ``images/``.
    """
    import io
    import xml.etree.ElementTree as ET
    import zipfile

    names = {item["id"]: item["name"] for item in task.labels}
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    meta = ET.SubElement(ET.SubElement(root, "meta"), "task")
    for key, value in (("id", task.id), ("name", task.name), ("size", len(task.frames)), ("mode", "annotation"),
                       ("overlap", 0), ("start_frame", 0), ("stop_frame", len(task.frames) - 1)):
        ET.SubElement(meta, key).text = str(value)
    labels = ET.SubElement(meta, "labels")
    for item in task.labels:
        node = ET.SubElement(labels, "label")
        for key in ("name", "color", "type"):
            ET.SubElement(node, key).text = str(item.get(key, ""))
        ET.SubElement(node, "attributes")
    for frame, info in enumerate(task.frames):
        if frame in task.deleted_frames:
            continue
        image = ET.SubElement(root, "image", id=str(frame), name=info["name"], width=str(info.get("width", 0)),
                              height=str(info.get("height", 0)))
        for shape in task.shapes_on(frame):
            common = {"label": names[shape["label_id"]], "source": shape.get("source", "manual"),
                      "occluded": "1" if shape.get("occluded") else "0", "z_order": str(shape.get("z_order", 0))}
            points = shape["points"]
            if shape["type"] == "rectangle":
                ET.SubElement(image, "box", **common, xtl=f"{points[0]:.2f}", ytl=f"{points[1]:.2f}",
                              xbr=f"{points[2]:.2f}", ybr=f"{points[3]:.2f}")
            elif shape["type"] == "polygon":
                pairs = ";".join(f"{x:.2f},{y:.2f}" for x, y in zip(points[::2], points[1::2], strict=True))
                ET.SubElement(image, "polygon", **common, points=pairs)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("annotations.xml", b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root))
        for frame, info in enumerate(task.frames):
            if frame not in task.deleted_frames:
                archive.writestr(f"images/{info['name']}", frame_image(task, frame))
    return out.getvalue()


SHAPE_DEFAULTS = {"occluded": False, "outside": False, "z_order": 0, "rotation": 0.0, "group": 0, "source": "manual",
                  "attributes": [], "elements": []}


def annotation_errors(task: FakeTask, body: dict[str, Any]) -> list[str]:
    """What CVAT's ``JobAnnotation`` refuses: a ``label_id`` the task lacks, a ``spec_id`` its label lacks."""
    attributes = {}
    for label_ in task.labels:
        for item in (label_, *label_.get("sublabels", [])):
            attributes[item["id"]] = {a["id"] for a in item.get("attributes", [])}
    errors = []
    for kind in ("tags", "shapes", "tracks"):
        for item in body.get(kind) or ():
            for part in (item, *(item.get("elements") or ())):
                if part.get("label_id") not in attributes:
                    errors.append(f"label_id `{part.get('label_id')}` is invalid")
                    continue
                for value in part.get("attributes") or ():
                    if value.get("spec_id") not in attributes[part["label_id"]]:
                        errors.append(f"spec_id `{value.get('spec_id')}` is invalid")
    return errors


def missing_fields(body: dict[str, Any]) -> dict[str, Any] | None:
    """What CVAT's ``LabeledDataSerializer`` refuses in any write (a delete too): a shape without ``type``,
    ``frame`` or ``label_id``, a tag or track without ``frame`` or ``label_id``."""
    required = {"tags": ("frame", "label_id"), "shapes": ("type", "frame", "label_id"), "tracks": ("frame", "label_id")}
    for kind, fields in required.items():
        for item in body.get(kind) or ():
            missing = [name for name in fields if item.get(name) is None]
            if missing:
                return {kind: [{name: ["This field is required."] for name in missing}]}
    return None


def _create(task: FakeTask, body: dict[str, Any], *, keep_ids: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Store the body's objects with the serializer's defaults; new ids unless ``keep_ids`` (an update)."""
    created: dict[str, list[dict[str, Any]]] = {"tags": [], "shapes": [], "tracks": []}
    for kind, defaults in (("tags", {"group": 0, "source": "manual", "attributes": []}), ("shapes", SHAPE_DEFAULTS),
                           ("tracks", {"group": 0, "source": "manual", "attributes": []})):
        for item in body.get(kind) or ():
            if keep_ids and item.get("id") is not None:
                new_id = item["id"]
            else:
                task.next_id += 1
                new_id = task.next_id
            kept = {**defaults, **item, "id": new_id}
            getattr(task, kind).append(kept)
            created[kind].append(kept)
    return created


def _user(host: str) -> dict[str, Any]:
    return {"url": f"{host}/api/users/1", "id": 1, "username": "admin", "first_name": "", "last_name": ""}


def _export_request(task: FakeTask, rq_id: str, query: dict[str, list[str]], status: str, host: str) -> dict:
    """``GET /api/requests/{rq_id}`` for an export of ``task`` (CVAT 2.x's Request)."""
    return {
        "status": status, "message": "fake: the task has no export_zip" if status == "failed" else "",
        "id": rq_id, "progress": 1.0 if status == "finished" else 0.5, "created_date": DATE, "started_date": DATE,
        "finished_date": DATE if status in ("finished", "failed") else None, "expiry_date": None,
        "owner": {"id": 1, "username": "admin"},
        "operation": {"type": "export:dataset", "target": "task", "project_id": None, "task_id": task.id,
                      "job_id": None, "format": query["format"][0], "function_id": None},
        "result_url": (f"{host}/api/tasks/{task.id}/dataset/download?{urlencode({'rq_id': rq_id})}"
                       if status == "finished" else None),
        "result_id": None,
    }


def _handler(task: FakeTask):
    exports: dict[str, dict[str, Any]] = {}  # rq_id: {"query": ..., "polls": ...}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def _answer(self, status: int, body: Any) -> None:
            self._send(status, json.dumps(body).encode(), {"Content-Type": "application/json"})

        def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            task.requests.append((method, self.path, body))
            url = urlsplit(self.path)._replace(path=urlsplit(self.path).path.rstrip("/"))  # CVAT takes both
            if method == "POST" and url.path == "/api/auth/login":
                return self._login(body or {})
            if method == "GET" and url.path == "/api/server/about":
                return self._answer(200, about())
            refusal = self._refusal(method)
            if refusal:
                return self._answer(*refusal)
            query = parse_qs(url.query)
            org, refusal = self._organization(query)
            if refusal:
                return self._answer(*refusal)
            task.org_contexts.append(org)
            in_context = org == task.organization or (org is None and task.organization is None)
            host = f"http://{self.headers.get('Host')}"
            base = f"/api/tasks/{task.id}"
            if method == "GET" and url.path == "/api/labels" and query.get("task_id") == [str(task.id)]:
                labels = task.labels if in_context else []
                return self._answer(200, {"count": len(labels), "next": None, "previous": None, "results": labels})
            if method == "POST" and url.path == "/api/auth/logout":
                return self._answer(200, {"detail": "Successfully logged out."})
            if method == "GET" and url.path == f"{base}/data/meta":
                return self._answer(200, task_meta(task))
            if method == "GET" and url.path == f"{base}/data" and query.get("type") in (["chunk"], ["frame"]):
                return self._media(query)
            if method == "GET" and url.path == f"{base}/annotations":
                return self._answer(200, {"version": 0, "tags": task.tags, "shapes": task.shapes,
                                          "tracks": task.tracks})
            if url.path == f"{base}/annotations" and method == "PUT":
                return self._save_annotations(body or {}, replace=True)
            if url.path == f"{base}/annotations" and method == "PATCH":
                return self._patch_annotations(query.get("action", [""])[0], body or {})
            if method == "GET" and url.path == base:
                return self._answer(200, task_read(task, host))
            if method == "POST" and url.path == f"{base}/dataset/export":
                return self._start_export(query)
            if method == "GET" and url.path.startswith("/api/requests/"):
                return self._poll(unquote(url.path.removeprefix("/api/requests/")), host)
            if method == "GET" and url.path == f"{base}/dataset/download" and query.get("rq_id", [""])[0] in exports:
                return self._send(200, live_export_zip(task) if task.live_export else task.export_zip or b"", {
                    "Content-Type": "application/zip",
                    "Content-Disposition": f'attachment; filename="task_{task.id}_dataset.zip"'})
            if method == "GET" and url.path == "/api/jobs" and query.get("task_id") == [str(task.id)]:
                if not in_context:
                    return self._answer(200, {"count": 0, "next": None, "previous": None, "results": []})
                return self._jobs(int(query.get("page", ["1"])[0]), host, url.path, query)
            jobs = {f"/api/jobs/{j['id']}/data/meta": j for j in task.jobs}
            if method == "GET" and url.path in jobs:
                return self._answer(200, job_meta(task, jobs[url.path]))
            by_path = {f"/api/jobs/{j['id']}": j for j in task.jobs}
            if method in ("GET", "PATCH") and url.path in by_path:
                return self._job(by_path[url.path], body if method == "PATCH" else None)
            return self._answer(404, {"detail": "Not found."})

        def _media(self, query: dict[str, list[str]]) -> None:
            try:
                number = int(query.get("number", [""])[0])
            except ValueError:
                return self._answer(400, {"number": ["A valid integer is required."]})
            if query["type"] == ["frame"]:
                if not 0 <= number < len(task.frames):
                    return self._answer(400, [f"The frame number should be in the [0, {len(task.frames) - 1}] range"])
                return self._send(200, frame_image(task, number), {"Content-Type": "image/jpeg"})
            data = chunk_zip(task, number)
            if data is None:
                return self._answer(400, [f"The chunk number should be in the [0, "
                                          f"{(len(task.frames) - 1) // task.chunk_size}] range"])
            return self._send(200, data, {"Content-Type": "application/zip"})

        def _save_annotations(self, body: dict[str, Any], *, replace: bool) -> None:
            if self._refused(body, check_labels=True):
                return None
            if replace:
                task.tags, task.shapes, task.tracks = [], [], []
            return self._answer(200, {"version": 1, **_create(task, body)})

        def _patch_annotations(self, action: str, body: dict[str, Any]) -> None:
            number = sum(method == "PATCH" and "/annotations" in path for method, path, _ in task.requests)
            if number in task.patch_failures:
                return self._answer(task.patch_failures[number], {"detail": "fake: this PATCH fails"})
            if action not in ("create", "update", "delete"):
                return self._answer(400, ["action must be one of create, update, delete"])
            if self._refused(body, check_labels=action != "delete"):
                return None
            if action == "create":
                return self._answer(200, {"version": 1, **_create(task, body)})
            gone = {kind: {item.get("id") for item in body.get(kind) or ()} for kind in ("tags", "shapes", "tracks")}
            task.tags = [t for t in task.tags if t["id"] not in gone["tags"]]
            task.shapes = [s for s in task.shapes if s["id"] not in gone["shapes"]]
            task.tracks = [t for t in task.tracks if t["id"] not in gone["tracks"]]
            if action == "update":  # CVAT's JobAnnotation.update: delete by id, then create as sent (ids kept)
                return self._answer(200, {"version": 1, **_create(task, body, keep_ids=True)})
            return self._answer(200, {"version": 1, **{kind: body.get(kind) or [] for kind in gone}})

        def _refused(self, body: dict[str, Any], *, check_labels: bool) -> bool:
            """Answer 400 and return True for what CVAT refuses; False when the body may be saved."""
            missing = missing_fields(body)
            if missing:
                self._answer(400, missing)  # the serializer's ValidationError: field -> messages
                return True
            errors = annotation_errors(task, body) if check_labels else []
            if errors:
                self._answer(400, errors[:1])  # JobAnnotation's ValidationError: a list of messages
                return True
            return False

        def _job(self, job_: dict[str, Any], change: dict[str, Any] | None) -> None:
            if change:
                stage, state = change.get("stage"), change.get("state")
                if stage not in (None, "annotation", "validation", "acceptance") or state not in (
                        None, "new", "in progress", "rejected", "completed"):
                    return self._answer(400, {"stage" if stage else "state": ["is not a valid choice."]})
                if stage and stage != job_["stage"] and not state:
                    state = "new"  # a job moved to another stage starts there anew
                if stage:
                    job_["stage"] = stage
                    job_["status"] = ("annotation" if stage == "annotation" else "completed"
                                      if stage == "acceptance" and state == "completed" else "validation")
                if state:
                    job_["state"] = state
            return self._answer(200, {k: v for k, v in job_.items() if k != JOB_FRAMES})

        def _refusal(self, method: str) -> tuple[int, dict[str, str]] | None:
            """What CVAT (Django REST framework) answers a request without valid credentials."""
            authorization = self.headers.get("Authorization")
            if authorization:
                return None if authorization == f"Bearer {TOKEN}" else (401, {"detail": "Invalid token."})
            cookies = SimpleCookie(self.headers.get("Cookie", ""))
            if "sessionid" not in cookies or cookies["sessionid"].value != SESSION:
                return 401, {"detail": "Authentication credentials were not provided."}
            if method != "GET" and self.headers.get("X-CSRFToken") != CSRF:
                return 403, {"detail": "CSRF Failed: CSRF token missing."}
            return None

        def _organization(self, query: dict[str, list[str]]) -> tuple[str | None, tuple[int, Any] | None]:
            """The request's organization context (None: none, "": the personal workspace), or CVAT's refusal."""
            param, header = query.get("org", [None])[0], self.headers.get("X-Organization")
            if param is not None and header is not None and param != header:
                return None, (400, ['You cannot specify "org" query parameter and "X-Organization" HTTP header '
                                    'with different values.'])
            slug = param if param is not None else header
            if slug and slug != task.organization:
                return None, (404, {"detail": f"{slug} organization does not exist."})
            return slug, None

        def _login(self, body: dict[str, Any]) -> None:
            if (body.get("username"), body.get("password")) != (USERNAME, PASSWORD):
                return self._answer(400, {"non_field_errors": ["Unable to log in with provided credentials."]})
            data = json.dumps({"key": "fake-key"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Set-Cookie", f"csrftoken={CSRF}; Max-Age=31449600; Path=/; SameSite=Lax")
            self.send_header("Set-Cookie", f"sessionid={SESSION}; HttpOnly; Max-Age=1209600; Path=/; SameSite=Lax")
            self.end_headers()
            self.wfile.write(data)
            return None

        def _start_export(self, query: dict[str, list[str]]) -> None:
            fmt = query.get("format", [""])[0]
            if fmt not in EXPORT_FORMATS:
                return self._answer(400, ["Unknown format specified for the request"])
            rq_id = (f"action=export&target=task&target_id={task.id}&subresource=dataset&format={fmt}"
                     "&user_id=1")
            exports[rq_id] = {"query": query, "polls": 0}
            return self._answer(202, {"rq_id": rq_id})

        def _poll(self, rq_id: str, host: str) -> None:
            if rq_id not in exports:
                return self._answer(404, {"detail": "Not found."})
            export = exports[rq_id]
            export["polls"] += 1
            if export["polls"] <= task.pending_polls:
                status = "started"
            else:
                status = "finished" if task.export_zip is not None or task.live_export else "failed"
            return self._answer(200, _export_request(task, rq_id, export["query"], status, host))

        def _jobs(self, page: int, host: str, path: str, query: dict[str, list[str]]) -> None:
            start = (page - 1) * task.page_size
            if page < 1 or (start >= len(task.jobs) and page > 1):
                return self._answer(404, {"detail": "Invalid page."})

            def link(number: int) -> str:
                return f"{host}{path}?{urlencode({**{k: v[0] for k, v in query.items()}, 'page': number})}"

            return self._answer(200, {
                "count": len(task.jobs),
                "next": link(page + 1) if start + task.page_size < len(task.jobs) else None,
                "previous": link(page - 1) if page > 1 else None,
                "results": [{k: v for k, v in j.items() if k != JOB_FRAMES}
                            for j in task.jobs[start:start + task.page_size]]})

        def do_GET(self) -> None:
            self._route("GET")

        def do_PATCH(self) -> None:
            self._route("PATCH")

        def do_PUT(self) -> None:
            self._route("PUT")

        def do_DELETE(self) -> None:
            self._route("DELETE")

        def do_POST(self) -> None:
            self._route("POST")

    return Handler


@contextmanager
def cvat_server(task: FakeTask, tls_dir: Path | None = None) -> Iterator[dict[str, str]]:
    """Serve ``task``; yields the environment a stage needs (CVAT_HOST, CVAT_ACCESS_TOKEN).

    With ``tls_dir``, over https with a certificate for 127.0.0.1 signed by a throwaway CA, whose PEM
    file is ``tls_dir / "ca.pem"`` (the environment names no CA: a client must be given it).
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(task))
    scheme = "http"
    if tls_dir is not None:
        import ssl

        from .fake_argo_server import _write_tls_files

        tls_dir.mkdir(parents=True, exist_ok=True)
        _ca_file, cert_file, key_file = _write_tls_files(tls_dir)  # the CA: tls_dir / "ca.pem"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        # the handshake in the request thread: a client that refuses the certificate cannot stall accept()
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        server.handle_error = lambda *_: None  # a client that refuses the certificate is what a test wants
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield {"CVAT_HOST": f"{scheme}://127.0.0.1:{server.server_address[1]}", "CVAT_ACCESS_TOKEN": TOKEN}
    finally:
        server.shutdown()
        server.server_close()


def label(id_: int, name: str, type_: str = "any", score: str | None = None) -> dict[str, Any]:
    """A label as CVAT 2.42's ``/api/labels`` lists it; ``type_``: any, rectangle, polygon, ... (what the
    label's shapes may be); ``score``: the input type of a ``score`` attribute (number 0..100, or text), if any."""
    attributes = []
    if score == "number":
        attributes.append({"id": id_ * 10, "name": "score", "mutable": False, "input_type": "number",
                           "default_value": "0", "values": ["0", "100", "1"]})
    elif score == "text":
        attributes.append({"id": id_ * 10, "name": "score", "mutable": False, "input_type": "text",
                           "default_value": "", "values": [""]})
    return {"id": id_, "name": name, "color": "#ff0000", "type": type_, "svg": "", "attributes": attributes,
            "sublabels": [], "has_parent": False, "parent_id": None, "task_id": 7, "project_id": None}
