"""Markdown pieces that the stages' reports share."""

from __future__ import annotations

from collections.abc import Sequence

#: A report lists at most this many items of a kind; the JSON file beside it holds them all.
LISTED_AT_MOST = 50


def capped_section(title: str, items: Sequence[str], complete_in: str, limit: int = LISTED_AT_MOST) -> list[str]:
    """Lines of a ``## title`` bullet list of at most ``limit`` items, then how many more ``complete_in`` has."""
    if not items:
        return []
    lines = ["", f"## {title}", ""] + [f"- {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"- ... and {len(items) - limit} more (all in {complete_in})")
    return lines
