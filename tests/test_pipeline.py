"""The pipeline declaration: five stages, the right order, and nothing an engine could not fill in."""

from __future__ import annotations

import pytest

from cvat_argo import TrainingRequest
from cvat_argo.engines.artifacts import STAGE_NAMES
from cvat_argo.engines.pipeline import PLACEHOLDER, RUN_FIELDS, TRANSIENT_EXIT_CODE, build_pipeline


@pytest.fixture
def pipeline():
    return build_pipeline(TrainingRequest.create(task_id=42, machine="gpu-4", args="epochs=10,batch_size=8"))


def test_five_stages_in_dependency_order(pipeline):
    assert [s.name for s in pipeline.stages] == list(STAGE_NAMES)
    depends = {s.name: set(s.depends) for s in pipeline.stages}
    assert depends == {
        "create-dataset": set(),
        "pull-base-model": set(),  # both at the start, in parallel
        "train": {"create-dataset", "pull-base-model"},
        "convert": {"train", "create-dataset"},
        "pre-annotate": {"convert", "create-dataset"},
    }
    order = [s.name for s in pipeline.topological_order()]
    for stage, parents in depends.items():
        assert all(order.index(p) < order.index(stage) for p in parents)


def test_each_stage_runs_its_step_module(pipeline):
    modules = {s.name: s.module for s in pipeline.all_stages()}
    assert modules == {
        "create-dataset": "cvat_argo.steps.dataset",
        "pull-base-model": "cvat_argo.steps.pull",
        "train": "cvat_argo.steps.train",
        "convert": "cvat_argo.steps.convert",
        "pre-annotate": "cvat_argo.steps.annotate",
        "record-status": "cvat_argo.steps.status",
    }
    for stage in pipeline.all_stages():
        assert stage.command[:3] == ("python", "-m", stage.module)
        assert "{output:" in " ".join(stage.args), f"{stage.name} writes no output"


def test_every_placeholder_resolves(pipeline):
    declared = {p.name for p in pipeline.parameters}
    producers = {s.name: set(s.outputs) for s in pipeline.all_stages()}
    for stage in pipeline.all_stages():
        inputs = {a.name for a in stage.inputs}
        for arg in stage.args:
            for kind, name in PLACEHOLDER.findall(arg):
                if kind == "param":
                    assert name in declared, f"{stage.name}: unknown parameter {name}"
                elif kind == "input":
                    assert name in inputs, f"{stage.name}: {name} is not an input"
                elif kind == "output":
                    assert name in stage.outputs, f"{stage.name}: {name} is not an output"
                else:
                    assert name in RUN_FIELDS
            assert "{" not in PLACEHOLDER.sub("", arg), f"{stage.name}: malformed placeholder in {arg!r}"
        for artifact in stage.inputs:
            assert artifact.artifact in producers[artifact.stage]
            assert artifact.stage in stage.depends


def test_run_status_only_in_the_exit_step(pipeline):
    for stage in pipeline.stages:
        assert "{run:status}" not in " ".join(stage.args) and "{run:failures}" not in " ".join(stage.args)
    assert "{run:status}" in pipeline.exit_stage.args


def test_parameters_carry_the_request(pipeline):
    values = pipeline.parameter_values()
    assert values["cvat-task-id"] == "42" and values["source"] == ""
    assert values["model"] == "ssd-mobilenet-v2-coco"
    assert values["args"] == "epochs=10,batch_size=8,num_clones=4"
    assert values["gpus"] == "4"
    assert '"experiment":"retinanet_mobile_coco"' in values["model-spec"]


def test_training_gets_the_machine(pipeline):
    train = pipeline.stage("train")
    assert train.resources.gpu_parameter == "gpus"
    assert dict(train.resources.node_selector)["nvidia.com/gpu.count"] == "4"
    assert train.resources.shm_size and train.retry and train.retry.limit >= 1
    assert train.deadline_seconds == 48 * 3600
    cpu = build_pipeline(TrainingRequest.create(task_id=1, machine="cpu")).stage("train")
    assert cpu.resources.gpu_parameter is None and "gpus" not in cpu.parameters


def test_io_stages_retry_and_everything_has_a_deadline(pipeline):
    assert TRANSIENT_EXIT_CODE == 75
    for name in ("create-dataset", "pull-base-model"):
        assert pipeline.stage(name).retry.limit >= 3
    for stage in pipeline.all_stages():
        assert stage.deadline_seconds > 0


def test_stage_images_follow_the_catalog(pipeline):
    for stage in pipeline.stages:
        assert stage.image.endswith(f"/cvat-argo-{stage.image_name}:0.1.0")
        assert stage.image == stage.default_image
