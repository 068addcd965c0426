"""Matplotlib without a display, set up once for every report the stages write."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def new_figure(*, ncols: int = 1, width: float = 6, height: float = 4):
    figure, axes = plt.subplots(1, ncols, figsize=(width, height))
    return figure, axes


def save_figure(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def blank_figure(*, width: float, height: float):
    return plt.figure(figsize=(width, height))
