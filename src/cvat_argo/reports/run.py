"""The story of a local run in one page: ``runs/<run-id>/report.md`` and ``report.html``.

:func:`gather` reads what the stages left in the run folder into one :class:`RunReport`, and two
jinja2 templates (``templates/run_report.md.j2`` and ``.html.j2``) render it, so the page people
read in a terminal or in Argo and the one they open in a browser cannot disagree. It opens with
what to bring into CVAT (or, for a failed run, which stage failed, why and where its log is), then
dataset counts, the training curve, AP per label, pre-annotation counts and scores, a grid of
unannotated images with their boxes (and, where the truth is known, what the model missed), how
long each stage took and where every artifact is, linked relative to the report. Each section
appears when its stage produced the files it reads, so a failed run still gets a report of what it did.
"""

from __future__ import annotations

import shlex
import signal
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ..engines import artifacts
from ..engines.artifacts import read_optional_json as _load
from ..training.metrics import NOT_MEASURED, coco_metric
from . import grid
from .plots import label_colour

GRID_IMAGES = 12
#: COCO's final metrics in the order people read them.
METRIC_ORDER = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100")
TEMPLATES = "templates"
MARKDOWN_TEMPLATE = "run_report.md.j2"
HTML_TEMPLATE = "run_report.html.j2"


@dataclass(frozen=True)
class Link:
    """A file or folder of the run, ``href`` relative to the run folder (where the report lies)."""

    text: str
    href: str


@dataclass(frozen=True)
class StageRow:
    name: str
    status: str
    seconds: float
    log: Link | None


@dataclass(frozen=True)
class Failure:
    """The stage that failed (or the signal that stopped the run), in words a person can act on."""

    title: str
    stage: str  # "" when a signal stopped the run between stages
    error: str  # one line
    log: Link | None
    log_path: str  # absolute, for a terminal
    exit_code: int | None
    attempts: int
    tail: list[str]
    resume: str


@dataclass(frozen=True)
class CvatWayBack:
    """What to bring into CVAT: the API upload that keeps people's work, and the files for other tools."""

    uploaded: str | None  # what the pre-annotate stage's upload did (or would do: dry run)
    not_uploaded: str | None  # why it did not upload
    command: str | None  # how to run that upload now
    files: list[tuple[Link, str]]


@dataclass(frozen=True)
class LabelRow:
    label: str
    colour: str
    cells: list[str]


@dataclass
class RunReport:
    """Everything the two templates show; nothing in them reads a file."""

    run_id: str
    folder: str
    model: str
    description: str
    arguments: str
    source: str
    outcome: str
    failure: Failure | None = None
    cvat: CvatWayBack | None = None
    stages: list[StageRow] = field(default_factory=list)
    dataset: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    exported: dict[str, Any] | None = None
    pre_annotations: dict[str, Any] | None = None
    truth: dict[str, Any] | None = None
    artifacts: list[tuple[str, Link]] = field(default_factory=list)
    not_measured: str = NOT_MEASURED


def _link(root: Path, path: Path, text: str | None = None) -> Link | None:
    """A link to ``path`` relative to the run folder ``root``; None when there is nothing there."""
    if not path.exists():
        return None
    relative = path.resolve().relative_to(root.resolve()).as_posix()
    return Link(text or relative, relative + ("/" if path.is_dir() else ""))


def _one_line_error(result: Any) -> str:
    """The engine's own cause, else the step's ``error: ...`` line, else the log's last line."""
    if result.error:
        return result.error
    for line in reversed(result.tail):
        if line.startswith("error: "):
            return line.removeprefix("error: ")
    return result.tail[-1] if result.tail else f"exit code {result.exit_code}"


