"""The strict schema and the `argo lint` port catch each rule, and accept a good artifact-passing DAG."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

try:  # repository root on sys.path
    from tests.argo_validation import assert_valid, lint_errors, schema_errors, strict_schema
except ModuleNotFoundError:  # pytest's default: tests/ itself on sys.path
    from support.argo_validation import assert_valid, lint_errors, schema_errors, strict_schema

# Modelled on Argo's examples/artifact-passing.yaml, as a DAG with key-only S3 artifacts that land in the
# repository named by artifactRepositoryRef, plus an exit handler and a looped task.
GOOD_TEMPLATE_YAML = """
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata:
  name: artifact-passing-dag
  namespace: argo
  labels:
    app.kubernetes.io/name: cvat-argo
spec:
  entrypoint: main
  onExit: notify
  serviceAccountName: argo-workflow
  artifactRepositoryRef:
    configMap: artifact-repositories
    key: minio
  arguments:
    parameters:
    - name: message
      value: hello world
    - name: learning-rate
      value: "1e-5"
      enum: ["1e-5", "1e-4"]
  templates:
  - name: main
    dag:
      tasks:
      - name: generate
        template: generate-artifact
        arguments:
          parameters:
          - name: message
            value: "{{workflow.parameters.message}}"
      - name: consume
        template: print-message
        depends: generate
        arguments:
          artifacts:
          - name: message
            from: "{{tasks.generate.outputs.artifacts.hello-art}}"
      - name: count
        template: count-words
        depends: "generate.Succeeded && consume"
        arguments:
          parameters:
          - name: text
            value: "{{tasks.generate.outputs.parameters.text}}"
      - name: shout
        template: shout
        depends: count
        withItems: [a, b]
        arguments:
          parameters:
          - name: word
            value: "{{item}}-{{tasks.count.outputs.result}}"
    outputs:
      parameters:
      - name: words
        valueFrom:
          parameter: "{{tasks.count.outputs.result}}"
  - name: generate-artifact
    inputs:
      parameters:
      - name: message
    container:
      image: busybox:1.36
      command: [sh, -c]
      args: ["echo {{inputs.parameters.message}} | tee /tmp/hello_world.txt; echo {{pod.name}} {{retries}}"]
    outputs:
      parameters:
      - name: text
        valueFrom:
          path: /tmp/hello_world.txt
      artifacts:
      - name: hello-art
        path: /tmp/hello_world.txt
        s3:
          key: "runs/{{workflow.uid}}/hello_world.txt"
    retryStrategy:
      limit: "2"
      retryPolicy: OnError
    timeout: 5m
  - name: print-message
    inputs:
      artifacts:
      - name: message
        path: /tmp/message
    container:
      image: alpine:3.20
      command: [sh, -c]
      args: ["cat {{inputs.artifacts.message.path}}"]
      volumeMounts:
      - name: scratch
        mountPath: /scratch
    volumes:
    - name: scratch
      emptyDir: {}
  - name: count-words
    inputs:
      parameters:
      - name: text
    script:
      image: python:3.11-alpine
      command: [python]
      source: |
        print(len("{{inputs.parameters.text}}".split()))
    activeDeadlineSeconds: "600"
  - name: shout
    inputs:
      parameters:
      - name: word
    container:
      image: alpine:3.20
      args: ["echo", "{{inputs.parameters.word}}"]
  - name: notify
    container:
      image: alpine:3.20
      args: ["echo {{workflow.name}} {{workflow.status}} {{workflow.failures}} {{workflow.labels.team}}"]
