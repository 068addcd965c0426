"""Validate a JobSet object against the vendored JobSet v0.12.0 CRD's openAPIV3Schema (``tests/jobset/``).

The API server checks a custom resource against its CRD's structural schema and, with strict field
validation (``kubectl apply --validate=strict``, server-side apply), rejects unknown fields. This does
the same offline: the schema is tightened with ``additionalProperties: false`` on every object that
lists its properties and does not preserve unknown fields. Kubernetes' own extensions
(``x-kubernetes-*``, CEL ``x-kubernetes-validations``) are not evaluated; object metadata is only
checked to be a mapping, as the CRD schema says.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_FILE = Path(__file__).resolve().parent.parent / "jobset" / "jobset.x-k8s.io_jobsets-v0.12.0.yaml"
VERSION = "v1alpha2"


@functools.cache
def crd() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(CRD_FILE.read_text(encoding="utf-8"), Loader=loader)


def _tighten(node: Any) -> None:
    if isinstance(node, dict):
        if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for value in node.values():
            _tighten(value)
    elif isinstance(node, list):
        for value in node:
            _tighten(value)


@functools.cache
def _validator() -> jsonschema.Draft7Validator:
    versions = {v["name"]: v for v in crd()["spec"]["versions"]}
    schema = copy.deepcopy(versions[VERSION]["schema"]["openAPIV3Schema"])
    _tighten(schema)
    return jsonschema.Draft7Validator(schema)


def jobset_errors(obj: Mapping[str, Any]) -> list[str]:
    """Readable ``path: message`` strings; empty when the object is a valid JobSet."""
    problems = []
    group, version = crd()["spec"]["group"], VERSION
    if obj.get("apiVersion") != f"{group}/{version}":
        problems.append(f"apiVersion: {obj.get('apiVersion')!r} is not {group}/{version}")
    if obj.get("kind") != crd()["spec"]["names"]["kind"]:
        problems.append(f"kind: {obj.get('kind')!r} is not JobSet")
    for error in _validator().iter_errors(obj):
        path = ".".join(str(part) for part in error.absolute_path) or "<root>"
        problems.append(f"{path}: {error.message[:300]}")
    return sorted(problems)


_VARIABLE = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Argo's substitution of ``{{name}}`` in a resource manifest, as text; an unknown name is an error.

    Argo replaces the variables in the manifest string before it parses it: a value must not change the
    YAML's structure, whatever characters it holds.
    """

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"manifest uses {{{{{name}}}}}, which the test did not supply")
        return values[name]

    return _VARIABLE.sub(fill, text)


def load_manifest(text: str, values: Mapping[str, str]) -> dict[str, Any]:
    """The object Argo would create: variables substituted, then parsed (YAML, as Argo reads it)."""
    return yaml.safe_load(substitute(text, values))