def _failure(run: Any) -> tuple[str, Failure | None]:
    """The run's outcome in a few words, and what failed (or the signal that stopped it)."""
    failed = next((r for r in run.results.values() if r.status == "failed"), None)
    stopped_by = getattr(run, "stopped_by", None)
    if failed is None and stopped_by is None:
        done = run.results and all(r.status in ("succeeded", "skipped") for r in run.results.values())
        return ("succeeded" if done else "incomplete"), None
    resume = f"python -m cvat_argo run --resume {run.run_id}"
    if stopped_by is not None:
        outcome = f"stopped by {signal.Signals(stopped_by).name}"
        title, error = "Run " + outcome, outcome + (f" while {failed.name} ran" if failed else "")
    else:
        outcome, title, error = f"failed in {failed.name}", f"Stage {failed.name} failed", _one_line_error(failed)
    if failed is None:
        return outcome, Failure(title, "", error, None, "", None, 0, [], resume)
    log = run.stage_dir(failed.name) / artifacts.STAGE_LOG
    return outcome, Failure(title, failed.name, error, _link(run.root, log), str(log.resolve()), failed.exit_code,
                            failed.attempts, list(failed.tail), resume)


def _upload_command(run: Any, task_id: Any) -> str:
    """The pre-annotate stage's own command, with a task id and a fresh output folder."""
    stage = run.pipeline.producer(artifacts.ANNOTATIONS)
    command = ["python", *run.resolve(stage)[1:]]
    task = str(task_id or "TASK_ID")
    for flag, value in (("--cvat-task-id", task), ("--out", f"pre-annotate-task-{task}")):
        if flag in command:
            command[command.index(flag) + 1] = value
        else:
            command += [flag, value]
    return "CVAT_HOST=https://cvat.example.com CVAT_ACCESS_TOKEN=... " + shlex.join(command)


def _cvat(run: Any, folder: Path, summary: dict[str, Any]) -> CvatWayBack:
    upload = summary.get("upload")
    uploaded = not_uploaded = command = None
    if upload:
        verb = "would add" if upload.get("dry_run") else "added"
        uploaded = (f"The pre-annotate stage {verb} {upload['created']} shapes to CVAT task {upload['task_id']} "
                    f"through the API, on {upload['frames_created']} frames nobody annotated, as source=auto; it "
                    f"left alone {upload['frames_human']} frames with people's shapes and "
                    f"{upload['frames_other_auto']} with other machine shapes ({upload['already_present']} shapes "
                    "were already there).")
        if upload.get("dry_run"):
            uploaded += " This was a dry run: nothing was added."
            command = _upload_command(run, upload["task_id"])
    else:
        not_uploaded = summary.get("upload_note") or "not uploaded"
        command = _upload_command(run, None)
    files = [(link, what) for name, what in ((artifacts.CVAT_XML, "CVAT for images 1.1, shapes marked source=auto"),
                                            (artifacts.COCO_JSON, "COCO, with scores"),
                                            (artifacts.NEXT_TO_ANNOTATE, "the frames to label first"))
             if (link := _link(run.root, folder / name, name))]
    return CvatWayBack(uploaded, not_uploaded, command, files)


def _dataset(run: Any) -> dict[str, Any] | None:
    folder = run.artifact(artifacts.DATASET)
    dataset = _load(folder / artifacts.DATASET_SUMMARY)
    if not dataset:
        return None
    images, frames = dataset["images"], dataset.get("frames") or {}
    return {"images": images, "labels": dataset["labels"], "warnings": dataset.get("warnings", []),
            "awaiting_review": frames.get("awaiting_review", 0),
            "plot": _link(run.root, folder / artifacts.DATASET_PLOT, "labels and box sizes")}


def _training(run: Any) -> dict[str, Any] | None:
    folder = run.artifact(artifacts.MODEL)
    metrics = _load(folder / artifacts.METRICS)
    if not metrics:
        return None
    final = metrics.get("final", {})
    names = [n for n in METRIC_ORDER if n in final] + [n for n in final if n not in METRIC_ORDER]
    labels = list(metrics.get("per_label", {}))
    values = [final[n] for n in names] + [v for item in metrics.get("per_label", {}).values() for v in item.values()]
    return {
        "steps": metrics["total_steps"], "epochs": metrics["epochs"], "batch": metrics["global_batch"],
        "minutes": metrics["training_seconds"] / 60,
        "metrics": [(name, coco_metric(final[name])) for name in names],
        "per_label": [LabelRow(label, label_colour(index), [coco_metric(metrics["per_label"][label].get(k))
                                                              for k in ("AP", "AP50")])
                      for index, label in enumerate(labels)],
        "not_measured": any(isinstance(v, int | float) and v < 0 for v in values),
        "plot": _link(run.root, folder / artifacts.TRAINING_PLOT, "training curve"),
    }


