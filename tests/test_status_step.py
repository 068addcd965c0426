"""The exit step records the final status of a run."""

from __future__ import annotations

import json

import pytest

from cvat_argo.steps import status


@pytest.mark.parametrize("failures", ["", "null", "[]", "{{workflow.failures}}"])
def test_no_failures(tmp_path, failures, capsys):
    assert status.main(["--run", "r-1", "--status", "Succeeded", "--failures", failures, "--out", str(tmp_path)]) == 0
    recorded = json.loads((tmp_path / "status.json").read_text())
    assert recorded["run"] == "r-1" and recorded["succeeded"] is True and recorded["failures"] == []
    assert capsys.readouterr().out.strip() == "run r-1: Succeeded"


def test_failures_are_kept(tmp_path, capsys):
    failures = json.dumps([{"displayName": "train", "message": "OOMKilled (exit code 137)", "templateName": "train"}])
    status.main(["--run", "r-2", "--status", "Failed", "--failures", failures, "--out", str(tmp_path / "s")])
    recorded = json.loads((tmp_path / "s" / "status.json").read_text())
    assert recorded["succeeded"] is False and recorded["failures"][0]["message"].startswith("OOMKilled")
    assert "failed: train" in capsys.readouterr().out
