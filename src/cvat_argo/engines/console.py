"""What a person sees while the local engine runs: one progress line per running stage, never log tails.

Each stage reports structured progress events (:mod:`cvat_argo.progress`) to ``events.jsonl`` in its
folder; its raw output (TensorFlow's warnings included) goes to ``log.txt`` only. The
:class:`Reporter` reads the events and shows, per running stage::

    train           02:41 ━━━━━━━━━━╸━━━━━━━━━ step 240/504  2.6 steps/s  ETA 1:32  loss 0.41  AP50 0.88

In a terminal that is a live ``rich`` bar per stage, with the engine's own messages (stage started,
finished, retried) printed above the bars. Elsewhere (a pipe, CI, a notebook's captured stderr) a
redrawn bar is noise, so it prints one plain line per stage when its phase changes and every
``heartbeat`` seconds otherwise. Rates and ETAs come from the events' own time stamps over the last
minute of the current phase, so a slow first step (tracing) or an evaluation pause fades out.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from ..progress import EventTail, ProgressEvent

#: The window rates are measured over (seconds of event time).
RATE_WINDOW = 60.0
#: A phase change prints a plain line at once, but not more often than this per stage.
MIN_PLAIN_GAP = 2.0
#: The bar's width range, and the room kept for name, clock and words (``step 240/504  2.6 steps/s ...``).
MIN_BAR_WIDTH, MAX_BAR_WIDTH, WORDS_WIDTH = 8, 30, 90


def clock(seconds: float) -> str:
    """``1:32`` or ``1:02:03``: how people read a duration or an ETA."""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _amount(value: float, unit: str) -> str:
    return f"{value / 2**20:.1f}" if unit == "B" else f"{value:.0f}"


def _unit_name(unit: str) -> str:
    return {"B": "MB", "step": "steps", "shape": "shapes", "phase": "phases"}.get(unit, unit)


class StageView:
    """One running stage as the events describe it: where it is, how fast it goes, what it measured."""

    def __init__(self, name: str, started: float):
        self.name, self.started = name, started
        self.event: ProgressEvent | None = None
        self.metrics: dict[str, float] = {}  # newest value of each: AP50 stays shown between evaluations
        self._samples: dict[str, deque[tuple[float, float]]] = {}

    def feed(self, events: Iterable[ProgressEvent]) -> bool:
        """Take new events; True when the phase changed (a moment worth a plain line)."""
        changed = False
        for event in events:
            changed |= self.event is None or event.phase != self.event.phase
            self.event = event
            self.metrics.update(event.metrics)
            samples = self._samples.setdefault(event.phase, deque())
            samples.append((event.t, event.done))
            while len(samples) > 2 and event.t - samples[0][0] > RATE_WINDOW:
                samples.popleft()
        return changed

    def rate(self) -> float | None:
        """Units per second in the current phase, over the last minute; None until it can be measured."""
        if self.event is None:
            return None
        samples = self._samples.get(self.event.phase, ())
        if len(samples) < 2:
            return None
        (t0, d0), (t1, d1) = samples[0], samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 and d1 > d0 else None

    def eta(self) -> float | None:
        rate, event = self.rate(), self.event
        if rate is None or event is None or event.total is None:
            return None
        return max(event.total - event.done, 0) / rate

    def completed(self) -> tuple[float, float | None]:
        """What a bar shows: done and total (None: no total, the bar pulses)."""
        if self.event is None:
            return 0.0, None
        return self.event.done, self.event.total

    def words(self, percent: bool = False) -> str:
        """``step 240/504  2.6 steps/s  ETA 1:32  loss 0.41  AP50 0.88``; ``starting`` before any event."""
        event = self.event
        if event is None:
            return "starting"
        if event.unit == "phase":
            total = int(event.total or 0)
            parts = [f"{event.phase} ({min(int(event.done) + 1, total)}/{total})" if total else event.phase]
        else:
            unit = _unit_name(event.unit)
            if event.total is not None:
                count = f"{_amount(event.done, event.unit)}/{_amount(event.total, event.unit)}"
                share = f" ({100 * event.done / event.total:.0f}%)" if percent and event.total else ""
                count = f"step {count}{share}" if event.unit == "step" else f"{count} {unit}{share}"
            else:
                count = f"{_amount(event.done, event.unit)} {unit}"
            parts = [count if event.phase == self.name else f"{event.phase} {count}"]
            rate, eta = self.rate(), self.eta()
            if rate is not None:
                parts.append(f"{_amount(rate, event.unit) if event.unit == 'B' else f'{rate:.1f}'} {unit}/s")
            if eta is not None:
                parts.append(f"ETA {clock(eta)}")
        parts += [f"{name} {value:.2f}" for name, value in self.metrics.items()]
        return "  ".join(parts)


@dataclass
class _Watched:
    tail: EventTail
    view: StageView
    printed: float  # monotonic time of its last plain line
    task: Any = None  # its rich task id, in a terminal


class Reporter:
    """Progress of the running stages: rich bars in a terminal, a plain line per stage and interval elsewhere."""

    def __init__(self, stream: TextIO | None = None, heartbeat: float = 15.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.heartbeat = heartbeat
        self._lock = threading.RLock()  # re-entrant: a signal handler may say() while live() holds it
        self._watched: dict[str, _Watched] = {}
        self._bars: Any = None

    def say(self, text: str) -> None:
        """A message of the engine's own, on a line of its own (above the bars in a terminal)."""
        with self._lock:
            if self.tty:
                self._progress().console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def live(self, stages: Sequence[tuple[str, EventTail, float]]) -> None:
        """Read the running stages' new events and show them; ``stages``: (name, its events, started)."""
        now = time.monotonic()
        with self._lock:
            running = {name for name, _, _ in stages}
            for name in [n for n in self._watched if n not in running]:  # finished: its bar goes
                gone = self._watched.pop(name)
                if gone.task is not None:
                    self._progress().remove_task(gone.task)
            for name, tail, started in stages:
                watched = self._watched.get(name)
                if watched is None or watched.tail is not tail:  # a new stage, or a new attempt of one
                    if watched is not None and watched.task is not None:
                        self._progress().remove_task(watched.task)
                    watched = self._watched[name] = _Watched(tail, StageView(name, started), now)
                changed = watched.view.feed(tail.read())
                if self.tty:
                    self._draw(watched, now)
                elif (changed and now - watched.printed >= MIN_PLAIN_GAP) or now - watched.printed >= self.heartbeat:
                    watched.printed = now
                    view = watched.view
                    self.stream.write(f"{name} {clock(now - view.started)}  {view.words(percent=True)}\n")
                    self.stream.flush()
            if self.tty and self._bars is not None:
                self._bars.refresh()

    def close(self) -> None:
        """Stop drawing (the run is over): the terminal gets its cursor back."""
        with self._lock:
            if self._bars is not None:
                self._bars.stop()
                self._bars = None
            self._watched.clear()

    def _draw(self, watched: _Watched, now: float) -> None:
        view = watched.view
        done, total = view.completed()
        width = max(map(len, self._watched))  # the running stages' names, padded so their bars line up
        fields = {"description": view.words(), "completed": done, "total": total,
                  "stage": f"{view.name:<{width}}", "clock": clock(now - view.started)}
        bars = self._progress()
        if watched.task is None:
            watched.task = bars.add_task(**fields)
        else:
            bars.update(watched.task, **fields)

    def _progress(self) -> Any:
        """The rich bars, started on first use (only in a terminal)."""
        if self._bars is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn
            from rich.table import Column

            console = Console(file=self.stream, highlight=False)
            # The words matter more than the bar: in a narrow terminal the bar shrinks first.
            bar_width = max(MIN_BAR_WIDTH, min(MAX_BAR_WIDTH, console.width - WORDS_WIDTH))
            self._bars = Progress(
                TextColumn("[bold]{task.fields[stage]}"), TextColumn("{task.fields[clock]:>5}"),
                BarColumn(bar_width=bar_width),
                TextColumn("{task.description}", markup=False,
                           table_column=Column(no_wrap=True, overflow="ellipsis")),
                console=console, auto_refresh=False, transient=True)
            self._bars.start()
        return self._bars
