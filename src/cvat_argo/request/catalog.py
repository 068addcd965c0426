"""The catalog: built-in models and machine types, extended or overridden by a user's YAML file.

Users add base models without touching code: ``--catalog FILE`` (or ``CVAT_ARGO_CATALOG``) names a
YAML file with the same fields as the built-in ``catalog.yaml``. An entry whose name exists
overrides the fields it gives; ``extends: NAME`` starts a new entry from an existing one; anything
else must be complete. Every entry is validated the same way as the built-in ones, and errors name
the file and the entry.

:meth:`Catalog.resolve` checks a :class:`~cvat_argo.request.spec.TrainingRequest` against the catalog: it is
where "frcnn-nas-coco needs 2 GPUs" is refused, when the workflow is built rather than at run time.

Every catalog YAML, built-in or a user's, is read by :func:`load_catalog_yaml`, which works to a budget: a
file over :data:`MAX_CATALOG_BYTES` is refused before it is parsed, and while the YAML is composed the
nodes it would expand to (aliases counted at the size of what they repeat), the aliases and the nesting
depth are counted and the file is refused as soon as one exceeds its bound, so an alias bomb costs
milliseconds instead of gigabytes. The free-form entry fields (``backbone``, ``decoder``) are bounded
again by :class:`~cvat_argo.request.model_entry.ModelEntry` itself, and checked against the Model
Garden config classes they feed by reading Model Garden's source (:func:`model_garden_problem`), which
keeps ``plan`` free of TensorFlow.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import CatalogError, RequestError
from ..suggest import unknown_name_message
from .bounded_yaml import load_bounded_yaml, short
from .machines import BUILTIN_MACHINES, MachineType
from .model_entry import ModelEntry
from .spec import Arguments, TrainingRequest, batch_split_problem

CATALOG_ENV = "CVAT_ARGO_CATALOG"
_TOP_LEVEL_KEYS = ("default_model", "models", "machines")

# Budgets of the catalog loader. The built-in catalog is ~7 kB, ~400 nodes, no aliases, 6 levels deep.
MAX_CATALOG_BYTES = 1 << 20  # a larger file is refused unread
MAX_YAML_NODES = 20_000  # nodes after alias expansion: what walking the loaded data would visit
MAX_YAML_ALIASES = 200  # alias uses (``*name``) in one file
MAX_YAML_DEPTH = 32  # nesting of mappings and sequences


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
            problems.append(batch_split_problem(args.batch_size, num_clones, machine.nodes))
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
        if not isinstance(default_model, str):
            raise CatalogError(f"{source}: default_model: expected a model name, got {_short_repr(default_model)}")
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
        for name, fields in entries.items():
            if fields is not None and not isinstance(fields, Mapping):
                raise CatalogError(f"{where}.{short(name)}: expected a mapping of fields, got {type(fields).__name__}")
        entries = [{"name": name, **(fields or {})} for name, fields in entries.items()]
    if not isinstance(entries, list):
        raise CatalogError(f"{where}: expected a list of entries, got {type(entries).__name__}")
    for index, raw in enumerate(entries):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            raise CatalogError(f"{where}[{index}]: each entry is a mapping with a 'name'")
        raw = dict(raw)
        name = short(raw["name"])
        base_name = raw.pop("extends", None)
        if base_name is not None and not isinstance(base_name, str):
            raise CatalogError(f"{where}[{index}] ({name}): extends: expected an entry name, got "
                               f"{_short_repr(base_name)}")
        if base_name is not None and base_name not in merged:
            known = unknown_name_message("entry", base_name, merged)
            raise CatalogError(f"{where}[{index}] ({name}): extends: {known}")
        base = merged.get(base_name or raw["name"])
        fields = _overlay(base.model_dump() if base is not None else {}, raw)
        for key in raw:
            if key not in kind.model_fields:
                known = unknown_name_message("field", short(key), kind.model_fields)
                raise CatalogError(f"{where}[{index}] ({name}): {known}")
        try:
            entry = kind.model_validate(fields)
        except ValidationError as exc:
            raise CatalogError(f"{where}[{index}] ({name}): {_describe(exc)}") from None
        problem = model_garden_problem(entry) if isinstance(entry, ModelEntry) else None
        if problem:
            raise CatalogError(f"{where}[{index}] ({name}): {problem}")
        merged[raw["name"]] = entry
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
                     + (f" (got {_short_repr(error['input'])})" if where != "entry" and "input" in error
                        and not isinstance(error["input"], Mapping) else ""))
    return "; ".join(parts)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 60, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def _short_repr(value: Any) -> str:
    """A repr of user data that stays short whatever the data (huge, deeply nested or shared by aliases)."""
    return _REPR.repr(value)


def resolve_request(request: TrainingRequest | ResolvedRequest, catalog: Catalog | None = None) -> ResolvedRequest:
    """``request`` checked against ``catalog`` (default: :func:`load_catalog`); a resolved one passes through."""
    if isinstance(request, ResolvedRequest):
        return request
    return (catalog or load_catalog()).resolve(request)


def builtin_catalog() -> Catalog:
    data = resources.files(__package__).joinpath("catalog.yaml").read_bytes()
    empty = Catalog(models={}, machines={m.name: m for m in BUILTIN_MACHINES}, default_model="", sources=())
    catalog = empty.merged_with(load_catalog_yaml(data, "built-in catalog.yaml") or {}, "built-in catalog.yaml")
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
    origin = "" if path is not None else f" (from ${CATALOG_ENV})"
    data = load_catalog_yaml(_read_catalog_file(file, origin), f"catalog file {file}{origin}")
    return catalog.merged_with(data or {}, str(file))


def _read_catalog_file(file: Path, origin: str = "") -> bytes:
    """The bytes of a catalog file; one that is missing, unreadable or over the size budget is refused."""
    try:
        with file.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > MAX_CATALOG_BYTES:
                raise CatalogError(f"catalog file {file}{origin} is {size} bytes, over the {MAX_CATALOG_BYTES} bytes "
                                   "a catalog may have; refused unread")
            data = stream.read(MAX_CATALOG_BYTES + 1)  # a pipe or a growing file says no size up front
    except FileNotFoundError:
        raise CatalogError(f"catalog file {file}{origin} does not exist") from None
    except OSError as exc:
        raise CatalogError(f"catalog file {file}{origin} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_CATALOG_BYTES:
        raise CatalogError(f"catalog file {file}{origin} is over the {MAX_CATALOG_BYTES} bytes a catalog may have; "
                           "refused")
    return data


def load_catalog_yaml(data: bytes | str, source: str) -> Any:
    """Parse one catalog YAML document within the loader's budgets; every catalog read goes through here.

    ``source`` names the file in errors ("built-in catalog.yaml", "catalog file ./mine.yaml").
    """
    return load_bounded_yaml(data, source, error=CatalogError, what="a catalog", max_bytes=MAX_CATALOG_BYTES,
                             max_nodes=MAX_YAML_NODES, max_aliases=MAX_YAML_ALIASES, max_depth=MAX_YAML_DEPTH)


# ------------------------------------------------------------------------ the Model Garden check


@dataclass(frozen=True)
class _GardenClass:
    """A Model Garden config dataclass as read from its source: field -> nested class name or None."""

    name: str
    fields: dict[str, str | None]
    scalar: frozenset[str]  # fields annotated int, float, str or bool: a mapping there is an error
    open: bool  # a base class we could not read: unknown keys are not reported


_GARDEN_FILES = {"backbone": ("vision/configs/backbones.py", "Backbone"),
                 "decoder": ("vision/configs/decoders.py", "Decoder")}


@functools.cache
def _garden_classes(kind: str) -> tuple[str, dict[str, _GardenClass]] | None:
    """Model Garden's config classes for ``kind``, read from its source without importing it (no TensorFlow).

    None when ``tf-models-official`` is not installed here or its source is not laid out as expected:
    then the check is left to the train step, which builds the real config strictly.
    """
    try:
        spec = importlib.util.find_spec("official")
        roots = list(spec.submodule_search_locations or []) if spec else []
    except (ImportError, ValueError):
        return None
    relative, top = _GARDEN_FILES[kind]
    for root in roots:
        file = Path(root, relative)
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
        except (OSError, SyntaxError, ValueError):
            continue
        classes = _read_config_classes(tree)
        if top in classes and "type" in classes[top].fields:
            return top, classes
    return None


def _read_config_classes(tree: ast.Module) -> dict[str, _GardenClass]:
    defs = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    classes: dict[str, _GardenClass] = {}

    def read(name: str) -> _GardenClass:
        if name in classes:
            return classes[name]
        node = defs[name]
        fields: dict[str, str | None] = {}
        scalar: set[str] = set()
        is_open = False
        for base in node.bases:
            base_name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
            if base_name in defs and base_name != name:
                parent = read(base_name)
                fields.update(parent.fields)
                scalar |= parent.scalar
                is_open = is_open or parent.open
            elif base_name not in ("Config", "OneOfConfig"):
                is_open = True
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                annotation = item.annotation
                nested = annotation.id if isinstance(annotation, ast.Name) and annotation.id in defs else None
                fields[item.target.id] = nested
                scalar.discard(item.target.id)
                if isinstance(annotation, ast.Name) and annotation.id in ("int", "float", "str", "bool"):
                    scalar.add(item.target.id)
        classes[name] = _GardenClass(name, fields, frozenset(scalar), is_open)
        return classes[name]

    for name in defs:
        read(name)
    return classes


def model_garden_problem(entry: ModelEntry) -> str | None:
    """What in the entry's ``backbone`` or ``decoder`` Model Garden's config would refuse, or None.

    The same one-of configs (``official.vision.configs.backbones.Backbone``, ``...decoders.Decoder``)
    that :func:`cvat_argo.training.experiment.build_experiment` overrides strictly are read from
    Model Garden's source: ``type`` must name one of their branches, every key must be a field of the
    class it sets, and a mapping cannot go where a number or a string is expected. Values are not
    checked further (the train step does that when it builds the real config).
    """
    for kind, values in (("backbone", entry.backbone), ("decoder", entry.decoder)):
        schema = _garden_classes(kind)
        if schema is None:
            continue
        top, classes = schema
        branches = sorted(k for k in classes[top].fields if k != "type")
        chosen = values.get("type")
        if chosen not in branches:
            return f"{kind}.type: {unknown_name_message(f'Model Garden {kind} type', short(chosen), branches)}"
        problem = _garden_fields(values, classes[top], classes, kind)
        if problem:
            return problem
    return None


def _garden_fields(values: Mapping[str, Any], config: _GardenClass, classes: dict[str, _GardenClass],
                   where: str) -> str | None:
    for key, value in values.items():
        if key not in config.fields:
            if config.open:
                continue
            return (f"{where}: {unknown_name_message('field', short(key), config.fields)} "
                    f"(of Model Garden's {config.name} config)")
        nested = config.fields[key]
        if nested is not None:
            if not isinstance(value, Mapping):
                return (f"{where}.{key}: expected a mapping (Model Garden's {nested} config), "
                        f"got {_short_repr(value)}")
            problem = _garden_fields(value, classes[nested], classes, f"{where}.{key}")
            if problem:
                return problem
        elif key in config.scalar and isinstance(value, (Mapping, list)):
            return f"{where}.{key}: expected a single value, got {type(value).__name__}"
    return None


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
