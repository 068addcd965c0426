"""The plot drawn in a forked child that imported matplotlib while the parent worked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cvat_argo.errors import CvatArgoError
from cvat_argo.reports.forked_plot import ForkedPlotter

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here: the plot is drawn in-process")


def fails(path: Path) -> None:
    raise RuntimeError(f"cannot draw {path.name}")


def write_marker(path: Path, text: str) -> None:
    path.write_text(f"{text} from {os.getpid()}")


def test_the_child_draws_and_the_parent_never_imports_matplotlib(tmp_path):
    code = f"""
import json, sys
from pathlib import Path
from cvat_argo.reports.dataset import plot
from cvat_argo.reports.forked_plot import ForkedPlotter
plotter = ForkedPlotter()
summary = {{"labels": ["car", "person"], "objects": {{"train": {{"car": 5, "person": 2}}, "val": {{"car": 1}}}}}}
plotter.draw(plot, Path({str(tmp_path / "plot.png")!r}), summary, [(10.0, 20.0), (30.0, 5.0)])
print(json.dumps("matplotlib" in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) is False
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_function_runs_in_the_child_process(tmp_path):
    plotter = ForkedPlotter()
    plotter.draw(write_marker, tmp_path / "marker.txt", "drawn")
    text = (tmp_path / "marker.txt").read_text()
    assert text.startswith("drawn from ") and text != f"drawn from {os.getpid()}"
    assert plotter.pid == 0


def test_a_failing_plot_fails_the_caller_with_the_child_traceback(tmp_path, capfd):
    plotter = ForkedPlotter()
    with pytest.raises(CvatArgoError, match=r"drawing the plot \(fails\) failed in its child process"):
        plotter.draw(fails, tmp_path / "plot.png")
    assert "RuntimeError: cannot draw plot.png" in capfd.readouterr().err


def test_cancel_ends_the_child_without_drawing(tmp_path):
    plotter = ForkedPlotter()
    child = plotter.pid
    plotter.cancel()
    plotter.cancel()  # twice is harmless
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)  # already reaped: no zombie left behind
