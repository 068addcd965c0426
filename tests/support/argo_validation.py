"""Offline checks for rendered Argo Workflows objects: a strict JSON schema and a port of `argo lint`.

The `argo` binary cannot be installed where our tests run, so this module stands in for it:

* `schema_errors` validates against Argo's own JSON schema (vendored in `tests/argo/`), tightened with
  `additionalProperties: false` so that a misspelt key fails instead of being silently dropped by the cluster.
* `lint_errors` ports the semantic rules of Argo's `workflow/validate/validate.go` that the schema cannot
  express (names, references between templates, DAG dependencies, `{{variable}}` scopes, ...). It collects
  every problem instead of stopping at the first one as Argo does. See `tests/argo/README.md` and
  `shared/argo/LINT_RULES.md` for the rule list.
* `assert_valid` combines both for use in tests.

Everything here is plain functions over JSON-like dicts (the output of `to_dict()` or a YAML load).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

Json = dict[str, Any]

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "argo"
SCHEMA_FILES = {"main": "schema.json", "v3.7.14": "schema-v3.7.14.json"}
DEFINITION_PREFIX = "io.argoproj.workflow.v1alpha1."
KIND_DEFINITIONS = {
    kind: DEFINITION_PREFIX + kind
    for kind in ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow")
}

# ----------------------------------------------------------------------------------------------------
# JSON schema
# ----------------------------------------------------------------------------------------------------


@functools.cache
def _load_schema(version: str) -> Json:
    """The vendored schema exactly as Argo publishes it (cached: the file is 600 KB)."""
    try:
        filename = SCHEMA_FILES[version]
    except KeyError:
        raise ValueError(f"unknown schema version {version!r}; known: {sorted(SCHEMA_FILES)}") from None
    return json.loads((SCHEMA_DIR / filename).read_text(encoding="utf-8"))


def strict_schema(version: str = "main") -> Json:
    """Argo's schema with `additionalProperties: false` on every object definition that lists properties.

    Argo's generated schema accepts unknown keys everywhere, but the API server (with full CRDs) and the
    controller drop or reject them, so a typo such as `retryStategy` would silently lose the retry policy.
    IntOrString stays `{"type": "string"}` on purpose: the renderer must emit strings there.
    The returned dict is cached and shared: do not mutate it.
    """
    return _strict_schema(version)  # positional, so strict_schema() and strict_schema("main") share one entry


@functools.cache
def _strict_schema(version: str) -> Json:
    schema = copy.deepcopy(_load_schema(version))
    for definition in schema["definitions"].values():
        if definition.get("type") == "object" and "properties" in definition:
            definition["additionalProperties"] = False
    return schema


@functools.cache
def _validator(version: str, definition: str) -> jsonschema.Draft202012Validator:
    """One validator per (version, definition): building it is the slow part, validating is cheap."""
    schema = strict_schema(version)
    if definition not in schema["definitions"]:
        raise ValueError(f"schema {version!r} has no definition {definition!r}")
    root = {
        "$schema": schema["$schema"],
        "$ref": f"#/definitions/{definition}",
        "definitions": schema["definitions"],
    }
    return jsonschema.Draft202012Validator(root)


def schema_errors(obj: Mapping[str, Any], version: str = "main", definition: str | None = None) -> list[str]:
    """Validate `obj` against one schema definition and return readable `path: message` strings.

    The definition is picked from `obj["kind"]` unless given explicitly (short names such as
    "WorkflowCreateRequest" get the `io.argoproj.workflow.v1alpha1.` prefix). Validating against a single
    definition, not the schema's root `oneOf`, is what makes the messages point at the offending field.
    """
    if definition is None:
        kind = obj.get("kind") if isinstance(obj, Mapping) else None
        if kind not in KIND_DEFINITIONS:
            return [f"kind: cannot pick a schema definition for kind {kind!r}; pass definition="]
        definition = KIND_DEFINITIONS[str(kind)]
    elif "." not in definition:
        definition = DEFINITION_PREFIX + definition
    messages: list[str] = []
    for error in _validator(version, definition).iter_errors(obj):
        messages.extend(_format_schema_error(error))
    return sorted(set(messages))


def _format_schema_error(error: jsonschema.ValidationError) -> list[str]:
    """Turn one jsonschema error into `spec.templates[2].retryStategy: ...` lines.

    For unexpected keys the key itself is appended to the path, because that is what a reader looks for.
    """
    path = _json_path(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = set(error.schema.get("properties", {}))
        return [
            f"{_join_path(path, key)}: Additional properties are not allowed ({key!r} was unexpected)"
            for key in sorted(set(error.instance) - known)
        ]
    message = error.message if len(error.message) <= 300 else error.message[:297] + "..."
    return [f"{path or '<root>'}: {message}"]


_PLAIN_KEY = re.compile(r"^[A-Za-z_$][\w$-]*$")


def _join_path(path: str, key: str | int) -> str:
    """Append a key or index to a dotted JSON path, quoting keys such as `app.kubernetes.io/name`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _json_path(parts: Iterable[str | int]) -> str:
    path = ""
    for part in parts:
        path = _join_path(path, part)
    return path


# ----------------------------------------------------------------------------------------------------
# Lint: constants
# ----------------------------------------------------------------------------------------------------

MAX_OBJECT_NAME = 63
MAX_CRON_WORKFLOW_NAME = 52  # Argo appends `-<unix time>` to the workflows it creates
MAX_FIELD_NAME = 128
FIELD_NAME = re.compile(r"^[a-zA-Z0-9][-a-zA-Z0-9]*$")  # templates, tasks, steps
PARAM_NAME = re.compile(r"^[-a-zA-Z0-9_]+$")  # parameters and artifacts: Argo also allows '_' here

