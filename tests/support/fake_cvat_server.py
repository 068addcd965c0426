"""A CVAT server on 127.0.0.1 with the task endpoints the stages use, recording every request.

It answers as CVAT 2.x does. Every request but the login needs the bearer token ``TOKEN`` or the
session of a login (``POST /api/auth/login`` with ``USERNAME``/``PASSWORD`` sets the ``sessionid``
and ``csrftoken`` cookies; a POST or PATCH then also needs the ``X-CSRFToken`` header, as Django
checks it). The endpoints:

* the upload: ``/api/labels?task_id=``, ``/api/tasks/{id}/data/meta``, ``/api/tasks/{id}/annotations``
  GET and ``PATCH ?action=create`` (it keeps the shapes a PATCH creates, so that a second run sees
  what the first one added);
* the export: ``GET /api/tasks/{id}`` (the task with the fields CVAT sends, as cvat-sdk's strict
  ``TaskRead`` parses it), ``POST /api/tasks/{id}/dataset/export?format=&save_images=`` (202 and
  an ``rq_id``), ``GET /api/requests/{rq_id}`` (``started`` for ``FakeTask.pending_polls`` polls, then
  ``finished`` with a ``result_url``, or ``failed`` when the task has no ``export_zip``) and that
  URL (the zip, as an attachment);
* the jobs: ``GET /api/jobs?task_id=&page=``, ``FakeTask.page_size`` jobs a page, as ``JobRead``, and
  ``GET /api/jobs/{id}/data/meta`` (``DataMetaRead``: the job's ``included_frames`` when ``job()`` was
  given them, else null as for a plain range; the task's ``deleted_frames`` within the job).

Any other path, or another task's id, is a 404 like CVAT's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

TOKEN = "test-token"
USERNAME, PASSWORD = "annotator", "test-password"
SESSION, CSRF = "fake-session-id", "fake-csrf-token"
DATE = "2024-05-02T09:30:00.000000Z"
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
    export_zip: bytes | None = None  # what an export produces; None: the export request fails
    jobs: list[dict[str, Any]] = field(default_factory=list)  # JobRead dicts, see job()
    page_size: int = 10  # CVAT's default
    pending_polls: int = 0  # polls of an export request answered "started" before it finishes

    @property
    def patches(self) -> list[dict[str, Any]]:
        return [body for method, _, body in self.requests if method == "PATCH"]

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
        "data_chunk_size": 72, "data_compressed_chunk_type": "imageset", "data_original_chunk_type": "imageset",
        "guide_id": None, "size": len(task.frames), "image_quality": 70, "data": task.id, "dimension": "2d",
        "subset": "", "organization": None, "target_storage": None, "source_storage": None,
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
            refusal = self._refusal(method)
            if refusal:
                return self._answer(*refusal)
            query = parse_qs(url.query)
            host = f"http://{self.headers.get('Host')}"
            base = f"/api/tasks/{task.id}"
            if method == "GET" and url.path == "/api/labels" and query.get("task_id") == [str(task.id)]:
                return self._answer(200, {"count": len(task.labels), "next": None, "previous": None,
                                          "results": task.labels})
            if method == "GET" and url.path == f"{base}/data/meta":
                return self._answer(200, {"chunk_size": 36, "size": len(task.frames), "image_quality": 70,
                                          "start_frame": 0, "stop_frame": len(task.frames) - 1, "frame_filter": "",
                                          "frames": task.frames, "deleted_frames": task.deleted_frames})
            if method == "GET" and url.path == f"{base}/annotations":
                return self._answer(200, {"version": 0, "tags": task.tags, "shapes": task.shapes,
                                          "tracks": task.tracks})
            if method == "PATCH" and url.path == f"{base}/annotations" and query.get("action") == ["create"]:
                for shape in body.get("shapes", []):
                    task.shapes.append({**shape, "id": 1000 + len(task.shapes)})
                return self._answer(200, {"version": 1, "tags": [], "shapes": body.get("shapes", []), "tracks": []})
            if method == "GET" and url.path == base:
                return self._answer(200, task_read(task, host))
            if method == "POST" and url.path == f"{base}/dataset/export":
                return self._start_export(query)
            if method == "GET" and url.path.startswith("/api/requests/"):
                return self._poll(unquote(url.path.removeprefix("/api/requests/")), host)
            if method == "GET" and url.path == f"{base}/dataset/download" and query.get("rq_id", [""])[0] in exports:
                return self._send(200, task.export_zip or b"", {
                    "Content-Type": "application/zip",
                    "Content-Disposition": f'attachment; filename="task_{task.id}_dataset.zip"'})
            if method == "GET" and url.path == "/api/jobs" and query.get("task_id") == [str(task.id)]:
                return self._jobs(int(query.get("page", ["1"])[0]), host, url.path, query)
            jobs = {f"/api/jobs/{j['id']}/data/meta": j for j in task.jobs}
            if method == "GET" and url.path in jobs:
                return self._answer(200, job_meta(task, jobs[url.path]))
            return self._answer(404, {"detail": "Not found."})

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
                status = "finished" if task.export_zip is not None else "failed"
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
def cvat_server(task: FakeTask) -> Iterator[dict[str, str]]:
    """Serve ``task``; yields the environment a stage needs (CVAT_HOST, CVAT_ACCESS_TOKEN)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(task))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield {"CVAT_HOST": f"http://127.0.0.1:{server.server_address[1]}", "CVAT_ACCESS_TOKEN": TOKEN}
    finally:
        server.shutdown()
        server.server_close()


def label(id_: int, name: str, type_: str = "any", score: str | None = None) -> dict[str, Any]:
    """A label as ``/api/labels`` lists it; ``score``: the input type of a ``score`` attribute, if any."""
    attributes = []
    if score == "number":
        attributes.append({"id": id_ * 10, "name": "score", "mutable": False, "input_type": "number",
                           "default_value": "0", "values": ["0", "100", "1"]})
    elif score == "text":
        attributes.append({"id": id_ * 10, "name": "score", "mutable": False, "input_type": "text",
                           "default_value": "", "values": [""]})
    return {"id": id_, "name": name, "color": "#ff0000", "type": type_, "attributes": attributes, "sublabels": [],
            "has_parent": False, "parent_id": None, "task_id": 7, "project_id": None}
