"""Multi-node machine types: the train stage as a JobSet that validates against the JobSet v0.12.0 CRD,
inside Argo objects that still validate, with the artifacts flowing through the store under the same keys."""

from __future__ import annotations

import json

import pydantic
import pytest
import yaml

from cvat_argo import RequestError, TrainingRequest, build_workflow, build_workflow_template, load_catalog
from cvat_argo.engines import artifacts, jobset
from cvat_argo.engines.render import render_files
from cvat_argo.request.machines import MachineType
from cvat_argo.training import cluster
from support.argo_validation import assert_valid
from support.jobset_validation import jobset_errors, load_manifest, substitute

MACHINE = "gpu-2x4"
# What Argo substitutes into the manifest. The values are awkward on purpose: quotes, apostrophes, colons,
# braces, '#', a leading dash and YAML keywords must all come through as the same strings.
NASTY_SPEC = json.dumps({"name": "m", "note": "it's \"quoted\": {a: b} # not a comment", "x": [1, "- y"]})
VALUES = {
    "inputs.parameters.model": "ssd-mobilenet-v2-coco",
    "inputs.parameters.model-spec": NASTY_SPEC,
    "inputs.parameters.args": "epochs=3,batch_size=16,initial_learning_rate=1e-5,num_clones=4",
    "inputs.parameters.output-prefix": "team/runs",
    "inputs.parameters.gpus": "4",
    "workflow.parameters.output-prefix": "team/runs",
    "workflow.name": "cvat-argo-task7-ssd-mobilenet-v2-coco-x7k2p",
}


def _template(machine: str = MACHINE, **request):
    request = TrainingRequest.create(source="s3://exports/task-7.zip", machine=machine, **request)
    return request, build_workflow_template(request).to_dict()


def _task_template(template: dict, name: str) -> dict:
    return next(t for t in template["spec"]["templates"] if t["name"] == name)


def _jobset(template: dict, values=VALUES) -> dict:
    return load_manifest(_task_template(template, "train")["resource"]["manifest"], values)


def test_machine_types_have_nodes_validated():
    catalog = load_catalog(env={})
    assert catalog.machine("gpu-4").nodes == 1 and not catalog.machine("gpu-4").multi_node
    machine = catalog.machine(MACHINE)
    assert (machine.nodes, machine.gpus, machine.total_gpus, machine.replicas(4)) == (2, 4, 8, 8)
    for nodes in (0, -1, 65, "two"):
        with pytest.raises(pydantic.ValidationError, match="nodes"):
            MachineType(name="bad", description="", cpu="1", memory="1Gi", nodes=nodes)
    # a catalog file may declare its own multi-node machine type
    own = catalog.merged_with({"machines": {"a100-4x8": {"name": "a100-4x8", "description": "4 DGX", "gpus": 8,
                                                         "nodes": 4, "cpu": "64", "memory": "512Gi"}}}, "own.yaml")
    assert own.machine("a100-4x8").replicas(8) == 32


def test_the_global_batch_splits_over_every_node():
    with pytest.raises(RequestError, match=r"on each of 2 nodes \(8 replicas\): use a multiple of 8"):
        build_workflow(TrainingRequest.create(source="s3://e/t.zip", machine=MACHINE, args="batch_size=12,num_clones=4"))
    build_workflow(TrainingRequest.create(source="s3://e/t.zip", machine=MACHINE, args="batch_size=16,num_clones=4"))


def test_train_is_a_resource_step_that_creates_watches_and_owns_a_jobset():
    _, template = _template()
    assert_valid(template, versions=("main", "v3.7.14"))
    train = _task_template(template, "train")
    resource = train["resource"]
    assert resource["action"] == "create" and resource["setOwnerReference"] is True
    assert resource["successCondition"] == "status.terminalState == Completed"
    assert resource["failureCondition"] == "status.terminalState == Failed"
    assert "container" not in train and "outputs" not in train  # no Argo executor moves its artifacts
    # the status fields the conditions read are the CRD's
    from support.jobset_validation import crd

    status = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert "Completed or Failed" in status["terminalState"]["description"]


