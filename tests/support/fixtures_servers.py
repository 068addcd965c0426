"""Real servers on 127.0.0.1 for the store tests: moto's S3 and a static HTTP server.

Import the fixtures into a test module with
``from fixtures_servers import s3_server, http_server  # noqa: F401``.

moto's S3 runs with IAM authentication switched on, so requests are signed and checked as a real
MinIO or S3 would check them: a wrong secret key is refused with ``SignatureDoesNotMatch`` instead of
being accepted silently (moto's default).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
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
