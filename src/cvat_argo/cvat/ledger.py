"""The upload ledger: which machine shapes in a CVAT task are ours, so a later run never undoes a review.

CVAT cannot tell our shapes from another tool's (both are ``source="auto"``), and a shape moved or
deleted through its API leaves no trace. Guessing "ours" by position re-adds what a reviewer deleted.
So each upload records, per frame, the shapes it created (label, box, the server's shape id when the
server returns it) and the run that made them; :mod:`cvat_argo.cvat.upload` reads the record before
it plans and writes it after every request the server accepted, so an interrupted upload leaves a
ledger that lists exactly what is in the task.

Where a ledger lives (pre-annotate's ``--ledger LOCATION``):

- a ``LOCATION`` ending in ``.json`` is the ledger itself: a key in the store named by
  ``CVAT_ARGO_STORE`` when one is set, else a local file;
- any other ``LOCATION`` is a ledgers root in the store (the pipeline passes
  ``<output-prefix>/ledgers``, :func:`cvat_argo.engines.artifacts.ledgers_root`); the task's ledger is
  ``<LOCATION>/<host>/task-<id>.json``. Without a store, an absolute ``LOCATION`` is a local folder
  (the local engine passes ``<runs folder>/ledgers``); otherwise there is none, and the upload is
  conservative.

A missing ledger is an empty one. A ledger that cannot be read, or that belongs to another task,
stops the upload before any change: replacing it would forget what is ours.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from ..engines import artifacts
from ..errors import DatasetError
from ..storage.store import Store, store_from_env

KIND = "cvat-argo upload ledger"
VERSION = 1

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class LedgerShape:
    """One shape an upload created: its label, its box as the server keeps it, and its id there."""

    label: str
    box: Box
    id: int | None = None


@dataclass(frozen=True)
class LedgerFrame:
    run: str  # the run that created the frame's shapes
    shapes: tuple[LedgerShape, ...]


class LedgerPlace(Protocol):
    """Where one ledger is kept: read its text (None when there is none yet), replace it atomically."""

    where: str

    def read(self) -> str | None: ...

    def write(self, text: str) -> None: ...


@dataclass(frozen=True)
class FileLedger:
    path: Path

    @property
    def where(self) -> str:
        return str(self.path)

    def read(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"upload ledger {self.path}: unreadable ({exc})") from None

    def write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        artifacts.write_text(self.path, text)


@dataclass(frozen=True)
class StoreLedger:
    store: Store
    key: str

    @property
    def where(self) -> str:
        return self.store.uri(self.key)

    def read(self) -> str | None:
        if not self.store.exists(self.key):
            return None
        with tempfile.TemporaryDirectory(prefix="ledger-") as work:
            local = self.store.get_file(self.key, Path(work) / "ledger.json")
            try:
                return local.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"upload ledger {self.where}: unreadable ({exc})") from None

    def write(self, text: str) -> None:
        with tempfile.TemporaryDirectory(prefix="ledger-") as work:
            local = Path(work) / "ledger.json"
            local.write_text(text, encoding="utf-8")
            self.store.put_file(local, self.key, overwrite=True)  # one object, replaced whole


@dataclass
class Ledger:
    """One CVAT task's ledger: the frames our uploads created shapes on, read once and saved after each change."""

    place: LedgerPlace
    host: str
    task_id: int
    frames: dict[int, LedgerFrame] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return self.place.where

    def created(self, frame: int, run: str, shapes: Iterable[LedgerShape]) -> None:
        """Record shapes the server accepted on ``frame`` (added to what the frame already lists)."""
        before = self.frames[frame].shapes if frame in self.frames else ()
        self.frames[frame] = LedgerFrame(run, (*before, *shapes))

    def deleted(self, frames: Iterable[int]) -> None:
        """Forget frames whose shapes of ours the server deleted: nothing of ours is on them now."""
        for frame in frames:
            self.frames.pop(frame, None)

    def save(self) -> None:
        self.place.write(json.dumps(self.to_json(), indent=1) + "\n")

    def to_json(self) -> dict[str, Any]:
        return {"kind": KIND, "version": VERSION, "host": _address(self.host), "task_id": self.task_id,
                "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "frames": {str(frame): {"run": entry.run, "shapes": [
                    {"label": s.label, "box": list(s.box), **({"id": s.id} if s.id is not None else {})}
                    for s in entry.shapes]} for frame, entry in sorted(self.frames.items())}}

    @classmethod
    def load(cls, place: LedgerPlace, host: str, task_id: int) -> Ledger:
        """The ledger at ``place``, or an empty one when there is none yet; refuses a foreign or broken one."""
        text = place.read()
        if text is None:
            return cls(place, host, int(task_id))
        try:
            document = json.loads(text)
            if not isinstance(document, dict) or document.get("kind") != KIND:
                raise ValueError(f"not a {KIND}")
            if document.get("version") != VERSION:
                raise ValueError(f"version {document.get('version')!r}, this cvat-argo reads {VERSION}")
            frames = _frames(document["frames"])
            owner = (artifacts.host_folder(str(document["host"])), int(document["task_id"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"upload ledger {place.where} cannot be read ({exc}): nothing was uploaded; fix it, "
                               "or remove it (then frames with machine shapes are left alone)") from None
        if owner != (artifacts.host_folder(host), int(task_id)):
            raise DatasetError(f"upload ledger {place.where} belongs to task {owner[1]} at {owner[0]}, not task "
                               f"{task_id} at {artifacts.host_folder(host)}: give this task's ledger; nothing was "
                               "uploaded")
        return cls(place, host, int(task_id), frames)


def _address(host: str) -> str:
    """The server's address as the ledger shows it: any ``user:password@`` left out."""
    url = urlsplit(host)
    return urlunsplit(url._replace(netloc=url.netloc.rpartition("@")[2])) if url.netloc else host


def _frames(raw: Mapping[str, Any]) -> dict[int, LedgerFrame]:
    frames = {}
    for frame, entry in raw.items():
        shapes = []
        for shape in entry["shapes"]:
            box = tuple(float(v) for v in shape["box"])
            if len(box) != 4:
                raise ValueError(f"frame {frame}: a box has {len(box)} numbers, not 4")
            shape_id = shape.get("id")
            shapes.append(LedgerShape(str(shape["label"]), box, int(shape_id) if shape_id is not None else None))
        frames[int(frame)] = LedgerFrame(str(entry["run"]), tuple(shapes))
    return frames


def open_ledger(location: str | None, host: str, task_id: int,
                env: Mapping[str, str] | None = None) -> tuple[Ledger | None, str]:
    """The task's ledger for ``--ledger location`` (see the module), read now, and a note on where it is."""
    if not location:
        return None, "no ledger (give --ledger): frames with machine shapes are left alone"
    store = store_from_env(env)
    if location.endswith(".json"):
        place: LedgerPlace = StoreLedger(store, location) if store is not None else FileLedger(Path(location))
    elif store is not None:
        place = StoreLedger(store, artifacts.ledger_in(location, host, task_id))
    elif Path(location).is_absolute():  # the local engine's runs folder: ledgers beside the runs
        place = FileLedger(Path(location) / artifacts.ledger_in(".", host, task_id))
    else:
        return None, (f"no ledger: --ledger {location} names a ledgers root in the store and CVAT_ARGO_STORE is not "
                      "set (give a .json file to keep one here): frames with machine shapes are left alone")
    return Ledger.load(place, host, task_id), f"ledger {place.where}"
