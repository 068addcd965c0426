"""The convert output folder: its format tag, the digests of its exports, and replacing an earlier one.

The stage builds everything in ``OUT.partial`` and publishes it with a rename; it refuses to
overwrite a folder that is not an earlier convert output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..engines import artifacts
from ..errors import ConvertError
from ..storage.digest import file_sha256

FORMAT = "cvat-argo/convert"
FORMAT_VERSION = 1


def file_entries(out: Path) -> list[dict[str, Any]]:
    """Size and sha256 of every file of the exports (and of the score thresholds), for integrity checks after copies."""
    entries = []
    paths = [out / name for name in (*artifacts.TFLITE_FILES.values(), artifacts.TFLITE_MANIFEST, artifacts.THRESHOLDS)]
    paths += sorted(p for p in (out / artifacts.SAVED_MODEL_DIR).rglob("*") if p.is_file())
    for path in paths:
        if path.is_file():
            entries.append({"file": path.relative_to(out).as_posix(), "bytes": path.stat().st_size,
                            "sha256": file_sha256(path)})
    return entries


def is_previous_output(out: Path) -> bool:
    try:
        return json.loads((out / artifacts.MODEL_MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_output_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_previous_output(out))):
        raise ConvertError(f"{out} exists and is not an earlier convert output: refusing to overwrite it "
                           "(choose another --out or empty it)")


def publish(partial: Path, out: Path) -> None:
    """Replace ``out`` by the finished ``partial`` (an earlier convert output is removed only now)."""
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    partial.rename(out)
    if old.exists():
        shutil.rmtree(old)

