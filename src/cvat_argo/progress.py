"""Progress that reads well both in a terminal and in a pod's log.

In a terminal this is a tqdm bar. In a log (Argo, CI, the local engine's log files) a redrawn bar
becomes one endless line, so there it prints a plain line every ``interval`` seconds instead:
``writing TFRecords: 1200/2000 (60%), 850/s, 1.4 s left``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


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


def progress_bar(desc: str, total: int | None = None, unit: str = "img", interval: float = 10.0,
                 enabled: bool = True):
    """An object with update(n) and close(), usable as a context manager; ``unit="B"`` counts bytes."""
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        scale = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, **scale)
    return _LogProgress(desc, total, unit, interval)


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
