"""Submission against a real HTTP server on 127.0.0.1 that answers, and validates, like the Argo server."""

from __future__ import annotations

import socket

import pytest
import yaml

import cvat_argo
from cvat_argo import SubmitError, TrainingRequest
from cvat_argo.cli import main
from cvat_argo.engines.submission import ArgoConnection, install_workflow_template, submit
from support.argo_validation import assert_valid
from support.fake_argo_server import FakeArgoServer

TOKEN = "tok-3f9a1c-very-secret"


@pytest.fixture
def server():
    with FakeArgoServer(token=TOKEN, namespace="argo", phases=("Pending", "Running", "Succeeded")) as fake:
        yield fake


@pytest.fixture
def argo_env(monkeypatch, server):
    host = server.url.removeprefix("http://").rstrip("/")
    monkeypatch.setenv("ARGO_SERVER", host)
    monkeypatch.setenv("ARGO_SECURE", "false")
    monkeypatch.setenv("ARGO_TOKEN", TOKEN)
    monkeypatch.setenv("ARGO_NAMESPACE", "argo")
    return server


def connection(server, **overrides) -> ArgoConnection:
    return ArgoConnection(url=server.url, namespace="argo", token=TOKEN, **overrides)


def test_connection_reads_the_argo_cli_environment():
    env = {"ARGO_SERVER": "argo.example.com:443", "ARGO_BASE_HREF": "/argo", "ARGO_TOKEN": "Bearer abc",
           "ARGO_NAMESPACE": "ml", "ARGO_INSECURE_SKIP_VERIFY": "true"}
    conn = ArgoConnection.from_env(env)
    assert conn.url == "https://argo.example.com:443/argo/"  # trailing slash: Hera joins with urljoin
    assert conn.namespace == "ml" and conn.verify is False and conn.token == "Bearer abc"
    assert "abc" not in repr(conn)
    plain = ArgoConnection.from_env({"ARGO_SERVER": "localhost:2746", "ARGO_SECURE": "false"})
    assert plain.url == "http://localhost:2746/" and plain.namespace == "argo" and plain.verify is True
    flags = ArgoConnection.from_env(env, server="https://other:2746", namespace="x", ca_file="/ca.pem")
    assert flags.url == "https://other:2746/argo/" and flags.namespace == "x" and flags.verify == "/ca.pem"
    with pytest.raises(SubmitError, match="set ARGO_SERVER"):
        ArgoConnection.from_env({})


def test_submit_with_template_install_then_wait(server):
    request = TrainingRequest.create(task_id=42, args="epochs=10,batch_size=8")
    run = cvat_argo.submit(request, connection(server), install_template=True)
    assert run.name.startswith("cvat-argo-task42-ssd-mobilenet-v2-coco-") and run.template == "cvat-argo-gpu-1"
    assert run.artifacts["train/model"] == f"cvat-argo/{run.name}/train/model"
    assert run.artifacts["pre-annotate/annotations"] == f"cvat-argo/{run.name}/pre-annotate/annotations"
    stored_template = server.workflow_templates[("argo", "cvat-argo-gpu-1")]
    stored_workflow = server.workflows[("argo", run.name)]
    assert_valid(stored_workflow, templates=[stored_template])
    parameters = {p["name"]: p["value"] for p in stored_workflow["spec"]["arguments"]["parameters"]}
    assert parameters["cvat-task-id"] == "42" and parameters["args"] == "epochs=10,batch_size=8,num_clones=1"
    phases = []
    assert run.wait(poll_seconds=0, on_phase=phases.append) == "Succeeded"
    assert phases == ["Pending", "Running", "Succeeded"]
    assert [(r.method, r.path) for r in server.requests][:3] == [
        ("GET", "/api/v1/workflow-templates/argo/cvat-argo-gpu-1"),
        ("POST", "/api/v1/workflow-templates/argo"),
        ("POST", "/api/v1/workflows/argo"),
    ]


def test_installing_again_updates_in_place(server):
    request = TrainingRequest.create(task_id=1)
    from cvat_argo.engines.pipeline import build_pipeline

    pipeline = build_pipeline(request)
    install_workflow_template(pipeline, connection(server))
    first = server.workflow_templates[("argo", "cvat-argo-gpu-1")]["metadata"]["resourceVersion"]
    install_workflow_template(pipeline, connection(server))
    assert ("PUT", "/api/v1/workflow-templates/argo/cvat-argo-gpu-1") in [(r.method, r.path) for r in server.requests]
    assert server.workflow_templates[("argo", "cvat-argo-gpu-1")]["metadata"]["resourceVersion"] != first


def test_missing_template_says_how_to_install_it(server):
    with pytest.raises(SubmitError) as caught:
        submit(TrainingRequest.create(task_id=1), connection(server))
    message = str(caught.value)
    assert message.startswith("404 Not Found from") and "WorkflowTemplate cvat-argo-gpu-1 does not exist" in message
    assert "kubectl -n argo apply -k workflow_templates/" in message and "--install-template" in message


