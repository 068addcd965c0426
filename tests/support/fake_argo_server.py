"""A small, real HTTP(S) server that answers like the Argo Server REST API, for tests without a cluster.

It covers the calls Hera 7.1's `hera.workflows.service.WorkflowsService` makes to submit work:
workflow templates (create, get, update, lint, list, delete), workflows (create, get, lint, submit from a
template, list, delete), `version`, `info` and `userinfo`. Every request body is validated like the real
server would: against the strict JSON schema (the request definition, e.g. WorkflowCreateRequest) and with
the `argo lint` port, so a test that submits through it also proves the rendered objects are acceptable.

    with FakeArgoServer(token="s3cret", namespace="argo") as server:
        service = WorkflowsService(host=server.url, token="s3cret", namespace="argo")
        ...
        assert server.requests[-1].method == "POST"

Errors use the grpc-gateway JSON shape Argo returns: `{"code": <grpc code>, "message": "..."}`.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import json
import random
import re
import shutil
import ssl
import string
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

try:  # imported as tests.fake_argo_server, with the repository root on sys.path
    from tests.argo_validation import lint_errors, schema_errors, workflow_template_not_found
except ModuleNotFoundError:  # imported by pytest, which puts tests/ itself on sys.path
    from support.argo_validation import lint_errors, schema_errors, workflow_template_not_found

Json = dict[str, Any]

GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 409: 6, 429: 8, 500: 13, 501: 12, 503: 14, 504: 4}
UNAUTHENTICATED = "token not valid. see https://argo-workflows.readthedocs.io/en/latest/faq/"
FINISHED_PHASES = ("Succeeded", "Failed", "Error")
ARGO_VERSION = {
    "version": "v4.1.2",
    "buildDate": "2026-08-21T00:00:00Z",
    "gitCommit": "16a52d67daf2f4a8a76fa8bec02a76a46aa46257",
    "gitTag": "v4.1.2",
    "gitTreeState": "clean",
    "goVersion": "go1.24.6",
    "compiler": "gc",
    "platform": "linux/amd64",
}


class RecordedRequest(NamedTuple):
    """One request as the server saw it; the Authorization header is never kept."""

    method: str
    path: str
    headers: dict[str, str]
    json_body: Any


class ApiError(Exception):
    """An error answer: HTTP status plus the grpc code and message Argo puts in the body."""

    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = GRPC_CODES.get(status, 2) if code is None else code
        self.message = message


class FakeArgoServer:
    """Argo Server stand-in on 127.0.0.1 (a random port), in a background thread; use it as a context manager.

    - `token`: the only accepted bearer token; `namespace`: the only namespace the token may use (403 else).
    - `tls`: serve HTTPS with a throwaway CA; `ca_file` is the PEM a client must trust.
    - `base_href`: serve the API under this path, like `argo server --base-href /argo/`.
    - `phases`: the `status.phase` a workflow reports on its 1st, 2nd, ... GET (the last one sticks).
    - `fail_next(status)`: make the next request(s) fail, e.g. with 503, to test client error handling.
    - `requests`: every request received, as `RecordedRequest(method, path, headers, json_body)`.
    - `workflow_templates` / `workflows`: what was stored, keyed by (namespace, name).
    """

    def __init__(
        self,
        token: str = "s3cret",
        namespace: str = "argo",
        tls: bool = False,
        *,
        base_href: str = "/",
        phases: Sequence[str] = ("Pending", "Running", "Succeeded"),
        schema_version: str = "main",
    ) -> None:
        if not phases:
            raise ValueError("phases must not be empty")
        self.token = token
        self.namespace = namespace
        self.tls = tls
        self.base_href = "/" + base_href.strip("/") + "/" if base_href.strip("/") else "/"
        self.phases = tuple(phases)
        self.schema_version = schema_version
        self.requests: list[RecordedRequest] = []
        self.workflow_templates: dict[tuple[str, str], Json] = {}
        self.workflows: dict[tuple[str, str], Json] = {}
        self.ca_file: str | None = None
        self._gets: dict[tuple[str, str], int] = {}
        self._failures: list[ApiError] = []
        self._resource_version = 1000
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: str | None = None

    # ---------------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> FakeArgoServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        httpd = _QuietHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.fake = self
        if self.tls:
            self._tmpdir = tempfile.mkdtemp(prefix="fake-argo-tls-")
            ca_file, cert_file, key_file = _write_tls_files(Path(self._tmpdir))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert_file, key_file)
            # Handshake in the request thread, so a client that rejects the certificate cannot stall accept().
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
            self.ca_file = str(ca_file)
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-argo-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server is not running")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL ending in `/`, as Hera's `urljoin` needs (`http://127.0.0.1:PORT/argo/`)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.base_href}"

    # ---------------------------------------------------------------------------------------- test hooks

    def fail_next(self, status: int, message: str | None = None, *, code: int | None = None, times: int = 1) -> None:
        """Answer the next `times` requests with `status` (checked before authentication)."""
        error = ApiError(status, message or f"fake Argo server: injected failure ({status})", code)
        with self._lock:
            self._failures.extend([error] * times)

    def add_workflow_template(self, template: Json) -> Json:
        """Store a WorkflowTemplate directly (no validation), as if created earlier; returns the stored copy."""
        stored = copy.deepcopy(template)
        metadata = stored.setdefault("metadata", {})
        namespace = metadata.setdefault("namespace", self.namespace)
        with self._lock:
            self._stamp(metadata, namespace)
            self.workflow_templates[(namespace, metadata["name"])] = stored
        return copy.deepcopy(stored)

    # ---------------------------------------------------------------------------------------- request handling

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, Json]:
        """Route one request; returns (HTTP status, JSON body). Runs in the handler thread."""
        json_body = _parse_body(body)
        kept_headers = {key: value for key, value in headers.items() if key.lower() != "authorization"}
        with self._lock:
            self.requests.append(RecordedRequest(method, raw_path, kept_headers, json_body))
            failure = self._failures.pop(0) if self._failures else None
        try:
            if failure is not None:
                raise failure
            path = raw_path.split("?", 1)[0]
            api_prefix = self.base_href + "api/v1/"
            if not path.startswith(api_prefix):
                raise ApiError(404, "Not Found")
            self._authenticate(headers)
            if isinstance(json_body, _InvalidJson):
                raise ApiError(400, f"invalid JSON body: {json_body.error}")
            handler, params = self._route(method, path[len(api_prefix) :])
            return 200, handler(json_body, **params)
        except ApiError as error:
            return error.status, {"code": error.code, "message": error.message}
        except Exception as error:  # a bug in this fake: say so instead of hanging the client
            return 500, {"code": 13, "message": f"fake Argo server bug: {type(error).__name__}: {error}"}

    def _authenticate(self, headers: dict[str, str]) -> None:
        value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        if value != f"Bearer {self.token}":
            raise ApiError(401, UNAUTHENTICATED)

    def _route(self, method: str, path: str) -> tuple[Callable[..., Json], dict[str, str]]:
        routes: list[tuple[str, str, Callable[..., Json]]] = [
            ("GET", r"version", self._version),
            ("GET", r"info", self._info),
            ("GET", r"userinfo", self._userinfo),
            ("POST", r"workflow-templates/(?P<ns>[^/]+)/lint", self._lint_template),
            ("GET", r"workflow-templates/(?P<ns>[^/]+)", self._list_templates),
            ("POST", r"workflow-templates/(?P<ns>[^/]+)", self._create_template),
            ("GET", r"workflow-templates/(?P<ns>[^/]+)/(?P<name>[^/]+)", self._get_template),
            ("PUT", r"workflow-templates/(?P<ns>[^/]+)/(?P<name>[^/]+)", self._update_template),
            ("DELETE", r"workflow-templates/(?P<ns>[^/]+)/(?P<name>[^/]+)", self._delete_template),
            ("POST", r"workflows/(?P<ns>[^/]+)/lint", self._lint_workflow),
            ("POST", r"workflows/(?P<ns>[^/]+)/submit", self._submit_workflow),
            ("GET", r"workflows/(?P<ns>[^/]+)", self._list_workflows),
            ("POST", r"workflows/(?P<ns>[^/]+)", self._create_workflow),
            ("GET", r"workflows/(?P<ns>[^/]+)/(?P<name>[^/]+)", self._get_workflow),
            ("DELETE", r"workflows/(?P<ns>[^/]+)/(?P<name>[^/]+)", self._delete_workflow),
        ]
        path_matched = False
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match:
                path_matched = True
                if route_method == method:
                    return handler, match.groupdict()
        if path_matched:
            raise ApiError(405, "Method Not Allowed")
        raise ApiError(404, "Not Found")

    # ---------------------------------------------------------------------------------------- helpers

    def _authorize(self, namespace: str, resource: str, verb: str) -> None:
        """The token's service account may only use its own namespace (403, like Kubernetes RBAC)."""
        if namespace != self.namespace:
            raise ApiError(
                403,
                f'{resource}.argoproj.io is forbidden: User "system:serviceaccount:{self.namespace}:x" cannot {verb}'
                f' resource "{resource}" in API group "argoproj.io" in the namespace "{namespace}"',
            )

    def _validated(self, body: Any, definition: str, key: str) -> Json:
        """Schema-check a request body and return the object inside it (400 with every error otherwise)."""
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        errors = schema_errors(body, self.schema_version, f"io.argoproj.workflow.v1alpha1.{definition}")
        if errors:
            raise ApiError(400, "; ".join(errors))
        obj = body.get(key)
        if not isinstance(obj, dict):
            raise ApiError(400, f"{key} is required")
        return copy.deepcopy(obj)

    def _lint(self, obj: Json, namespace: str) -> None:
        templates = [t for (ns, _), t in self.workflow_templates.items() if ns == namespace]
        errors = lint_errors(obj, templates)
        if errors:
            raise ApiError(400, "; ".join(errors))

    def _place(self, obj: Json, namespace: str) -> Json:
        """Default metadata.namespace to the URL's; a different one is a 400, as in Kubernetes."""
        metadata = obj.setdefault("metadata", {})
        if metadata.setdefault("namespace", namespace) != namespace:
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
        return metadata

    def _stamp(self, metadata: Json, namespace: str) -> None:
        """Server-set metadata of a new object."""
        self._resource_version += 1
        metadata.update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            resourceVersion=str(self._resource_version),
            generation=1,
            creationTimestamp=_now(),
        )

    def _name(self, metadata: Json, store: dict[tuple[str, str], Json], namespace: str, kind: str) -> str:
        """metadata.name, or generateName plus 5 random lowercase letters; 409 if taken."""
        name = metadata.get("name")
        if not name:
            prefix = metadata.get("generateName")
            if not prefix:
                raise ApiError(
                    400,
                    f'{kind}.argoproj.io "" is invalid: metadata.name: Required value: name or '
                    "generateName is required",
                )
            while not name or (namespace, name) in store:
                name = prefix + "".join(random.choices(string.ascii_lowercase, k=5))
            metadata["name"] = name
        elif (namespace, name) in store:
            raise ApiError(409, f'{kind}.argoproj.io "{name}" already exists')
        return name

    # ---------------------------------------------------------------------------------------- info

    def _version(self, _body: Any) -> Json:
        return dict(ARGO_VERSION)

    def _info(self, _body: Any) -> Json:
        return {"managedNamespace": self.namespace, "links": [], "modals": {}, "navColor": ""}

    def _userinfo(self, _body: Any) -> Json:
        return {"subject": f"system:serviceaccount:{self.namespace}:x", "serviceAccountNamespace": self.namespace}

    # ---------------------------------------------------------------------------------------- workflow templates

    def _lint_template(self, body: Any, ns: str) -> Json:
        self._authorize(ns, "workflowtemplates", "create")
        template = self._validated(body, "WorkflowTemplateLintRequest", "template")
        self._place(template, ns)
        with self._lock:
            self._lint(template, ns)
        return template

    def _list_templates(self, _body: Any, ns: str) -> Json:
        self._authorize(ns, "workflowtemplates", "list")
        with self._lock:
            items = [copy.deepcopy(t) for (n, _), t in sorted(self.workflow_templates.items()) if n == ns]
            return {"metadata": {"resourceVersion": str(self._resource_version)}, "items": items}

    def _create_template(self, body: Any, ns: str) -> Json:
        self._authorize(ns, "workflowtemplates", "create")
        template = self._validated(body, "WorkflowTemplateCreateRequest", "template")
        metadata = self._place(template, ns)
        with self._lock:
            name = self._name(metadata, self.workflow_templates, ns, "workflowtemplates")
            self._lint(template, ns)
            self._stamp(metadata, ns)
            self.workflow_templates[(ns, name)] = template
            return copy.deepcopy(template)

    def _get_template(self, _body: Any, ns: str, name: str) -> Json:
        self._authorize(ns, "workflowtemplates", "get")
        with self._lock:
            return copy.deepcopy(self._stored_template(ns, name))

    def _stored_template(self, ns: str, name: str) -> Json:
        try:
            return self.workflow_templates[(ns, name)]
        except KeyError:
            raise ApiError(404, workflow_template_not_found(name)) from None

    def _update_template(self, body: Any, ns: str, name: str) -> Json:
        """PUT replaces the template; like Kubernetes it needs the current resourceVersion (409 otherwise)."""
        self._authorize(ns, "workflowtemplates", "update")
        template = self._validated(body, "WorkflowTemplateUpdateRequest", "template")
        metadata = self._place(template, ns)
        if metadata.setdefault("name", name) != name:
            raise ApiError(400, f"metadata.name {metadata['name']!r} does not match the name in the URL {name!r}")
        with self._lock:
            current = self._stored_template(ns, name)["metadata"]
            if metadata.get("resourceVersion") != current["resourceVersion"]:
                raise ApiError(
                    409,
                    f'Operation cannot be fulfilled on workflowtemplates.argoproj.io "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                    code=10,
                )
            self._lint(template, ns)
            self._resource_version += 1
            metadata.update(
                uid=current["uid"],
                creationTimestamp=current["creationTimestamp"],
                generation=current.get("generation", 1) + 1,
                resourceVersion=str(self._resource_version),
            )
            self.workflow_templates[(ns, name)] = template
            return copy.deepcopy(template)

    def _delete_template(self, _body: Any, ns: str, name: str) -> Json:
        self._authorize(ns, "workflowtemplates", "delete")
        with self._lock:
            self._stored_template(ns, name)
            del self.workflow_templates[(ns, name)]
        return {}

    # ---------------------------------------------------------------------------------------- workflows

    def _check_template_ref(self, workflow: Json, ns: str) -> None:
        """A Workflow naming a missing (Cluster)WorkflowTemplate is a 404, as on a real server."""
        ref = workflow.get("spec", {}).get("workflowTemplateRef")
        if not ref:
            return
        if ref.get("clusterScope"):  # this fake stores no ClusterWorkflowTemplates
            raise ApiError(404, workflow_template_not_found(ref.get("name", ""), cluster_scope=True))
        self._stored_template(ns, ref.get("name", ""))

    def _lint_workflow(self, body: Any, ns: str) -> Json:
        self._authorize(ns, "workflows", "create")
        workflow = self._validated(body, "WorkflowLintRequest", "workflow")
        self._place(workflow, ns)
        with self._lock:
            self._check_template_ref(workflow, ns)
            self._lint(workflow, ns)
        return workflow

    def _create_workflow(self, body: Any, ns: str) -> Json:
        self._authorize(ns, "workflows", "create")
        workflow = self._validated(body, "WorkflowCreateRequest", "workflow")
        return self._store_workflow(workflow, ns, dry_run=bool(body.get("serverDryRun")))

    def _store_workflow(self, workflow: Json, ns: str, dry_run: bool = False) -> Json:
        metadata = self._place(workflow, ns)
        workflow.pop("status", None)
        with self._lock:
            self._check_template_ref(workflow, ns)
            self._lint(workflow, ns)
            name = self._name(metadata, self.workflows, ns, "workflows")
            self._stamp(metadata, ns)
            if not dry_run:
                self.workflows[(ns, name)] = workflow
                self._gets[(ns, name)] = 0
            return copy.deepcopy(workflow)

    def _submit_workflow(self, body: Any, ns: str) -> Json:
        """`argo submit --from workflowtemplate/NAME`: a Workflow that references the stored template."""
        self._authorize(ns, "workflows", "create")
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        errors = schema_errors(body, self.schema_version, "io.argoproj.workflow.v1alpha1.WorkflowSubmitRequest")
        if errors:
            raise ApiError(400, "; ".join(errors))
        kind, name = body.get("resourceKind"), body.get("resourceName")
        if kind != "WorkflowTemplate":
            raise ApiError(400, f"resourceKind {kind!r} is not supported by this fake (only WorkflowTemplate)")
        with self._lock:
            self._stored_template(ns, name or "")
        return self._store_workflow(_workflow_from_submit(name or "", body.get("submitOptions") or {}), ns)

    def _get_workflow(self, _body: Any, ns: str, name: str) -> Json:
        """Each GET moves the workflow one step along `phases`, so a client's wait loop can be tested."""
        self._authorize(ns, "workflows", "get")
        with self._lock:
            workflow = self._stored_workflow(ns, name)
            count = self._gets[(ns, name)]
            self._gets[(ns, name)] = count + 1
            phase = self.phases[min(count, len(self.phases) - 1)]
            result = copy.deepcopy(workflow)
        status: Json = {"phase": phase}
        if phase != "Pending":
            status["startedAt"] = result["metadata"]["creationTimestamp"]
        if phase in FINISHED_PHASES:
            status["finishedAt"] = _now()
        result["status"] = status
        return result

    def _stored_workflow(self, ns: str, name: str) -> Json:
        try:
            return self.workflows[(ns, name)]
        except KeyError:
            raise ApiError(404, f'workflows.argoproj.io "{name}" not found') from None

    def _list_workflows(self, _body: Any, ns: str) -> Json:
        self._authorize(ns, "workflows", "list")
        with self._lock:
            items = [copy.deepcopy(w) for (n, _), w in sorted(self.workflows.items()) if n == ns]
            return {"metadata": {"resourceVersion": str(self._resource_version)}, "items": items}

    def _delete_workflow(self, _body: Any, ns: str, name: str) -> Json:
        self._authorize(ns, "workflows", "delete")
        with self._lock:
            self._stored_workflow(ns, name)
            del self.workflows[(ns, name)]
        return {}


