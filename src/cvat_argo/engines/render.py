"""Rendered YAML for GitOps: ``python -m cvat_argo render --out workflow_templates/``.

The folder is a kustomize base, safe to commit: one file per object, a WorkflowTemplate per machine
type (and per model that brings images of its own), our artifact repository ConfigMap (a name of its
own: Argo's default ``artifact-repositories`` may exist already and ``apply`` would replace it), the
store ConfigMap the steps read, the service account and its executor role, and ``kustomization.yaml``.
It holds no Secret: the templates name the Secrets, and an overlay (``examples/gitops-overlay``) makes
them from files kept out of git and sets the cluster's bucket, endpoint and namespace. An example
Workflow sits beside them for ``argo submit``, outside the kustomization (applying it would start a run).

Rendering is deterministic; ``render --check`` compares the committed files with a fresh render made
with the flags recorded in the base's ``kustomization.yaml`` (annotations ``cvat-argo/render-*``).
Files that render did not write (no header) are never overwritten or deleted.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..errors import CvatArgoError, RenderDriftError
from ..request.catalog import CATALOG_ENV, Catalog, load_catalog
from ..request.spec import ArtifactRepository, DatasetSource, TrainingRequest
from . import jobset, yamlio
from .argo import APP_LABELS, template_name, workflow_for, workflow_template_for
from .images import DEFAULT_REGISTRY, REGISTRY_ENV
from .pipeline import MODEL_MIRROR_ENV, STORE_CONFIG_MAP, STORE_SECRET, Pipeline, build_pipeline

HEADER = (
    f"# Rendered by `python -m cvat_argo render` (cvat-argo {__version__}). Do not edit: change the code or\n"
    "# the catalog and render again (CI runs `python -m cvat_argo render --check`); put cluster values and\n"
    "# Secrets in a kustomize overlay (examples/gitops-overlay).\n"
)
HEADER_MARK = "# Rendered by `python -m cvat_argo render`"
EXAMPLE_WORKFLOW = "example-workflow.yaml"
KUSTOMIZATION = "kustomization.yaml"
SETTING_PREFIX = "cvat-argo/render-"  # annotations of the base's kustomization.yaml: the flags render ran with


@dataclass(frozen=True)
class ClusterSettings:
    """Values for the base's ConfigMaps: where MinIO/S3 is. An overlay or the render flags change them."""

    bucket: str = "cvat-argo"
    s3_endpoint: str = "minio.minio.svc.cluster.local:9000"
    s3_insecure: bool = True
    s3_region: str = "us-east-1"


@dataclass(frozen=True)
class RenderSettings:
    """What a render depends on besides the code: its flags, the catalog file and the image registry.

    Recorded in the base's ``kustomization.yaml``, so that a later ``render`` keeps them and
    ``render --check`` (CI) renders what the committed flags produced.
    """

    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    catalog: str | None = None  # the catalog file, relative to the rendered folder; None: the built-in one
    image_registry: str | None = None  # $CVAT_ARGO_IMAGE_REGISTRY; None: the default registry

    def flags(self) -> dict[str, str]:
        """Setting name -> value, as the annotations hold them (``s3-tls``: ``true``/``false``)."""
        cluster = self.cluster
        flags = {"bucket": cluster.bucket, "s3-endpoint": cluster.s3_endpoint, "s3-region": cluster.s3_region,
                 "s3-tls": "false" if cluster.s3_insecure else "true"}
        if self.catalog is not None:
            flags["catalog"] = self.catalog
        if self.image_registry is not None:
            flags["image-registry"] = self.image_registry
        return flags

    def catalog_file(self, out_dir: Path) -> Path | None:
        """The catalog file, found from the rendered folder (which need not exist yet)."""
        return None if self.catalog is None else Path(os.path.normpath(out_dir / self.catalog))


def _shown(name: str, value: str | None) -> str:
    """A setting as the user gives it: a flag, or the environment variable."""
    if name == "image-registry":
        return f"{REGISTRY_ENV}={value or DEFAULT_REGISTRY}"
    if name == "s3-tls":
        return "--s3-tls" if value == "true" else "--no-s3-tls"
    if name == "catalog" and value is None:
        return "the built-in catalog"
    return f"--{name} {value}"