"""


def good() -> dict[str, Any]:
    return yaml.safe_load(GOOD_TEMPLATE_YAML)


def template(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in obj["spec"]["templates"] if t["name"] == name)


def task(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in template(obj, "main")["dag"]["tasks"] if t["name"] == name)


def small_dag(*tasks: dict[str, Any]) -> dict[str, Any]:
    """A WorkflowTemplate with one DAG `main` over an `echo` template taking an optional parameter."""
    echo = {"name": "echo", "inputs": {"parameters": [{"name": "msg", "default": "hi"}]},
            "container": {"image": "alpine", "args": ["{{inputs.parameters.msg}}"]}}  # fmt: skip
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {"name": "small"},
        "spec": {"entrypoint": "main", "templates": [{"name": "main", "dag": {"tasks": list(tasks)}}, echo]},
    }


# ------------------------------------------------------------------------------------------------------ good


def test_good_dag_passes_schema_for_both_versions_and_lint() -> None:
    obj = good()
    assert schema_errors(obj) == []
    assert schema_errors(obj, "v3.7.14") == []
    assert lint_errors(obj) == []
    assert_valid(obj, versions=("main", "v3.7.14"))


def test_workflow_referencing_the_template_is_linted_with_its_spec() -> None:
    workflow = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "artifact-passing-dag-"},
        "spec": {
            "workflowTemplateRef": {"name": "artifact-passing-dag"},
            "arguments": {"parameters": [{"name": "message", "value": "bye"}]},
        },
    }
    assert schema_errors(workflow) == []
    assert lint_errors(workflow, templates=[good()]) == []
    assert lint_errors(workflow) == [
        'spec.workflowTemplateRef: workflowtemplates.argoproj.io "artifact-passing-dag" not found'
    ]
    workflow["spec"]["arguments"]["parameters"][0]["name"] = "messages"  # still merged with the template's
    workflow["spec"]["templates"] = [{"name": "x", "suspend": {}}]
    assert lint_errors(workflow, templates=[good()]) == [
        "spec.templates must be empty when spec.workflowTemplateRef is set"
    ]


def test_workflow_must_supply_entrypoint_inputs_but_template_need_not() -> None:
    obj = good()
    template(obj, "main")["inputs"] = {"parameters": [{"name": "run-id"}]}
    assert lint_errors(obj) == []
    obj["kind"] = "Workflow"
    assert lint_errors(obj) == ["spec.entrypoint: inputs.parameters.run-id was not supplied (template 'main')"]
    obj["spec"]["arguments"]["parameters"].append({"name": "run-id", "value": "7"})
    assert lint_errors(obj) == []


def test_template_ref_resolves_only_from_given_templates() -> None:
    ref = {"name": "b", "templateRef": {"name": "artifact-passing-dag", "template": "shout"},
           "arguments": {"parameters": [{"name": "word", "value": "x"}]}}  # fmt: skip
    obj = small_dag({"name": "a", "template": "echo"}, ref)
    assert lint_errors(obj, templates=[good()]) == []
    assert lint_errors(obj) == [
        "templates.main.tasks.b.templateRef: template reference artifact-passing-dag.shout not found"
    ]
    ref["arguments"] = {}
    assert lint_errors(obj, templates=[good()]) == [
        "templates.main.tasks.b: inputs.parameters.word was not supplied (template 'shout')"
    ]


def test_schema_validation_is_cached_and_fast() -> None:
    obj = good()
    schema_errors(obj)
    started = time.perf_counter()
    for _ in range(20):
        schema_errors(obj)
    assert time.perf_counter() - started < 1.0
    assert strict_schema() is strict_schema("main")


def test_strict_schema_closes_objects_but_keeps_int_or_string_a_string() -> None:
    definitions = strict_schema()["definitions"]
    assert definitions["io.argoproj.workflow.v1alpha1.Template"]["additionalProperties"] is False
    assert definitions["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] == {"type": "string"}
    with pytest.raises(ValueError, match="unknown schema version"):
        strict_schema("v2")


# ------------------------------------------------------------------------------------------------------ schema


def test_misspelt_key_is_reported_at_its_path() -> None:
    obj = good()
    template(obj, "generate-artifact")["retryStategy"] = template(obj, "generate-artifact").pop("retryStrategy")
    assert schema_errors(obj) == [
        "spec.templates[1].retryStategy: Additional properties are not allowed ('retryStategy' was unexpected)"
    ]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("retryStrategy", {"limit": 3}, "spec.templates[1].retryStrategy.limit: 3 is not of type 'string'"),
        ("activeDeadlineSeconds", 600, "spec.templates[1].activeDeadlineSeconds: 600 is not of type 'string'"),
        ("timeout", 300, "spec.templates[1].timeout: 300 is not of type 'string'"),
    ],
)
def test_int_or_string_fields_must_be_strings(field: str, value: Any, expected: str) -> None:
    obj = good()
    template(obj, "generate-artifact")[field] = value
    assert expected in schema_errors(obj)


def test_fields_differ_between_schema_versions() -> None:
    obj = good()
    template(obj, "shout")["pendingTimeout"] = "10m"  # new in Argo 4.1
    assert schema_errors(obj) == []
    assert schema_errors(obj, "v3.7.14") == [
        "spec.templates[4].pendingTimeout: Additional properties are not allowed ('pendingTimeout' was unexpected)"
    ]


def test_request_definitions_and_unknown_kinds() -> None:
    request = {"workflow": {**good(), "kind": "Workflow"}, "serverDryRun": "yes"}
    assert schema_errors(request, definition="io.argoproj.workflow.v1alpha1.WorkflowCreateRequest") == [
        "serverDryRun: 'yes' is not of type 'boolean'"
    ]
    assert schema_errors({"template": good()}, definition="WorkflowTemplateCreateRequest") == []
    assert schema_errors({"kind": "Pod"}) == ["kind: cannot pick a schema definition for kind 'Pod'; pass definition="]
    labels = good()
    labels["metadata"]["labels"]["app.kubernetes.io/name"] = 1
    assert schema_errors(labels) == ["metadata.labels[\"app.kubernetes.io/name\"]: 1 is not of type 'string'"]


# ------------------------------------------------------------------------------------------------------ lint


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets template/task fields: 'template:<name>.<key>' or 'task:<name>.<key>'."""
    where, key = path.split(".", 1)
    scope, name = where.split(":")

    def mutate(obj: dict[str, Any]) -> None:
        target = template(obj, name) if scope == "template" else task(obj, name)
        target[key] = copy.deepcopy(value)

    return mutate