def test_rendered_jobset_validates_against_the_crd_with_any_parameter_values():
    _, template = _template()
    obj = _jobset(template)
    assert jobset_errors(obj) == []
    spec = obj["spec"]
    assert obj["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and obj["kind"] == "JobSet"
    assert obj["metadata"]["generateName"] == "cvat-argo-train-"
    assert obj["metadata"]["labels"]["cvat-argo/workflow"] == VALUES["workflow.name"]
    assert spec["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    assert spec["failurePolicy"] == {"maxRestarts": 3}
    (worker,) = spec["replicatedJobs"]
    job = worker["template"]["spec"]
    assert worker["name"] == jobset.REPLICATED_JOB and worker["replicas"] == 1
    assert (job["parallelism"], job["completions"], job["completionMode"]) == (2, 2, "Indexed")
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.count": "4", "nvidia.com/gpu.present": "true"}
    args = container["args"]
    # the same command and arguments as the one-pod train step, with the values exactly as given
    assert container["command"] == ["python", "-m", "cvat_argo.steps.train"]
    assert args[args.index("--model-spec") + 1] == NASTY_SPEC
    assert args[args.index("--args") + 1] == VALUES["inputs.parameters.args"]
    env = {e["name"]: e for e in container["env"]}
    assert env[cluster.WORKERS_ENV]["value"] == "2"
    assert env[cluster.JOBSET_ENV]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['jobset.sigs.k8s.io/jobset-name']")
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True
    # a broken value is caught: the validator is not vacuous
    obj["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelizm"] = 2
    obj["spec"]["network"]["enableDNSHostnames"] = "yes"
    errors = jobset_errors(obj)
    assert any("parallelizm" in e for e in errors) and any("enableDNSHostnames" in e for e in errors)


def test_same_arguments_as_the_one_pod_train_step():
    _, multi = _template()
    _, single = _template("gpu-4")
    pod_args = _jobset(multi)["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "containers"][0]["args"]
    one = _task_template(single, "train")["container"]["args"]
    assert [substitute(arg, VALUES) for arg in one] == pod_args


def test_artifacts_flow_through_the_store_under_the_same_keys():
    _, template = _template()
    obj = _jobset(template)
    pod = obj["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    prefix, run = VALUES["workflow.parameters.output-prefix"], VALUES["workflow.name"]
    model_key = artifacts.artifact_key(prefix, run, artifacts.TRAIN, artifacts.MODEL)
    # inputs: the init container fetches the keys the producing steps' Argo output artifacts have
    (fetch,) = pod["initContainers"]
    assert fetch["command"] == ["python", "-m", "cvat_argo.training.cluster"]
    assert fetch["args"] == ["fetch",
                             "--key", artifacts.artifact_key(prefix, run, artifacts.CREATE_DATASET, artifacts.DATASET),
                             "--out", "/mnt/in/dataset",
                             "--key", artifacts.artifact_key(prefix, run, artifacts.PULL_BASE_MODEL,
                                                             artifacts.BASE_MODEL),
                             "--out", "/mnt/in/base-model"]
    outputs = {a["name"]: a["s3"]["key"] for t in template["spec"]["templates"]
               for a in t.get("outputs", {}).get("artifacts", [])}
    assert outputs["dataset"].replace("{{workflow.parameters.output-prefix}}", prefix).replace(
        "{{workflow.name}}", run) == fetch["args"][2]
    # outputs: checkpoints (--resume-key) and the published folder land on the model artifact's key
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[cluster.PUBLISH_ENV] == model_key
    assert container["args"][container["args"].index("--resume-key") + 1] == model_key
    # the next steps read that key: key-only S3 artifacts, no `from` a resource step cannot give
    dag = _task_template(template, "pipeline")["dag"]["tasks"]
    convert = next(t for t in dag if t["name"] == "convert")
    model = next(a for a in convert["arguments"]["artifacts"] if a["name"] == "model")
    assert model == {"name": "model", "s3": {"key": "{{workflow.parameters.output-prefix}}/{{workflow.name}}/train/model"}}
    assert "train" in convert["depends"]
    train_task = next(t for t in dag if t["name"] == "train")
    assert "artifacts" not in train_task["arguments"]  # the pods fetch them
    assert train_task["depends"] == "create-dataset && pull-base-model"


def test_workflow_with_a_multi_node_template_validates():
    request, template = _template(args="epochs=3,batch_size=16,num_clones=4")
    workflow = build_workflow(request).to_dict()
    assert workflow["spec"]["workflowTemplateRef"] == {"name": "cvat-argo-gpu-2x4"}
    assert_valid(workflow, templates=[template], versions=("main", "v3.7.14"))


def test_render_writes_the_multi_node_template_and_the_rbac_for_jobsets():
    files = {f.name: f for f in render_files(load_catalog(env={}))}
    template = yaml.safe_load(files[f"workflowtemplate-cvat-argo-{MACHINE}.yaml"].text)
    assert jobset_errors(_jobset(template)) == []
    role = yaml.safe_load(files["role-cvat-argo.yaml"].text)
    assert jobset.RBAC_RULE in role["rules"]
    assert "apiVersion: jobset.x-k8s.io/v1alpha2" not in "".join(
        f.text for name, f in files.items() if name != f"workflowtemplate-cvat-argo-{MACHINE}.yaml")


def test_tf_config_from_the_jobset_environment():
    env = {cluster.WORKERS_ENV: "3", cluster.INDEX_ENV: "1", cluster.JOBSET_ENV: "cvat-argo-train-x7k2p",
           cluster.REPLICATED_JOB_ENV: "worker", cluster.PORT_ENV: "2222", cluster.PUBLISH_ENV: "p/r/train/model"}
    worker = cluster.configure(env)
    assert worker is not None and worker.count == 3 and not worker.is_chief
    assert worker.publish_key == "p/r/train/model"
    assert json.loads(env["TF_CONFIG"]) == {
        "cluster": {"worker": [f"cvat-argo-train-x7k2p-worker-0-{i}.cvat-argo-train-x7k2p:2222" for i in range(3)]},
        "task": {"type": "worker", "index": 1},
    }
    lone: dict[str, str] = {}
    assert cluster.configure(lone) is None and "TF_CONFIG" not in lone
    assert cluster.configure({cluster.WORKERS_ENV: "1"}) is None
    explicit = {cluster.WORKERS_ENV: "2", cluster.INDEX_ENV: "0", cluster.HOSTS_ENV: "127.0.0.1:1,127.0.0.1:2"}
    assert cluster.configure(explicit).is_chief
    assert json.loads(explicit["TF_CONFIG"])["cluster"]["worker"] == ["127.0.0.1:1", "127.0.0.1:2"]


@pytest.mark.parametrize(("env", "message"), [
    ({cluster.WORKERS_ENV: "2"}, "JOB_COMPLETION_INDEX=''"),
    ({cluster.WORKERS_ENV: "2", cluster.INDEX_ENV: "2", cluster.HOSTS_ENV: "a:1,b:1"}, "not one of the 2 workers"),
    ({cluster.WORKERS_ENV: "2", cluster.INDEX_ENV: "0", cluster.HOSTS_ENV: "a:1"}, "lists 1 workers"),
    ({cluster.WORKERS_ENV: "two"}, "CVAT_ARGO_WORKERS='two'"),
    ({cluster.WORKERS_ENV: "2", cluster.INDEX_ENV: "0"}, "CVAT_ARGO_JOBSET"),
])
def test_a_broken_worker_environment_is_one_clear_error(env, message):
    with pytest.raises(cluster.ArgumentError, match=message):
        cluster.worker_from_env(env)