def recorded_settings(out_dir: Path) -> RenderSettings:
    """The settings recorded in ``out_dir/kustomization.yaml``; the defaults when there is none."""
    path = out_dir / KUSTOMIZATION
    if not path.is_file() or not _rendered_by_us(path):
        return RenderSettings()
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        annotations = document.get("metadata", {}).get("annotations", {}) or {}
        recorded = {key[len(SETTING_PREFIX):]: str(value) for key, value in annotations.items()
                    if key.startswith(SETTING_PREFIX)}
    except (yaml.YAMLError, AttributeError, OSError) as exc:
        raise CvatArgoError(f"{path}: cannot read the render settings ({type(exc).__name__}): "
                            "render the folder again") from None
    unknown = sorted(set(recorded) - set(RenderSettings(catalog="", image_registry="").flags()))
    if unknown:
        raise CvatArgoError(f"{path}: unknown render setting {SETTING_PREFIX}{unknown[0]}: render the folder again")
    if recorded.get("s3-tls", "false") not in ("true", "false"):
        raise CvatArgoError(f"{path}: {SETTING_PREFIX}s3-tls is {recorded['s3-tls']!r}, not true or false: "
                            "render again with --s3-tls or --no-s3-tls")
    default = ClusterSettings()
    cluster = ClusterSettings(bucket=recorded.get("bucket", default.bucket),
                              s3_endpoint=recorded.get("s3-endpoint", default.s3_endpoint),
                              s3_insecure=recorded.get("s3-tls", "false") == "false",
                              s3_region=recorded.get("s3-region", default.s3_region))
    return RenderSettings(cluster=cluster, catalog=recorded.get("catalog"),
                          image_registry=recorded.get("image-registry"))