def _exported(run: Any) -> dict[str, Any] | None:
    folder = run.artifact(artifacts.EXPORTED)
    model = _load(folder / artifacts.MODEL_MANIFEST)
    if not model:
        return None
    sizes: dict[str, int] = {}
    for entry in model.get("exports", []):  # a SavedModel is one folder of files
        top, sep, _ = entry["file"].partition("/")
        sizes[top + sep] = sizes.get(top + sep, 0) + entry["bytes"]
    return {"exports": [(name, _size(size)) for name, size in sizes.items()],
            "score_floor": model.get("score_threshold"),
            "card": _link(run.root, folder / artifacts.MODEL_CARD, artifacts.MODEL_CARD),
            "thresholds": _link(run.root, folder / artifacts.THRESHOLDS, artifacts.THRESHOLDS)}


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MB" if count >= 2**20 else f"{count / 2**10:.0f} KB"


def _truth_boxes(path: Path) -> dict[str, list[tuple[str, grid.Box]]]:
    from ..formats.cvat_xml.reader import CvatXmlReader

    return {record.name: [(shape.label, tuple(shape.box)) for shape in record.shapes if shape.box is not None]
            for record in CvatXmlReader(path).images()}  # type: ignore[misc]


def _pictures(run: Any, coco: dict[str, Any], truth: dict[str, list[tuple[str, grid.Box]]] | None
              ) -> tuple[list[grid.Picture], dict[str, dict[str, int]]]:
    """Every unannotated image with its marks (matched to ``truth`` when known), and counts per label and kind."""
    dataset_dir = run.artifact(artifacts.DATASET)
    unannotated = _load(dataset_dir / artifacts.UNANNOTATED) or {"images": []}
    files = {item["name"]: dataset_dir / item["path"] for item in unannotated["images"]}
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    by_image: dict[int, list[grid.Mark]] = {}
    for annotation in coco.get("annotations", []):
        x, y, w, h = annotation["bbox"]
        by_image.setdefault(annotation["image_id"], []).append(
            grid.Mark(names.get(annotation["category_id"], "?"), (x, y, x + w, y + h), score=annotation.get("score")))
    pictures, counts = [], {}
    for image in coco.get("images", []):
        if image["file_name"] not in files:
            continue
        marks = by_image.get(image["id"], [])
        if truth is not None:
            marks = grid.against_truth(marks, truth.get(image["file_name"], []))
        for mark in marks:
            per_label = counts.setdefault(mark.label, {kind: 0 for kind in (grid.FOUND, grid.FALSE_POSITIVE,
                                                                              grid.MISSED, grid.PREDICTED)})
            per_label[mark.kind] += 1
        pictures.append(grid.Picture(image["file_name"], files[image["file_name"]], tuple(marks)))
    return pictures, counts


def _pre_annotations(run: Any, labels: list[str], truth_xml: Path | None) -> tuple[dict[str, Any] | None,
                                                                                   dict[str, dict[str, int]]]:
    folder = run.artifact(artifacts.ANNOTATIONS)
    summary = _load(folder / artifacts.ANNOTATION_SUMMARY)
    if not summary:
        return None, {}
    labels = list(summary.get("labels") or labels or summary.get("shapes_per_label", {}))
    threshold = summary.get("threshold") or {"default": 0.5, "per_label": {}}
    histogram = summary.get("score_histogram", {}).get("counts", {})
    rows = [LabelRow(label, label_colour(index), [
        str(summary.get("shapes_per_label", {}).get(label, 0)), str(sum(histogram.get(label, []))),
        f"{threshold['per_label'].get(label, threshold['default']):g}"]) for index, label in enumerate(labels)]
    coco = _load(folder / artifacts.COCO_JSON)
    truth = _truth_boxes(truth_xml) if truth_xml is not None and truth_xml.is_file() else None
    pictures, counts = _pictures(run, coco, truth) if coco else ([], {})
    grid_link = None
    if pictures:
        out = run.root / artifacts.PRE_ANNOTATIONS_GRID
        grid.draw_grid(pictures[:GRID_IMAGES], labels, out, with_truth=truth is not None)
        grid_link = _link(run.root, out, "pre-annotations")
    return {"images": summary["images"], "shapes": summary["shapes"], "rate": summary.get("images_per_second", 0),
            "runtime": summary.get("runtime", ""), "rows": rows, "origin": summary.get("threshold_origin"),
            "note": summary.get("threshold_note"), "skipped": len(summary.get("skipped", [])),
            "next": summary.get("next_to_annotate"), "with_truth": truth is not None,
            "shown": min(len(pictures), GRID_IMAGES), "grid": grid_link,
            "scores": _link(run.root, folder / artifacts.SCORES_PLOT, "score histogram"),
            "report": _link(run.root, folder / artifacts.STAGE_REPORT)}, (counts if truth is not None else {})


