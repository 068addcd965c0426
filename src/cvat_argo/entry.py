"""What every entry point shares (the CLI and each step's ``main``): one-line errors, exit codes, outputs."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from .errors import CvatArgoError

T = TypeVar("T")


def build_output(out: Path, build: Callable[[Path], T]) -> T:
    """Let ``build`` fill ``<out>.partial`` and rename it to ``out`` only when it succeeded.

    A crashed or killed step never leaves a half-written output that looks finished, and an
    existing non-empty ``out`` (someone's data, or an earlier result) is never overwritten.
    """
    if out.exists() and any(out.iterdir()):
        raise CvatArgoError(f"output folder {out} exists and is not empty: refusing to overwrite it")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        result = build(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    partial.rename(out)
    return result


def run_step(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a step's ``main``; a user-facing error prints one line and exits with its code.

    TransientError exits 75 (EX_TEMPFAIL), which the Argo retry expression and the local engine
    retry; every other error is permanent. Unexpected exceptions keep their traceback.
    """
    die_with_engine()
    try:
        return main(argv)
    except CvatArgoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


#: Set by the local engine for its stage processes: the engine's pid. A step that sees it asks the
#: kernel to kill it when the engine dies, even by SIGKILL, so no stage outlives its engine.
ENGINE_PID_ENV = "CVAT_ARGO_ENGINE_PID"
_PR_SET_PDEATHSIG = 1


def die_with_engine() -> None:
    """Linux: be killed with the local engine that started this step (a no-op elsewhere or under Argo)."""
    engine = os.environ.pop(ENGINE_PID_ENV, "")  # popped: the step's own children have another parent
    if not engine.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(engine):  # the engine died before the request: follow it now
        os._exit(143)


def exit_without_teardown(code: int) -> None:
    """End a TensorFlow step right after its work: flush, then ``os._exit``.

    TensorFlow's background threads (tf.data autotuning, thread pools) can deadlock Python's own
    shutdown: a train step that had written every output was seen waiting for minutes in
    ``Py_FinalizeEx``, which would stall the local engine and keep a pod alive. By this point every
    file the step writes is closed; only the streams and logging handlers need flushing.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing left to flush
            stream.flush()
    os._exit(code)


def run_tensorflow_step(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> NoReturn:
    """Run a TensorFlow step in a temporary folder of its own; remove it, then :func:`exit_without_teardown`.

    TensorFlow (autograph's generated modules, the TFLite converter) leaves temporary files that only
    its clean-up at interpreter shutdown removes, and ``os._exit`` skips that: one quickstart left
    about 90 files in /tmp. ``TMPDIR`` points into a private folder for this process and its
    children, which goes whatever the outcome (an unexpected exception keeps its traceback).
    """
    scratch = tempfile.mkdtemp(prefix="cvat-argo-step-")
    os.environ["TMPDIR"] = tempfile.tempdir = scratch
    try:
        code = run_step(main, argv)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    exit_without_teardown(code)