def _add_task(**fields: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        template(obj, "main")["dag"]["tasks"].append(copy.deepcopy(fields))

    return mutate


def _edit(function: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    """A lambda as a mutation (its value is ignored): lambdas keep the table of cases compact."""

    def mutate(obj: dict[str, Any]) -> None:
        function(obj)

    return mutate


LINT_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    # 1. names
    ("long name", _edit(lambda o: o["metadata"].update(name="x" * 64)),
     "metadata.name 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' must not be more than 63"),
    ("duplicate task", _add_task(name="count", template="shout", depends="consume",
                                 arguments={"parameters": [{"name": "word", "value": "x"}]}),
     "templates.main.tasks[4].name 'count' is not unique"),
    ("bad task name", _edit(lambda o: task(o, "shout").update(name="shout_it")),
     "templates.main.tasks[3].name 'shout_it' is invalid"),
    ("duplicate template", _edit(lambda o: o["spec"]["templates"].append({"name": "shout", "suspend": {}})),
     "spec.templates[6].name 'shout' is not unique"),
    ("bad parameter name", _edit(lambda o: o["spec"]["arguments"]["parameters"].append({"name": "a.b"})),
     "spec.arguments.parameters[2].name 'a.b' is invalid"),
    # 2. references
    ("missing entrypoint", _edit(lambda o: (o.update(kind="Workflow"), o["spec"].pop("entrypoint"))),
     "spec.entrypoint is required"),
    ("unknown entrypoint", _edit(lambda o: o["spec"].update(entrypoint="nope")),
     "spec.entrypoint: template 'nope' is not defined"),
    ("unknown onExit", _edit(lambda o: o["spec"].update(onExit="nope")), "spec.onExit: template 'nope' is not defined"),
    ("unknown task template", _set("task:shout.template", "nope"),
     "templates.main.tasks.shout.template: template 'nope' is not defined"),
    ("hook without expression", _edit(lambda o: o["spec"].update(hooks={"running": {"template": "notify"}})),
     "spec.hooks.running: expression is required"),
    ("unknown hook template", _set("task:count.hooks", {"exit": {"template": "nope"}}),
     "templates.main.tasks.count.hooks.exit.template: template 'nope' is not defined"),
    # 3. template type
    ("two types", _set("template:shout.script", {"image": "alpine", "source": "x"}),
     "templates.shout: needs exactly one template type"),
    ("no image", _set("template:shout.container", {"args": ["x"]}), "templates.shout.container.image may not be empty"),
    # 4. DAG
    ("cycle", _edit(lambda o: task(o, "generate").update(depends="count")),
     "templates.main.tasks: dependency cycle detected: generate->count->generate"),
    ("unknown dependency", _set("task:shout.depends", "count && nope"),
     "templates.main.tasks.shout: dependency 'nope' not defined"),
    ("mixed depends", _set("task:shout.dependencies", ["count"]),
     "templates.main.tasks: cannot use both 'depends' and 'dependencies' in the same DAG template"),
    ("unknown result", _set("task:shout.depends", "count.Finished"),
     "templates.main.tasks.shout.depends: unknown result 'Finished' for task 'count'"),
    ("items condition", _set("task:shout.depends", "count.AnySucceeded"),
     "templates.main.tasks.shout: dependency 'count' uses .AnySucceeded but has no items"),
    ("empty dag", _set("template:main.dag", {"tasks": []}), "templates.main.dag must have at least one task"),
    ("continueOn with depends", _set("task:shout.continueOn", {"failed": True}),
     "templates.main.tasks.shout: cannot use 'continueOn' with 'depends'"),
    ("unknown target", _edit(lambda o: template(o, "main")["dag"].update(target="nope")),
     "templates.main.dag.target: target 'nope' is not defined"),
    # 5. ancestry of task arguments
    ("artifact from non-ancestor", _set("task:consume.depends", ""),
     "templates.main.tasks.consume: missing dependency 'generate' for artifact 'message'"),
    # 6. variables
    ("unknown input", _set("template:shout.container", {"image": "alpine", "args": ["{{inputs.parameters.nope}}"]}),
     "templates.shout.container.args[0]: failed to resolve {{inputs.parameters.nope}}"),
    ("unknown workflow parameter", _set("task:generate.arguments", {"parameters": [
        {"name": "message", "value": "{{workflow.parameters.mesage}}"}]}),
     "templates.main.tasks.generate.arguments.parameters[0].value: failed to resolve {{workflow.parameters.mesage}}"),
    ("non-ancestor output in when", _set("task:consume.when", "{{tasks.count.outputs.result}} > 1"),
     "templates.main.tasks.consume.when: failed to resolve {{tasks.count.outputs.result}}"),
    ("unknown task output", _set("task:count.arguments", {"parameters": [
        {"name": "text", "value": "{{tasks.generate.outputs.parameters.nope}}"}]}),
     "failed to resolve {{tasks.generate.outputs.parameters.nope}}"),
    ("status outside exit handler", _set("template:shout.container", {"image": "a", "args": ["{{workflow.status}}"]}),
     "templates.shout.container.args[0]: failed to resolve {{workflow.status}}"),
    ("pod.name in a DAG", _set("template:main.podSpecPatch", "{{pod.name}}"),
     "templates.main.podSpecPatch: failed to resolve {{pod.name}}"),
    ("retries without retryStrategy", _set("template:shout.container", {"image": "a", "args": ["{{retries}}"]}),
     "templates.shout.container.args[0]: failed to resolve {{retries}}"),
    ("item without loop", _set("task:count.arguments", {"parameters": [{"name": "text", "value": "{{item}}"}]}),
     "templates.main.tasks.count.arguments.parameters[0].value: failed to resolve {{item}}"),
    ("tasks in a leaf", _set("template:shout.metadata", {"labels": {"x": "{{tasks.count.outputs.result}}"}}),
     "templates.shout.metadata.labels.x: failed to resolve {{tasks.count.outputs.result}}"),
    ("artifact key", _edit(lambda o: template(o, "generate-artifact")["outputs"]["artifacts"][0]["s3"].update(
        key="{{inputs.parameters.mesage}}")),
     "templates.generate-artifact.outputs.artifacts[0].s3.key: failed to resolve {{inputs.parameters.mesage}}"),
    # 7. supplied inputs
    ("missing parameter", _set("task:generate.arguments", {}),
     "templates.main.tasks.generate: inputs.parameters.message was not supplied (template 'generate-artifact')"),
    ("missing artifact", _set("task:consume.arguments", {}),
     "templates.main.tasks.consume: inputs.artifacts.message was not supplied (template 'print-message')"),
    ("argument without value", _set("task:generate.arguments", {"parameters": [{"name": "message"}]}),
     "templates.main.tasks.generate.arguments.parameters.message: value or valueFrom is required"),
    ("unlocated argument artifact", _set("task:consume.arguments", {"artifacts": [{"name": "message"}]}),
     "templates.main.tasks.consume.arguments.artifacts.message: from, fromExpression, an artifact location"),
    # 8. artifact paths and mounts
    ("dotdot path", _set("template:print-message.inputs", {"artifacts": [{"name": "message", "path": "/tmp/../etc"}]}),
     "templates.print-message.inputs.artifacts.message.path '/tmp/../etc' contains '..'"),
    ("path in a DAG", _set("template:main.inputs", {"artifacts": [{"name": "a", "path": "/a", "optional": True}]}),
     "templates.main.inputs.artifacts.a.path is only valid in container/script templates, not dag"),
    ("from in inputs", _set("template:print-message.inputs", {"artifacts": [
        {"name": "message", "path": "/tmp/m", "from": "{{workflow.parameters.message}}"}]}),
     "templates.print-message.inputs.artifacts.message.from is not valid in inputs"),
    ("mounted twice", _edit(lambda o: template(o, "print-message")["container"]["volumeMounts"].append(
        {"name": "other", "mountPath": "/scratch"})),
     "templates.print-message.container.volumeMounts[1].mountPath '/scratch' already mounted by volume 'scratch'"),
    ("mount over artifact", _edit(lambda o: template(o, "print-message")["container"]["volumeMounts"].append(
        {"name": "other", "mountPath": "/tmp/message"})),
     "templates.print-message.inputs.artifacts.message.path '/tmp/message' already mounted by volume 'other'"),
    # 9. output parameters
    ("value and valueFrom", _edit(lambda o: template(o, "generate-artifact")["outputs"]["parameters"][0].update(
        value="x")),
     "templates.generate-artifact.outputs.parameters.text has both value and valueFrom"),
    ("neither value nor valueFrom", _edit(lambda o: template(o, "generate-artifact")["outputs"]["parameters"][0].pop(
        "valueFrom")),
     "templates.generate-artifact.outputs.parameters.text needs value or valueFrom"),
    ("container output from parameter", _edit(lambda o: template(o, "generate-artifact")["outputs"]["parameters"][0]
        .update(valueFrom={"parameter": "x"})),
     "templates.generate-artifact.outputs.parameters.text.valueFrom.path must be specified for container templates"),
    # 10. deadlines and timeouts
    ("bare number timeout", _set("template:generate-artifact.timeout", "300"),
     "templates.generate-artifact.timeout '300' is not a duration"),
    ("timeout on a DAG", _set("template:main.timeout", "5m"),
     "templates.main.timeout is only valid for leaf templates"),
    ("deadline on a DAG", _set("template:main.activeDeadlineSeconds", "60"),
     "templates.main.activeDeadlineSeconds is only valid for leaf templates, not dag"),
    ("negative deadline", _set("template:shout.activeDeadlineSeconds", "-5"),
     "templates.shout.activeDeadlineSeconds must be a positive integer or a variable"),
    ("parallelism on a leaf", _set("template:shout.parallelism", 2),
     "templates.shout.parallelism is only valid for steps and dag templates"),
    # 11. enums
    ("empty enum", _edit(lambda o: o["spec"]["arguments"]["parameters"][1].update(enum=[])),
     "spec.arguments.parameters.learning-rate.enum should contain at least one value"),
    ("value not in enum", _edit(lambda o: o["spec"]["arguments"]["parameters"][1].update(value="0.1")),
     "spec.arguments.parameters.learning-rate: value '0.1' should be present in the enum list"),
    ("variable argument vs input enum", _edit(lambda o: template(o, "shout")["inputs"]["parameters"][0].update(
        enum=["a-1"])), ""),  # the argument is a variable: not checked
    ("argument not in input enum", _edit(lambda o: (
        template(o, "generate-artifact")["inputs"]["parameters"][0].update(enum=["bye"]),
        task(o, "generate")["arguments"]["parameters"][0].update(value="hello"))),
     "templates.main.tasks.generate.arguments.parameters.message: value 'hello' should be present in the enum list"),
    # 12. reserved names
    ("sidecar named wait", _set("template:shout.sidecars", [{"name": "wait", "image": "alpine"}]),
     "templates.shout.sidecars[0].name 'wait' is reserved for Argo's own containers"),
    ("sidecar named artifact-plugin", _set("template:shout.sidecars", [{"name": "artifact-plugin-s3", "image": "a"}]),
     "templates.shout.sidecars[0].name 'artifact-plugin-s3' is reserved"),
    ("pod GC", _edit(lambda o: o["spec"].update(podGC={"strategy": "Never"})),
     "spec.podGC.strategy: unknown strategy 'Never'"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "expected"), [case[1:] for case in LINT_CASES], ids=[c[0] for c in LINT_CASES])
def test_lint_rule(mutate: Callable[[dict[str, Any]], None], expected: str) -> None:
    obj = good()
    mutate(obj)
    errors = lint_errors(obj)
    if not expected:
        assert errors == []
    else:
        assert any(expected in error for error in errors), errors


def test_loop_and_exit_handler_scopes_are_accepted_where_they_exist() -> None:
    obj = good()
    assert "{{item}}" in task(obj, "shout")["arguments"]["parameters"][0]["value"]  # looped task
    assert "{{workflow.failures}}" in template(obj, "notify")["container"]["args"][0]  # onExit template
    assert "{{retries}}" in template(obj, "generate-artifact")["container"]["args"][0]  # has retryStrategy
    assert lint_errors(obj) == []


def test_small_dag_cycle_message_and_steps() -> None:
    obj = small_dag(
        {"name": "a", "template": "echo", "depends": "b"},
        {"name": "b", "template": "echo", "depends": "a || (a.Failed && !a.Skipped)"},
    )
    assert lint_errors(obj) == ["templates.main.tasks: dependency cycle detected: a->b->a"]

    def step(name: str, msg: str = "hi") -> dict[str, Any]:
        return {"name": name, "template": "echo", "arguments": {"parameters": [{"name": "msg", "value": msg}]}}

    steps = small_dag({"name": "a", "template": "echo"})
    steps["spec"]["templates"][0] = {
        "name": "main",
        "steps": [[step("one"), step("two", "{{steps.one.id}}")], [step("three", "{{steps.two.outputs.result}}")]],
    }
    assert lint_errors(steps) == [  # steps in one group run in parallel: only earlier groups are visible
        "templates.main.steps[0].two.arguments.parameters[0].value: failed to resolve {{steps.one.id}}"
    ]


def test_assert_valid_lists_schema_and_lint_errors() -> None:
    obj = good()
    template(obj, "generate-artifact")["retryStrategy"]["limit"] = 2
    template(obj, "generate-artifact")["timeout"] = "300"
    with pytest.raises(AssertionError) as raised:
        assert_valid(obj, versions=("main", "v3.7.14"))
    message = str(raised.value)
    assert "WorkflowTemplate artifact-passing-dag: 3 problem(s)" in message
    assert "schema main: spec.templates[1].retryStrategy.limit: 2 is not of type 'string'" in message
    assert "schema v3.7.14: spec.templates[1].retryStrategy.limit" in message
    assert "lint: templates.generate-artifact.timeout '300' is not a duration" in message


def test_unsupported_kind() -> None:
    assert lint_errors({"kind": "Pod"}) == [
        "kind: lint_errors supports Workflow, WorkflowTemplate, ClusterWorkflowTemplate, CronWorkflow, not 'Pod'"
    ]
