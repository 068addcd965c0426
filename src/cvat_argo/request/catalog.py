"""The catalog: built-in models and machine types, extended or overridden by a user's YAML file.

Users add base models without touching code: ``--catalog FILE`` (or ``CVAT_ARGO_CATALOG``) names a
YAML file with the same fields as the built-in ``catalog.yaml``. An entry whose name exists
overrides the fields it gives; ``extends: NAME`` starts a new entry from an existing one; anything
else must be complete. Every entry is validated the same way as the built-in ones, and errors name
the file and the entry.

:meth:`Catalog.resolve` checks a :class:`~cvat_argo.request.spec.TrainingRequest` against the catalog: it is
where "frcnn-nas-coco needs 2 GPUs" is refused, when the workflow is built rather than at run time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import CatalogError, RequestError
from ..suggest import unknown_name_message
from .machines import BUILTIN_MACHINES, MachineType
from .model_entry import ModelEntry
from .spec import Arguments, TrainingRequest, batch_split_problem

CATALOG_ENV = "CVAT_ARGO_CATALOG"
_TOP_LEVEL_KEYS = ("default_model", "models", "machines")


@dataclass(frozen=True)
class ResolvedRequest:
    """A request checked against the catalog, with the effective GPU count filled in."""

    request: TrainingRequest
    model: ModelEntry
    machine: MachineType
    arguments: Arguments
    default_model: str  # the catalog's default: what a reusable template offers when no model is given

    @property
    def num_clones(self) -> int:
        assert self.arguments.num_clones is not None
        return self.arguments.num_clones


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelEntry]
    machines: dict[str, MachineType]
    default_model: str
    sources: tuple[str, ...] = field(default=("built-in",))

    def model(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            raise CatalogError(unknown_name_message("model", name, self.models)) from None

    def machine(self, name: str) -> MachineType:
        try:
            return self.machines[name]
        except KeyError:
            raise CatalogError(unknown_name_message("machine type", name, self.machines)) from None

    def machines_with_gpus(self, at_least: int) -> list[str]:
        return sorted((m.name for m in self.machines.values() if m.gpus >= at_least),
                      key=lambda name: (self.machines[name].gpus, name))

    def resolve(self, request: TrainingRequest) -> ResolvedRequest:
        """Check the request's model, machine and arguments together; fill in num_clones."""
        model = self.model(request.model)
        machine = self.machine(request.machine)
        args = request.arguments
        problems: list[str | None] = []
        if model.min_gpus > machine.gpus:
            enough = ", ".join(self.machines_with_gpus(model.min_gpus)) or "none in this catalog"
            problems.append(
                f"model {model.name} needs at least {model.min_gpus} GPUs, but machine type {machine.name} has "
                f"{machine.gpus}; machine types with at least {model.min_gpus} GPUs: {enough}"
            )
        if args.num_clones is not None and args.num_clones > max(machine.gpus, 1):
            problems.append(
                f"num_clones={args.num_clones} is more than the {machine.gpus} GPUs of machine type {machine.name}"
                + (f": pick one of {', '.join(self.machines_with_gpus(args.num_clones))}"
                   if self.machines_with_gpus(args.num_clones) else "")
            )
        num_clones = args.num_clones or max(machine.gpus, 1)
        if not problems and model.min_gpus > num_clones:
            problems.append(f"model {model.name} needs num_clones >= {model.min_gpus} (it needs {model.min_gpus} GPUs)")
        if args.batch_size is not None:
            problems.append(batch_split_problem(args.batch_size, num_clones))
        if args.input_size is not None:
            problems.append(model.input_size_problem(args.input_size))
        problems = [problem for problem in problems if problem]
        if problems:
            raise RequestError("; ".join(problems))
        arguments = args.model_copy(update={"num_clones": num_clones})
        return ResolvedRequest(request=request, model=model, machine=machine, arguments=arguments,
                               default_model=self.default_model)

    def merged_with(self, data: Mapping[str, Any], source: str) -> Catalog:
        """A new catalog with the entries of a parsed catalog file laid over this one."""
        if not isinstance(data, Mapping):
            raise CatalogError(f"{source}: a catalog file is a mapping with 'models' and/or 'machines'")
        for key in data:
            if key not in _TOP_LEVEL_KEYS:
                raise CatalogError(f"{source}: {unknown_name_message('catalog section', str(key), _TOP_LEVEL_KEYS)}")
        models = _merge_entries(self.models, data.get("models"), ModelEntry, f"{source}: models")
        machines = _merge_entries(self.machines, data.get("machines"), MachineType, f"{source}: machines")
        default_model = data.get("default_model", self.default_model)
        if default_model not in models:
            raise CatalogError(f"{source}: default_model: {unknown_name_message('model', default_model, models)}")
        return Catalog(models=models, machines=machines, default_model=default_model,
                       sources=(*self.sources, source))


