"""The local engine runs the very declaration Argo gets: same stages, commands, arguments and wiring.

The end-to-end quickstart (every stage for real, on a small generated task) is marked slow.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from cvat_argo.engines import local
from cvat_argo.engines.argo import IN_DIR, OUT_DIR, build_workflow, build_workflow_template
from cvat_argo.request.spec import TrainingRequest

REQUEST = TrainingRequest.create(source="s3://exports/task-7.zip", args="epochs=3,batch_size=8",
                                 model="ssd-mobilenet-v2-small", machine="cpu")


def _argo_tasks() -> tuple[dict, dict, dict]:
    document = build_workflow_template(REQUEST).to_dict()
    templates = {t["name"]: t for t in document["spec"]["templates"]}
    dag = templates[document["spec"]["entrypoint"]]["dag"]["tasks"]
    # The template holds the structure; the submitted Workflow holds this request's parameter values.
    submitted = build_workflow(REQUEST).to_dict()
    parameters = {p["name"]: p.get("value", "") for p in submitted["spec"]["arguments"]["parameters"]}
    assert submitted["spec"]["workflowTemplateRef"]["name"] == document["metadata"]["name"]
    return {t["name"]: t for t in dag}, templates, parameters


def test_both_engines_run_the_same_stages_commands_arguments_and_wiring(tmp_path):
    tasks, templates, workflow_parameters = _argo_tasks()
    run = local.prepare(REQUEST, store=str(tmp_path), run_id="run-1")
    stages = {stage.name: stage for stage in run.pipeline.stages}
    assert set(tasks) == set(stages)
    # A folder store is the local run's key prefix: what outlives a run (upload ledgers) sits beside the runs.
    assert run.store_parameters() == {"output-prefix": str(tmp_path.resolve())}
    parameters = {**workflow_parameters, **run.store_parameters()}

    for name, stage in stages.items():
        task = tasks[name]
        depends = set(re.findall(r"[a-z-]+", task.get("depends", "")))
        assert depends == set(stage.depends), name
        container = templates[task["template"]]["container"]
        passed = {p["name"]: p["value"] for p in task.get("arguments", {}).get("parameters", [])}

        def to_local(argument: str, stage=stage, passed=passed) -> str:
            """What the Argo argument becomes in the pod, written with the local run's paths."""
            argument = re.sub(r"\{\{inputs\.parameters\.([a-z0-9-]+)\}\}",
                              lambda m: passed[m.group(1)].replace("{{workflow.parameters.", "{{p:"), argument)
            argument = re.sub(r"\{\{p:([a-z0-9-]+)\}\}", lambda m: parameters[m.group(1)], argument)
            argument = argument.replace("{{workflow.name}}", run.run_id)
            for artifact in stage.inputs:
                argument = argument.replace(f"{IN_DIR}/{artifact.name}", str(run.input_path(stage, artifact.name)))
            for artifact in stage.outputs:
                argument = argument.replace(f"{OUT_DIR}/{artifact}", str(run.output_path(stage, artifact)))
            return argument

        argo_command = [*container["command"], *(to_local(a) for a in container["args"])]
        local_command = run.resolve(stage)
        assert local_command[0] == sys.executable and argo_command[0] == "python"
        assert argo_command[1:] == local_command[1:], name

        # Artifact wiring: what Argo passes from an upstream task is the folder the local run reads.
        for artifact in task.get("arguments", {}).get("artifacts", []):
            upstream, output = re.fullmatch(r"\{\{tasks\.([a-z-]+)\.outputs\.artifacts\.([a-z-]+)\}\}",
                                            artifact["from"]).groups()
            source = next(a for a in stage.inputs if a.name == artifact["name"])
            assert (source.stage, source.artifact) == (upstream, output)
            assert run.input_path(stage, artifact["name"]) == run.output_path(stages[upstream], output)


