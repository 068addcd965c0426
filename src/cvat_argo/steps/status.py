"""The exit step: record how the run ended, so that tools need not ask Argo (or read logs) to know.

``python -m cvat_argo.steps.status --run NAME --status Succeeded --failures JSON --out DIR`` writes
``DIR/status.json``. Argo fills ``--failures`` with ``{{workflow.failures}}``: a JSON list of the
failed steps, ``null`` when none failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..engines import artifacts
from ..entry import run_step

KNOWN_STATUSES = ("Succeeded", "Failed", "Error")


def parse_failures(text: str) -> list[dict[str, Any]]:
    """Argo's failure list; empty for '', 'null', '[]' or a variable Argo left unresolved."""
    text = text.strip()
    if not text or text.startswith("{{"):
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return [{"message": text}]
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def record(run: str, status: str, failures: str, out: Path) -> dict[str, Any]:
    summary = {
        "run": run,
        "status": status,
        "succeeded": status == "Succeeded",
        "failures": parse_failures(failures),
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(out / artifacts.STATUS_FILE, summary, indent=2)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvat_argo.steps.status", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run (workflow) name")
    parser.add_argument("--status", required=True, help=f"final status, one of {', '.join(KNOWN_STATUSES)}")
    parser.add_argument("--failures", default="", help="JSON list of failed steps (Argo's workflow.failures)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write status.json into")
    ns = parser.parse_args(argv)
    summary = record(ns.run, ns.status, ns.failures, ns.out)
    failed = ", ".join(str(f.get("displayName") or f.get("templateName") or f.get("message", "?"))
                       for f in summary["failures"])
    print(f"run {ns.run}: {ns.status}" + (f" (failed: {failed})" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_step(main))
