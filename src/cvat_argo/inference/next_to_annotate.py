"""What to annotate next: the frames where a person's label would teach the model most.

Ranked from the detections the pre-annotation run already has (the model runs once), as
uncertainty sampling: a frame's score is

    score = sum of the MOST_COUNTED largest u(s) over its detections scoring at least FLOOR,
            with u(s) = 1 - |2s - 1|, + NOTHING_CERTAIN when its top score is below CERTAIN

Why this signal: ``u`` is 1 for a detection at 0.5, a coin toss that a person's yes or no settles,
and falls to 0 at 0 and 1, where the model already knows. Summed, a frame with several doubtful
objects outranks one with a single doubt: the reviewer corrects each of them, and each becomes a
training example near the decision boundary. A frame whose top score is below CERTAIN (nothing the
default 0.5 threshold keeps) gets a bonus worth one more fully uncertain detection: the model sees
something there but pre-annotates nothing, so a person draws every object and all of it is new.
FLOOR keeps out the tail of near-zero detections a detector returns up to its maximum count (above
the export's own floor, 0.05 by default): counted, that background noise would outrank real doubt.
MOST_COUNTED caps the sum: an undertrained model returns dozens of mid-score boxes on every frame
(many of them one object's near-duplicates), and beyond ten doubts a frame is no better a lesson.

What it misses: objects the model does not see at all (a frame with nothing above FLOOR scores 0 and
is left out, though it may hold missed objects; so is a frame of detections at 1), confident mistakes
(a wrong label at 0.95 looks certain), diversity (near-identical frames of one scene rank side by
side) and rare classes. The qc-report after review measures the misses and the confident mistakes.

No TensorFlow here: scores and class ids in, rows and links out; memory stays bounded by the list's
length, not by the number of frames seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engines import artifacts
from ..errors import CvatArgoError

#: How many frames ``--next`` lists by default.
DEFAULT_COUNT = 50
#: Detections below this are background noise, not doubt; above 1 - FLOOR they are confident.
FLOOR = 0.2
#: At most this many uncertain detections count towards a frame's score.
MOST_COUNTED = 10
#: A top score below this means nothing on the frame is certain enough to pre-annotate.
CERTAIN = 0.5
#: What a frame with nothing certain adds: one more detection at 0.5.
NOTHING_CERTAIN = 1.0
#: Decimals of the written score (ties are compared on the written value).
SCORE_DECIMALS = 3
#: How many label names a reason lists before "and N more".
LABELS_NAMED = 3
#: Rows of the list the stage's report shows.
REPORT_ROWS = 10
#: The short form of the score, written beside the list.
SCORE_TEXT = (f"sum of the {MOST_COUNTED} largest 1-|2s-1| of the detections scoring {FLOOR} or more, plus "
              f"{NOTHING_CERTAIN} when the top score is below {CERTAIN}; higher: more to learn from a person's labels")


def uncertainty(scores: np.ndarray) -> np.ndarray:
    """1 at a score of 0.5, 0 at 0 and 1: how far a detection is from a settled yes or no."""
    return 1.0 - np.abs(2.0 * scores - 1.0)


@dataclass(frozen=True)
class FrameDoubt:
    """One frame's ranking score and what it is made of (a few numbers, not its detections)."""

    frame: int | None
    name: str
    score: float
    uncertain: int  # detections in [FLOOR, 1 - FLOOR]
    uncertain_range: tuple[float, float] | None
    uncertain_labels: tuple[str, ...]  # their labels, most confident first
    confident: int  # detections above 1 - FLOOR
    confident_range: tuple[float, float] | None
    top: float

    @property
    def order(self) -> tuple[float, bool, int, str]:
        """Highest score first; ties by frame (frames without a number last), then by name."""
        return (-self.score, self.frame is None, self.frame or 0, self.name)

    def why(self) -> str:
        """The score in a sentence a reviewer reads: ``3 uncertain detections (0.35-0.62) of triangle``."""
        named = ", ".join(self.uncertain_labels[:LABELS_NAMED])
        if len(self.uncertain_labels) > LABELS_NAMED:
            named += f" and {len(self.uncertain_labels) - LABELS_NAMED} more"
        doubts = f"{_count(self.uncertain, 'uncertain detection')} ({_span(self.uncertain_range)}) of {named}"
        if self.top < CERTAIN:  # then every detection it counts is uncertain, the top one included
            if self.uncertain == 1:
                return f"top score {self.top:.2f} ({named}): nothing certain found"
            return f"top score {self.top:.2f}: nothing certain found; {doubts}"
        if self.uncertain:
            return doubts
        return f"only confident detections: {self.confident} ({_span(self.confident_range)})"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _span(bounds: tuple[float, float] | None) -> str:
    low, high = bounds or (0.0, 0.0)
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"


def _range(values: np.ndarray) -> tuple[float, float] | None:
    return (float(values.min()), float(values.max())) if values.size else None


