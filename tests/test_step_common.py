"""What every step shares: the output folder discipline and the way TensorFlow steps end."""

from __future__ import annotations

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
