"""The fake Argo Server answers Hera's WorkflowsService and plain `requests` like the real one."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hera.exceptions import AlreadyExists, BadRequest, HeraException, NotFound, Unauthorized
from hera.workflows import DAG, Container, Parameter, S3Artifact, Workflow, WorkflowsService, WorkflowTemplate
from hera.workflows.models import ArtifactRepositoryRef, SubmitOpts, WorkflowSubmitRequest, WorkflowTemplateRef

try:  # repository root on sys.path
    from tests.argo_validation import schema_errors
    from tests.fake_argo_server import FakeArgoServer
except ModuleNotFoundError:  # pytest's default: tests/ itself on sys.path
    from support.argo_validation import schema_errors
    from support.fake_argo_server import FakeArgoServer

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def server() -> Iterator[FakeArgoServer]:
    with FakeArgoServer(token=TOKEN, namespace="argo") as fake:
        yield fake


@pytest.fixture(autouse=True)
def _hera_uses_pydantic_v1_json() -> Iterator[None]:
    """Hera 7.1's service serialises with pydantic's deprecated `.json()`; keep the test output readable."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The `json` method is deprecated")
        yield


def service(server: FakeArgoServer, token: str = TOKEN, **kwargs: Any) -> WorkflowsService:
    return WorkflowsService(host=server.url, token=token, namespace="argo", **kwargs)


def hera_template(svc: WorkflowsService, name: str = "cvat-train") -> WorkflowTemplate:
    """A two-task DAG as the package would render it: string IntOrStrings, key-only S3 artifacts."""
    with WorkflowTemplate(
        name=name,
        namespace="argo",
        entrypoint="pipeline",
        workflows_service=svc,
        arguments=[Parameter(name="cvat-task-id", value="42"), Parameter(name="learning-rate", value="1e-5")],
        artifact_repository_ref=ArtifactRepositoryRef(config_map="artifact-repositories", key="minio"),
    ) as wt:
        export = Container(
            name="export",
            image="ghcr.io/x/export:1.0",
            args=["--task", "{{inputs.parameters.cvat-task-id}}"],
            inputs=[Parameter(name="cvat-task-id")],
            outputs=[S3Artifact(name="dataset", path="/data/ds", key="runs/{{workflow.uid}}/ds.tgz")],
        )
        train = Container(
            name="train",
            image="ghcr.io/x/train:1.0",
            args=["--lr", "{{inputs.parameters.lr}}"],
            inputs=[Parameter(name="lr"), S3Artifact(name="dataset", path="/in/ds", key="unused")],
            timeout="5h",
        )
        with DAG(name="pipeline"):
            a = export(arguments=[wt.get_parameter("cvat-task-id")])
            lr = Parameter(name="lr", value="{{workflow.parameters.learning-rate}}")
            b = train(arguments=[a.get_artifact("dataset"), lr])
            a >> b
    return wt


def api(server: FakeArgoServer, path: str) -> str:
    return server.url + "api/v1/" + path


# ------------------------------------------------------------------------------------------------------ Hera


def test_hera_creates_template_then_workflow_from_it_and_waits(server: FakeArgoServer) -> None:
    svc = service(server)
    created = hera_template(svc).create()
    assert created.metadata.name == "cvat-train"
    assert created.metadata.uid and created.metadata.resource_version and created.metadata.creation_timestamp
    run = Workflow(
        generate_name="cvat-train-",
        namespace="argo",
        workflows_service=svc,
        workflow_template_ref=WorkflowTemplateRef(name="cvat-train"),
        arguments={"cvat-task-id": "7"},
    )
    server.phases = ("Running", "Running", "Succeeded")
    finished = run.create(wait=True, poll_interval=0)
    assert finished.status.phase == "Succeeded"
    assert run.name.startswith("cvat-train-") and len(run.name) == len("cvat-train-") + 5
    posted = [r for r in server.requests if r.method == "POST"]
    assert [r.path for r in posted] == ["/api/v1/workflow-templates/argo", "/api/v1/workflows/argo"]
    assert posted[1].json_body == {
        "workflow": {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Workflow",
            "metadata": {"generateName": "cvat-train-", "namespace": "argo"},
            "spec": {
                "arguments": {"parameters": [{"name": "cvat-task-id", "value": "7"}]},
                "workflowTemplateRef": {"name": "cvat-train"},
            },
        }
    }
    assert all("authorization" not in {k.lower() for k in r.headers} for r in server.requests)
    assert posted[0].headers["Content-Type"] == "application/json"


