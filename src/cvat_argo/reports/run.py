"""The story of a local run in one page: ``runs/<run-id>/report.md`` and ``report.html``.

Dataset counts, the training curve, AP per label, what pre-annotation produced, a grid of
unannotated images with their predicted boxes, how long each stage took and where every artifact
is. Each section appears when its stage produced the files it reads, so a failed run still gets a
report of what it did.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ..engines import artifacts
from ..engines.artifacts import read_optional_json as _load
from .plots import blank_figure, save_figure

GRID_IMAGES = 12


def _grid(run_root: Path, dataset_dir: Path, coco_path: Path, out: Path) -> bool:
    from PIL import Image, ImageDraw

    coco = _load(coco_path)
    unannotated = _load(dataset_dir / artifacts.UNANNOTATED)
    if not coco or not unannotated:
        return False
    files = {item["name"]: dataset_dir / item["path"] for item in unannotated["images"]}
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for annotation in coco.get("annotations", []):
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    images = [i for i in coco.get("images", []) if i["file_name"] in files][:GRID_IMAGES]
    if not images:
        return False
    columns = 4
    rows = (len(images) + columns - 1) // columns
    figure = blank_figure(width=3.2 * columns, height=2.6 * rows)
    for index, image in enumerate(images):
        axis = figure.add_subplot(rows, columns, index + 1)
        picture = Image.open(files[image["file_name"]]).convert("RGB")
        draw = ImageDraw.Draw(picture)
        for annotation in by_image.get(image["id"], []):
            x, y, w, h = annotation["bbox"]
            draw.rectangle((x, y, x + w, y + h), outline=(255, 40, 40), width=2)
            draw.text((x + 2, y + 1), f"{names.get(annotation['category_id'], '?')} {annotation.get('score', 0):.2f}",
                      fill=(255, 255, 0))
        axis.imshow(picture)
        axis.set_title(image["file_name"], fontsize=7)
        axis.axis("off")
    save_figure(figure, out)
    return True


def write_run_report(run) -> Path:
    root: Path = run.root
    dataset_dir = run.artifact(artifacts.DATASET)
    model_dir = run.artifact(artifacts.MODEL)
    exported = run.artifact(artifacts.EXPORTED)
    annotations = run.artifact(artifacts.ANNOTATIONS)
    link = run.artifact_link
    resolved = run.pipeline.resolved
    sections: list[tuple[str, list[str]]] = []

    lines = [f"Model **{resolved.model.name}** ({resolved.model.description}), arguments "
             f"`{resolved.arguments.to_string()}`, source `{resolved.request.source.describe()}`.", "",
             "| stage | status | time |", "|---|---|---:|"]
    for name, result in run.results.items():
        lines.append(f"| {name} | {result.status} | {result.seconds:.0f} s |")
    sections.append(("Run", lines))

    dataset = _load(dataset_dir / artifacts.DATASET_SUMMARY)
    if dataset:
        images = dataset["images"]
        lines = [f"{images['train']} training and {images['val']} validation images, {images['unannotated']} to "
                 f"pre-annotate, {images['skipped']} skipped. Labels: {', '.join(dataset['labels'])}.", "",
                 f"![dataset]({link(artifacts.DATASET, artifacts.DATASET_PLOT)})"]
        frames = dataset.get("frames")
        if frames and frames["awaiting_review"]:
            lines += ["", f"{frames['awaiting_review']} frames hold only machine shapes nobody reviewed: they are "
                          "neither trained on nor pre-annotated again until a person reviews them in CVAT."]
        lines += [f"- warning: {w}" for w in dataset.get("warnings", [])]
        sections.append(("Dataset", lines))

    metrics = _load(model_dir / artifacts.METRICS)
    if metrics:
        final = metrics.get("final", {})
        lines = [f"{metrics['total_steps']} steps ({metrics['epochs']} epochs, batch {metrics['global_batch']}) in "
                 f"{metrics['training_seconds'] / 60:.1f} min. Validation: "
                 + ", ".join(f"{k} {final[k]:.3f}" for k in ("AP", "AP50", "AP75") if k in final) + ".", ""]
        if metrics.get("per_label"):
            lines += ["| label | AP | AP50 |", "|---|---:|---:|"]
            lines += [f"| {label} | {v.get('AP', float('nan')):.3f} | {v.get('AP50', float('nan')):.3f} |"
                      for label, v in metrics["per_label"].items()]
        lines += ["", f"![training]({link(artifacts.MODEL, artifacts.TRAINING_PLOT)})"]
        sections.append(("Training", lines))

    model = _load(exported / artifacts.MODEL_MANIFEST)
    if model:
        exports = ", ".join(f"{e['file']} ({e['bytes'] / 2**20:.1f} MB)" for e in model.get("exports", []))
        sections.append(("Exported model", [f"Exports: {exports}." if exports else "Exported."]))

    summary = _load(annotations / artifacts.ANNOTATION_SUMMARY)
    if summary:
        lines = [f"{summary['images']} images pre-annotated with {summary['shapes']} shapes at "
                 f"{summary.get('images_per_second', 0):.0f} images/s ({summary.get('runtime', '')}).", "",
                 "| label | shapes |", "|---|---:|"]
        lines += [f"| {label} | {count} |" for label, count in summary.get("shapes_per_label", {}).items()]
        if _grid(root, dataset_dir, annotations / artifacts.COCO_JSON, root / artifacts.PRE_ANNOTATIONS_GRID):
            lines += ["", f"![pre-annotations]({artifacts.PRE_ANNOTATIONS_GRID})"]
        sections.append(("Pre-annotations", lines))

    score = _load(root / artifacts.QUICKSTART_SCORE)
    if score and score.get("pre_annotations", {}).get("images"):
        truth = score["pre_annotations"]
        sections.append(("Pre-annotations against the hidden truth", [
            f"On the {truth['images']} unannotated images ({truth['objects']} objects the generator drew): "
            f"AP {truth['AP']:.3f}, AP50 {truth['AP50']:.3f}, recall {truth['AR100']:.3f}."]))

    where = ["| artifact | location |", "|---|---|"]
    for stage in run.pipeline.all_stages():
        for artifact in stage.outputs:
            path = run.output_path(stage, artifact)
            if path.exists():
                where.append(f"| {stage.name}/{artifact} | `{path}` |")
    sections.append(("Artifacts", where))

    markdown = [f"# Run {run.run_id}", ""]
    for title, body in sections:
        markdown += [f"## {title}", "", *body, ""]
    (root / artifacts.RUN_REPORT).write_text("\n".join(markdown), encoding="utf-8")
    (root / artifacts.RUN_REPORT_HTML).write_text(_html(run.run_id, sections), encoding="utf-8")
    return root / artifacts.RUN_REPORT


def _html(run_id: str, sections: list[tuple[str, list[str]]]) -> str:
    """A plain HTML rendering of the same sections (tables, images, paragraphs)."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>Run {html.escape(run_id)}</title>",
             "<style>body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px}img{max-width:100%}</style>",
             f"<h1>Run {html.escape(run_id)}</h1>"]
    for title, body in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        table: list[list[str]] = []
        for line in [*body, ""]:
            if line.startswith("|"):
                cells = [c.strip() for c in line.strip("|").split("|")]
                if not all(set(c) <= set("-:") for c in cells):
                    table.append(cells)
                continue
            if table:
                head, *rows = table
                parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                             + "".join("<tr>" + "".join(f"<td>{html.escape(c.strip('`'))}</td>" for c in row)
                                       + "</tr>" for row in rows) + "</table>")
                table = []
            if line.startswith("!["):
                src = line[line.index("(") + 1:-1]
                parts.append(f"<img src='{html.escape(src)}' alt=''>")
            elif line:
                parts.append(f"<p>{html.escape(line.replace('**', '').replace('`', ''))}</p>")
    return "\n".join(parts) + "\n"
