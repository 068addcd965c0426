"""Which task labels train, under which names and ids.

The label map is the CVAT task's labels in their order, ids 1..N. ``--labels`` keeps a subset and
``--rename a=b`` renames a label or merges it into another; ids follow the resulting order, so the
model's class ids always map back to CVAT label names through ``labels.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import DatasetError
from ..suggest import unknown_name_message


class LabelMapping:
    def __init__(self, task_labels: Sequence[str], keep: Sequence[str] | None = None,
                 rename: Sequence[str] = ()):
        if not task_labels:
            raise DatasetError("the task defines no labels")
        renames: dict[str, str] = {}
        for item in rename:
            old, sep, new = item.partition("=")
            old, new = old.strip(), new.strip()
            if not sep or not old or not new:
                raise DatasetError(f"--rename {item!r} is not OLD=NEW")
            if old not in task_labels:
                raise DatasetError(f"--rename {item!r}: {unknown_name_message('label', old, task_labels)}")
            renames[old] = new
        renamed = [renames.get(name, name) for name in task_labels]
        if keep:
            for name in keep:
                if name not in renamed:
                    raise DatasetError(f"--labels: {unknown_name_message('label', name, dict.fromkeys(renamed))}")
        self.names: tuple[str, ...] = tuple(
            dict.fromkeys(name for name in renamed if not keep or name in keep)
        )
        self._ids = {name: index + 1 for index, name in enumerate(self.names)}
        self._task_to_name = {old: new for old, new in zip(task_labels, renamed, strict=True)}

    def id_of(self, task_label: str) -> int | None:
        """Class id (1-based) of a task label; None when it is not trained."""
        name = self._task_to_name.get(task_label)
        return None if name is None else self._ids.get(name)

    def is_task_label(self, task_label: str) -> bool:
        return task_label in self._task_to_name

    def name_of(self, class_id: int) -> str:
        return self.names[class_id - 1]