def frame_doubt(frame: int | None, name: str, scores: Any, classes: Any, labels: Sequence[str],
                floor: float = FLOOR) -> FrameDoubt | None:
    """The ranking score of one frame's detections (1-based class ids); None when they hold no doubt
    (nothing scores ``floor``, or everything scores 1)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    keep = (scores >= floor) & (classes >= 1) & (classes <= len(labels))  # padding and unknown ids are no objects
    scores, classes = scores[keep], classes[keep]
    if not scores.size:
        return None
    order = np.argsort(-scores, kind="stable")
    scores, classes = scores[order], classes[order]
    top = float(scores[0])
    doubtful = scores <= 1.0 - floor
    doubt = float(np.sort(uncertainty(scores))[::-1][:MOST_COUNTED].sum())
    score = round(doubt + (NOTHING_CERTAIN if top < CERTAIN else 0.0), SCORE_DECIMALS)
    if score == 0:
        return None
    named = tuple(dict.fromkeys(labels[c - 1] for c in classes[doubtful]))
    return FrameDoubt(frame=frame, name=name, score=score, uncertain=int(doubtful.sum()),
                      uncertain_range=_range(scores[doubtful]), uncertain_labels=named,
                      confident=int((~doubtful).sum()), confident_range=_range(scores[~doubtful]), top=top)


class Ranking:
    """The ``limit`` most doubtful frames of a stream: frames are added one by one, memory stays bounded."""

    def __init__(self, limit: int, labels: Sequence[str], floor: float = FLOOR):
        if limit < 0:
            raise CvatArgoError(f"--next {limit}: give how many frames to list (0 lists none)")
        self.limit = limit
        self.labels = tuple(labels)
        self.floor = floor
        self._kept: list[FrameDoubt] = []

    def add(self, frame: int | None, name: str, scores: Any, classes: Any) -> None:
        """One frame's detections (all the model returned, before any threshold)."""
        if self.limit == 0:
            return
        doubt = frame_doubt(frame, name, scores, classes, self.labels, self.floor)
        if doubt is None:
            return
        self._kept.append(doubt)
        if len(self._kept) >= 2 * self.limit:
            self._trim()

    def _trim(self) -> None:
        self._kept.sort(key=lambda doubt: doubt.order)
        del self._kept[self.limit:]

    def ranked(self) -> list[FrameDoubt]:
        """The kept frames, most doubtful first."""
        self._trim()
        return list(self._kept)


# --- links to the frames in CVAT -----------------------------------------------------------------


class FrameLinks:
    """``<host>/tasks/<task>/jobs/<job>?frame=<n>``: where a frame opens in CVAT's annotation view.

    A frame belongs to the annotation job whose start..stop range holds it (the first by start frame,
    as jobs of a task with overlap share their border frames); ground-truth jobs are not where
    annotators work, so they are not linked.
    """

    def __init__(self, host: str, task_id: int, jobs: Iterable[Mapping[str, Any]]):
        self.host = host.rstrip("/")
        self.task_id = task_id
        self.ranges = sorted((int(job["start_frame"]), int(job["stop_frame"]), int(job["id"])) for job in jobs
                             if (job.get("type") or "annotation") == "annotation")

    def job_of(self, frame: int) -> int | None:
        return next((job for start, stop, job in self.ranges if start <= frame <= stop), None)

    def url(self, frame: int | None) -> str | None:
        job = None if frame is None else self.job_of(frame)
        return None if job is None else f"{self.host}/tasks/{self.task_id}/jobs/{job}?frame={frame}"


def read_jobs(client: Any, task_id: int) -> list[dict[str, Any]]:
    """The task's jobs as ``GET /api/jobs?task_id=`` lists them (JobRead JSON), every page."""
    from ..cvat.server import lenient_json, readable_error

    jobs: list[dict[str, Any]] = []
    page = 1
    try:
        while True:
            answer = lenient_json(client.api_client.jobs_api.list, task_id=task_id, page=page)
            jobs += answer.get("results") or []
            if not answer.get("next"):
                return jobs
            page += 1
    except Exception as exc:
        raise readable_error(exc, str(client.api_map.host), f"listing the jobs of task {task_id}") from None


def task_links(client: Any, task_id: int) -> FrameLinks:
    """Links into the task's jobs on the server ``client`` is logged in to."""
    return FrameLinks(client.api_map.host, task_id, read_jobs(client, task_id))


# --- the list ------------------------------------------------------------------------------------


def rows(ranked: Iterable[FrameDoubt], links: FrameLinks | None = None) -> list[dict[str, Any]]:
    """The written rows: frame (null when not a CVAT frame), name, score, why, url (null without a task)."""
    return [{"frame": doubt.frame, "name": doubt.name, "score": doubt.score, "why": doubt.why(),
             "url": links.url(doubt.frame) if links else None} for doubt in ranked]


def document(listed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``next-to-annotate.json``: the rows, most doubtful first, with what the score means."""
    return {"count": len(listed), "score": SCORE_TEXT, "frames": list(listed)}


def _cell(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def report_section(listed: Sequence[Mapping[str, Any]], shown: int = REPORT_ROWS) -> list[str]:
    """Markdown lines: the top ``shown`` rows as a table, and where the whole list is."""
    lines = ["", "## Next to annotate", ""]
    file_name = artifacts.NEXT_TO_ANNOTATE
    if not listed:
        return [*lines, f"No frame had a detection scoring {FLOOR} or more: nothing to suggest (`{file_name}` "
                "is empty)."]
    lines += [f"The frames where a person's labels would teach the model most (uncertain detections, or "
              f"nothing certain found). The top {min(shown, len(listed))} of {len(listed)}; the full list, with "
              f"scores, is in `{file_name}`.", "", "| frame | image | why | link |", "|---:|---|---|---|"]
    for row in listed[:shown]:
        link = f"[open in CVAT]({row['url']})" if row.get("url") else ""
        lines.append(f"| {_cell(row['frame'])} | {_cell(row['name'])} | {_cell(row['why'])} | {link} |")
    return lines
