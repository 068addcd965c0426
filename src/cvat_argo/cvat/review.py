"""Which frames people have seen: the one rule for ground truth, awaiting review, and to pre-annotate.

Every round of the loop (train, pre-annotate, review, retrain) must tell apart frames a person made
or checked from frames only our model touched, or the next round trains on its own unreviewed
output and pre-annotates frames people are still reviewing. One rule, used by the dataset stage
(exports and live tasks), and meant for the upload, qc-report and the run report:

- **ground truth**: a frame with any shape a person made or touched (``source`` ``manual``,
  ``semi-auto``, ``file``, ``consensus``, or anything but ``auto``), or any frame of a job that is
  ``completed`` or in the validation/acceptance stage (:func:`cvat_argo.cvat.server.reviewed_frames`);
  empty frames of such jobs are negatives;
- **awaiting review**: only ``auto`` shapes, in a job nobody finished or reviewed: neither trained on
  nor pre-annotated again;
- **to pre-annotate**: no shapes, in a job nobody finished or reviewed.

CVAT marks an imported file's shapes ``source="file"`` and only its UI turns an edited ``auto`` shape
into ``semi-auto``; a shape moved through the API stays ``auto``. So a frame with only ``auto``
shapes is "awaiting review" unless its job says a person reviewed it. An export file carries no job
state: then the rule runs on shape sources alone, and the dataset's summary says so.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..formats.annotations import Shape

GROUND_TRUTH = "ground_truth"
AWAITING_REVIEW = "awaiting_review"
TO_PRE_ANNOTATE = "to_pre_annotate"
FRAME_KINDS = (GROUND_TRUTH, AWAITING_REVIEW, TO_PRE_ANNOTATE)
MACHINE_SOURCE = "auto"  # what cvat-sdk's auto-annotation and our upload write

RULE_WITH_JOBS = "shape sources and job state (completed, validation or acceptance jobs are ground truth)"
RULE_SOURCES_ONLY = ("shape sources only (an export file has no job state: a frame with only auto shapes "
                     "counts as awaiting review even if a person accepted it; export from a live task, or mark "
                     "reviewed jobs completed, to count them)")


def frame_kind(shapes: Iterable[Shape], reviewed: bool) -> str:
    """The kind of one frame, from its shapes' sources and whether its job was finished or reviewed."""
    if reviewed:
        return GROUND_TRUTH
    sources = [shape.source for shape in shapes]
    if any(source != MACHINE_SOURCE for source in sources):
        return GROUND_TRUTH
    return AWAITING_REVIEW if sources else TO_PRE_ANNOTATE
