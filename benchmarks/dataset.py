"""Benchmark of the create-dataset stage against Datumaro and against a raw read of the images.

    python benchmarks/dataset.py [--images 2000] [--large 20000] [--out benchmarks/reports]

Makes a CVAT for images 1.1 export of 640x480 JPEGs (all annotated), then, each as a separate
process so that start-up and peak memory are measured honestly:
  (a) our stage: python -m cvat_argo.steps.dataset (whole process, and the conversion time it records
      in dataset.json: reading the export and writing every record, without start-up and report);
  (b) Datumaro: import_from(..., "cvat") + export(..., "tf_detection_api", save_media=True);
  (c) a raw read of every image file (the I/O bound).
Prints a table and writes benchmarks/reports/dataset.md (+ .json). Numbers are measured, never typed in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from cvat_argo.data.synthetic import generate_task  # noqa: E402

RAW_READ = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    files = sorted(p for p in Path(sys.argv[1]).rglob("*.jpg"))
    start = time.perf_counter()
    total = sum(len(p.read_bytes()) for p in files)
    print(time.perf_counter() - start, total)
""")
DATUMARO = textwrap.dedent("""
    import sys, time
    start = time.perf_counter()
    import datumaro as dm
    dataset = dm.Dataset.import_from(sys.argv[1], "cvat")
    dataset.export(sys.argv[2], "tf_detection_api", save_media=True)
    print(time.perf_counter() - start)
""")


def measured(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB and stdout of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{command[:4]} failed with status {status}")
    return elapsed, usage.ru_maxrss / 1024, stdout


def make_export(work: Path, images: int) -> Path:
    task = generate_task(work, images=images, annotated_fraction=1.0, width=640, height=480, seed=1,
                         name=f"bench{images}")
    folder = work / f"export{images}"
    with zipfile.ZipFile(task.export) as archive:
        archive.extractall(folder)
    task.export.unlink()
    return folder


def drop_page_cache_hint(folder: Path) -> None:
    """Read everything once so that every contender starts with the same warm page cache."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.read_bytes()


def ours(folder: Path, out: Path, images: int) -> tuple[float, float, float]:
    """One run of the stage: wall seconds, peak MB, and the conversion seconds it records."""
    shutil.rmtree(out, ignore_errors=True)
    wall, rss, _ = measured([sys.executable, "-m", "cvat_argo.steps.dataset", "--source", str(folder),
                             "--out", str(out)])
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["images"]["train"] + summary["images"]["val"] == images, summary["images"]
    shutil.rmtree(out, ignore_errors=True)
    return wall, rss, summary["conversion_seconds"]


def bench(folder: Path, images: int, with_datumaro: bool, repeat: int) -> dict:
    """Each contender ``repeat`` times; the median time (these machines are noisy) and the largest peak."""
    drop_page_cache_hint(folder)
    runs = [ours(folder, folder.parent / f"ours{images}", images) for _ in range(repeat)]
    raw = [measured([sys.executable, "-c", RAW_READ, str(folder)]) for _ in range(repeat)]
    row = {"images": images, "repeat": repeat, "ours_process_s": median(r[0] for r in runs),
           "ours_conversion_s": median(r[2] for r in runs), "ours_peak_mb": max(r[1] for r in runs),
           "raw_read_s": median(float(out.split()[0]) for _, _, out in raw),
           "raw_process_s": median(wall for wall, _, _ in raw)}
    if with_datumaro:
        target = folder.parent / f"datumaro{images}"
        dm = []
        for _ in range(repeat):
            shutil.rmtree(target, ignore_errors=True)
            dm.append(measured([sys.executable, "-c", DATUMARO, str(folder), str(target)]))
        shutil.rmtree(target, ignore_errors=True)
        row.update({"datumaro_process_s": median(wall for wall, _, _ in dm),
                    "datumaro_peak_mb": max(rss for _, rss, _ in dm)})
    return row


def report(rows: list[dict], out_dir: Path) -> str:
    lines = ["| images | contender | seconds | images/s | peak RSS (MB) |", "|---:|---|---:|---:|---:|"]
    for row in rows:
        n = row["images"]
        lines.append(f"| {n} | cvat-argo stage, whole process | {row['ours_process_s']:.2f} | "
                     f"{n / row['ours_process_s']:.0f} | {row['ours_peak_mb']:.0f} |")
        lines.append(f"| {n} | cvat-argo stage, conversion only | {row['ours_conversion_s']:.2f} | "
                     f"{n / row['ours_conversion_s']:.0f} | |")
        if "datumaro_process_s" in row:
            seconds = row["datumaro_process_s"]
            lines.append(f"| {n} | Datumaro cvat -> tf_detection_api, whole process | {seconds:.2f} | "
                         f"{n / seconds:.0f} | {row['datumaro_peak_mb']:.0f} |")
        lines.append(f"| {n} | raw read of the image files | {row['raw_read_s']:.2f} | {n / row['raw_read_s']:.0f} | |")
    ratios = []
    for row in rows:
        if "datumaro_process_s" in row:
            speedup = row["datumaro_process_s"] / row["ours_process_s"]
            ratios.append(f"at {row['images']} images our stage is {speedup:.1f}x faster than Datumaro "
                          "(whole processes)")
        ratios.append(f"at {row['images']} images the conversion runs at "
                      f"{row['raw_read_s'] / row['ours_conversion_s']:.2f}x the raw read rate")
    if len(rows) > 1:
        ratios.append(f"peak memory {rows[0]['ours_peak_mb']:.0f} MB at {rows[0]['images']} images, "
                      f"{rows[-1]['ours_peak_mb']:.0f} MB at {rows[-1]['images']}")
    text = (f"Median of {rows[0]['repeat']} runs each.\n\n" + "\n".join(lines) + "\n\n"
            + "\n".join(f"- {r}" for r in ratios) + "\n")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dataset.md").write_text(f"# create-dataset benchmark\n\nMachine: {machine}; 640x480 JPEGs, "
                                        f"all annotated, 1-3 objects each.\n\n{text}", encoding="utf-8")
    (out_dir / "dataset.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000, help="second size for the memory check (0: skip)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "reports")
    parser.add_argument("--no-datumaro", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender; the median is reported")
    ns = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cvat-argo-bench-") as tmp:
        for images, datumaro in ((ns.images, not ns.no_datumaro), (ns.large, False)):
            if not images:
                continue
            print(f"generating {images} images...", file=sys.stderr)
            folder = make_export(Path(tmp), images)
            rows.append(bench(folder, images, datumaro, ns.repeat))
            shutil.rmtree(folder)
    print(report(rows, ns.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