def test_hera_wait_stops_at_pending(server: FakeArgoServer) -> None:
    """Hera 7.1's `wait()` only loops while the phase is Running, so a Pending workflow ends the wait:
    the package needs its own wait loop. Default phases: Pending, Running, Succeeded."""
    svc = service(server)
    hera_template(svc).create()
    run = Workflow(generate_name="x-", namespace="argo", workflows_service=svc,
                   workflow_template_ref=WorkflowTemplateRef(name="cvat-train"))  # fmt: skip
    assert run.create(wait=True, poll_interval=0).status.phase == "Pending"
    assert [svc.get_workflow(run.name).status.phase for _ in range(3)] == ["Running", "Succeeded", "Succeeded"]


def test_hera_update_uses_resource_version_and_lint(server: FakeArgoServer) -> None:
    svc = service(server)
    wt = hera_template(svc)
    first = wt.update()  # GET -> 404 -> create
    second = wt.update()  # GET -> PUT with the current resourceVersion
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    assert second.metadata.uid == first.metadata.uid
    assert [r.method for r in server.requests] == ["GET", "POST", "GET", "PUT"]
    put = server.requests[-1].json_body
    assert put["template"]["metadata"]["resourceVersion"] == first.metadata.resource_version
    assert wt.lint().metadata.name == "cvat-train"
    with pytest.raises(AlreadyExists, match=re.escape('"cvat-train" already exists')):
        wt.create()


def test_hera_submit_from_template(server: FakeArgoServer) -> None:
    svc = service(server)
    hera_template(svc).create()
    request = WorkflowSubmitRequest(
        resource_kind="WorkflowTemplate",
        resource_name="cvat-train",
        submit_options=SubmitOpts(generate_name="cvat-train-", parameters=["cvat-task-id=7"]),
    )
    workflow = svc.submit_workflow(request)
    stored = server.workflows[("argo", workflow.metadata.name)]
    assert stored["spec"] == {
        "workflowTemplateRef": {"name": "cvat-train"},
        "arguments": {"parameters": [{"name": "cvat-task-id", "value": "7"}]},
    }
    assert stored["metadata"]["labels"] == {"workflows.argoproj.io/workflow-template": "cvat-train"}
    assert server.requests[-1].json_body == {
        "resourceKind": "WorkflowTemplate",
        "resourceName": "cvat-train",
        "submitOptions": {"generateName": "cvat-train-", "parameters": ["cvat-task-id=7"]},
    }


def test_hera_errors(server: FakeArgoServer) -> None:
    with pytest.raises(Unauthorized, match="token not valid"):
        service(server, token="wrong").get_version()
    not_found = re.escape('workflowtemplates.argoproj.io "nope" not found')
    with pytest.raises(NotFound, match=not_found):
        service(server).get_workflow_template("nope")
    missing = Workflow(generate_name="x-", namespace="argo", workflows_service=service(server),
                       workflow_template_ref=WorkflowTemplateRef(name="nope"))  # fmt: skip
    with pytest.raises(NotFound, match=not_found):
        missing.create()
    server.fail_next(503)
    with pytest.raises(HeraException, match="503"):
        service(server).get_version()
    assert service(server).get_version().version == "v4.1.2"


def test_hera_template_failing_lint_is_a_bad_request(server: FakeArgoServer) -> None:
    wt = hera_template(service(server))
    wt.templates[1].timeout = "300"  # a bare number is not a duration
    with pytest.raises(BadRequest, match=re.escape("templates.train.timeout '300' is not a duration")):
        wt.create()
    assert server.workflow_templates == {}


# ------------------------------------------------------------------------------------------------------ requests


