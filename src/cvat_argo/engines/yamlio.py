"""YAML that Kubernetes reads back exactly as written, and that is identical on every render.

Hera's ``to_yaml`` writes ``value: 1e-5`` unquoted (Hera issue 1607): PyYAML reads that back as a
string, but go-yaml (kubectl, Argo) reads a float and Argo stores "0.00001". Learning rates are
exactly such strings. This writer quotes every string that a YAML 1.1 *or* 1.2 reader would take for
anything but a string, and orders keys the way Hera does (name first, then scalars, lists, maps).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# YAML 1.2 core schema and YAML 1.1 plain scalars that do not resolve to strings.
_NON_STRING = re.compile(
    r"""^(?:
        [-+]?(?:0|[1-9][0-9_]*)                                  # int
      | [-+]?0[bB][01_]+ | [-+]?0[oO]?[0-7_]+ | [-+]?0[xX][0-9a-fA-F_]+
      | [-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?   # float, 1e-5 included
      | [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
      | [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?          # YAML 1.1 sexagesimal
      | y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF
      | ~|null|Null|NULL|
      | [0-9]{4}-[0-9]{1,2}-[0-9]{1,2}.*                          # timestamps
    )$""",
    re.VERBOSE,
)


def needs_quotes(text: str) -> bool:
    return bool(_NON_STRING.match(text))


class _Dumper(yaml.SafeDumper):
    """A dumper of our own, so that Hera's global representer changes do not leak into our output."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    if needs_quotes(data):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _represent_str)


def _rank(item: tuple[str, Any]) -> tuple[int, str]:
    key, value = item
    if key == "name" and isinstance(value, str):
        return (0, key)
    if not isinstance(value, (dict, list)):
        return (1, key)
    return (2, key) if isinstance(value, list) else (3, key)


def ordered(value: Any) -> Any:
    """Keys in a stable, readable order: name, then scalars, lists and maps, each alphabetically."""
    if isinstance(value, dict):
        return {k: ordered(v) for k, v in sorted(value.items(), key=_rank)}
    if isinstance(value, list):
        return [ordered(v) for v in value]
    return value


def dump(obj: dict[str, Any]) -> str:
    return yaml.dump(ordered(obj), Dumper=_Dumper, default_flow_style=False, sort_keys=False, width=4096,
                     allow_unicode=True)


def dump_all(objects: list[dict[str, Any]]) -> str:
    return "---\n".join(dump(obj) for obj in objects)


def to_yaml(obj: Any) -> str:
    """YAML of a Hera object (anything with ``to_dict()``) or a plain dict, safe for kubectl and Argo."""
    return dump(obj.to_dict() if hasattr(obj, "to_dict") else obj)