def test_wrong_token_is_a_401_that_never_echoes_the_token(server):
    wrong = "Bearer wrong-" + TOKEN
    with pytest.raises(SubmitError) as caught:
        submit(TrainingRequest.create(task_id=1), ArgoConnection(url=server.url, token=wrong))
    assert str(caught.value).startswith("401 Unauthorized") and "ARGO_TOKEN" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_other_namespace_is_a_403(server):
    with pytest.raises(SubmitError, match=r"^403 Forbidden .* namespace 'ml'.*RBAC"):
        submit(TrainingRequest.create(task_id=1), ArgoConnection(url=server.url, token=TOKEN, namespace="ml"),
               install_template=True)


def test_connection_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    with pytest.raises(SubmitError, match=r"cannot connect to the Argo server at http://127.0.0.1:\d+/.*ARGO_SERVER"):
        submit(TrainingRequest.create(task_id=1), ArgoConnection(url=f"http://127.0.0.1:{port}/", token=TOKEN))


def test_tls_failures_and_the_ca_file():
    with FakeArgoServer(token=TOKEN, namespace="argo", tls=True) as tls:
        request = TrainingRequest.create(task_id=1)
        with pytest.raises(SubmitError, match=r"TLS error talking to https://127\.0\.0\.1.*ARGO_INSECURE_SKIP_VERIFY"):
            submit(request, ArgoConnection(url=tls.url, token=TOKEN))
        run = submit(request, ArgoConnection(url=tls.url, token=TOKEN, verify=tls.ca_file), install_template=True)
        assert run.name in {name for _, name in tls.workflows}
        insecure = submit(request, ArgoConnection(url=tls.url, token=TOKEN, verify=False))
        assert insecure.name != run.name


def test_base_href_is_kept(monkeypatch):
    with FakeArgoServer(token=TOKEN, namespace="argo", base_href="/argo/") as served:
        conn = ArgoConnection.from_env({"ARGO_SERVER": served.url.removesuffix("argo/"), "ARGO_BASE_HREF": "/argo",
                                        "ARGO_TOKEN": TOKEN})
        run = submit(TrainingRequest.create(task_id=5), conn, install_template=True)
        assert all(r.path.startswith("/argo/api/v1/") for r in served.requests) and run.name


def test_server_errors_are_one_line(server):
    server.fail_next(500, "etcd is unhappy")
    with pytest.raises(SubmitError, match="refused the request"):
        submit(TrainingRequest.create(task_id=1), connection(server), install_template=True)


def test_cli_submit_and_wait(argo_env, capsys):
    assert main(["submit", "--task-id", "42", "--args", "epochs=10,batch_size=8", "--install-template", "--wait",
                 "--poll", "0"]) == 0
    out = capsys.readouterr().out
    assert "submitted cvat-argo-task42-ssd-mobilenet-v2-coco-" in out and "(WorkflowTemplate cvat-argo-gpu-1)" in out
    assert "train/model: cvat-argo/cvat-argo-task42" in out and out.rstrip().endswith("Succeeded")
    assert TOKEN not in out


def test_cli_failed_run_exits_non_zero(monkeypatch, capsys):
    with FakeArgoServer(token=TOKEN, namespace="argo", phases=("Running", "Failed")) as failing:
        monkeypatch.setenv("ARGO_TOKEN", TOKEN)
        assert main(["submit", "--server", failing.url, "--task-id", "1", "--install-template", "--wait",
                     "--poll", "0"]) == 1
    assert capsys.readouterr().out.rstrip().endswith("Failed")


def test_cli_errors_are_one_line_without_the_token(argo_env, capsys):
    assert main(["submit", "--task-id", "42"]) == 3  # template not installed
    err = capsys.readouterr().err
    assert err.startswith("error: 404 Not Found") and err.count("\n") == 1 and TOKEN not in err
    argo_env.fail_next(401)
    assert main(["submit", "--task-id", "42", "--token", "Bearer " + TOKEN + "x"]) == 3
    err = capsys.readouterr().err
    assert "401 Unauthorized" in err and TOKEN not in err


def test_dry_run_prints_valid_yaml_and_sends_nothing(server, capsys):
    assert main(["submit", "--server", server.url, "--task-id", "42", "--model", "frcnn-res50-coco",
                 "--machine", "gpu-2", "--args", "epochs=10,batch_size=8,initial_learning_rate=1e-5",
                 "--install-template", "--dry-run"]) == 0
    captured = capsys.readouterr()
    template, workflow = list(yaml.safe_load_all(captured.out))
    assert template["kind"] == "WorkflowTemplate" and workflow["kind"] == "Workflow"
    assert_valid(template)
    assert_valid(workflow, templates=[template])
    values = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert values["args"] == "epochs=10,batch_size=8,initial_learning_rate=1e-05,num_clones=2"
    assert "dry run" in captured.err and server.requests == []


def test_bad_requests_fail_before_contacting_the_server(server, capsys):
    assert main(["submit", "--server", server.url, "--task-id", "1", "--model", "frcnn-nas-coco"]) == 2
    assert "needs at least 2 GPUs" in capsys.readouterr().err
    assert main(["submit", "--server", server.url, "--source", "./local.zip"]) == 2
    assert "local path" in capsys.readouterr().err
    assert server.requests == []
