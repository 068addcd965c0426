"""Every rendered Argo object is valid (strict schema + argo lint rules), deterministic and current."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import yaml
from ruamel.yaml import YAML

from cvat_argo import RequestError, TrainingRequest, build_workflow, build_workflow_template, load_catalog
from cvat_argo.cli import main
from cvat_argo.engines.argo import TASK_ID_LABEL, template_name
from cvat_argo.engines.pipeline import build_pipeline
from cvat_argo.engines.render import HEADER, check_files, render_files, write_files
from support.argo_validation import assert_valid, schema_errors

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "workflow_templates"
ALL_MACHINES = ("cpu", "gpu-1", "gpu-2", "gpu-4", "gpu-8", "gpu-2x4")


def yaml12(text: str):
    return YAML(typ="safe", pure=True).load(io.StringIO(text))


def argo_objects(files):
    for file in files:
        obj = yaml.safe_load(file.text)
        if obj.get("apiVersion") == "argoproj.io/v1alpha1":
            yield file.name, obj


@pytest.fixture(scope="module")
def rendered():
    return render_files(load_catalog(env={}))


def test_renders_one_template_per_machine_and_the_cluster_objects(rendered):
    names = [f.name for f in rendered]
    assert [n for n in names if n.startswith("workflowtemplate-")] == [
        f"workflowtemplate-cvat-argo-{m}.yaml" for m in ALL_MACHINES]
    for expected in ("configmap-cvat-argo-artifact-repositories.yaml", "configmap-cvat-argo-store.yaml",
                     "serviceaccount-cvat-argo.yaml", "role-cvat-argo.yaml", "rolebinding-cvat-argo.yaml",
                     "example-workflow.yaml", "kustomization.yaml"):
        assert expected in names
    assert not [n for n in names if n.startswith("secret-")]  # the overlay makes the Secrets
    kustomization = yaml.safe_load(rendered[-1].text)
    assert "example-workflow.yaml" not in kustomization["resources"]  # applying it would start a run
    assert set(kustomization["resources"]) == set(names) - {"example-workflow.yaml", "kustomization.yaml"}
    assert all(f.text.startswith(HEADER) for f in rendered)


@pytest.mark.parametrize("version", ["main", "v3.7.14"])
def test_every_rendered_argo_object_is_valid(rendered, version):
    objects = dict(argo_objects(rendered))
    templates = [o for o in objects.values() if o["kind"] == "WorkflowTemplate"]
    assert len(templates) == len(ALL_MACHINES)
    for name, obj in objects.items():
        try:
            assert_valid(obj, templates=templates, versions=(version,))
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


@pytest.mark.parametrize("model", sorted(load_catalog(env={}).models))
@pytest.mark.parametrize("machine", ["cpu", "gpu-2", "gpu-8", "gpu-2x4"])
def test_every_model_machine_pair_builds_a_valid_workflow(model, machine):
    catalog = load_catalog(env={})
    request = TrainingRequest.create(source="s3://exports/task-7.zip", model=model, machine=machine,
                                     args="epochs=3,initial_learning_rate=1e-5")
    if catalog.model(model).min_gpus > catalog.machine(machine).gpus:
        with pytest.raises(RequestError, match="needs at least"):
            build_workflow(request, catalog)
        return
    template = build_workflow_template(request, catalog).to_dict()
    workflow = build_workflow(request, catalog).to_dict()
    assert_valid(template)
    assert_valid(workflow, templates=[template])
    # Argo refuses a value outside a parameter's enum: the run's model and GPU count are among the choices.
    choices = {p["name"]: p.get("enum") for p in template["spec"]["arguments"]["parameters"]}
    values = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert values["model"] in choices["model"]
    assert choices.get("gpus") == ([str(n) for n in range(1, catalog.machine(machine).gpus + 1)] or None)
    if "gpus" in values:
        assert values["gpus"] in choices["gpus"]


def test_model_choices_fit_the_machine(rendered):
    templates = {obj["metadata"]["name"]: obj for _, obj in argo_objects(rendered) if obj["kind"] == "WorkflowTemplate"}
    catalog = load_catalog(env={})
    for machine in ALL_MACHINES:
        model = next(p for p in templates[f"cvat-argo-{machine}"]["spec"]["arguments"]["parameters"]
                     if p["name"] == "model")
        expected = [m.name for m in catalog.models.values() if m.min_gpus <= catalog.machine(machine).gpus]
        assert model["enum"] == expected and model["value"] == catalog.default_model
    assert "frcnn-nas-coco" not in str(templates["cvat-argo-gpu-1"]["spec"]["arguments"])


def test_artifact_repository_config_validates_against_argo(rendered):
    config_map = yaml.safe_load(next(f.text for f in rendered
                                     if f.name == "configmap-cvat-argo-artifact-repositories.yaml"))
    assert config_map["metadata"]["name"] == "cvat-argo-artifact-repositories"
    repository = yaml.safe_load(config_map["data"]["cvat-argo"])
    assert schema_errors(repository, definition="io.argoproj.workflow.v1alpha1.ArtifactRepository") == []
    assert repository["s3"]["accessKeySecret"] == {"name": "cvat-argo-s3", "key": "accesskey"}


def test_parameter_values_read_back_as_strings_with_yaml_1_2(rendered, tmp_path):
    request = TrainingRequest.create(task_id=7, args="epochs=1000,initial_learning_rate=1e-5,batch_size=8",
                                     base_model_uri="s3://models/1e3", val_fraction=0.25)
    pipeline = build_pipeline(request)
    files = [*rendered]
    from cvat_argo.engines import yamlio

    files_text = [f.text for f in files] + [yamlio.dump(build_workflow(request).to_dict())]
    expected = pipeline.parameter_values()
    checked = 0
    for text in files_text:
        obj = yaml12(text)
        if obj.get("apiVersion") != "argoproj.io/v1alpha1":
            continue
        for parameter in obj["spec"].get("arguments", {}).get("parameters", []):
            assert isinstance(parameter["value"], str), (parameter, text[:200])
            checked += 1
        for template in obj["spec"].get("templates", []):
            for task in template.get("dag", {}).get("tasks", []):
                for parameter in task.get("arguments", {}).get("parameters", []):
                    assert isinstance(parameter["value"], str)
    workflow = yaml12(yamlio.dump(build_workflow(request).to_dict()))
    values = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert values == expected
    assert "initial_learning_rate=1e-05" in values["args"] and values["val-fraction"] == "0.25"
    assert checked > 50


def test_rendering_twice_is_byte_identical(tmp_path):
    first = render_files(load_catalog(env={}))
    second = render_files(load_catalog(env={}))
    assert [(f.name, f.text) for f in first] == [(f.name, f.text) for f in second]
    write_files(first, tmp_path / "a")
    write_files(second, tmp_path / "b")
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()


def test_committed_templates_are_current(capsys):
    assert main(["render", "--check", "--out", str(COMMITTED)]) == 0, capsys.readouterr().err
    assert "match the code" in capsys.readouterr().out


def test_check_shows_the_diff_and_write_repairs_it(tmp_path, capsys):
    out = tmp_path / "wt"
    assert main(["render", "--out", str(out)]) == 0
    target = out / "workflowtemplate-cvat-argo-gpu-1.yaml"
    target.write_text(target.read_text().replace("limit: '3'", "limit: '9'"))
    stale = out / "workflowtemplate-cvat-argo-gpu-16.yaml"
    stale.write_text(HEADER + "kind: WorkflowTemplate\n")
    capsys.readouterr()
    assert main(["render", "--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "-      limit: '9'" in err and "+      limit: '3'" in err
    assert "workflowtemplate-cvat-argo-gpu-16.yaml" in err and "no longer rendered" in err
    assert main(["render", "--out", str(out)]) == 0
    assert not stale.exists()
    assert check_files(render_files(load_catalog(env={})), out) == ""


def test_render_never_overwrites_files_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "wt"
    out.mkdir()
    mine = out / "kustomization.yaml"
    mine.write_text("resources: [my-own.yaml]\n")
    (out / "notes.yaml").write_text("keep: me\n")
    assert main(["render", "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert mine.read_text() == "resources: [my-own.yaml]\n" and (out / "notes.yaml").exists()


def test_no_credentials_or_endpoints_in_templates(rendered):
    for name, obj in argo_objects(rendered):
        text = json.dumps(obj)
        assert "minio" not in text.lower() and "REPLACE-WITH" not in text and "example.com" not in text
        for template in obj["spec"].get("templates", []):
            for env in template.get("container", {}).get("env", []):
                assert set(env) == {"name", "valueFrom"}, f"{name}: {env['name']} must come from a Secret/ConfigMap"
            for artifact in template.get("outputs", {}).get("artifacts", []):
                assert set(artifact["s3"]) == {"key"}, "artifacts must be key-only"
    assert not [f.name for f in rendered if yaml.safe_load(f.text).get("kind") == "Secret"]


def test_training_pod_gets_the_machine_and_num_clones():
    request = TrainingRequest.create(task_id=3, machine="gpu-4", args="num_clones=2,batch_size=8")
    template = build_workflow_template(request).to_dict()
    train = next(t for t in template["spec"]["templates"] if t["name"] == "train")
    patch = json.loads(train["podSpecPatch"])
    container = patch["containers"][0]
    assert container["name"] == "main"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{inputs.parameters.gpus}}"
    assert train["nodeSelector"] == {"nvidia.com/gpu.count": "4", "nvidia.com/gpu.present": "true"}
    assert train["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    shm = next(v for v in train["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in train["container"]["volumeMounts"]
    assert train["activeDeadlineSeconds"] == str(48 * 3600)
    assert train["sidecars"][0]["name"] == "tensorboard"
    workflow = build_workflow(request).to_dict()
    values = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert values["gpus"] == "2" and values["args"].endswith("num_clones=2")


def test_optional_tensorboard_and_cpu_machine():
    request = TrainingRequest.create(task_id=3, machine="cpu", tensorboard=False)
    train = next(t for t in build_workflow_template(request).to_dict()["spec"]["templates"] if t["name"] == "train")
    assert "sidecars" not in train and "podSpecPatch" not in train and "nodeSelector" not in train


def test_workflow_metadata_lifecycle_and_keys():
    request = TrainingRequest.create(task_id=42, output_prefix="team/cvat", labels={"team": "vision"})
    template = build_workflow_template(request).to_dict()
    spec = template["spec"]
    assert spec["podGC"] == {"strategy": "OnPodSuccess"}
    assert spec["ttlStrategy"]["secondsAfterSuccess"] > 0 and spec["serviceAccountName"] == "cvat-argo"
    assert spec["onExit"] == "record-status" and spec["artifactRepositoryRef"]["configMap"] == "cvat-argo-artifact-repositories"
    assert isinstance(spec["activeDeadlineSeconds"], int)
    assert spec["workflowMetadata"]["labelsFrom"][TASK_ID_LABEL]["expression"] == "workflow.parameters['cvat-task-id']"
    keys = {a["name"]: a["s3"]["key"] for t in spec["templates"] for a in t.get("outputs", {}).get("artifacts", [])}
    assert keys["model"] == "{{workflow.parameters.output-prefix}}/{{workflow.name}}/train/model"
    assert keys["status"] == "{{workflow.parameters.output-prefix}}/{{workflow.name}}/record-status/status"
    for template_ in spec["templates"]:
        if "retryStrategy" in template_:
            assert "asInt(lastRetry.exitCode) == 75" in template_["retryStrategy"]["expression"]
    workflow = build_workflow(request).to_dict()
    labels = workflow["metadata"]["labels"]
    assert labels[TASK_ID_LABEL] == "42" and labels["team"] == "vision"
    assert labels["app.kubernetes.io/name"] == "cvat-argo"
    assert workflow["metadata"]["generateName"] == "cvat-argo-task42-ssd-mobilenet-v2-coco-"
    assert workflow["spec"]["workflowTemplateRef"] == {"name": "cvat-argo-gpu-1"}
    assert re.fullmatch(r"[a-z0-9-]{1,58}", workflow["metadata"]["generateName"])


def test_local_dataset_cannot_go_to_a_cluster():
    with pytest.raises(RequestError, match="is a local path, which the cluster cannot read"):
        build_workflow(TrainingRequest.create(source="./export.zip"))


def test_models_with_their_own_images_get_their_own_template(tmp_path):
    catalog_file = tmp_path / "catalog.yaml"
    catalog_file.write_text("models:\n  - {name: custom, extends: frcnn-res50-coco, images: {train: reg/t:1}}\n")
    catalog = load_catalog(catalog_file, env={})
    request = TrainingRequest.create(task_id=1, model="custom", machine="gpu-2")
    assert template_name(build_pipeline(catalog.resolve(request))) == "cvat-argo-gpu-2-custom"
    template = build_workflow_template(request, catalog).to_dict()
    train = next(t for t in template["spec"]["templates"] if t["name"] == "train")
    assert train["container"]["image"] == "reg/t:1"
    names = [f.name for f in render_files(catalog)]
    assert "workflowtemplate-cvat-argo-gpu-2-custom.yaml" in names
    # Its own template offers only its model, and defaults to it with its catalog entry (no model-spec needed).
    parameters = {p["name"]: p for p in template["spec"]["arguments"]["parameters"]}
    assert parameters["model"]["enum"] == ["custom"] and parameters["model"]["value"] == "custom"
    assert json.loads(parameters["model-spec"]["value"])["name"] == "custom"
    assert_valid(template)


def test_registry_override_moves_every_image(monkeypatch):
    monkeypatch.setenv("CVAT_ARGO_IMAGE_REGISTRY", "registry.internal:5000/ml")
    template = build_workflow_template(TrainingRequest.create(task_id=1)).to_dict()
    images = {t["container"]["image"] for t in template["spec"]["templates"] if "container" in t}
    assert images and all(i.startswith("registry.internal:5000/ml/cvat-argo-") for i in images)
