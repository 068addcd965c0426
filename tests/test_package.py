"""The package's public names, and what importing it costs the stages that import it first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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


def _package_data_patterns() -> list[str]:
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads pyproject.toml")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    return pyproject["tool"]["setuptools"]["package-data"]["cvat_argo"]


def test_package_data_ships_every_file_the_package_reads():
    """A template or catalog left out of package-data works in a checkout and breaks in an installed wheel."""
    from pathlib import Path

    patterns = _package_data_patterns()
    root = Path(cvat_argo.__file__).parent
    resources = [path.relative_to(root) for path in root.rglob("*") if path.is_file()
                 and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts]
    assert any(path.match("reports/templates/*.j2") for path in resources)
    for path in resources:
        assert any(path.match(pattern) for pattern in patterns), f"{path} is not in [tool.setuptools.package-data]"


@pytest.mark.slow
def test_a_built_wheel_carries_the_report_templates(tmp_path):
    import zipfile
    from pathlib import Path

    source = Path(__file__).parents[1]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
                           capture_output=True, text=True, timeout=600)
    if built.returncode and any(s in built.stdout + built.stderr for s in ("No matching distribution", "NewConnection")):
        pytest.skip("pip cannot fetch the build backend (setuptools>=77) without a package index")
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("cvat_argo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = Path(cvat_argo.__file__).parent / "reports" / "templates"
    for template in templates.glob("*.j2"):
        assert f"cvat_argo/reports/templates/{template.name}" in names
    assert {"cvat_argo/request/catalog.yaml", "cvat_argo/py.typed"} <= names