def settings_for(
    out_dir: Path,
    *,
    check: bool = False,
    bucket: str | None = None,
    s3_endpoint: str | None = None,
    s3_region: str | None = None,
    s3_tls: bool | None = None,
    catalog: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[RenderSettings, list[str]]:
    """The settings a render of ``out_dir`` uses: the recorded ones with what was given laid over them.

    ``None`` means not given; ``catalog=""`` means the built-in catalog; ``$CVAT_ARGO_CATALOG`` and
    ``$CVAT_ARGO_IMAGE_REGISTRY`` in ``env`` count as given. Returns the settings and what changed,
    one "old -> new" per setting. A check must not change anything: it says in one line what differs.
    """
    env = os.environ if env is None else env
    recorded = recorded_settings(out_dir)
    cluster = recorded.cluster
    cluster = ClusterSettings(bucket=bucket or cluster.bucket, s3_endpoint=s3_endpoint or cluster.s3_endpoint,
                              s3_insecure=cluster.s3_insecure if s3_tls is None else not s3_tls,
                              s3_region=s3_region or cluster.s3_region)
    settings = replace(recorded, cluster=cluster)
    catalog = catalog if catalog is not None else env.get(CATALOG_ENV) or None
    if catalog is not None:
        relative = Path(os.path.relpath(Path(catalog).resolve(), out_dir.resolve())).as_posix() if catalog else None
        settings = replace(settings, catalog=relative)
    registry = (env.get(REGISTRY_ENV) or "").rstrip("/")
    if registry:
        settings = replace(settings, image_registry=None if registry == DEFAULT_REGISTRY else registry)
    old, new = recorded.flags(), settings.flags()
    changes = [f"{_shown(name, old.get(name))} -> {_shown(name, new.get(name))}"
               for name in dict.fromkeys([*old, *new]) if old.get(name) != new.get(name)]
    if check and changes:
        raise RenderDriftError(
            f"{out_dir / KUSTOMIZATION} records other render settings than this check was given "
            f"(recorded -> given: {'; '.join(changes)}): check without them, or render with them and commit")
    return settings, changes


@contextmanager
def _image_registry(registry: str | None) -> Iterator[None]:
    """Render with the recorded image registry: images are named from ``$CVAT_ARGO_IMAGE_REGISTRY``."""
    before = os.environ.get(REGISTRY_ENV)
    if registry is None:
        os.environ.pop(REGISTRY_ENV, None)
    else:
        os.environ[REGISTRY_ENV] = registry
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(REGISTRY_ENV, None)
        else:
            os.environ[REGISTRY_ENV] = before


@dataclass(frozen=True)
class RenderedFile:
    name: str
    text: str
    in_kustomization: bool = True


def _file(name: str, obj: dict[str, Any], *, in_kustomization: bool = True, note: str = "") -> RenderedFile:
    return RenderedFile(name=name, text=HEADER + note + yamlio.dump(obj), in_kustomization=in_kustomization)


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


def render_files(catalog: Catalog | None = None, settings: RenderSettings | None = None) -> list[RenderedFile]:
    """The base's files. ``catalog`` should be the one ``settings.catalog`` names (the CLI loads it)."""
    catalog = catalog or load_catalog()
    settings = settings or RenderSettings(image_registry=os.environ.get(REGISTRY_ENV) or None)
    with _image_registry(settings.image_registry):
        return _render(catalog, settings)


def _render(catalog: Catalog, settings: RenderSettings) -> list[RenderedFile]:
    files: list[RenderedFile] = []
    seen: set[str] = set()
    for pipeline in _template_pipelines(catalog):
        name = template_name(pipeline)
        if name not in seen:
            seen.add(name)
            files.append(_file(f"workflowtemplate-{name}.yaml", workflow_template_for(pipeline, catalog).to_dict()))
    repository = ArtifactRepository()
    files += [
        _file(f"configmap-{repository.config_map}.yaml", _artifact_repositories(repository, settings.cluster)),
        _file(f"configmap-{STORE_CONFIG_MAP}.yaml", _store_config(settings.cluster), note=STORE_CONFIG_NOTE),
        *_rbac_files(),
    ]
    example = TrainingRequest.create(task_id=42, args="epochs=100,batch_size=16", model=catalog.default_model)
    files.append(_file(EXAMPLE_WORKFLOW, workflow_for(build_pipeline(example, catalog)).to_dict(),
                       in_kustomization=False))
    annotations = {f"{SETTING_PREFIX}{name}": value for name, value in settings.flags().items()}
    files.append(_file(KUSTOMIZATION, {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "metadata": {"name": "cvat-argo", "annotations": annotations},
        "resources": [f.name for f in files if f.in_kustomization],
    }))
    return files


def _metadata(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "labels": dict(APP_LABELS), **extra}


def _artifact_repositories(repository_ref: ArtifactRepository, settings: ClusterSettings) -> dict[str, Any]:
    repository = {"s3": {
        "bucket": settings.bucket,
        "endpoint": settings.s3_endpoint,
        "insecure": settings.s3_insecure,
        "region": settings.s3_region,
        "accessKeySecret": {"name": STORE_SECRET, "key": "accesskey"},
        "secretKeySecret": {"name": STORE_SECRET, "key": "secretkey"},
    }}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(repository_ref.config_map),
            "data": {repository_ref.key: yamlio.dump(repository)}}


def _store_config(settings: ClusterSettings) -> dict[str, Any]:
    scheme = "http" if settings.s3_insecure else "https"
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(STORE_CONFIG_MAP),
            "data": {"store": f"s3://{settings.bucket}", "endpoint": f"{scheme}://{settings.s3_endpoint}",
                     "region": settings.s3_region, MODEL_MIRROR_ENV.key: ""}}


STORE_CONFIG_NOTE = (
    f"# {MODEL_MIRROR_ENV.key} (optional, {MODEL_MIRROR_ENV.name}; empty or absent: checkpoints come from their\n"
    "# origin): for clusters without internet, s3://bucket/prefix/ holding the public base checkpoints under\n"
    "# <host>/<path>, e.g. s3://cvat-argo/mirror/storage.googleapis.com/tf_model_garden/...; fill it with\n"
    "# `python -m cvat_argo mirror-models --to s3://cvat-argo/mirror/` (README: Air-gapped clusters).\n"
)


def _rbac_files() -> list[RenderedFile]:
    name = "cvat-argo"
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _metadata(name),
            "rules": [{"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"],
                       "verbs": ["create", "patch"]},
                      jobset.RBAC_RULE]}  # multi-node machine types: the train step creates and watches a JobSet
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
    if out_dir.exists() and not out_dir.is_dir():
        raise CvatArgoError(f"{out_dir} is a file, not a folder: render writes a folder of YAML files")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a parent folder should be, no permission
        raise CvatArgoError(f"{out_dir}: cannot make the folder ({exc.strerror})") from None
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
