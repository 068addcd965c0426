"""The package's public names, and what importing it costs the stages that import it first."""

from __future__ import annotations

import json
import subprocess
import sys

import cvat_argo


def test_every_public_name_resolves():
    for name in cvat_argo.__all__:
        assert getattr(cvat_argo, name) is not None, name
    request = cvat_argo.TrainingRequest.create(task_id=42, args="epochs=10,batch_size=8")
    assert "kind: Workflow" in cvat_argo.to_yaml(cvat_argo.build_workflow(request))  # the docstring's example


def _modules_after(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    return set(json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                         text=True).stdout))


def test_the_dataset_stage_starts_without_heavy_imports():
    """pydantic, minio and Hera load only when used: the dataset stage reading a local export needs none."""
    heavy = {"pydantic", "minio", "hera", "tensorflow", "requests"}
    assert not heavy & _modules_after("import cvat_argo")
    assert not heavy & _modules_after("import cvat_argo.steps.dataset")


def test_reading_a_local_export_imports_no_s3_client(tmp_path):
    from cvat_argo.data.synthetic import generate_task

    task = generate_task(tmp_path / "task", images=4, seed=0)
    loaded = _modules_after(f"from pathlib import Path; from cvat_argo.data.sources import open_export; "
                            f"open_export({str(task.export)!r}, Path({str(tmp_path / 'work')!r}))")
    assert "cvat_argo.formats.cvat_xml" in loaded and not {"minio", "requests"} & loaded
