"""Restore modes, variable by variable: an 80-class RetinaNet checkpoint built with Model Garden itself,
restored into a 3-class model by the train stage's restore code (``cvat_argo.training.restore``).

The 80-class model is Model Garden's own RetinaNet (the quickstart's half-width MobileNetV2 + FPN at
128 px, so it builds in seconds), every variable moved off its initial value and written the way Model
Garden's trainer writes checkpoints (``model`` plus ``model.checkpoint_items``). Then each restored
variable must equal the checkpoint's value, and each fresh one must keep its initial value.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("official", reason="needs the train extra (tf-models-official)")
tf = pytest.importorskip("tensorflow")

from cvat_argo.errors import ArgumentError  # noqa: E402
from cvat_argo.formats.label_map import write_labels_json  # noqa: E402
from cvat_argo.request.catalog import load_catalog  # noqa: E402
from cvat_argo.request.model_entry import RESTORE_MODES, Checkpoint  # noqa: E402
from cvat_argo.request.spec import Arguments  # noqa: E402
from cvat_argo.training import restore  # noqa: E402
from cvat_argo.training.experiment import build_experiment, build_model  # noqa: E402
from support.tiny_dataset import write_tiny_dataset  # noqa: E402

ENTRY = load_catalog(env={}).model("ssd-mobilenet-v2-small")
ARGUMENTS = Arguments(input_size=128)
COCO_LIKE = 80


def with_mode(mode: str):
    return ENTRY.model_copy(update={"checkpoint": ENTRY.checkpoint.model_copy(update={"modules": mode})})


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("restore")
    three = write_tiny_dataset(root / "three")
    eighty = write_tiny_dataset(root / "eighty")
    # The same records under an 80-label labels.json: Model Garden builds an 81-class model (+ background).
    write_labels_json(eighty / "labels.json", [f"class-{i}" for i in range(1, COCO_LIKE + 1)])
    return root, three, eighty


def _write_checkpoint(model, path) -> str:
    """Every variable moved off its initial value, saved as Model Garden's trainer saves (model + items)."""
    rng = np.random.default_rng(3)
    for variable in model.variables:
        variable.assign(variable.numpy() + rng.normal(0.5, 0.1, variable.shape).astype(variable.dtype.as_numpy_dtype))
    return tf.train.Checkpoint(model=model, **model.checkpoint_items).write(str(path))


@pytest.fixture(scope="module")
def coco_like(datasets):
    """(80-class source model, its checkpoint path)."""
    root, _, eighty = datasets
    plan = build_experiment(ENTRY, ARGUMENTS, eighty, model_dir=root / "source")
    assert plan.num_classes == COCO_LIKE + 1 and plan.restore is None  # no base checkpoint: from scratch
    _, model = build_model(plan)
    return model, _write_checkpoint(model, root / "ckpt" / "ckpt")


def _module_variables(model, module: str):
    return list(model.checkpoint_items[module].variables)


def _restore_into_three_classes(datasets, checkpoint, mode, name):
    root, three, _ = datasets
    plan = build_experiment(with_mode(mode), ARGUMENTS, three, model_dir=root / name, init_checkpoint=checkpoint)
    _, model = build_model(plan)
    initial = {id(v): v.numpy() for v in model.variables}
    announced: list[str] = []
    restore.initializer(plan.restore, announce=announced.append)(model)  # what the train stage installs
    return plan, model, initial, announced


def test_all_but_class_head_restores_every_variable_but_the_class_head(datasets, coco_like):
    source, checkpoint = coco_like
    plan, model, initial, announced = _restore_into_three_classes(datasets, checkpoint, "all-but-class-head", "abc")
    assert plan.num_classes == 4
    assert plan.restore.to_json() == {"mode": "all-but-class-head", "checkpoint": checkpoint,
                                      "restored": ["backbone", "decoder", "head"], "fresh": ["head/_classifier"]}
    # Model Garden's own initialize, if it ever ran, would restore the backbone and decoder only (never crash).
    assert plan.config.task.init_checkpoint_modules == ["backbone", "decoder"]

    # The checkpoint really is 80-class: its class head is 81 classes x 9 anchors wide.
    reader = tf.train.load_checkpoint(checkpoint)
    assert reader.get_variable_to_shape_map()["head/_classifier/bias/.ATTRIBUTES/VARIABLE_VALUE"] == [81 * 9]

    fresh_ids = {id(v) for v in model.head._classifier.variables}
    assert len(fresh_ids) == 3  # separable conv: depthwise, pointwise kernels and bias
    checked = {"restored": 0, "fresh": 0}
    for module in ("backbone", "decoder", "head"):
        pairs = list(zip(_module_variables(source, module), _module_variables(model, module), strict=True))
        assert pairs, module
        for old, new in pairs:
            if id(new) in fresh_ids:  # the class head: another shape or a fresh start, never the checkpoint's
                np.testing.assert_array_equal(new.numpy(), initial[id(new)], err_msg=new.name)
                if "bias" in new.name or "pointwise" in new.name:
                    assert new.shape[-1] == 4 * 9 and old.shape[-1] == 81 * 9, new.name
                checked["fresh"] += 1
            else:
                assert new.shape == old.shape, new.name
                np.testing.assert_array_equal(new.numpy(), old.numpy(), err_msg=new.name)
                assert not np.array_equal(new.numpy(), initial[id(new)]), f"{new.name} kept its initial value"
                checked["restored"] += 1
    assert checked == {"restored": len(model.variables) - 3, "fresh": 3}
    assert announced and "start fresh (head/_classifier)" in announced[0]

    report = restore.restore(model, plan.restore)
    assert sorted(report.fresh) == sorted(v.name for v in model.head._classifier.variables)
    assert len(report.restored) == checked["restored"]


