"""Real servers on 127.0.0.1 for the store tests: moto's S3 and a static HTTP server.

Import the fixtures into a test module with
``from fixtures_servers import s3_server, http_server  # noqa: F401``.

moto's S3 runs with IAM authentication switched on, so requests are signed and checked as a real
MinIO or S3 would check them: a wrong secret key is refused with ``SignatureDoesNotMatch`` instead of
being accepted silently (moto's default).
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
_ALLOW_S3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    """A moto S3 server; yields the store environment (AWS_ENDPOINT_URL, AWS_REGION, credentials)."""
    # port=0: werkzeug's make_server binds a free port, and get_host_and_port() reports it.
    werkzeug_log = logging.getLogger("werkzeug")  # one INFO line per request otherwise
    level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        access_key, secret_key = _iam_user(endpoint)
        # From here on every request must be signed with the user's key: moto checks like S3 does.
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        yield {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": access_key,
               "AWS_SECRET_ACCESS_KEY": secret_key}
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)
        requests.post(f"{endpoint}/moto-api/reset", timeout=10)
        server.stop()
        werkzeug_log.setLevel(level)


def _iam_user(endpoint: str) -> tuple[str, str]:
    """An IAM user allowed s3:*, created while moto still accepts unsigned setup calls."""
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup",
                       aws_secret_access_key="setup")
    iam.create_user(UserName="cvat-argo-tests")
    iam.put_user_policy(UserName="cvat-argo-tests", PolicyName="s3", PolicyDocument=json.dumps(_ALLOW_S3))
    key = iam.create_access_key(UserName="cvat-argo-tests")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@dataclass(frozen=True)
class HttpServer:
    url: str  # base URL, no trailing slash
    root: Path  # the folder it serves; GET /status/<code> answers that HTTP status instead


class _Handler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/status/"):
            self.send_response(int(self.path.rsplit("/", 1)[-1]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        return None


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """A static file server on 127.0.0.1 over a fresh folder."""
    root = tmp_path_factory.mktemp("http-root")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpServer(f"http://127.0.0.1:{server.server_address[1]}", root)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ------------------------------------------------------------------------------------- hostile HTTP

BOMB_MEMBER = gzip.compress(bytes(1 << 20), 9, mtime=0)  # one gzip member: 1 MiB of zeros in ~1 kB
BOMB_MEMBERS = 1024  # ~1 MB on the wire, 1 GiB once decoded (several members are legal gzip)
_PIECE = 64 << 10
GZIPPED_PAYLOAD = bytes(range(256)) * 8192  # 2 MiB that /gzipped sends gzip-encoded, in two members


@dataclass(frozen=True)
class HostileServer:
    """A loopback HTTP server whose answers attack the client; see :class:`_HostileHandler` for the paths."""

    url: str  # base URL, no trailing slash
    first_piece: dict[str, threading.Event]  # path -> set once an answer to it has sent its first piece
    stop: threading.Event  # set at teardown: stalled answers end

    def sent_first_piece(self, path: str) -> threading.Event:
        return self.first_piece.setdefault(path, threading.Event())


class _HostileHandler(BaseHTTPRequestHandler):
    """``/bomb...``: a gzip bomb sent with ``Content-Encoding: gzip`` whatever the client asked for;
    ``/endless...``: zeros until the client leaves; ``/trickle...``: 1 KiB every 50 ms until the client
    leaves; ``/stall...``: declares 1 MiB, sends 1 KiB, then nothing; ``/dropped...``: declares 8 MiB,
    sends 1 MiB, closes; ``/large...``: 2 MiB with its Content-Length; ``/gzipped...``: :data:`GZIPPED_PAYLOAD` gzip-encoded (a fair answer);
    ``/brotli...``: ``Content-Encoding: br``. The first path component picks the
    answer, so the URL can end in any file name.
    """

    protocol_version = "HTTP/1.0"  # an answer without Content-Length ends when the connection closes
    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        kind = self.path.strip("/").split("/", 1)[0].split(".", 1)[0]
        hostile: HostileServer = self.server.hostile  # type: ignore[attr-defined]
        try:
            if kind == "bomb":
                self._answer(200, {"Content-Encoding": "gzip", "Content-Length": str(len(BOMB_MEMBER) * BOMB_MEMBERS)})
                for _ in range(BOMB_MEMBERS):
                    self.wfile.write(BOMB_MEMBER)
            elif kind in ("endless", "trickle"):
                self._answer(200, {})
                piece, pause = (bytes(_PIECE), 0.0) if kind == "endless" else (bytes(1024), 0.05)
                self.wfile.write(piece)
                self.wfile.flush()
                hostile.sent_first_piece(self.path).set()
                while not hostile.stop.is_set():
                    self.wfile.write(piece)
                    if pause:
                        self.wfile.flush()
                        hostile.stop.wait(pause)
            elif kind == "stall":
                self._answer(200, {"Content-Length": str(1 << 20)})
                self.wfile.write(bytes(1024))
                self.wfile.flush()
                hostile.stop.wait(60)
            elif kind == "dropped":
                self._answer(200, {"Content-Length": str(8 << 20)})
                self.wfile.write(bytes(1 << 20))
            elif kind == "gzipped":  # a server that compresses although identity was asked for: legal, decoded
                half = len(GZIPPED_PAYLOAD) // 2
                body = gzip.compress(GZIPPED_PAYLOAD[:half], mtime=0) + gzip.compress(GZIPPED_PAYLOAD[half:], mtime=0)
                self._answer(200, {"Content-Encoding": "gzip", "Content-Length": str(len(body))})
                self.wfile.write(body)
            elif kind == "large":  # a fair 2 MiB answer with its Content-Length
                self._answer(200, {"Content-Length": str(2 << 20)})
                self.wfile.write(bytes(2 << 20))
            elif kind == "brotli":
                self._answer(200, {"Content-Encoding": "br", "Content-Length": "4"})
                self.wfile.write(b"\x00\x01\x02\x03")
            else:
                self._answer(404, {"Content-Length": "0"})
        except (BrokenPipeError, ConnectionResetError):  # the client left, as it should
            return

    def _answer(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        return None


@pytest.fixture(scope="module")
def hostile_http_server() -> Iterator[HostileServer]:
    """An HTTP server on 127.0.0.1 that answers with a gzip bomb, endless or stalled bodies, dropped connections."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileHandler)
    hostile = HostileServer(f"http://127.0.0.1:{server.server_address[1]}", {}, threading.Event())
    server.hostile = hostile  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hostile
    finally:
        hostile.stop.set()
        server.shutdown()
        server.server_close()
        thread.join()
