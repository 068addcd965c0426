"""Did-you-mean suggestions for names a user typed (argument keys, models, machine types, catalog fields)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name``, or None when nothing is close enough to be a likely typo."""
    known = list(known)
    matches = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if matches:
        return matches[0]
    # A prefix or containment is a strong hint even when the ratio is low (``ssd`` -> ``ssd-mobilenet-v2-coco``).
    partial = sorted(k for k in known if name and (k.startswith(name) or name in k))
    return partial[0] if len(partial) == 1 else None


def unknown_name_message(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown argument 'epoch' (did you mean 'epochs'?); known: a, b, c``."""
    known = sorted(known)
    guess = closest(name, known)
    hint = f" (did you mean {guess!r}?)" if guess else ""
    return f"unknown {kind} {name!r}{hint}; known: {', '.join(known)}"
