"""What every benchmark script shares: running a pipeline command with its output kept in a log."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping
from pathlib import Path


def run_logged(command: list[str], log: Path, env: Mapping[str, str]) -> float:
    """Run ``command`` with its output appended to ``log``; its wall time in seconds, or exit naming the log."""
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=dict(env), check=False)
    if result.returncode:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}; see {log}")
    return time.perf_counter() - start
