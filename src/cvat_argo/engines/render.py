"""Rendered YAML for GitOps: ``python -m cvat_argo render --out workflow_templates/``.

One file per object: a WorkflowTemplate per machine type (and per model that brings images of its
own), the artifact repository ConfigMap, the store ConfigMap the steps read, Secret templates with
placeholder values, the service account and its executor role, and a ``kustomization.yaml`` so that
``kubectl apply -k workflow_templates/`` installs them. An example Workflow sits beside them for
``argo submit``, outside the kustomization (applying it would start a run).

Rendering is deterministic; ``render --check`` compares the committed files with a fresh render.
Files that render did not write (no header) are never overwritten or deleted.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import CvatArgoError, RenderDriftError
from ..request.catalog import Catalog, load_catalog
from ..request.spec import DatasetSource, TrainingRequest
from . import yamlio
from .argo import APP_LABELS, template_name, workflow_for, workflow_template_for
from .pipeline import CVAT_SECRET, STORE_CONFIG_MAP, STORE_SECRET, Pipeline, build_pipeline

HEADER = (
    f"# Rendered by `python -m cvat_argo render` (cvat-argo {__version__}). Do not edit: change the code or\n"
    "# the catalog and render again; CI runs `python -m cvat_argo render --check`.\n"
)
HEADER_MARK = "# Rendered by `python -m cvat_argo render`"
EXAMPLE_WORKFLOW = "example-workflow.yaml"


@dataclass(frozen=True)
class ClusterSettings:
    """Values for the example ConfigMaps: where MinIO/S3 is. Edit the rendered files or pass flags."""

    bucket: str = "cvat-argo"
    s3_endpoint: str = "minio.minio.svc.cluster.local:9000"
    s3_insecure: bool = True
    s3_region: str = "us-east-1"


@dataclass(frozen=True)
class RenderedFile:
    name: str
    text: str
    in_kustomization: bool = True


def _file(name: str, obj: dict[str, Any], *, in_kustomization: bool = True) -> RenderedFile:
    return RenderedFile(name=name, text=HEADER + yamlio.dump(obj), in_kustomization=in_kustomization)


def _template_pipelines(catalog: Catalog) -> Iterable[Pipeline]:
    """One pipeline per WorkflowTemplate: each machine type, plus models with their own images."""
    placeholder = DatasetSource(cvat_task_id=1)  # templates do not depend on the data
    for model in [catalog.default_model, *catalog.models]:
        for machine in catalog.machines.values():
            if catalog.models[model].min_gpus > machine.gpus:
                continue
            pipeline = build_pipeline(TrainingRequest(source=placeholder, model=model, machine=machine.name), catalog)
            if model != catalog.default_model and not pipeline.own_images:
                break  # the model runs in the default images: each machine's template serves it
            yield pipeline


def render_files(catalog: Catalog | None = None, settings: ClusterSettings | None = None) -> list[RenderedFile]:
    catalog = catalog or load_catalog()
    settings = settings or ClusterSettings()
    files: list[RenderedFile] = []
    seen: set[str] = set()
    for pipeline in _template_pipelines(catalog):
        name = template_name(pipeline)
        if name not in seen:
            seen.add(name)
            files.append(_file(f"workflowtemplate-{name}.yaml", workflow_template_for(pipeline).to_dict()))
    files += [
        _file("configmap-artifact-repositories.yaml", _artifact_repositories(settings)),
        _file(f"configmap-{STORE_CONFIG_MAP}.yaml", _store_config(settings)),
        _file(f"secret-{STORE_SECRET}.yaml", _secret(STORE_SECRET, {
            "accesskey": "REPLACE-WITH-S3-ACCESS-KEY", "secretkey": "REPLACE-WITH-S3-SECRET-KEY"})),
        _file(f"secret-{CVAT_SECRET}.yaml", _secret(CVAT_SECRET, {
            "host": "https://cvat.example.com", "username": "REPLACE-WITH-CVAT-USER",
            "password": "REPLACE-WITH-CVAT-PASSWORD", "token": ""})),
        *_rbac_files(),
    ]
    example = TrainingRequest.create(task_id=42, args="epochs=100,batch_size=16", model=catalog.default_model)
    files.append(_file(EXAMPLE_WORKFLOW, workflow_for(build_pipeline(example, catalog)).to_dict(),
                       in_kustomization=False))
    files.append(_file("kustomization.yaml", {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f.name for f in files if f.in_kustomization],
    }))
    return files


def _metadata(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "labels": dict(APP_LABELS), **extra}


def _artifact_repositories(settings: ClusterSettings) -> dict[str, Any]:
    repository = {"s3": {
        "bucket": settings.bucket,
        "endpoint": settings.s3_endpoint,
        "insecure": settings.s3_insecure,
        "region": settings.s3_region,
        "accessKeySecret": {"name": STORE_SECRET, "key": "accesskey"},
        "secretKeySecret": {"name": STORE_SECRET, "key": "secretkey"},
    }}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata("artifact-repositories"),
            "data": {"cvat-argo": yamlio.dump(repository)}}


def _store_config(settings: ClusterSettings) -> dict[str, Any]:
    scheme = "http" if settings.s3_insecure else "https"
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(STORE_CONFIG_MAP),
            "data": {"store": f"s3://{settings.bucket}", "endpoint": f"{scheme}://{settings.s3_endpoint}",
                     "region": settings.s3_region}}


def _secret(name: str, placeholders: dict[str, str]) -> dict[str, Any]:
    note = ("A template: replace the placeholder values (or manage this Secret with sealed-secrets or "
            "external-secrets and drop it from kustomization.yaml) before applying.")
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _metadata(name, annotations={"cvat-argo/note": note}), "stringData": placeholders}


def _rbac_files() -> list[RenderedFile]:
    name = "cvat-argo"
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _metadata(name),
            "rules": [{"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"],
                       "verbs": ["create", "patch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _metadata(name),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": name}]}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(name)}
    return [_file(f"serviceaccount-{name}.yaml", account), _file(f"role-{name}.yaml", role),
            _file(f"rolebinding-{name}.yaml", binding)]


def _rendered_by_us(path: Path) -> bool:
    with path.open(encoding="utf-8") as handle:
        return handle.readline().startswith(HEADER_MARK)


def write_files(files: list[RenderedFile], out_dir: Path) -> tuple[list[Path], list[Path]]:
    """Write the files; delete files an earlier render wrote that are no longer rendered.

    Returns (written, removed). Refuses to touch a file that render did not write.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for file in files:
        target = out_dir / file.name
        if target.exists() and not _rendered_by_us(target):
            raise CvatArgoError(f"refusing to overwrite {target}: it was not written by `cvat_argo render`")
    written = []
    for file in files:
        target = out_dir / file.name
        if not target.exists() or target.read_text(encoding="utf-8") != file.text:
            target.write_text(file.text, encoding="utf-8")
            written.append(target)
    names = {f.name for f in files}
    removed = [p for p in sorted(out_dir.glob("*.yaml")) if p.name not in names and _rendered_by_us(p)]
    for path in removed:
        path.unlink()
    return written, removed


def check_files(files: list[RenderedFile], out_dir: Path) -> str:
    """A unified diff between the files in ``out_dir`` and a fresh render; empty when they match."""
    diff: list[str] = []
    for file in files:
        target = out_dir / file.name
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != file.text:
            diff += difflib.unified_diff(current.splitlines(keepends=True), file.text.splitlines(keepends=True),
                                         fromfile=str(target) if current else "/dev/null", tofile=f"{target} (render)")
    names = {f.name for f in files}
    for stale in sorted(out_dir.glob("*.yaml")) if out_dir.exists() else []:
        if stale.name not in names and _rendered_by_us(stale):
            diff.append(f"--- {stale}\n+++ /dev/null (no longer rendered)\n")
    return "".join(diff)


def check_or_raise(files: list[RenderedFile], out_dir: Path) -> None:
    diff = check_files(files, out_dir)
    if diff:
        raise RenderDriftError(
            f"{out_dir} differs from what the code renders:\n{diff}\n"
            f"Run `python -m cvat_argo render --out {out_dir}` and commit the result."
        )