TEMPLATE_TYPES = (
    "container", "containerSet", "steps", "script", "resource", "dag", "suspend", "data", "http", "plugin"
)  # fmt: skip
LEAF_TYPES = frozenset({"container", "containerSet", "script", "resource", "data", "http", "plugin"})
POD_TYPES = frozenset({"container", "containerSet", "script", "resource", "data"})
RESULT_TYPES = frozenset({"container", "containerSet", "script", "data", "http", "plugin"})
# Where an artifact `path` means something: templates that run our image.
FILESYSTEM_TYPES = frozenset({"container", "containerSet", "script"})
ARTIFACT_LOCATIONS = ("s3", "gcs", "git", "http", "artifactory", "hdfs", "raw", "oss", "azure", "plugin")
RESERVED_CONTAINER_NAMES = ("wait", "supervisor")
RESERVED_CONTAINER_PREFIX = "artifact-plugin-"
OUTPUT_SOURCES = ("path", "jqFilter", "jsonPath", "parameter", "expression", "supplied")
RETRY_VARIABLES = ("lastExitCode", "lastStatus", "lastDuration", "lastMessage")
POD_GC_STRATEGIES = ("", "OnPodCompletion", "OnPodSuccess", "OnWorkflowCompletion", "OnWorkflowSuccess")

TASK_RESULTS = frozenset({"Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned"})
ITEM_RESULTS = frozenset({"AnySucceeded", "AllFailed"})  # only meaningful on a looped dependency

# `{{...}}` tags with these prefixes must resolve (Argo's GlobalVarValidWorkflowVariablePrefix); Argo skips
# bare `{{item}}` and `{{retries}}`, we check them too because they only exist in some scopes.
CHECKED_PREFIXES = ("inputs.", "outputs.", "tasks.", "steps.", "workflow.", "pod.", "item.", "retries.")
CHECKED_NAMES = ("item", "retries")
VARIABLE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
TASK_REFERENCE = re.compile(r"\{\{\s*tasks\.([^.}\s]+)\.")
GO_DURATION = re.compile(r"^(0|[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)$")  # time.ParseDuration
DEPENDS_TOKEN = re.compile(r"&&|\|\||[!()]|[^\s&|!()]+|\S")

# ----------------------------------------------------------------------------------------------------
# Lint: scopes
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """The variables a string may use: exact names plus prefixes under which anything resolves."""

    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    def __or__(self, other: Scope) -> Scope:
        return Scope(self.names | other.names, self.prefixes + other.prefixes)

    def resolves(self, tag: str) -> bool:
        return tag in self.names or tag.startswith(self.prefixes)


def _scope(*names: str, prefixes: Iterable[str] = ()) -> Scope:
    return Scope(frozenset(names), tuple(prefixes))


EXIT_HANDLER_SCOPE = _scope("workflow.status", "workflow.failures")
LOOP_SCOPE = _scope("item", prefixes=("item.",))


@dataclass(frozen=True)
class Context:
    """What the per-template checks need to know about the object being linted."""

    spec: Json  # the effective WorkflowSpec (a referenced WorkflowTemplate's, merged with the Workflow's)
    templates: Mapping[str, Json]  # spec.templates by name
    external: Sequence[Json]  # (Cluster)WorkflowTemplates that `templateRef` may point to
    is_workflow: bool  # a Workflow must supply its entrypoint's inputs; a WorkflowTemplate need not
    global_scope: Scope
    exit_templates: frozenset[str]  # templates that run as exit handlers or hooks: workflow.status is set


# ----------------------------------------------------------------------------------------------------
# Lint: entry point
# ----------------------------------------------------------------------------------------------------