def _workflow_from_submit(template_name: str, options: Json) -> Json:
    """The Workflow Argo creates for a submit request (parameters come as `name=value` strings)."""
    parameters = []
    for item in options.get("parameters") or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise ApiError(400, f"expected parameter of the form: NAME=VALUE. Received: {item}")
        parameters.append({"name": key, "value": value})
    labels = {"workflows.argoproj.io/workflow-template": template_name}
    for pair in filter(None, str(options.get("labels") or "").split(",")):
        key, _, value = pair.partition("=")
        labels[key] = value
    metadata: Json = {"labels": labels}
    if options.get("name"):
        metadata["name"] = options["name"]
    else:
        metadata["generateName"] = options.get("generateName") or f"{template_name}-"
    spec: Json = {"workflowTemplateRef": {"name": template_name}}
    if parameters:
        spec["arguments"] = {"parameters": parameters}
    if options.get("entryPoint"):
        spec["entrypoint"] = options["entryPoint"]
    if options.get("serviceAccount"):
        spec["serviceAccountName"] = options["serviceAccount"]
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": metadata, "spec": spec}


class _InvalidJson(NamedTuple):
    text: str
    error: str


def _parse_body(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError as error:
        return _InvalidJson(body.decode("utf-8", "replace"), str(error))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _QuietHTTPServer(ThreadingHTTPServer):
    """No tracebacks on stderr for clients that hang up or reject the TLS certificate (tests do that)."""

    daemon_threads = True
    block_on_close = False
    fake: FakeArgoServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to `FakeArgoServer.handle`; logs nothing (the token must never be printed)."""

    server: _QuietHTTPServer
    server_version = "FakeArgoServer"
    timeout = 10  # seconds; a client that stalls mid-request cannot pin a thread forever

    def setup(self) -> None:
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # raises for clients that reject the certificate; handle_error is silent

    def _respond(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = self.server.fake.handle(self.command, self.path, dict(self.headers.items()), body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _respond

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it (EC keys: fast)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-argo-server test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_file, cert_file, key_file
