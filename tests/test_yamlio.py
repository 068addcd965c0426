"""Rendered YAML must read back as written by a YAML 1.2 reader (Kubernetes, Argo) and a 1.1 one."""

from __future__ import annotations

import io

import pytest
import yaml
from ruamel.yaml import YAML

from cvat_argo.engines import yamlio

TRICKY = ["1e-5", "1e3", "0.004", "4", "-1", "0x1F", "0o17", "017", "1_000", ".5", "+.inf", ".nan", "y", "n", "yes",
          "No", "on", "OFF", "true", "null", "~", "", "12:30", "2026-11-25", "1.0.0", "epochs=1", "ssd-mobilenet",
          "{{workflow.name}}", "a: b", "- x", "#hash", "multi\nline"]


@pytest.mark.parametrize("text", TRICKY)
def test_strings_stay_strings_for_yaml_1_1_and_1_2(text):
    dumped = yamlio.dump({"value": text})
    assert YAML(typ="safe", pure=True).load(io.StringIO(dumped))["value"] == text
    assert yaml.safe_load(dumped)["value"] == text


def test_learning_rate_is_quoted():
    assert yamlio.dump({"value": "1e-5"}) == "value: '1e-5'\n"


def test_keys_are_ordered_name_first_then_scalars_lists_maps():
    dumped = yamlio.dump({"spec": {"x": 1}, "items": [1], "kind": "K", "name": "n"})
    assert [line.split(":")[0] for line in dumped.splitlines() if not line.startswith(" ")] == [
        "name", "kind", "items", "- 1", "spec"]