def lint_errors(obj: Mapping[str, Any], templates: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """Port of `argo lint` for Workflow, WorkflowTemplate, ClusterWorkflowTemplate (and CronWorkflow).

    `templates` are other (Cluster)WorkflowTemplate objects: they resolve a Workflow's
    `spec.workflowTemplateRef` (whose spec is then the one linted, with the Workflow's arguments merged in)
    and tasks' `templateRef`s. Returns readable strings naming the template, task and field; empty if clean.
    """
    kind = obj.get("kind")
    if kind not in KIND_DEFINITIONS:
        return [f"kind: lint_errors supports {', '.join(KIND_DEFINITIONS)}, not {kind!r}"]
    metadata = _dict(obj.get("metadata"))
    errors = _object_name_errors(str(kind), metadata)
    spec = _dict(obj.get("spec"))
    if kind == "CronWorkflow":
        spec = _dict(spec.get("workflowSpec"))
    is_template = kind in ("WorkflowTemplate", "ClusterWorkflowTemplate")
    external = [*templates, obj] if is_template else list(templates)  # a template may call itself
    is_workflow = kind in ("Workflow", "CronWorkflow")
    if is_workflow and spec.get("workflowTemplateRef"):
        ref_errors, spec = _resolve_workflow_template_ref(spec, external)
        errors += ref_errors
        if spec is None:
            return errors
    ctx = _context(spec, metadata, external, is_workflow)
    errors += _spec_errors(ctx)
    for index, template in enumerate(_dicts(spec.get("templates"))):
        errors += _template_errors(ctx, template, index)
    return errors


def assert_valid(
    obj: Mapping[str, Any], templates: Sequence[Mapping[str, Any]] = (), versions: Sequence[str] = ("main",)
) -> None:
    """Raise AssertionError listing every schema error (for each version) and every lint error."""
    problems = [f"schema {version}: {error}" for version in versions for error in schema_errors(obj, version)]
    problems += [f"lint: {error}" for error in lint_errors(obj, templates)]
    if problems:
        metadata = _dict(obj.get("metadata"))
        name = metadata.get("name") or metadata.get("generateName") or "<unnamed>"
        listing = "\n  ".join(problems)
        raise AssertionError(f"{obj.get('kind')} {name}: {len(problems)} problem(s):\n  {listing}")


def _object_name_errors(kind: str, metadata: Json) -> list[str]:
    """Kubernetes labels carry the workflow name, hence Argo's 63-character limit (52 for CronWorkflows)."""
    limit = MAX_CRON_WORKFLOW_NAME if kind == "CronWorkflow" else MAX_OBJECT_NAME
    errors = []
    for key in ("name", "generateName"):
        value = metadata.get(key) or ""
        if len(value) > limit:
            errors.append(
                f"metadata.{key} {value!r} must not be more than {limit} characters long (currently {len(value)})"
            )
    return errors


def workflow_template_not_found(name: str, cluster_scope: bool = False) -> str:
    """The message Argo gives for a missing (Cluster)WorkflowTemplate (also used by the fake server)."""
    resource = "clusterworkflowtemplates" if cluster_scope else "workflowtemplates"
    return f'{resource}.argoproj.io "{name}" not found'


def _find_template_object(external: Sequence[Json], name: str, cluster_scope: bool) -> Json | None:
    kind = "ClusterWorkflowTemplate" if cluster_scope else "WorkflowTemplate"
    for candidate in external:
        if candidate.get("kind") == kind and _dict(candidate.get("metadata")).get("name") == name:
            return candidate
    return None


def _resolve_workflow_template_ref(spec: Json, external: Sequence[Json]) -> tuple[list[str], Json | None]:
    """The spec Argo runs for a Workflow with `workflowTemplateRef`: the template's, with the Workflow's
    arguments (which win by name), entrypoint and onExit laid over it."""
    errors = []
    if spec.get("templates"):
        errors.append("spec.templates must be empty when spec.workflowTemplateRef is set")
    ref = _dict(spec["workflowTemplateRef"])
    name = ref.get("name") or ""
    cluster_scope = bool(ref.get("clusterScope"))
    target = _find_template_object(external, name, cluster_scope)
    if target is None:
        errors.append(f"spec.workflowTemplateRef: {workflow_template_not_found(name, cluster_scope)}")
        return errors, None
    merged = copy.deepcopy(_dict(target.get("spec")))
    merged["arguments"] = _merge_arguments(_dict(spec.get("arguments")), _dict(merged.get("arguments")))
    for key in ("entrypoint", "onExit", "hooks"):
        if spec.get(key):
            merged[key] = spec[key]
    return errors, merged


def _merge_arguments(preferred: Json, fallback: Json) -> Json:
    merged: Json = {}
    for key in ("parameters", "artifacts"):
        items = list(_dicts(preferred.get(key)))
        names = {item.get("name") for item in items}
        items += [item for item in _dicts(fallback.get(key)) if item.get("name") not in names]
        if items:
            merged[key] = items
    return merged


def _context(spec: Json, metadata: Json, external: Sequence[Json], is_workflow: bool) -> Context:
    templates: dict[str, Json] = {}
    for template in _dicts(spec.get("templates")):
        templates.setdefault(template.get("name", ""), template)
    return Context(
        spec=spec,
        templates=templates,
        external=external,
        is_workflow=is_workflow,
        global_scope=_global_scope(spec),
        exit_templates=_exit_templates(spec, templates),
    )


def _global_scope(spec: Json) -> Scope:
    """`workflow.*` variables available everywhere (workflow.status/failures are added for exit handlers).

    Labels and annotations may be added at submit time, so any key is accepted.
    """
    names = {
        "workflow.name",
        "workflow.namespace",
        "workflow.uid",
        "workflow.serviceAccountName",
        "workflow.mainEntrypoint",
        "workflow.labels",
        "workflow.labels.json",
        "workflow.annotations",
        "workflow.annotations.json",
    }
    prefixes = [
        "workflow.creationTimestamp",
        "workflow.duration",
        "workflow.scheduledTime",
        "workflow.labels.",
        "workflow.annotations.",
        "tasks.name",
        "steps.name",
    ]
    parameters = [p.get("name") for p in _dicts(_dict(spec.get("arguments")).get("parameters"))]
    if parameters:
        names |= {"workflow.parameters", "workflow.parameters.json"}
        names |= {f"workflow.parameters.{name}" for name in parameters}
    if spec.get("priority") is not None:
        names.add("workflow.priority")
    for template in _dicts(spec.get("templates")):
        outputs = _dict(template.get("outputs"))
        for kind in ("parameters", "artifacts"):
            for item in _dicts(outputs.get(kind)):
                global_name = item.get("globalName")
                if global_name and "{{" in global_name:
                    prefixes.append(f"workflow.outputs.{kind}.")
                elif global_name:
                    names.add(f"workflow.outputs.{kind}.{global_name}")
    return Scope(frozenset(names), tuple(prefixes))


def _exit_templates(spec: Json, templates: Mapping[str, Json]) -> frozenset[str]:
    """Templates reachable from an exit handler or lifecycle hook, where `{{workflow.status}}` is set."""
    roots = [spec.get("onExit"), *(_dict(hook).get("template") for hook in _dict(spec.get("hooks")).values())]
    for template in templates.values():
        for call in _calls(template):
            roots.append(call.get("onExit"))
            roots += [_dict(hook).get("template") for hook in _dict(call.get("hooks")).values()]
    seen: set[str] = set()
    pending = [root for root in roots if root]
    while pending:
        name = pending.pop()
        if name in seen or name not in templates:
            continue
        seen.add(name)
        pending += [call.get("template") for call in _calls(templates[name]) if call.get("template")]
    return frozenset(seen)


# ----------------------------------------------------------------------------------------------------
# Lint: workflow spec
# ----------------------------------------------------------------------------------------------------


def _spec_errors(ctx: Context) -> list[str]:
    """Checks on the spec itself: template names, entrypoint, exit handler, hooks, arguments, podGC."""
    spec = ctx.spec
    errors = _name_errors(_dicts(spec.get("templates")), "spec.templates")
    entrypoint = spec.get("entrypoint")
    if not entrypoint:
        if ctx.is_workflow:
            errors.append("spec.entrypoint is required")
    elif entrypoint not in ctx.templates:
        errors.append(f"spec.entrypoint: template {entrypoint!r} is not defined")
    elif ctx.is_workflow:
        errors += _supply_errors("spec.entrypoint", ctx.templates[entrypoint], _dict(spec.get("arguments")))
    on_exit = spec.get("onExit")
    if on_exit and on_exit not in ctx.templates:
        errors.append(f"spec.onExit: template {on_exit!r} is not defined")
    elif on_exit and ctx.is_workflow:
        errors += _supply_errors("spec.onExit", ctx.templates[on_exit], _dict(spec.get("arguments")))
    errors += _hook_errors(ctx, _dict(spec.get("hooks")), "spec.hooks")
    errors += _argument_errors(_dict(spec.get("arguments")), "spec.arguments", require_values=False)
    strategy = _dict(spec.get("podGC")).get("strategy", "")
    if strategy not in POD_GC_STRATEGIES:
        errors.append(f"spec.podGC.strategy: unknown strategy {strategy!r}")
    return errors


def _hook_errors(ctx: Context, hooks: Json, where: str) -> list[str]:
    """Lifecycle hooks name existing templates; every hook but `exit` needs an `expression`."""
    errors = []
    for event, hook in hooks.items():
        hook = _dict(hook)
        if event != "exit" and not hook.get("expression"):
            errors.append(f"{where}.{event}: expression is required")
        errors += _call_errors(ctx, hook, f"{where}.{event}")[0]
    return errors


def _name_errors(items: Iterable[Json], where: str, *, parameters: bool = False) -> list[str]:
    """Names are required, well-formed and unique within their list (Argo's validateWorkflowFieldNames).

    Templates, tasks and steps use Kubernetes-like names of at most 128 characters; parameters and
    artifacts may also contain '_' (Argo's isValidParamOrArtifactName).
    """
    errors = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        name = item.get("name")
        if not name:
            errors.append(f"{where}[{index}].name is required")
            continue
        if not parameters and len(name) > MAX_FIELD_NAME:
            errors.append(f"{where}[{index}].name {name!r} must be no more than {MAX_FIELD_NAME} characters")
        if parameters and not PARAM_NAME.match(name):
            errors.append(f"{where}[{index}].name {name!r} is invalid: use only [-a-zA-Z0-9_]")
        if not parameters and not FIELD_NAME.match(name):
            errors.append(
                f"{where}[{index}].name {name!r} is invalid: use alphanumerics and '-', starting alphanumeric"
            )
        if name in seen:
            errors.append(f"{where}[{index}].name {name!r} is not unique")
        seen.add(name)
    return errors


def _argument_errors(arguments: Json, where: str, require_values: bool) -> list[str]:
    """Arguments are well named; parameters have a value (tasks) and a valid enum; artifacts are located."""
    parameters = list(_dicts(arguments.get("parameters")))
    artifacts = list(_dicts(arguments.get("artifacts")))
    errors = _name_errors(parameters, f"{where}.parameters", parameters=True)
    errors += _name_errors(artifacts, f"{where}.artifacts", parameters=True)
    for parameter in parameters:
        prefix = f"{where}.parameters.{parameter.get('name')}"
        value_from = parameter.get("valueFrom")
        if require_values and "value" not in parameter and value_from is None:
            errors.append(f"{prefix}: value or valueFrom is required")
        if value_from is not None:
            value_from = _dict(value_from)
            allowed = {"configMapKeyRef", "supplied", "event", "default"}
            if not set(value_from) & (allowed - {"default"}) or set(value_from) - allowed:
                errors.append(f"{prefix}.valueFrom only allows: default, configMapKeyRef, supplied and event")
        errors += _enum_errors(parameter, prefix, parameter.get("value"))
    for artifact in artifacts:
        prefix = f"{where}.artifacts.{artifact.get('name')}"
        if not (artifact.get("from") or artifact.get("fromExpression") or _has_location(artifact)):
            errors.append(f"{prefix}: from, fromExpression, an artifact location or a key is required")
        if artifact.get("from") and artifact.get("fromExpression"):
            errors.append(f"{prefix}: cannot have both from and fromExpression")
    return errors


def _enum_errors(parameter: Json, prefix: str, value: Any) -> list[str]:
    """An `enum` lists at least one value and contains the parameter's literal value."""
    if "enum" not in parameter:
        return []
    enum = [str(item) for item in parameter.get("enum") or []]
    if not enum:
        return [f"{prefix}.enum should contain at least one value"]
    if value is not None and "{{" not in str(value) and str(value) not in enum:
        return [f"{prefix}: value {value!r} should be present in the enum list {enum}"]
    return []


def _has_location(artifact: Json) -> bool:
    """True if the artifact says where it lives: a location block (a key-only `s3: {key: ...}` counts)."""
    return any(artifact.get(location) for location in ARTIFACT_LOCATIONS)


# ----------------------------------------------------------------------------------------------------
# Lint: templates
# ----------------------------------------------------------------------------------------------------


def _template_errors(ctx: Context, template: Json, index: int) -> list[str]:
    """Every check on one template; DAG tasks and steps are checked by `_dag_errors` / `_steps_errors`."""
    name = template.get("name") or f"[{index}]"
    where = f"templates.{name}"
    kinds = [kind for kind in TEMPLATE_TYPES if template.get(kind) is not None]
    if len(kinds) != 1:
        found = ", ".join(kinds) if kinds else "none"
        return [f"{where}: needs exactly one template type ({'/'.join(TEMPLATE_TYPES)}), found {found}"]
    kind = kinds[0]
    errors = _io_name_errors(template, where)
    errors += _input_errors(template, kind, where)
    errors += _output_errors(template, kind, where)
    errors += _leaf_only_errors(template, kind, where)
    errors += _container_errors(ctx, template, kind, where)
    errors += _variable_errors(template, kind, _template_scope(ctx, template, kind), where)
    if kind == "dag":
        errors += _dag_errors(ctx, template, where)
    elif kind == "steps":
        errors += _steps_errors(ctx, template, where)
    return errors


def _io_name_errors(template: Json, where: str) -> list[str]:
    errors = []
    for section in ("inputs", "outputs"):
        for kind in ("parameters", "artifacts"):
            items = _dicts(_dict(template.get(section)).get(kind))
            errors += _name_errors(items, f"{where}.{section}.{kind}", parameters=True)
    return errors


def _input_errors(template: Json, kind: str, where: str) -> list[str]:
    """Input parameters have valid enums; input artifacts have no `from` and a safe, meaningful path."""
    inputs = _dict(template.get("inputs"))
    errors = []
    for parameter in _dicts(inputs.get("parameters")):
        value = parameter.get("value", parameter.get("default"))
        errors += _enum_errors(parameter, f"{where}.inputs.parameters.{parameter.get('name')}", value)
    for artifact in _dicts(inputs.get("artifacts")):
        prefix = f"{where}.inputs.artifacts.{artifact.get('name')}"
        if artifact.get("from"):
            errors.append(f"{prefix}.from is not valid in inputs")
        errors += _artifact_path_errors(artifact, kind, prefix)
    return errors


def _artifact_path_errors(artifact: Json, kind: str, prefix: str) -> list[str]:
    """A `path` is a file in the main container: only pod templates have one, and `..` may not escape it."""
    path = artifact.get("path")
    if not path:
        return []
    if kind not in FILESYSTEM_TYPES:
        return [f"{prefix}.path is only valid in container/script templates, not {kind}"]
    if ".." in str(path).split("/"):
        return [f"{prefix}.path {path!r} contains '..': directory traversal is not permitted"]
    return []


def _output_errors(template: Json, kind: str, where: str) -> list[str]:
    """Output parameters have exactly one source, and one that fits the template type."""
    outputs = _dict(template.get("outputs"))
    errors = []
    for artifact in _dicts(outputs.get("artifacts")):
        errors += _artifact_path_errors(artifact, kind, f"{where}.outputs.artifacts.{artifact.get('name')}")
    for parameter in _dicts(outputs.get("parameters")):
        prefix = f"{where}.outputs.parameters.{parameter.get('name')}"
        errors += _output_parameter_errors(parameter, kind, prefix)
    return errors


def _output_parameter_errors(parameter: Json, kind: str, prefix: str) -> list[str]:
    has_value = "value" in parameter
    value_from = parameter.get("valueFrom")
    if has_value and value_from is not None:
        return [f"{prefix} has both value and valueFrom: choose one"]
    if has_value:
        return []
    if value_from is None:
        return [f"{prefix} needs value or valueFrom"]
    value_from = _dict(value_from)
    sources = [key for key in OUTPUT_SOURCES if key in value_from]
    if len(sources) != 1:
        found = ", ".join(sources) if sources else "none"
        return [f"{prefix}.valueFrom needs exactly one of {', '.join(OUTPUT_SOURCES)}; found {found}"]
    if kind in ("container", "containerSet", "script") and sources != ["path"]:
        return [f"{prefix}.valueFrom.path must be specified for {kind} templates"]
    if kind == "resource" and sources[0] not in ("jqFilter", "jsonPath"):
        return [f"{prefix}.valueFrom.jqFilter or jsonPath must be specified for resource templates"]
    if kind in ("dag", "steps") and sources[0] not in ("parameter", "expression"):
        return [f"{prefix}.valueFrom.parameter or expression must be specified for {kind} templates"]
    return []


def _leaf_only_errors(template: Json, kind: str, where: str) -> list[str]:
    """Deadlines and timeouts apply to pods; parallelism only to steps and DAGs."""
    errors = []
    deadline = template.get("activeDeadlineSeconds")
    if deadline is not None:
        if kind in ("dag", "steps"):
            errors.append(f"{where}.activeDeadlineSeconds is only valid for leaf templates, not {kind}")
        elif not _is_positive_int_or_variable(deadline):
            errors.append(f"{where}.activeDeadlineSeconds must be a positive integer or a variable, not {deadline!r}")
    timeout = template.get("timeout")
    if timeout is not None:
        if kind not in LEAF_TYPES:
            errors.append(f"{where}.timeout is only valid for leaf templates, not {kind}")
        elif "{{" not in str(timeout) and not GO_DURATION.match(str(timeout)):
            errors.append(f"{where}.timeout {timeout!r} is not a duration such as '30s', '5m' or '1h30m'")
    if template.get("parallelism") is not None and kind not in ("dag", "steps"):
        errors.append(f"{where}.parallelism is only valid for steps and dag templates")
    return errors


def _is_positive_int_or_variable(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 0
    text = str(value).strip()
    return "{{" in text or (text.isdigit() and int(text) > 0)


def _container_errors(ctx: Context, template: Json, kind: str, where: str) -> list[str]:
    """Images are set, Argo's own container names are not reused, and mount paths do not collide."""
    errors = []
    defaults = _dict(ctx.spec.get("templateDefaults"))
    # spec.templateDefaults may provide the image
    image = _dict(template.get(kind)).get("image") or _dict(defaults.get(kind)).get("image")
    if kind in ("container", "script") and not image:
        errors.append(f"{where}.{kind}.image may not be empty")
    for index, sidecar in enumerate(_dicts(template.get("sidecars"))):
        errors += _reserved_name_errors(sidecar.get("name"), f"{where}.sidecars[{index}]")
    for index, container in enumerate(_dicts(_dict(template.get("containerSet")).get("containers"))):
        errors += _reserved_name_errors(container.get("name"), f"{where}.containerSet.containers[{index}]")
    for index, init in enumerate(_dicts(template.get("initContainers"))):
        if not init.get("name"):
            errors.append(f"{where}.initContainers[{index}].name is required")
    if kind in ("container", "script"):
        errors += _mount_errors(template, kind, where)
    return errors


def _reserved_name_errors(name: Any, where: str) -> list[str]:
    if name in RESERVED_CONTAINER_NAMES or str(name).startswith(RESERVED_CONTAINER_PREFIX):
        return [f"{where}.name {name!r} is reserved for Argo's own containers"]
    return []


def _mount_errors(template: Json, kind: str, where: str) -> list[str]:
    """A directory can be mounted once: by one volume mount or by one input artifact."""
    errors = []
    mounted: dict[str, str] = {}
    for index, mount in enumerate(_dicts(_dict(template.get(kind)).get("volumeMounts"))):
        path = mount.get("mountPath")
        if path in mounted:
            prefix = f"{where}.{kind}.volumeMounts[{index}].mountPath"
            errors.append(f"{prefix} {path!r} already mounted by {mounted[path]}")
        mounted.setdefault(path, f"volume {mount.get('name')!r}")
    for artifact in _dicts(_dict(template.get("inputs")).get("artifacts")):
        path = artifact.get("path")
        if path and path in mounted:
            prefix = f"{where}.inputs.artifacts.{artifact.get('name')}.path"
            errors.append(f"{prefix} {path!r} already mounted by {mounted[path]}")
        if path:
            mounted.setdefault(path, f"input artifact {artifact.get('name')!r}")
    return errors


# ----------------------------------------------------------------------------------------------------
# Lint: variables
# ----------------------------------------------------------------------------------------------------


def _template_scope(ctx: Context, template: Json, kind: str) -> Scope:
    """Variables visible inside a template: globals, its own inputs and outputs, pod/retry locals."""
    names: set[str] = set()
    inputs = _dict(template.get("inputs"))
    parameters = [p.get("name") for p in _dicts(inputs.get("parameters"))]
    if parameters:
        names.add("inputs.parameters")
    names |= {f"inputs.parameters.{name}" for name in parameters}
    for artifact in _dicts(inputs.get("artifacts")):
        names |= {f"inputs.artifacts.{artifact.get('name')}", f"inputs.artifacts.{artifact.get('name')}.path"}
    outputs = _dict(template.get("outputs"))
    for section in ("parameters", "artifacts"):
        for item in _dicts(outputs.get(section)):
            names |= {f"outputs.{section}.{item.get('name')}", f"outputs.{section}.{item.get('name')}.path"}
    if kind in RESULT_TYPES:
        names |= {"outputs.result", "outputs.exitCode"}
    if kind in POD_TYPES:
        names.add("pod.name")
    if template.get("retryStrategy") is not None:
        names |= {"retries", *(f"retries.{key}" for key in RETRY_VARIABLES)}
    scope = ctx.global_scope | Scope(frozenset(names))
    if template.get("name") in ctx.exit_templates:
        scope = scope | EXIT_HANDLER_SCOPE
    return scope


def _variable_errors(template: Json, kind: str, scope: Scope, where: str) -> list[str]:
    """Check every string of the template except its tasks/steps (checked with their own scope).

    A DAG's or steps' outputs may read any of its tasks/steps, so those are checked in `_dag_errors`.
    """
    skipped = {"name", "dag", "steps"} | ({"outputs"} if kind in ("dag", "steps") else set())
    body = {key: value for key, value in template.items() if key not in skipped}
    return _unresolved(body, scope, where)


def _unresolved(value: Any, scope: Scope, where: str) -> list[str]:
    """`failed to resolve {{...}}` for each checked tag that the scope lacks; `{{=expr}}` is not checked."""
    errors = []
    for path, text in _strings(value, ""):
        for match in VARIABLE.finditer(text):
            tag = match.group(1).strip()
            if tag.startswith("=") or not (tag in CHECKED_NAMES or tag.startswith(CHECKED_PREFIXES)):
                continue
            if not scope.resolves(tag):
                errors.append(f"{where}{path}: failed to resolve {{{{{tag}}}}}")
    return errors


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string value nested in dicts and lists, with its path (keys themselves are not variables)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, _join_path(path, str(key)) if path else f".{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def _outputs_scope(prefix: str, template: Json | None, looped: bool, ancestor: bool) -> Scope:
    """What `tasks.<name>.` or `steps.<name>.` offers to later tasks (Argo's addOutputsToScope)."""
    if template is None:  # an unresolvable call: reported elsewhere, do not pile on
        return _scope(prefixes=(f"{prefix}.",))
    names = {f"{prefix}.{key}" for key in ("id", "startedAt", "finishedAt", "hostNodeName", "ip")}
    kind = next((kind for kind in TEMPLATE_TYPES if template.get(kind) is not None), "")
    if kind in RESULT_TYPES:
        names |= {f"{prefix}.outputs.result", f"{prefix}.exitCode"}
    outputs = _dict(template.get("outputs"))
    for section in ("parameters", "artifacts"):
        names |= {f"{prefix}.outputs.{section}.{item.get('name')}" for item in _dicts(outputs.get(section))}
    if looped:
        names.add(f"{prefix}.outputs.parameters")
    if ancestor:
        names.add(f"{prefix}.status")
    return Scope(frozenset(names))


# ----------------------------------------------------------------------------------------------------
# Lint: calls (DAG tasks, steps, hooks)
# ----------------------------------------------------------------------------------------------------


def _calls(template: Json) -> Iterator[Json]:
    """DAG tasks and steps of a template, flattened."""
    yield from _dicts(_dict(template.get("dag")).get("tasks"))
    for group in template.get("steps") or []:
        yield from _dicts(group)


def _call_errors(ctx: Context, call: Json, where: str) -> tuple[list[str], Json | None]:
    """A task/step/hook names exactly one existing template; returns the errors and the called template."""
    given = [key for key in ("template", "templateRef", "inline") if call.get(key)]
    if len(given) != 1:
        found = ", ".join(given) if given else "none"
        return [f"{where}: exactly one of template, templateRef, inline is required; found {found}"], None
    if given == ["inline"]:
        return [], _dict(call["inline"])
    if given == ["template"]:
        name = call["template"]
        if name not in ctx.templates:
            return [f"{where}.template: template {name!r} is not defined"], None
        return [], ctx.templates[name]
    ref = _dict(call["templateRef"])
    target = _find_template_object(ctx.external, ref.get("name", ""), bool(ref.get("clusterScope")))
    for template in _dicts(_dict(target.get("spec")).get("templates") if target else None):
        if template.get("name") == ref.get("template"):
            return [], template
    scope = "clusterScope " if ref.get("clusterScope") else ""
    reference = f"{ref.get('name')}.{ref.get('template')}"
    return [f"{where}.templateRef: {scope}template reference {reference} not found"], None


def _supply_errors(where: str, template: Json, arguments: Json) -> list[str]:
    """The caller supplies each input parameter lacking value/default and each unlocated required artifact."""
    errors = []
    inputs = _dict(template.get("inputs"))
    callee = template.get("name")
    supplied = {p.get("name"): p for p in _dicts(arguments.get("parameters"))}
    for parameter in _dicts(inputs.get("parameters")):
        name = parameter.get("name")
        if name in supplied:
            value = supplied[name].get("value")
            errors += _enum_errors(parameter, f"{where}.arguments.parameters.{name}", value)
        elif not any(key in parameter for key in ("value", "default", "valueFrom")):
            errors.append(f"{where}: inputs.parameters.{name} was not supplied (template {callee!r})")
    artifacts = {a.get("name") for a in _dicts(arguments.get("artifacts"))}
    for artifact in _dicts(inputs.get("artifacts")):
        name = artifact.get("name")
        if name not in artifacts and not artifact.get("optional") and not _has_location(artifact):
            errors.append(f"{where}: inputs.artifacts.{name} was not supplied (template {callee!r})")
    return errors


def _call_body_errors(ctx: Context, call: Json, where: str, scope: Scope, self_scope: Scope) -> list[str]:
    """Checks common to DAG tasks and steps: callee, arguments, hooks and variables."""
    errors, callee = _call_errors(ctx, call, where)
    arguments = _dict(call.get("arguments"))
    errors += _argument_errors(arguments, f"{where}.arguments", require_values=True)
    if callee is not None:
        errors += _supply_errors(where, callee, arguments)
    on_exit = call.get("onExit")
    if on_exit and on_exit not in ctx.templates:
        errors.append(f"{where}.onExit: template {on_exit!r} is not defined")
    errors += _hook_errors(ctx, _dict(call.get("hooks")), f"{where}.hooks")
    loops = [key for key in ("withItems", "withParam", "withSequence") if call.get(key)]
    if len(loops) > 1:
        errors.append(f"{where}: only one of withItems, withParam, withSequence can be specified")
    if loops:
        scope = scope | LOOP_SCOPE
    body = {key: value for key, value in call.items() if key not in ("name", "hooks")}
    errors += _unresolved(body, scope, where)
    errors += _unresolved(call.get("hooks") or {}, scope | self_scope, f"{where}.hooks")
    return errors


def _looped(call: Json) -> bool:
    return bool(call.get("withItems") or call.get("withParam"))


def _callee(ctx: Context, call: Json) -> Json | None:
    return _call_errors(ctx, call, "")[1]


# ----------------------------------------------------------------------------------------------------
# Lint: DAGs
# ----------------------------------------------------------------------------------------------------


def _dag_errors(ctx: Context, template: Json, where: str) -> list[str]:
    """Rule 4 (tasks, dependencies, cycles, targets), rule 5 (ancestry) and task-level checks."""
    tasks = list(_dicts(_dict(template.get("dag")).get("tasks")))
    if not tasks:
        return [f"{where}.dag must have at least one task"]
    errors = _name_errors(tasks, f"{where}.tasks")
    by_name = {task.get("name"): task for task in tasks}
    dependencies, dependency_errors = _dag_dependencies(tasks, by_name, f"{where}.tasks")
    errors += dependency_errors
    cycle = _find_cycle(dependencies)
    if cycle:
        errors.append(f"{where}.tasks: dependency cycle detected: {'->'.join(cycle)}")
    errors += _target_errors(_dict(template.get("dag")).get("target"), by_name, where)
    ancestors = _ancestors(dependencies)
    callees = {name: _callee(ctx, task) for name, task in by_name.items()}
    base = _template_scope(ctx, template, "dag")
    for task in tasks:
        name = task.get("name")
        task_where = f"{where}.tasks.{name}"
        scope = base
        for ancestor in ancestors.get(name, ()):
            prefix = f"tasks.{ancestor}"
            scope = scope | _outputs_scope(prefix, callees.get(ancestor), _looped(by_name[ancestor]), True)
        self_scope = _outputs_scope(f"tasks.{name}", callees.get(name), _looped(task), True)
        errors += _call_body_errors(ctx, task, task_where, scope, self_scope)
        errors += _ancestry_errors(_dict(task.get("arguments")), ancestors.get(name, set()), task_where)
    outputs_scope = base
    for name, task in by_name.items():
        outputs_scope |= _outputs_scope(f"tasks.{name}", callees.get(name), _looped(task), True)
    errors += _unresolved(template.get("outputs") or {}, outputs_scope, f"{where}.outputs")
    return errors


def _dag_dependencies(
    tasks: Sequence[Json], by_name: Mapping[str, Json], where: str
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Each task's dependencies as {task: result}, from `depends` or `dependencies`, with their errors."""
    errors = []
    using_depends = any(task.get("depends") for task in tasks)
    if using_depends and any(task.get("dependencies") for task in tasks):
        errors.append(f"{where}: cannot use both 'depends' and 'dependencies' in the same DAG template")
    graph: dict[str, dict[str, str]] = {}
    for task in tasks:
        name = task.get("name") or ""
        task_where = f"{where}.{name}"
        if task.get("depends"):
            deps, parse_errors = _parse_depends(str(task["depends"]))
            errors += [f"{task_where}.depends: {error}" for error in parse_errors]
        else:
            deps = {str(dep): "" for dep in task.get("dependencies") or []}
        if (using_depends or task.get("dependencies")) and name[:1].isdigit():
            errors.append(f"{task_where}: name cannot begin with a digit when using depends or dependencies")
        if using_depends and task.get("continueOn") is not None:
            errors.append(f"{task_where}: cannot use 'continueOn' with 'depends'; use 'x.Failed'/'x.Errored'")
        for dep, result in deps.items():
            if dep not in by_name:
                errors.append(f"{task_where}: dependency {dep!r} not defined")
            elif result in ITEM_RESULTS and not _looped_or_sequence(by_name[dep]):
                errors.append(f"{task_where}: dependency {dep!r} uses .{result} but has no items")
        graph[name] = {dep: result for dep, result in deps.items() if dep in by_name}
    return graph, errors


def _looped_or_sequence(task: Json) -> bool:
    return _looped(task) or bool(task.get("withSequence"))


def _parse_depends(expression: str) -> tuple[dict[str, str], list[str]]:
    """Task names in a `depends` expression such as `a && (b.Succeeded || !c.Failed)`."""
    deps: dict[str, str] = {}
    errors = []
    for token in DEPENDS_TOKEN.findall(expression):
        if token in ("&&", "||", "!", "(", ")"):
            continue
        if token in ("&", "|"):
            errors.append(f"invalid operator {token!r} in {expression!r} (use && or ||)")
            continue
        name, _, result = token.partition(".")
        if result and result not in TASK_RESULTS | ITEM_RESULTS:
            errors.append(f"unknown result {result!r} for task {name!r}")
        if not deps.get(name):
            deps[name] = result
    return deps, errors


def _find_cycle(graph: Mapping[str, Mapping[str, str]]) -> list[str] | None:
    """The first dependency cycle as [a, b, a] (a depends on b depends on a), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in graph.get(name, {}):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[name] = 2
        return None

    for name in graph:
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def _ancestors(graph: Mapping[str, Mapping[str, str]]) -> dict[str, set[str]]:
    """All transitive dependencies of each task (a plain walk per task: DAGs are small, cycles are harmless)."""
    result: dict[str, set[str]] = {}
    for name in graph:
        seen: set[str] = set()
        pending = list(graph[name])
        while pending:
            dep = pending.pop()
            if dep not in seen:
                seen.add(dep)
                pending += graph.get(dep, {})
        result[name] = seen - {name}
    return result


def _target_errors(target: Any, by_name: Mapping[str, Json], where: str) -> list[str]:
    if not target:
        return []
    missing = [name for name in str(target).split() if "{{" not in name and name not in by_name]
    return [f"{where}.dag.target: target {name!r} is not defined" for name in missing]


def _ancestry_errors(arguments: Json, ancestors: set[str], where: str) -> list[str]:
    """Rule 5: an argument reading `{{tasks.X...}}` needs X among the task's ancestors (else a race)."""
    errors = []
    for kind, keys in (("parameter", ("value",)), ("artifact", ("from", "fromExpression"))):
        for item in _dicts(arguments.get(f"{kind}s")):
            for key in keys:
                for task in TASK_REFERENCE.findall(str(item.get(key) or "")):
                    if task not in ancestors:
                        errors.append(f"{where}: missing dependency {task!r} for {kind} {item.get('name')!r}")
    return errors


# ----------------------------------------------------------------------------------------------------
# Lint: steps
# ----------------------------------------------------------------------------------------------------


def _steps_errors(ctx: Context, template: Json, where: str) -> list[str]:
    """Steps see the outputs of steps in earlier groups only (a group runs in parallel)."""
    groups = [list(_dicts(group)) for group in template.get("steps") or []]
    errors = _name_errors([step for group in groups for step in group], f"{where}.steps")
    scope = _template_scope(ctx, template, "steps")
    for group_index, group in enumerate(groups):
        group_scope = Scope()
        for step in group:
            step_where = f"{where}.steps[{group_index}].{step.get('name')}"
            callee = _callee(ctx, step)
            self_scope = _outputs_scope(f"steps.{step.get('name')}", callee, _looped(step), True)
            errors += _call_body_errors(ctx, step, step_where, scope, self_scope)
            group_scope = group_scope | self_scope
        scope = scope | group_scope
    errors += _unresolved(template.get("outputs") or {}, scope, f"{where}.outputs")
    return errors


# ----------------------------------------------------------------------------------------------------
# Small helpers for loosely typed input
# ----------------------------------------------------------------------------------------------------


def _dict(value: Any) -> Json:
    """`value` if it is a dict, else an empty one: schema errors are reported by `schema_errors`, not here."""
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> Iterator[Json]:
    """The dict items of a list (anything else is a schema error, reported elsewhere)."""
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, dict))