def test_all_with_another_class_count_becomes_all_but_class_head(datasets, coco_like):
    root, three, _ = datasets
    _, checkpoint = coco_like
    plan = build_experiment(with_mode("all"), ARGUMENTS, three, model_dir=root / "all", init_checkpoint=checkpoint)
    assert plan.restore.mode == "all-but-class-head" and "restoring all but the class head" in plan.notes[0]
    # Forced, 'all' fails on the class head's shape with a message naming the checkpoint and the way out.
    _, model = build_model(plan)
    forced = restore.RestorePlan(mode="all", checkpoint=checkpoint, restored=("backbone", "decoder", "head"), fresh=())
    with pytest.raises(ArgumentError, match=r"does not fit this model with restore mode all .*all-but-class-head"):
        restore.restore(model, forced)


@pytest.mark.parametrize(("mode", "restored", "fresh"), [
    ("backbone", ["backbone"], ["decoder", "head"]),
    ("backbone+decoder", ["backbone", "decoder"], ["head"]),
])
def test_partial_modes_leave_the_rest_fresh(datasets, coco_like, mode, restored, fresh):
    source, checkpoint = coco_like
    plan, model, initial, _ = _restore_into_three_classes(datasets, checkpoint, mode, mode.replace("+", "-"))
    assert (plan.restore.restored, plan.restore.fresh) == (tuple(restored), tuple(fresh))
    for module in restored:
        for old, new in zip(_module_variables(source, module), _module_variables(model, module), strict=True):
            np.testing.assert_array_equal(new.numpy(), old.numpy(), err_msg=new.name)
    for module in fresh:
        for new in _module_variables(model, module):
            np.testing.assert_array_equal(new.numpy(), initial[id(new)], err_msg=new.name)


def test_all_with_the_same_labels_restores_the_class_head_too(datasets):
    root, three, _ = datasets
    plan = build_experiment(ENTRY, ARGUMENTS, three, model_dir=root / "same-source")
    _, source = build_model(plan)
    checkpoint = _write_checkpoint(source, root / "same-ckpt" / "ckpt")
    plan, model, _, _ = _restore_into_three_classes(datasets, checkpoint, "all", "same")
    assert plan.restore.mode == "all" and plan.restore.fresh == () and plan.notes == ()
    for old, new in zip(source.variables, model.variables, strict=True):
        np.testing.assert_array_equal(new.numpy(), old.numpy(), err_msg=new.name)


def test_whole_model_modes_refuse_a_backbone_checkpoint(datasets, coco_like):
    root, three, _ = datasets
    source, _ = coco_like
    backbone_only = tf.train.Checkpoint(backbone=source.backbone).write(str(root / "backbone" / "ckpt"))
    for mode in ("all-but-class-head", "all"):
        with pytest.raises(ArgumentError, match=r"needs a checkpoint of a whole retinanet model"):
            build_experiment(with_mode(mode), ARGUMENTS, three, model_dir=root / "x", init_checkpoint=backbone_only)


def test_restore_modes_are_validated_in_the_catalog():
    assert tuple(RESTORE_MODES) == ("backbone", "backbone+decoder", "all-but-class-head", "all")
    with pytest.raises(ValueError, match="all-but-class-head"):
        Checkpoint(uri="https://example.invalid/x.tar.gz", modules="all-but-head")
    catalog = load_catalog(env={})
    for name in ("retinanet-res50-coco", "retinanet-spinenet-mobile-coco"):
        entry = catalog.model(name)
        assert entry.checkpoint.modules == "all-but-class-head" and "COCO" in entry.checkpoint.trained_on
        assert entry.checkpoint.uri.startswith("https://storage.googleapis.com/tf_model_garden/vision/retinanet/")


@pytest.mark.slow
def test_the_train_stage_restores_by_mode_and_says_so_in_model_json(datasets, coco_like, capsys):
    """The train stage itself: the 80-class checkpoint as pull-base-model leaves it, one short epoch
    (3 steps and an evaluation: ~1 min of CPU)."""
    import shutil

    from cvat_argo.engines import artifacts
    from cvat_argo.steps import train

    root, three, _ = datasets
    _, checkpoint = coco_like
    base = root / "base-model"
    (base / "checkpoint").mkdir(parents=True)
    for file in tf.io.gfile.glob(checkpoint + ".*"):
        shutil.copy(file, base / "checkpoint")
    artifacts.BaseModelManifest(model=ENTRY.name, uri="file://coco-like", checkpoint="checkpoint/ckpt",
                                modules="all-but-class-head", trained_on="80 generated labels").write(base)
    out = root / "trained"
    train.run(ENTRY.name, "", "epochs=1,batch_size=4,input_size=128", three, base, out)
    restored = artifacts.TrainedModelManifest.read(out).restored
    assert restored == {"mode": "all-but-class-head", "checkpoint": str(base / "checkpoint" / "ckpt"),
                        "restored": ["backbone", "decoder", "head"], "fresh": ["head/_classifier"]}
    assert "start fresh (head/_classifier)" in capsys.readouterr().out
