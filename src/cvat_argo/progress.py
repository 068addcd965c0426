"""Progress that reads well in a terminal, in a pod's log, and to whatever runs the step.

Two audiences, one call. For the log: in a terminal a tqdm bar; in a log (Argo, CI, the local
engine's log files) a redrawn bar becomes one endless line, so there a plain line every ``interval``
seconds instead: ``writing TFRecords: 1200/2000 (60%), 850/s, 1.4 s left``.

For the engine: structured progress events, so a person watching sees counts, rates and metrics
instead of the tail of a log full of TensorFlow warnings. A step calls :func:`emit` (every
:func:`progress_bar` and :func:`track` does it for it); nothing is written unless the engine asked:

* ``CVAT_ARGO_EVENTS`` names an events file (the local engine: ``<run>/<stage>/events.jsonl``): one
  JSON object per line, appended with one ``write``, ``{"t": unix time, "stage", "phase", "done",
  "total" (or null), "unit", "metrics": {name: number}}``. A file beside ``log.txt`` rather than a
  marker in stdout, because TensorFlow's C++ logging shares the stage's stdout/stderr and could cut
  a line in two. :class:`EventTail` reads only whole lines, so a reader never sees half an event.
* ``ARGO_PROGRESS_FILE`` (set by Argo in the main container): ``N/M`` of the newest event with a
  total, replaced atomically; Argo's executor reads it and shows it as the step's ``progress``.

Events are throttled to one a second per step, except a new phase, the last item of a phase, and
``force=True`` (an evaluation's metrics), which are always written. Progress never fails a step: a
file that cannot be written is reported once on stderr and then left alone.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: Set by whatever runs a step: the events file to append to, and the stage name the events carry.
EVENTS_ENV = "CVAT_ARGO_EVENTS"
STAGE_ENV = "CVAT_ARGO_STAGE"
#: Argo's own variable: the file its executor reads ``N/M`` from (the step's progress in the UI).
ARGO_PROGRESS_ENV = "ARGO_PROGRESS_FILE"
#: At most one event a second (bar updates come per image or per chunk; the file stays small).
EVENT_INTERVAL = 1.0


@dataclass(frozen=True)
class ProgressEvent:
    """Where a stage is: ``done`` of ``total`` ``unit`` in ``phase``, and the newest metrics it knows."""

    stage: str
    phase: str
    done: float
    total: float | None = None
    unit: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    t: float = 0.0  # unix time when it was emitted: readers compute rates from it, not from when they read

    def to_json(self) -> str:
        return json.dumps({"t": round(self.t, 3), "stage": self.stage, "phase": self.phase, "done": self.done,
                           "total": self.total, "unit": self.unit, "metrics": dict(self.metrics)})

    @classmethod
    def from_json(cls, line: str) -> ProgressEvent | None:
        """The event on one line; None for a line that is not one (progress is advisory, never fatal)."""
        try:
            data = json.loads(line)
            total = data.get("total")
            return cls(stage=str(data["stage"]), phase=str(data["phase"]), done=float(data["done"]),
                       total=None if total is None else float(total), unit=str(data.get("unit", "")),
                       metrics={str(k): float(v) for k, v in (data.get("metrics") or {}).items()},
                       t=float(data.get("t", 0.0)))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


class Emitter:
    """Writes one step's events to the events file and Argo's progress file, throttled."""

    def __init__(self, stage: str, events: Path | None = None, argo: Path | None = None,
                 interval: float = EVENT_INTERVAL):
        self.stage, self.events, self.argo, self.interval = stage, events, argo, interval
        self._lock = threading.Lock()
        self._phase: str | None = None
        self._last = -math.inf

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Emitter:
        env = os.environ if env is None else env
        stage = env.get(STAGE_ENV) or Path(sys.argv[0]).stem or "step"
        events, argo = env.get(EVENTS_ENV), env.get(ARGO_PROGRESS_ENV)
        return cls(stage, Path(events) if events else None, Path(argo) if argo else None)

    @property
    def active(self) -> bool:
        return self.events is not None or self.argo is not None

    def emit(self, phase: str, done: float, total: float | None = None, unit: str = "",
             metrics: Mapping[str, float] | None = None, force: bool = False) -> None:
        if not self.active:
            return
        now = time.time()
        with self._lock:
            finished = total is not None and done >= total
            if not (force or finished or phase != self._phase or now - self._last >= self.interval):
                return
            self._phase, self._last = phase, now
            event = ProgressEvent(self.stage, phase, done, total, unit,
                                  {k: float(v) for k, v in (metrics or {}).items() if _finite(v)}, now)
            if self.events is not None:
                self.events = self._write(self.events, self._append, event)
            if self.argo is not None and total:
                self.argo = self._write(self.argo, self._argo_progress, event)

    @staticmethod
    def _append(path: Path, event: ProgressEvent) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(event.to_json() + "\n")  # one write: a reader sees the whole line or none of it

    @staticmethod
    def _argo_progress(path: Path, event: ProgressEvent) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(f"{int(min(event.done, event.total or 0))}/{int(event.total or 0)}\n", encoding="utf-8")
        os.replace(partial, path)  # Argo's executor never reads a half-written N/M

    @staticmethod
    def _write(path: Path, write: Any, event: ProgressEvent) -> Path | None:
        try:
            write(path, event)
            return path
        except OSError as exc:
            print(f"progress: cannot write {path} ({exc.strerror or exc}); no more progress there",
                  file=sys.stderr, flush=True)
            return None


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


_emitter: tuple[tuple[str | None, ...], Emitter] | None = None


def emitter() -> Emitter:
    """This process's emitter, made from the environment (again when the environment changed)."""
    global _emitter
    key = tuple(os.environ.get(name) for name in (STAGE_ENV, EVENTS_ENV, ARGO_PROGRESS_ENV))
    if _emitter is None or _emitter[0] != key:
        _emitter = (key, Emitter.from_env())
    return _emitter[1]