def _truth(truth: dict[str, Any], labels: list[str], counts: dict[str, dict[str, int]]) -> dict[str, Any] | None:
    """The quickstart's score against the hidden truth, and the grid's matching counted per label."""
    if not truth.get("images"):
        return None
    rows = []
    for index, label in enumerate(labels):
        item = counts.get(label, {})
        found, missed, false = item.get(grid.FOUND, 0), item.get(grid.MISSED, 0), item.get(grid.FALSE_POSITIVE, 0)
        rows.append(LabelRow(label, label_colour(index), [str(found + missed), str(found), str(missed), str(false)]))
    return {"images": truth["images"], "objects": truth["objects"], "AP": coco_metric(truth.get("AP")),
            "AP50": coco_metric(truth.get("AP50")), "recall": coco_metric(truth.get("AR100")),
            "rows": rows if counts else []}


def gather(run: Any) -> RunReport:
    """Read the run folder into a :class:`RunReport` (and draw the pre-annotation grid it shows)."""
    root: Path = run.root
    resolved = run.pipeline.resolved
    outcome, failure = _failure(run)
    report = RunReport(run.run_id, str(root.resolve()), resolved.model.name, resolved.model.description,
                       resolved.arguments.to_string(), resolved.request.source.describe(), outcome, failure)
    for name, result in run.results.items():
        report.stages.append(StageRow(name, result.status, result.seconds,
                                      _link(root, run.stage_dir(name) / artifacts.STAGE_LOG, "log")))
    report.dataset = _dataset(run)
    labels = report.dataset["labels"] if report.dataset else []
    report.training = _training(run)
    report.exported = _exported(run)
    truth = ((_load(root / artifacts.QUICKSTART_SCORE) or {}).get("pre_annotations")) or {}
    truth_xml = Path(truth["truth"]) if truth.get("truth") else None
    report.pre_annotations, counts = _pre_annotations(run, labels, truth_xml)
    if report.pre_annotations:
        labels = [row.label for row in report.pre_annotations["rows"]]
        folder = run.artifact(artifacts.ANNOTATIONS)
        report.cvat = _cvat(run, folder, _load(folder / artifacts.ANNOTATION_SUMMARY))
    report.truth = _truth(truth, labels, counts)
    for stage in run.pipeline.all_stages():
        for artifact in stage.outputs:
            link = _link(root, run.output_path(stage, artifact))
            if link:
                report.artifacts.append((f"{stage.name}/{artifact}", link))
    return report


@cache
def _environment():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("cvat_argo.reports", TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    environment.filters["cell"] = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    return environment


def render(report: RunReport, template: str) -> str:
    """``report`` through one of the templates (:data:`MARKDOWN_TEMPLATE`, :data:`HTML_TEMPLATE`)."""
    return _environment().get_template(template).render(r=report)


def write_run_report(run: Any) -> Path:
    """``report.md`` and ``report.html`` in the run folder, from one :func:`gather`; returns the markdown's path."""
    report = gather(run)
    root: Path = run.root
    artifacts.write_text(root / artifacts.RUN_REPORT, render(report, MARKDOWN_TEMPLATE))
    artifacts.write_text(root / artifacts.RUN_REPORT_HTML, render(report, HTML_TEMPLATE))
    return root / artifacts.RUN_REPORT
