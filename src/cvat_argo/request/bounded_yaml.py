"""YAML from users, read to a budget: an alias bomb costs milliseconds instead of gigabytes.

Catalog files and ``--args-file`` are YAML a person wrote, so a few nested aliases (``&a [*b, *b]``)
could expand to billions of nodes in PyYAML's safe loader. :func:`load_bounded_yaml` refuses a file
over ``max_bytes`` before parsing it, and while the YAML is composed counts the nodes it would expand
to (an alias at the size of what it repeats), the aliases and the nesting depth, refusing the file as
soon as one exceeds its bound, before anything is constructed. Errors are one line in the caller's
error type, naming the file and the YAML path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

import yaml

from ..errors import CvatArgoError


@dataclass(frozen=True)
class Budget:
    max_nodes: int  # nodes after alias expansion: what walking the loaded data would visit
    max_aliases: int  # alias uses (``*name``) in one document
    max_depth: int  # nesting of mappings and sequences
    what: str  # what the document is, for messages ("a catalog")


def short(name: Any, limit: int = 60) -> str:
    """A user-given name for a message, cut to ``limit`` characters."""
    text = name if isinstance(name, str) else repr(name)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_bounded_yaml(data: bytes | str, source: str, *, error: type[CvatArgoError], what: str, max_bytes: int,
                      max_nodes: int, max_aliases: int, max_depth: int) -> Any:
    """One YAML document within the budgets, or ``error`` in one line naming ``source``."""
    if len(data) > max_bytes:
        raise error(f"{source} is over the {max_bytes} bytes {what} may have; refused")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{source} is not UTF-8 text (byte {exc.start}); {what} is a YAML file") from None
    loader = _BoundedLoader(data, source, Budget(max_nodes, max_aliases, max_depth, what))
    try:
        return loader.get_single_data()
    except _OverBudget as exc:
        raise error(f"{source}: {exc.where or 'document'}: refused: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise error(f"{source} is not valid YAML: {yaml_problem(exc)}") from None
    finally:
        loader.dispose()


class _OverBudget(Exception):
    """The YAML being composed exceeds a budget of :class:`_BoundedLoader`."""

    def __init__(self, problem: str, where: str):
        super().__init__(problem)
        self.problem, self.where = problem, where


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, composing to a budget of nodes, aliases and depth.

    Each node is charged once when composed; an alias is charged the size of everything under the
    node it names (its expanded size, known because that node was composed first), so the running
    total is the size the data would have if every alias were written out. The total is checked at
    every node, before anything is constructed, so nothing ever expands past the budget.
    """

    def __init__(self, stream: bytes | str, name: str, budget: Budget):
        super().__init__(stream)
        self.name = name  # shown in the marks of syntax errors
        self.budget = budget
        self._nodes = 0
        self._aliases = 0
        self._sizes: dict[str, int] = {}  # anchor -> expanded size of its node
        self._path: list[tuple[Any, str | None]] = []  # (parent node, label) of the nodes being composed
        self._here: tuple[Any, str | None] = (None, None)  # the node compose_node was called for

    def compose_node(self, parent: Any, index: Any) -> Any:
        label = (f"[{index}]" if isinstance(index, int)
                 else short(index.value, 40) if isinstance(index, yaml.ScalarNode) else None)
        self._here = (parent, label)
        if len(self._path) >= self.budget.max_depth:
            self._refuse(f"nested deeper than {self.budget.max_depth} levels")
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            self._aliases += 1
            if self._aliases > self.budget.max_aliases:
                self._refuse(f"more than {self.budget.max_aliases} YAML aliases (*name); {self.budget.what} needs "
                             "a few at most")
            if anchor in self.anchors:  # an unknown anchor is PyYAML's own error, below
                size = self._sizes.get(anchor)
                if size is None:
                    self._refuse(f"alias *{short(anchor, 40)} repeats a node that contains it (a cycle)")
                self._charge(size)
            return super().compose_node(parent, index)
        anchor = self.peek_event().anchor
        before = self._nodes
        self._charge(1)
        self._path.append((parent, label))
        try:
            node = super().compose_node(parent, index)
        finally:
            self._path.pop()
        if anchor is not None:
            self._sizes[anchor] = self._nodes - before
        return node

    def _charge(self, nodes: int) -> None:
        self._nodes += nodes
        if self._nodes > self.budget.max_nodes:
            self._refuse(f"the YAML expands to more than {self.budget.max_nodes} nodes"
                         + (f" once its {self._aliases} aliases are written out (an alias bomb?)" if self._aliases
                            else "") + f"; {self.budget.what} has a few hundred")

    def _refuse(self, problem: str) -> NoReturn:
        raise _OverBudget(problem, self._where())

    def _where(self) -> str:
        """The YAML path being composed, with entry names: ``models[0] (my-model).backbone.c``."""
        parts = []
        stack = [*self._path, self._here]
        for position, (_parent, part) in enumerate(stack):
            if part is None:
                continue
            # The node this label names is the parent of the next node on the path.
            name = _composed_name(stack[position + 1][0]) if position + 1 < len(stack) else None
            parts.append(part + (f" ({name})" if name else ""))
        return ".".join(parts).replace(".[", "[")


def _composed_name(node: Any) -> str | None:
    """The ``name`` scalar a mapping being composed already has, for naming the entry in an error."""
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "name" and isinstance(value, yaml.ScalarNode):
            return short(value.value, 40)
    return None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: the problem and where it is."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return " ".join(str(exc).split())
    problem = " ".join(p for p in (exc.context, exc.problem) if p)
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{' '.join(problem.split())}{where}"
