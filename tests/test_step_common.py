"""What every step shares: the output folder discipline and the way TensorFlow steps end."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cvat_argo.entry import build_output
from cvat_argo.errors import CvatArgoError


def test_exit_without_teardown_keeps_the_exit_code_and_flushes_buffered_output():
    # Piped stdout is block-buffered: without the flush, os._exit would drop both lines.
    script = textwrap.dedent("""
        import logging, sys
        from cvat_argo.entry import exit_without_teardown
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
        print("trained to step 10", end="")
        logging.getLogger("x").info("last log line")
        exit_without_teardown(3)
        print("never printed")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "trained to step 10"
    assert "last log line" in done.stderr


@pytest.mark.parametrize("outcome", ["done", "error", "crash"])
def test_a_tensorflow_step_leaves_nothing_in_the_temp_folder(tmp_path: Path, outcome: str):
    """What a step and its children leave in TMPDIR (TensorFlow's own clean-up never runs) goes with it."""
    script = textwrap.dedent("""
        import subprocess, sys, tempfile
        from cvat_argo.entry import run_tensorflow_step
        from cvat_argo.errors import DatasetError

        def main(argv):
            tempfile.NamedTemporaryFile(suffix="__autograph_generated_file.py", delete=False).write(b"x")
            subprocess.run([sys.executable, "-c", "import tempfile; tempfile.mkstemp()"], check=True)  # a child
            if argv == ["error"]:
                raise DatasetError("bad input")
            if argv == ["crash"]:
                raise RuntimeError("a bug")
            return 0

        run_tensorflow_step(main, sys.argv[1:])
    """)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run([sys.executable, "-c", script, outcome], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == {"done": 0, "error": 4, "crash": 1}[outcome], done.stderr
    assert ("Traceback" in done.stderr) == (outcome == "crash")  # a bug keeps its traceback
    assert list(scratch.rglob("*")) == []


def test_build_output_publishes_only_a_complete_output(tmp_path: Path):
    out = tmp_path / "out"

    def fail(partial: Path) -> None:
        (partial / "half.txt").write_text("half")
        raise RuntimeError("stage crashed")

    with pytest.raises(RuntimeError):
        build_output(out, fail)
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    assert build_output(out, lambda partial: (partial / "done.txt").write_text("ok")) == 2
    assert (out / "done.txt").read_text() == "ok"
    with pytest.raises(CvatArgoError, match="refusing to overwrite"):
        build_output(out, lambda partial: None)
    assert (out / "done.txt").read_text() == "ok"