def test_auth_and_namespace(server: FakeArgoServer) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        response = requests.get(api(server, "version"), headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json() == {
            "code": 16,
            "message": "token not valid. see https://argo-workflows.readthedocs.io/en/latest/faq/",
        }
    response = requests.get(api(server, "workflow-templates/other/x"), headers=AUTH, timeout=5)
    assert response.status_code == 403
    assert response.json()["code"] == 7
    assert response.json()["message"].startswith(
        'workflowtemplates.argoproj.io is forbidden: User "system:serviceaccount:argo:x" cannot get'
    )
    assert all("nope" not in str(r) and TOKEN not in str(r) for r in server.requests)


def test_not_found_conflict_and_bad_request(server: FakeArgoServer) -> None:
    response = requests.get(api(server, "workflow-templates/argo/nope"), headers=AUTH, timeout=5)
    assert (response.status_code, response.json()) == (
        404,
        {"code": 5, "message": 'workflowtemplates.argoproj.io "nope" not found'},
    )
    body = {"template": hera_template(service(server)).to_dict()}
    assert requests.post(api(server, "workflow-templates/argo"), json=body, headers=AUTH, timeout=5).ok
    response = requests.post(api(server, "workflow-templates/argo"), json=body, headers=AUTH, timeout=5)
    assert (response.status_code, response.json()["code"]) == (409, 6)
    body["template"]["spec"]["templates"][0]["retryStategy"] = {"limit": "2"}
    response = requests.put(api(server, "workflow-templates/argo/cvat-train"), json=body, headers=AUTH, timeout=5)
    assert response.status_code == 400 and response.json()["code"] == 3
    expected = "template.spec.templates[0].retryStategy: Additional properties are not allowed"
    assert expected in response.json()["message"]


def test_update_needs_current_resource_version(server: FakeArgoServer) -> None:
    body = {"template": hera_template(service(server)).to_dict()}
    created = requests.post(api(server, "workflow-templates/argo"), json=body, headers=AUTH, timeout=5).json()
    url = api(server, "workflow-templates/argo/cvat-train")
    for version in (None, "1"):
        body["template"]["metadata"]["resourceVersion"] = version
        if version is None:
            del body["template"]["metadata"]["resourceVersion"]
        response = requests.put(url, json=body, headers=AUTH, timeout=5)
        assert response.status_code == 409, response.text
        assert "the object has been modified" in response.json()["message"]
    body["template"]["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    updated = requests.put(url, json=body, headers=AUTH, timeout=5).json()
    assert updated["metadata"]["generation"] == 2


def test_workflow_phases_advance_on_each_get_and_objects_are_schema_valid(server: FakeArgoServer) -> None:
    body = {"template": hera_template(service(server)).to_dict()}
    template = requests.post(api(server, "workflow-templates/argo"), json=body, headers=AUTH, timeout=5).json()
    assert schema_errors(template) == []
    workflow = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "run-"},
        "spec": {"workflowTemplateRef": {"name": "cvat-train"}},
    }
    created = requests.post(api(server, "workflows/argo"), json={"workflow": workflow}, headers=AUTH, timeout=5).json()
    name = created["metadata"]["name"]
    assert created["metadata"]["namespace"] == "argo" and "status" not in created
    phases = []
    for _ in range(4):
        got = requests.get(api(server, f"workflows/argo/{name}"), headers=AUTH, timeout=5).json()
        assert schema_errors(got) == []
        phases.append(got["status"]["phase"])
    assert phases == ["Pending", "Running", "Succeeded", "Succeeded"]
    assert "finishedAt" in got["status"]


def test_workflow_with_lint_errors_and_missing_routes(server: FakeArgoServer) -> None:
    workflow = hera_template(service(server)).to_dict()
    workflow.update(kind="Workflow")
    pipeline = next(t for t in workflow["spec"]["templates"] if t["name"] == "pipeline")
    pipeline["dag"]["tasks"][1]["depends"] = "nope"
    response = requests.post(api(server, "workflows/argo"), json={"workflow": workflow}, headers=AUTH, timeout=5)
    assert response.status_code == 400
    assert "templates.pipeline.tasks.train: dependency 'nope' not defined" in response.json()["message"]
    assert requests.get(api(server, "nothing-here"), headers=AUTH, timeout=5).status_code == 404
    assert requests.delete(api(server, "version"), headers=AUTH, timeout=5).status_code == 405
    response = requests.post(api(server, "workflows/argo"), data=b"{not json", headers=AUTH, timeout=5)
    assert response.status_code == 400 and "invalid JSON body" in response.json()["message"]
    assert server.requests[-1].json_body.text == "{not json"


def test_fail_next(server: FakeArgoServer) -> None:
    server.fail_next(503, times=2)
    assert [requests.get(api(server, "version"), headers=AUTH, timeout=5).status_code for _ in range(3)] == [
        503,
        503,
        200,
    ]
    server.fail_next(500, "boom")
    assert requests.get(api(server, "version"), timeout=5).json() == {"code": 13, "message": "boom"}


def test_base_href() -> None:
    with FakeArgoServer(token=TOKEN, base_href="/argo/") as server:
        assert server.url.endswith("/argo/")
        assert service(server).get_version().git_tag == "v4.1.2"
        root = server.url.replace("/argo/", "/")
        assert requests.get(root + "api/v1/version", headers=AUTH, timeout=5).status_code == 404
        assert server.requests[0].path == "/argo/api/v1/version"


def test_tls_needs_the_ca_file() -> None:
    with FakeArgoServer(token=TOKEN, tls=True) as server:
        assert server.url.startswith("https://127.0.0.1:")
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(api(server, "version"), headers=AUTH, timeout=5)
        assert requests.get(api(server, "version"), headers=AUTH, verify=server.ca_file, timeout=5).ok
        assert service(server, verify_ssl=server.ca_file).get_version().version == "v4.1.2"