def emit(phase: str, done: float, total: float | None = None, unit: str = "", *, force: bool = False,
         **metrics: float) -> None:
    """Report progress to whatever runs this step (nothing when nobody asked); see the module docstring."""
    emitter().emit(phase, done, total, unit, metrics, force)


class EventTail:
    """The events a file gained since the last read, whole lines only (the writer may be mid-line)."""

    def __init__(self, path: Path, from_start: bool = False):
        self.path = path
        self._offset = 0 if from_start or not path.exists() else path.stat().st_size

    def read(self) -> list[ProgressEvent]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        lines = complete.decode("utf-8", errors="replace").splitlines()
        return [event for event in map(ProgressEvent.from_json, lines) if event is not None]


class _LogProgress:
    def __init__(self, desc: str, total: int | None, unit: str, interval: float):
        self.desc, self.total, self.unit, self.interval = desc, total, unit, interval
        self.count = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def _amount(self, value: float) -> str:
        return f"{value / 2**20:.1f} MB" if self.unit == "B" else f"{value:.0f} {self.unit}"

    def _line(self, now: float) -> None:
        rate = self.count / max(now - self.start, 1e-9)
        if self.total:
            left = (self.total - self.count) / rate if rate else 0.0
            share = 100 * self.count // self.total
            text = (f"{self.desc}: {self._amount(self.count)} of {self._amount(self.total)} ({share}%), "
                    f"{self._amount(rate)}/s, {left:.0f} s left")
        else:
            text = f"{self.desc}: {self._amount(self.count)}, {self._amount(rate)}/s"
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        self._line(time.monotonic())

    def __enter__(self) -> _LogProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class _Silent:
    def update(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None


class _Reported:
    """A bar that also emits each update as a progress event (phase = the bar's description)."""

    def __init__(self, bar: Any, desc: str, total: int | None, unit: str):
        self.bar, self.desc, self.total, self.unit = bar, desc, total, unit
        self.count = 0
        emit(desc, 0, total, unit)

    def update(self, n: int = 1) -> None:
        self.count += n
        self.bar.update(n)
        emit(self.desc, self.count, self.total, self.unit)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> _Reported:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def progress_bar(desc: str, total: int | None = None, unit: str = "img", interval: float = 10.0,
                 enabled: bool = True):
    """An object with update(n) and close(), usable as a context manager; ``unit="B"`` counts bytes.

    Each update is also a progress event (:func:`emit`) for whatever runs the step.
    """
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        scale = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
        return _Reported(tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, **scale), desc, total, unit)
    return _Reported(_LogProgress(desc, total, unit, interval), desc, total, unit)


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "img") -> Iterator[T]:
    bar = progress_bar(desc, total if total is not None else _length(items), unit)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


def _length(items: Iterable[object]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None
