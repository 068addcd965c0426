"""Train/validation split: seeded, deterministic, and stratified so every label can be evaluated.

A plain random 10% of a small task easily misses a rare label, and then its AP cannot be measured.
Here every label with at least two annotated images gets one of them into validation first (rarest
label first, never taking a label's last training image), then random images fill the quota.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping


def split_frames(labels_by_frame: Mapping[int, frozenset[int]], val_fraction: float, seed: int = 0) -> set[int]:
    """The frames that go to validation. ``labels_by_frame``: frame -> class ids in that image."""
    frames = sorted(labels_by_frame)
    if len(frames) < 2:
        return set()
    quota = min(len(frames) - 1, max(1, round(val_fraction * len(frames))))
    rng = random.Random(seed)
    order = frames[:]
    rng.shuffle(order)
    images_of = Counter(label for frame in frames for label in labels_by_frame[frame])
    in_train = Counter(images_of)
    val: set[int] = set()
    covered: set[int] = set()
    for label in sorted(images_of, key=lambda lab: (images_of[lab], lab)):
        if images_of[label] < 2 or label in covered:
            continue
        for frame in order:
            labels = labels_by_frame[frame]
            if frame in val or label not in labels:
                continue
            if any(in_train[other] <= 1 for other in labels):
                continue  # would take the last training image of some label
            val.add(frame)
            covered |= labels
            for other in labels:
                in_train[other] -= 1
            break
    for frame in order:
        if len(val) >= quota:
            break
        labels = labels_by_frame[frame]
        if frame in val or any(in_train[other] <= 1 for other in labels):
            continue
        val.add(frame)
        for other in labels:
            in_train[other] -= 1
    if not val:  # every image holds some label's only example: still evaluate on one, the least costly
        val.add(max(order, key=lambda f: min((in_train[lab] for lab in labels_by_frame[f]), default=len(frames))))
    return val
