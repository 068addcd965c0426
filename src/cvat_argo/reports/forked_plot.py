"""A plot drawn in a forked child that imports matplotlib while the parent still works.

Importing matplotlib costs a short stage about 0.35 s (a fifth of the dataset stage on 2,000
images); the child pays it on the other core. At the end the parent sends the plot function and its
arguments (pickled: a module-level function and plain data) and waits for the file. Where
``os.fork`` is missing the plot is drawn in the parent. This module must not import matplotlib.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from typing import Any

from ..errors import CvatArgoError


class ForkedPlotter:
    """Fork now (before any thread starts); then :meth:`draw` (or :meth:`send` ... :meth:`wait`) once, or
    :meth:`cancel`."""

    def __init__(self) -> None:
        self.pid = 0
        self._drawing = ""  # the function sent, once sent
        if not hasattr(os, "fork"):
            return
        read, self._pipe = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child never returns into the caller's code
            os.close(self._pipe)
            os._exit(_child(read))
        os.close(read)

    def draw(self, function: Callable[..., None], *args: Any) -> None:
        """``function(*args)`` in the child (or here) and wait for it: :meth:`send` then :meth:`wait`."""
        self.send(function, *args)
        self.wait()

    def send(self, function: Callable[..., None], *args: Any) -> None:
        """Start ``function(*args)`` in the child and return at once (without a child: run it here)."""
        if not self.pid:
            function(*args)
            return
        self._drawing = function.__name__
        with os.fdopen(self._pipe, "wb") as pipe:
            pickle.dump((function, args), pipe)

    def wait(self) -> None:
        """Wait for what :meth:`send` started; raises :class:`CvatArgoError` when it failed."""
        if not self.pid:
            return
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        if status != 0:
            raise CvatArgoError(f"drawing the plot ({self._drawing}) failed in its child process "
                                f"(wait status {status}): see the error above")

    def cancel(self) -> None:
        """End the child, drawing nothing more (the work the plot was for failed)."""
        if self.pid:
            if not self._drawing:
                os.close(self._pipe)
            os.waitpid(self.pid, 0)
            self.pid = 0


def _child(read: int) -> int:
    """The forked child: import the plotting set-up, then draw what arrives. Returns the exit code."""
    try:
        from . import plots  # noqa: F401  (importing matplotlib is the work done ahead)

        with os.fdopen(read, "rb") as pipe:
            sent = pipe.read()
        if sent:
            function, args = pickle.loads(sent)
            function(*args)
        return 0
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
