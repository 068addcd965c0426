"""Submitting a run to an Argo server, configured the way the argo CLI is.

``ARGO_SERVER`` (``host:port`` or a URL), ``ARGO_SECURE``, ``ARGO_BASE_HREF``, ``ARGO_TOKEN``,
``ARGO_NAMESPACE`` and ``ARGO_INSECURE_SKIP_VERIFY`` mean what they mean to ``argo``; flags override
them. Each failure a user can meet (401, 403, missing template, connection refused, TLS) becomes one
line that says what to check. The token never appears in output or in an error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

import requests
from hera import exceptions as hera_errors
from hera.workflows import WorkflowsService
from hera.workflows.models import (
    WorkflowCreateRequest,
    WorkflowTemplateCreateRequest,
    WorkflowTemplateUpdateRequest,
)
from hera.workflows.models import WorkflowTemplate as ModelWorkflowTemplate

from ..errors import SubmitError
from ..request.catalog import Catalog, ResolvedRequest
from ..request.spec import TrainingRequest
from .argo import cluster_pipeline, template_name, workflow_for, workflow_template_for
from .artifacts import artifact_key
from .pipeline import Pipeline

FINISHED_PHASES = ("Succeeded", "Failed", "Error")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ArgoConnection:
    """Where the Argo server is and how to talk to it. ``repr`` never shows the token."""

    url: str
    namespace: str = "argo"
    token: str | None = field(default=None, repr=False)
    verify: bool | str = True  # False, True, or a CA bundle path

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        server: str | None = None,
        namespace: str | None = None,
        token: str | None = None,
        base_href: str | None = None,
        insecure_skip_verify: bool | None = None,
        ca_file: str | None = None,
    ) -> ArgoConnection:
        env = os.environ if env is None else env
        server = server or env.get("ARGO_SERVER")
        if not server:
            raise SubmitError(
                "no Argo server: set ARGO_SERVER (e.g. localhost:2746 after "
                "`kubectl -n argo port-forward svc/argo-server 2746:2746`) or pass --server"
            )
        if "://" not in server:
            secure = env.get("ARGO_SECURE", "true").lower() in _TRUE
            server = f"{'https' if secure else 'http'}://{server}"
        href = base_href if base_href is not None else env.get("ARGO_BASE_HREF", "")
        url = server.rstrip("/") + "/" + href.strip("/")
        url = url.rstrip("/") + "/"  # Hera joins paths with urljoin: a base path must end in '/'
        if insecure_skip_verify is None:
            insecure_skip_verify = env.get("ARGO_INSECURE_SKIP_VERIFY", "false").lower() in _TRUE
        verify: bool | str = ca_file or not insecure_skip_verify
        return cls(url=url, namespace=namespace or env.get("ARGO_NAMESPACE") or "argo",
                   token=token or env.get("ARGO_TOKEN") or None, verify=verify)

    def service(self) -> WorkflowsService:
        # Hera types verify_ssl as bool but hands it to requests' `verify`, which also takes a CA bundle path.
        return WorkflowsService(host=self.url, token=self.token, namespace=self.namespace,
                                verify_ssl=self.verify)  # type: ignore[arg-type]


@dataclass
class Submission:
    """A submitted run: its name, where its artifacts will be, and a way to wait for it."""

    name: str
    namespace: str
    template: str
    artifacts: dict[str, str]
    connection: ArgoConnection = field(repr=False)

    def phase(self) -> str:
        workflow = _call(self.connection, lambda svc: svc.get_workflow(self.name, namespace=self.namespace),
                         what=f"workflow {self.name}")
        return (workflow.status.phase if workflow.status and workflow.status.phase else "Pending")

    def wait(self, poll_seconds: float = 10.0, timeout_seconds: float | None = None,
             on_phase: Callable[[str], None] | None = None) -> str:
        """Block until the run finishes; return its final phase (Succeeded, Failed or Error)."""
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        last = None
        while True:
            phase = self.phase()
            if phase != last and on_phase is not None:
                on_phase(phase)
            last = phase
            if phase in FINISHED_PHASES:
                return phase
            if deadline is not None and time.monotonic() > deadline:
                raise SubmitError(f"workflow {self.name} still {phase} after {timeout_seconds:.0f} s")
            time.sleep(poll_seconds)


def artifact_locations(pipeline: Pipeline, workflow_name: str) -> dict[str, str]:
    """``stage/artifact`` -> key in the artifact repository's bucket, for a submitted run."""
    prefix = pipeline.parameter_values()["output-prefix"]
    return {f"{stage.name}/{artifact}": artifact_key(prefix, workflow_name, stage.name, artifact)
            for stage in pipeline.all_stages() for artifact in stage.outputs}


