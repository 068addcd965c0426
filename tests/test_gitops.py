"""GitOps: the rendered base holds no Secret, the example overlay builds a cluster's install from it, and
`render --check` compares with what the committed flags produced."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cvat_argo.cli import main
from cvat_argo.engines.render import HEADER
from support.argo_validation import assert_valid, schema_errors

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "workflow_templates"
OVERLAY = REPO / "examples" / "gitops-overlay"
# Optional keys the example overlay leaves out: a private CA's PEM file (a `files:` line to uncomment).
LEFT_TO_THE_USER = {("cvat-credentials", "ca-bundle")}
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: `kubectl kustomize` builds the "
                                                           "base and the overlay")


def kustomize(folder: Path) -> list[dict[str, Any]]:
    built = subprocess.run([KUBECTL or "kubectl", "kustomize", str(folder)], capture_output=True, text=True,
                           check=False, timeout=120)
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def env_file(path: Path) -> dict[str, str]:
    """A kustomize env file: KEY=VALUE lines, '#' comments."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


@pytest.fixture()
def overlay(tmp_path: Path) -> Path:
    """A filled copy of the example overlay next to a copy of the committed base, as a user's repository holds them."""
    shutil.copytree(BASE, tmp_path / "workflow_templates")
    target = tmp_path / "examples" / "gitops-overlay"
    shutil.copytree(OVERLAY, target)
    for example in target.glob("*.env.example"):
        values = env_file(example)
        filled = {key: f"{key}-value-for-{example.stem}" if value.startswith("REPLACE-WITH") else value
                  for key, value in values.items()}
        (target / example.name.removesuffix(".example")).write_text(
            "".join(f"{key}={value}\n" for key, value in filled.items()))
    return target


@needs_kubectl
def test_base_has_no_secret_and_names_its_own_artifact_repository():
    objects = kustomize(BASE)
    assert not of_kind(objects, "Secret")
    assert all("namespace" not in obj["metadata"] for obj in objects)  # the overlay chooses it
    config_maps = of_kind(objects, "ConfigMap")
    assert "artifact-repositories" not in config_maps  # Argo's default name: `apply` would replace the cluster's
    templates = of_kind(objects, "WorkflowTemplate")
    assert templates
    for template in templates.values():
        ref = template["spec"]["artifactRepositoryRef"]
        assert ref["configMap"] == "cvat-argo-artifact-repositories" and ref["key"] in config_maps[ref["configMap"]]["data"]