def _merge_entries(
    existing: Mapping[str, Any], entries: Any, kind: type[BaseModel], where: str
) -> dict[str, Any]:
    merged = dict(existing)
    if entries is None:
        return merged
    if isinstance(entries, Mapping):  # also accept {name: {fields}}
        entries = [{"name": name, **(fields or {})} for name, fields in entries.items()]
    if not isinstance(entries, list):
        raise CatalogError(f"{where}: expected a list of entries, got {type(entries).__name__}")
    for index, raw in enumerate(entries):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            raise CatalogError(f"{where}[{index}]: each entry is a mapping with a 'name'")
        raw = dict(raw)
        name = raw["name"]
        base_name = raw.pop("extends", None)
        if base_name is not None and base_name not in merged:
            known = unknown_name_message("entry", base_name, merged)
            raise CatalogError(f"{where}[{index}] ({name}): extends: {known}")
        base = merged.get(base_name or name)
        fields = _overlay(base.model_dump() if base is not None else {}, raw)
        for key in raw:
            if key not in kind.model_fields:
                known = unknown_name_message("field", key, kind.model_fields)
                raise CatalogError(f"{where}[{index}] ({name}): {known}")
        try:
            merged[name] = kind.model_validate(fields)
        except ValidationError as exc:
            raise CatalogError(f"{where}[{index}] ({name}): {_describe(exc)}") from None
    return merged


def _overlay(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Override fields; mappings (images, checkpoint, node selectors) merge one level deep."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping) and key not in ("backbone", "decoder"):
            result[key] = {**result[key], **value}
        else:
            result[key] = value
    return result


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "entry"
        parts.append(f"{where}: {str(error['msg']).removeprefix('Value error, ')}"
                     + (f" (got {error['input']!r})" if where != "entry" and "input" in error
                        and not isinstance(error["input"], Mapping) else ""))
    return "; ".join(parts)


def resolve_request(request: TrainingRequest | ResolvedRequest, catalog: Catalog | None = None) -> ResolvedRequest:
    """``request`` checked against ``catalog`` (default: :func:`load_catalog`); a resolved one passes through."""
    if isinstance(request, ResolvedRequest):
        return request
    return (catalog or load_catalog()).resolve(request)


def builtin_catalog() -> Catalog:
    text = resources.files(__package__).joinpath("catalog.yaml").read_text(encoding="utf-8")
    empty = Catalog(models={}, machines={m.name: m for m in BUILTIN_MACHINES}, default_model="", sources=())
    catalog = empty.merged_with(yaml.safe_load(text), "built-in catalog.yaml")
    return Catalog(models=catalog.models, machines=catalog.machines, default_model=catalog.default_model,
                   sources=("built-in",))


def load_catalog(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Catalog:
    """The built-in catalog, with ``path`` (or ``$CVAT_ARGO_CATALOG``) laid over it when given."""
    env = os.environ if env is None else env
    catalog = builtin_catalog()
    chosen = path if path is not None else env.get(CATALOG_ENV) or None
    if chosen is None:
        return catalog
    file = Path(chosen)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        origin = "" if path is not None else f" (from ${CATALOG_ENV})"
        raise CatalogError(f"catalog file {file}{origin} does not exist") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"catalog file {file} is not valid YAML: {exc}") from None
    return catalog.merged_with(data or {}, str(file))


def entry_from_parameters(model: str, model_spec: str, catalog: Catalog | None = None) -> ModelEntry:
    """The model entry a step was given: the ``model-spec`` JSON when set, else the catalog entry by name.

    The pipeline passes the entry as JSON so that a model from a user's catalog file runs in the
    cluster exactly as validated where it was submitted.
    """
    if model_spec.strip():
        try:
            entry = ModelEntry.model_validate_json(model_spec)
        except ValidationError as exc:
            raise CatalogError(f"--model-spec is not a valid catalog entry: {_describe(exc)}") from None
        if model and entry.name != model:
            raise CatalogError(f"--model {model} and --model-spec (for {entry.name}) disagree")
        return entry
    if not model:
        raise CatalogError("give --model (a catalog name) or --model-spec")
    return (catalog or load_catalog()).model(model)
