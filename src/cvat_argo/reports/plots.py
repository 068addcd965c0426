"""Matplotlib without a display, set up once for every report the stages write, and the colours they share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import LogFormatter

#: Okabe & Ito's colour-blind-safe palette (blue, orange, bluish green, vermillion, reddish purple,
#: sky blue, yellow, grey): label i of a model has colour i in every plot and in the pre-annotation grid.
LABEL_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#999999")


def label_colour(index: int) -> str:
    """The colour of the ``index``-th label (0-based); past eight the colours repeat, the text says which."""
    return LABEL_COLOURS[index % len(LABEL_COLOURS)]


def rgb(colour: str) -> tuple[int, int, int]:
    """``#RRGGBB`` -> (r, g, b) for PIL."""
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def new_figure(*, ncols: int = 1, width: float = 6, height: float = 4):
    figure, axes = plt.subplots(1, ncols, figsize=(width, height))
    return figure, axes


def save_figure(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def blank_figure(*, width: float, height: float):
    return plt.figure(figsize=(width, height))


class _PlainLogFormatter(LogFormatter):
    """Matplotlib's own choice of which log ticks to label, written 0.2, 3 and 50 instead of 2x10^-1."""

    def __call__(self, x: float, pos: Any = None) -> str:
        if not super().__call__(x, pos):
            return ""
        return f"{x:,.0f}" if x >= 1 and x == round(x) else f"{x:g}"


def plain_log_ticks(axis) -> None:
    """Label a log-scale ``axis`` (an Axes' xaxis or yaxis) with plain numbers, major and minor ticks."""
    axis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
