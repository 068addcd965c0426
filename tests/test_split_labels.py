"""Train/validation split and label mapping."""

from __future__ import annotations

import random

import pytest

from cvat_argo.data.labels import LabelMapping
from cvat_argo.data.split import split_frames
from cvat_argo.errors import DatasetError


def test_split_is_seeded_and_deterministic():
    labels = {frame: frozenset({frame % 3 + 1}) for frame in range(200)}
    assert split_frames(labels, 0.1, seed=1) == split_frames(labels, 0.1, seed=1)
    assert split_frames(labels, 0.1, seed=1) != split_frames(labels, 0.1, seed=2)
    assert len(split_frames(labels, 0.1, seed=1)) == 20


def test_every_label_with_two_images_reaches_validation():
    rng = random.Random(0)
    labels = {frame: frozenset({1}) for frame in range(300)}
    labels[1000], labels[1001] = frozenset({7}), frozenset({7, 1})  # a rare label in two images
    labels[2000] = frozenset({9})  # a label in one image stays in training
    labels[3000] = frozenset()  # a negative
    for _ in range(20):
        val = split_frames(labels, 0.05, seed=rng.randrange(1000))
        val_labels = set().union(*(labels[f] for f in val))
        assert 7 in val_labels and 9 not in val_labels
        train_labels = set().union(*(labels[f] for f in labels if f not in val))
        assert {1, 7, 9} <= train_labels


def test_minimum_of_one_validation_image():
    assert len(split_frames({1: frozenset({1}), 2: frozenset({1})}, 0.01)) == 1
    assert len(split_frames({1: frozenset({1}), 2: frozenset({2})}, 0.1)) == 1  # even at a label's cost
    assert split_frames({1: frozenset({1})}, 0.5) == set()


def test_label_mapping_keeps_task_order_and_ids():
    mapping = LabelMapping(["car", "person", "bike"])
    assert mapping.names == ("car", "person", "bike") and mapping.id_of("bike") == 3


def test_labels_subset_and_rename_merge():
    mapping = LabelMapping(["car", "truck", "person", "bike"], keep=["vehicle", "bike"],
                           rename=["car=vehicle", "truck=vehicle"])
    assert mapping.names == ("vehicle", "bike")
    assert mapping.id_of("car") == mapping.id_of("truck") == 1 and mapping.id_of("bike") == 2
    assert mapping.id_of("person") is None and mapping.is_task_label("person")
    assert not mapping.is_task_label("dog")


@pytest.mark.parametrize(
    ("keep", "rename", "message"),
    [(["cars"], [], "--labels: unknown label 'cars' (did you mean 'car'?)"),
     (None, ["carr=x"], "--rename 'carr=x': unknown label 'carr' (did you mean 'car'?)"),
     (None, ["car"], "--rename 'car' is not OLD=NEW")],
)
def test_label_errors_name_the_label(keep, rename, message):
    with pytest.raises(DatasetError) as caught:
        LabelMapping(["car", "person"], keep=keep, rename=rename)
    assert message in str(caught.value)


def test_reviewed_frames_of_a_live_task_count_as_annotated():
    from types import SimpleNamespace

    from cvat_argo.cvat.server import reviewed_frames

    jobs = [SimpleNamespace(type="annotation", state="completed", stage="annotation", start_frame=0, stop_frame=4),
            SimpleNamespace(type="annotation", state="in progress", stage="validation", start_frame=5, stop_frame=6),
            SimpleNamespace(type="annotation", state="new", stage="annotation", start_frame=7, stop_frame=9),
            SimpleNamespace(type="ground_truth", state="completed", stage="acceptance", start_frame=0, stop_frame=9)]
    assert reviewed_frames(jobs) == {0, 1, 2, 3, 4, 5, 6}
