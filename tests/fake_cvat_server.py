"""A CVAT server on 127.0.0.1 with the few task endpoints the upload uses, recording every request.

It answers as CVAT 2.x does (``/api/labels?task_id=``, ``/api/tasks/{id}/data/meta``,
``/api/tasks/{id}/annotations`` GET and ``PATCH ?action=create``), checks the bearer token, and keeps
the shapes a PATCH creates, so that a second run sees what the first one added.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "test-token"


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

    @property
    def patches(self) -> list[dict[str, Any]]:
        return [body for method, _, body in self.requests if method == "PATCH"]


def _handler(task: FakeTask):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            task.requests.append((method, self.path, body))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._answer(401, {"detail": "Authentication credentials were not provided."})
            url = urlsplit(self.path)._replace(path=urlsplit(self.path).path.rstrip("/"))  # CVAT takes both
            query = parse_qs(url.query)
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
            return self._answer(404, {"detail": "Not found."})

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
    thread = threading.Thread(target=server.serve_forever, daemon=True)
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