def test_a_failed_stage_is_named_with_its_log_and_nothing_finished_is_deleted(tmp_path):
    broken = tmp_path / "export.zip"
    broken.write_bytes(b"this is not a zip file")
    store = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "cvat_argo", "run", "--source", str(broken), "--model", "ssd-mobilenet-v2-small",
         "--args", "epochs=1", "--store", str(store), "--run-id", "broken"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    run_dir = store / "broken"
    log = run_dir / "create-dataset" / "log.txt"
    assert "stage create-dataset failed with exit code 4" in result.stderr
    assert str(log) in result.stderr and "export.zip" in result.stderr  # the tail names the file at fault
    assert "python -m cvat_argo run --resume broken" in result.stderr
    assert "export.zip" in log.read_text()
    # The base-model pull ran beside it: kept with its manifest when it finished first, else stopped at once
    # (not left to run on); later stages never started.
    pulled = run_dir / "pull-base-model" / "manifest.json"
    assert (pulled.exists() and json.loads(pulled.read_text())["files"]) or (
        "pull-base-model stopped (create-dataset failed)" in result.stderr), result.stderr
    assert not (run_dir / "train").exists()
    status = json.loads((run_dir / "record-status" / "status" / "status.json").read_text())
    assert status["status"] == "Failed" and status["failures"][0]["displayName"] == "create-dataset"
    assert (run_dir / "report.md").exists()


def test_resume_of_an_unknown_run_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cvat_argo", "run", "--resume", "nope", "--store", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no run nope" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_quickstart_end_to_end_and_resume(tmp_path):
    """A smaller quickstart: every stage runs for real; then a resume redoes only what changed."""
    pytest.importorskip("official", reason="needs the train extra")
    datumaro = pytest.importorskip("datumaro")
    store = tmp_path / "runs"
    command = [sys.executable, "-m", "cvat_argo", "quickstart", "--images", "40", "--epochs", "2",
               "--input-size", "128", "--store", str(store), "--run-id", "quick"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    run_dir = store / "quick"
    for stage in ("create-dataset", "pull-base-model", "train", "convert", "pre-annotate"):
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        assert manifest["files"], stage
        assert (run_dir / stage / "log.txt").exists()
    annotations = run_dir / "pre-annotate" / "annotations"
    unannotated = json.loads((run_dir / "create-dataset" / "dataset" / "unannotated.json").read_text())
    assert unannotated["count"] == 40 - round(40 * 0.6)
    summary = json.loads((annotations / "summary.json").read_text())
    assert summary["images"] == unannotated["count"]
    # Datumaro's CVAT importer wants the images beside the XML, as in a CVAT export.
    export = tmp_path / "export"
    (export / "images").mkdir(parents=True)
    shutil.copy(annotations / "annotations.xml", export)
    for item in unannotated["images"]:
        shutil.copy(run_dir / "create-dataset" / "dataset" / item["path"], export / "images" / item["name"])
    imported = datumaro.Dataset.import_from(str(export), "cvat")
    assert len(imported) == unannotated["count"]
    assert {c.name for c in imported.categories()[datumaro.AnnotationType.label]} == {"square", "circle", "triangle"}
    for file in ("report.md", "report.html"):
        assert (run_dir / file).stat().st_size > 500
    report = (run_dir / "report.md").read_text()
    assert "pre-annotate" in report and "AP50" in report
    score = json.loads((run_dir / "quickstart-score.json").read_text())
    assert score["pre_annotations"]["images"] == unannotated["count"]

    # Resume: finished stages are verified by checksum and skipped; a changed output is redone.
    (annotations / "coco.json").write_text("{}")
    resumed = subprocess.run([sys.executable, "-m", "cvat_argo", "run", "--resume", "quick", "--store", str(store)],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    for stage in ("create-dataset", "pull-base-model", "train", "convert"):
        assert f"{stage}: outputs complete and unchanged, skipped" in resumed.stderr
    assert "pre-annotate started" in resumed.stderr
    assert json.loads((annotations / "coco.json").read_text())["images"]