@needs_kubectl
def test_overlay_builds_the_secrets_namespace_and_repository(overlay: Path):
    objects = kustomize(overlay)
    namespace = yaml.safe_load((overlay / "kustomization.yaml").read_text())["namespace"]
    assert namespace == "argo"
    assert all(obj["metadata"].get("namespace") == namespace for obj in objects), [
        f"{o['kind']}/{o['metadata']['name']}" for o in objects if o["metadata"].get("namespace") != namespace]
    bindings = of_kind(objects, "RoleBinding")
    assert all(s.get("namespace", namespace) == namespace for b in bindings.values() for s in b["subjects"])

    # The Secrets hold exactly what the filled files say, under the names the templates use.
    secrets = {name: {k: base64.b64decode(v).decode() for k, v in s.get("data", {}).items()}
               for name, s in of_kind(objects, "Secret").items()}
    assert secrets == {"cvat-argo-s3": env_file(overlay / "s3.env"), "cvat-credentials": env_file(overlay / "cvat.env")}
    assert secrets["cvat-argo-s3"]["accesskey"] == "accesskey-value-for-s3.env"

    config_maps = {name: c["data"] for name, c in of_kind(objects, "ConfigMap").items()}
    templates = of_kind(objects, "WorkflowTemplate")
    assert sorted(templates) == sorted(of_kind(kustomize(overlay.parent.parent / "workflow_templates"),
                                               "WorkflowTemplate"))
    for template in templates.values():
        assert_valid(template, templates=list(templates.values()))
        # Every Secret and ConfigMap key a step reads exists in what the overlay applies.
        for step in template["spec"]["templates"]:
            for env in step.get("container", {}).get("env", []):
                source = env["valueFrom"]
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    if (ref["name"], ref["key"]) in LEFT_TO_THE_USER:
                        continue
                    assert ref["key"] in secrets[ref["name"]], (step["name"], env["name"])
                else:
                    ref = source["configMapKeyRef"]
                    assert ref["key"] in config_maps[ref["name"]], (step["name"], env["name"])
        # The artifact repository it names exists, is valid for Argo, and its credentials exist.
        ref = template["spec"]["artifactRepositoryRef"]
        repository = yaml.safe_load(config_maps[ref["configMap"]][ref["key"]])
        assert schema_errors(repository, definition="io.argoproj.workflow.v1alpha1.ArtifactRepository") == []
        for key in ("accessKeySecret", "secretKeySecret"):
            secret = repository["s3"][key]
            assert secret["key"] in secrets[secret["name"]]

    # The overlay's two views of the store agree (Argo's artifacts, the steps' own reads).
    s3 = yaml.safe_load(config_maps["cvat-argo-artifact-repositories"]["cvat-argo"])["s3"]
    store = config_maps["cvat-argo-store"]
    scheme = "http" if s3["insecure"] else "https"
    assert store == {"store": f"s3://{s3['bucket']}", "endpoint": f"{scheme}://{s3['endpoint']}",
                     "region": s3["region"], "model-mirror": ""}  # optional: empty, checkpoints from their origin


@needs_kubectl
def test_overlay_refuses_to_build_without_the_secret_files(overlay: Path):
    (overlay / "cvat.env").unlink()
    built = subprocess.run([KUBECTL or "kubectl", "kustomize", str(overlay)], capture_output=True, text=True,
                           check=False, timeout=120)
    assert built.returncode != 0 and "cvat.env" in built.stderr


def test_git_ignores_the_secret_files_and_tracks_the_examples():
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("git or the repository's .git is not here: .gitignore cannot be asked")
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    secret_files = [name for generator in kustomization["secretGenerator"] for name in generator.get("envs", [])]
    assert sorted(secret_files) == ["cvat.env", "s3.env"]
    for name in [*secret_files, *(f"{name}.example" for name in secret_files)]:
        ignored = subprocess.run([git, "-C", str(REPO), "check-ignore", "-q", f"examples/gitops-overlay/{name}"],
                                 check=False).returncode == 0
        assert ignored == (not name.endswith(".example")), name
        if name.endswith(".example"):
            assert (OVERLAY / name).is_file()


def _config_maps(out: Path) -> dict[str, dict[str, str]]:
    maps = {}
    for path in out.glob("configmap-*.yaml"):
        obj = yaml.safe_load(path.read_text())
        maps[obj["metadata"]["name"]] = obj["data"]
    return maps