def submit(
    request: TrainingRequest | ResolvedRequest,
    connection: ArgoConnection | None = None,
    *,
    catalog: Catalog | None = None,
    install_template: bool = False,
) -> Submission:
    """Submit a run. With ``install_template`` the machine type's WorkflowTemplate is created or updated first."""
    connection = connection or ArgoConnection.from_env()
    pipeline = cluster_pipeline(request, catalog)
    template = template_name(pipeline)
    if install_template:
        install_workflow_template(pipeline, connection)
    workflow = workflow_for(pipeline)
    workflow.namespace = connection.namespace
    built = workflow.build()
    create = WorkflowCreateRequest(workflow=built)
    created = _call(connection, lambda svc: svc.create_workflow(create, namespace=connection.namespace),
                    what=f"WorkflowTemplate {template}")
    name = created.metadata.name
    return Submission(name=name, namespace=connection.namespace, template=template,
                      artifacts=artifact_locations(pipeline, name), connection=connection)


def install_workflow_template(pipeline: Pipeline, connection: ArgoConnection) -> str:
    """Create the WorkflowTemplate, or update it in place (keeping its resourceVersion)."""
    template = workflow_template_for(pipeline)
    template.namespace = connection.namespace
    model: ModelWorkflowTemplate = template.build()
    name = model.metadata.name
    try:
        current = connection.service().get_workflow_template(name, namespace=connection.namespace)
    except hera_errors.NotFound:
        current = None
    except Exception as exc:
        raise _readable(exc, connection, what=f"WorkflowTemplate {name}") from None
    if current is None:
        _call(connection, lambda svc: svc.create_workflow_template(
            WorkflowTemplateCreateRequest(template=model), namespace=connection.namespace),
            what=f"WorkflowTemplate {name}")
    else:
        model.metadata.resource_version = current.metadata.resource_version
        _call(connection, lambda svc: svc.update_workflow_template(
            name, WorkflowTemplateUpdateRequest(template=model), namespace=connection.namespace),
            what=f"WorkflowTemplate {name}")
    return name


def _call(connection: ArgoConnection, action, *, what: str):
    try:
        return action(connection.service())
    except Exception as exc:
        raise _readable(exc, connection, what=what) from None


def _readable(exc: Exception, connection: ArgoConnection, *, what: str) -> SubmitError:
    server, namespace = connection.url, connection.namespace
    host = urlparse(server).netloc
    if isinstance(exc, hera_errors.Unauthorized):
        message = (f"401 Unauthorized from {server}: the server refused the token. Check ARGO_TOKEN "
                   "(e.g. `argo auth token`, or a service account token) and that the server's auth mode accepts it")
    elif isinstance(exc, hera_errors.Forbidden):
        message = (f"403 Forbidden from {server}: the token is valid but may not do this in namespace "
                   f"{namespace!r}. Check ARGO_NAMESPACE and the RBAC role bound to the token's service account")
    elif isinstance(exc, hera_errors.NotFound):
        message = (f"404 Not Found from {server}: {what} does not exist in namespace {namespace!r}. Install the "
                   f"templates (`kubectl -n {namespace} apply -k workflow_templates/`, or `kubectl apply -k` your "
                   "overlay made from examples/gitops-overlay, which also makes the Secrets) or submit with "
                   "--install-template")
    elif isinstance(exc, requests.exceptions.SSLError):
        message = (f"TLS error talking to {server}: the certificate could not be verified. Pass --ca-file with "
                   "the server's CA, set ARGO_INSECURE_SKIP_VERIFY=true for a self-signed certificate, or "
                   "ARGO_SECURE=false if the server runs without TLS")
    elif isinstance(exc, requests.exceptions.ConnectionError):
        message = (f"cannot connect to the Argo server at {server} (connection refused or unreachable host "
                   f"{host}): check ARGO_SERVER, or port-forward it with "
                   "`kubectl -n argo port-forward svc/argo-server 2746:2746`")
    elif isinstance(exc, requests.exceptions.Timeout):
        message = f"the Argo server at {server} did not answer in time: check the network path and the server's load"
    elif isinstance(exc, hera_errors.HeraException):
        message = f"the Argo server at {server} refused the request for {what}: {exc}"
    else:
        message = f"submitting to {server} failed: {type(exc).__name__}: {exc}"
    return SubmitError(_redact(message, connection.token))


def _redact(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
        bare = token.split()[-1]
        text = text.replace(bare, "***")
    return text