def test_check_uses_the_flags_the_folder_was_rendered_with(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CVAT_ARGO_CATALOG", raising=False)
    monkeypatch.delenv("CVAT_ARGO_IMAGE_REGISTRY", raising=False)
    out = tmp_path / "workflow_templates"
    assert main(["render", "--out", str(out), "--bucket", "team", "--s3-endpoint", "s3.example.org:443",
                 "--s3-tls", "--s3-region", "eu-west-1"]) == 0
    maps = _config_maps(out)
    assert maps["cvat-argo-store"] == {"store": "s3://team", "endpoint": "https://s3.example.org:443",
                                       "region": "eu-west-1", "model-mirror": ""}
    assert yaml.safe_load(maps["cvat-argo-artifact-repositories"]["cvat-argo"])["s3"]["insecure"] is False
    capsys.readouterr()

    assert main(["render", "--check", "--out", str(out)]) == 0, capsys.readouterr().err
    assert main(["render", "--check", "--out", str(out), "--bucket", "team"]) == 0  # the same flag again

    assert main(["render", "--check", "--out", str(out), "--bucket", "other", "--no-s3-tls"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "kustomization.yaml" in err
    assert "--bucket team -> --bucket other" in err and "--s3-tls -> --no-s3-tls" in err
    assert _config_maps(out) == maps  # a check never writes

    # A later render keeps the recorded flags and changes only the one given; the check follows it.
    assert main(["render", "--out", str(out), "--s3-region", "us-west-2"]) == 0
    assert "render setting: --s3-region eu-west-1 -> --s3-region us-west-2" in capsys.readouterr().out
    assert _config_maps(out)["cvat-argo-store"] == {**maps["cvat-argo-store"], "region": "us-west-2"}
    assert main(["render", "--check", "--out", str(out)]) == 0

    # A fresh folder gets the defaults.
    fresh = tmp_path / "fresh"
    assert main(["render", "--out", str(fresh)]) == 0
    assert _config_maps(fresh)["cvat-argo-store"]["store"] == "s3://cvat-argo"


def test_check_renders_with_the_recorded_catalog_and_registry(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CVAT_ARGO_CATALOG", raising=False)
    monkeypatch.delenv("CVAT_ARGO_IMAGE_REGISTRY", raising=False)
    repo = tmp_path / "repo"
    (repo / "deploy").mkdir(parents=True)
    (repo / "deploy" / "catalog.yaml").write_text(
        "models:\n  - {name: custom, extends: frcnn-res50-coco, images: {train: reg/t:1}}\n")
    monkeypatch.chdir(repo)
    monkeypatch.setenv("CVAT_ARGO_IMAGE_REGISTRY", "registry.internal:5000/ml")
    assert main(["render", "--out", "workflow_templates", "--catalog", "deploy/catalog.yaml"]) == 0
    custom = repo / "workflow_templates" / "workflowtemplate-cvat-argo-gpu-2-custom.yaml"
    assert custom.exists() and "registry.internal:5000/ml/cvat-argo-dataset:" in custom.read_text()
    monkeypatch.delenv("CVAT_ARGO_IMAGE_REGISTRY")
    capsys.readouterr()

    # CI: another working directory, no catalog flag, no registry in the environment.
    monkeypatch.chdir(tmp_path)
    assert main(["render", "--check", "--out", "repo/workflow_templates"]) == 0, capsys.readouterr().err
    monkeypatch.setenv("CVAT_ARGO_IMAGE_REGISTRY", "ghcr.io/elsewhere")
    assert main(["render", "--check", "--out", "repo/workflow_templates"]) == 1
    err = capsys.readouterr().err
    assert "CVAT_ARGO_IMAGE_REGISTRY=registry.internal:5000/ml -> CVAT_ARGO_IMAGE_REGISTRY=ghcr.io/elsewhere" in err
    monkeypatch.delenv("CVAT_ARGO_IMAGE_REGISTRY")
    assert main(["render", "--check", "--out", "repo/workflow_templates", "--catalog", ""]) == 1
    assert "-> the built-in catalog" in capsys.readouterr().err
    # Going back to the built-in catalog removes the model's own template.
    assert main(["render", "--out", "repo/workflow_templates", "--catalog", ""]) == 0
    assert not custom.exists()


def test_unreadable_recorded_settings_name_the_file(tmp_path, capsys):
    out = tmp_path / "wt"
    assert main(["render", "--out", str(out)]) == 0
    kustomization = out / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("render-s3-tls: 'false'", "render-s3-tls: maybe"))
    capsys.readouterr()
    assert main(["render", "--check", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(kustomization) in err and "maybe" in err and "Traceback" not in err
    kustomization.write_text(HEADER + "metadata: [not, a, mapping]\n")
    assert main(["render", "--check", "--out", str(out)]) == 2
    assert str(kustomization) in capsys.readouterr().err
