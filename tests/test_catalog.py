"""The model and machine catalog: built-in entries, user files, and build-time refusals."""

from __future__ import annotations

import textwrap

import pytest

from cvat_argo import CatalogError, RequestError, TrainingRequest, load_catalog
from cvat_argo.request.catalog import CATALOG_ENV

SEED_MODELS = ("ssd-mobilenet-v2-coco", "frcnn-res50-coco", "frcnn-res101-coco", "frcnn-inception-resnet-v2-coco",
               "frcnn-nas-coco")


def write(tmp_path, text: str):
    path = tmp_path / "catalog.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_builtin_catalog_has_the_seed_models_and_mask_rcnn():
    catalog = load_catalog(env={})
    assert set(SEED_MODELS) | {"maskrcnn-res50-coco", "ssd-mobilenet-v2-small", "retinanet-res50-coco",
                               "retinanet-spinenet-mobile-coco"} == set(catalog.models)
    small = catalog.model("ssd-mobilenet-v2-small")  # the quickstart's CPU model: no download needed
    assert small.checkpoint.uri is None and small.backbone["mobilenet"]["filter_size_scale"] == 0.5
    assert catalog.default_model == "ssd-mobilenet-v2-coco"
    assert [m for m in catalog.machines] == ["cpu", "gpu-1", "gpu-2", "gpu-4", "gpu-8", "gpu-2x4"]


def test_builtin_entries_map_to_model_garden_experiments():
    catalog = load_catalog(env={})
    ssd = catalog.model("ssd-mobilenet-v2-coco")
    # retinanet_mobile_coco is registered with SpineNet-Mobile: the entry must replace the backbone.
    assert ssd.experiment == "retinanet_mobile_coco"
    assert ssd.backbone["type"] == "mobilenet" and ssd.backbone["mobilenet"]["model_id"] == "MobileNetV2"
    assert ssd.decoder["type"] == "fpn" and ssd.tflite
    for name in ("frcnn-res50-coco", "frcnn-res101-coco", "frcnn-inception-resnet-v2-coco", "frcnn-nas-coco"):
        assert catalog.model(name).experiment == "fasterrcnn_resnetfpn_coco"
    assert catalog.model("frcnn-nas-coco").decoder["type"] == "nasfpn"
    assert catalog.model("frcnn-nas-coco").min_gpus == 2
    stand_in = catalog.model("frcnn-inception-resnet-v2-coco")
    assert stand_in.stand_in and "ResNet-152" in stand_in.stand_in and stand_in.backbone["resnet"]["model_id"] == 152
    mask = catalog.model("maskrcnn-res50-coco")
    assert mask.experiment == "maskrcnn_resnetfpn_coco" and mask.masks
    for entry in catalog.models.values():
        assert entry.input_size % entry.input_size_multiple == 0
        assert entry.checkpoint.uri or entry.name == "ssd-mobilenet-v2-small"  # from scratch, by design
    # COCO-trained detectors: everything but the class head comes from the checkpoint.
    for name, experiment in (("retinanet-res50-coco", "retinanet_resnetfpn_coco"),
                             ("retinanet-spinenet-mobile-coco", "retinanet_mobile_coco")):
        coco = catalog.model(name)
        assert coco.experiment == experiment and coco.architecture == "retinanet"
        assert coco.checkpoint.modules == "all-but-class-head" and coco.checkpoint.trained_on.startswith("COCO")
    assert catalog.model("retinanet-spinenet-mobile-coco").backbone["type"] == "spinenet_mobile"


def test_default_epochs_depend_on_dataset_size():
    ssd = load_catalog(env={}).model("ssd-mobilenet-v2-coco")
    assert ssd.default_epochs(50) > ssd.default_epochs(800) > ssd.default_epochs(100_000)


def test_nas_needs_two_gpus_and_says_which_machines_have_them():
    catalog = load_catalog(env={})
    request = TrainingRequest.create(task_id=1, model="frcnn-nas-coco", machine="gpu-1")
    with pytest.raises(RequestError) as caught:
        catalog.resolve(request)
    assert str(caught.value) == (
        "model frcnn-nas-coco needs at least 2 GPUs, but machine type gpu-1 has 1; "
        "machine types with at least 2 GPUs: gpu-2, gpu-2x4, gpu-4, gpu-8"
    )
    with pytest.raises(RequestError, match="needs num_clones >= 2"):
        catalog.resolve(TrainingRequest.create(task_id=1, model="frcnn-nas-coco", machine="gpu-4", args="num_clones=1"))
    assert catalog.resolve(TrainingRequest.create(task_id=1, model="frcnn-nas-coco", machine="gpu-2")).num_clones == 2


@pytest.mark.parametrize(
    ("machine", "args", "message"),
    [
        ("gpu-2", "num_clones=4", "num_clones=4 is more than the 2 GPUs of machine type gpu-2: pick one of gpu-2x4, gpu-4, gpu-8"),
        ("cpu", "num_clones=2", "num_clones=2 is more than the 0 GPUs of machine type cpu"),
        ("gpu-4", "batch_size=6", "batch_size=6 cannot be split evenly over num_clones=4 GPUs: use a multiple of 4"),
        ("gpu-1", "input_size=300", "input_size=300 is not a multiple of 128, which model ssd-mobilenet-v2-coco needs"),
    ],
)
def test_arguments_are_checked_against_machine_and_model(machine, args, message):
    with pytest.raises(RequestError) as caught:
        load_catalog(env={}).resolve(TrainingRequest.create(task_id=1, machine=machine, args=args))
    assert message in str(caught.value)


def test_num_clones_defaults_to_the_machines_gpus():
    catalog = load_catalog(env={})
    assert catalog.resolve(TrainingRequest.create(task_id=1, machine="gpu-4")).num_clones == 4
    assert catalog.resolve(TrainingRequest.create(task_id=1, machine="cpu")).num_clones == 1
    assert catalog.resolve(TrainingRequest.create(task_id=1, machine="gpu-4", args="num_clones=2")).num_clones == 2


def test_unknown_model_and_machine_suggest_the_close_name():
    catalog = load_catalog(env={})
    with pytest.raises(CatalogError, match=r"unknown model 'ssd-mobilenet-v2' \(did you mean 'ssd-mobilenet-v2-coco'\?\)"):
        catalog.model("ssd-mobilenet-v2")
    with pytest.raises(CatalogError, match=r"unknown machine type 'gpu4' \(did you mean 'gpu-4'\?\)"):
        catalog.machine("gpu4")


def test_user_catalog_adds_extends_and_overrides(tmp_path):
    path = write(tmp_path, """
        default_model: my-frcnn
        models:
          - name: my-frcnn
            extends: frcnn-res50-coco
            description: Faster R-CNN fine-tuned on our warehouse data
            checkpoint: {uri: s3://models/warehouse-frcnn.tar.gz, sha256: "%s", modules: all}
            images: {train: registry.local/train:7}
          - name: ssd-mobilenet-v2-coco
            batch_size: 32
        machines:
          - name: a100-8
            description: 8x A100 80GB
            gpus: 8
            cpu: "96"
            memory: 900Gi
            node_selector: {node.kubernetes.io/instance-type: p4de.24xlarge}
    """ % ("a" * 64))
    catalog = load_catalog(path, env={})
    mine = catalog.model("my-frcnn")
    assert mine.experiment == "fasterrcnn_resnetfpn_coco" and mine.checkpoint.modules == "all"
    assert mine.checkpoint.uri == "s3://models/warehouse-frcnn.tar.gz" and mine.images == {"train": "registry.local/train:7"}
    assert catalog.model("ssd-mobilenet-v2-coco").batch_size == 32
    assert catalog.model("ssd-mobilenet-v2-coco").experiment == "retinanet_mobile_coco"  # other fields kept
    assert catalog.machine("a100-8").gpus == 8
    assert catalog.default_model == "my-frcnn"
    assert catalog.sources == ("built-in", str(path))


def test_catalog_file_from_the_environment(tmp_path):
    path = write(tmp_path, "models:\n  - {name: frcnn-res50-coco, input_size: 512}\n")
    assert load_catalog(env={CATALOG_ENV: str(path)}).model("frcnn-res50-coco").input_size == 512
    with pytest.raises(CatalogError, match=r"catalog file .*missing.yaml \(from \$CVAT_ARGO_CATALOG\) does not exist"):
        load_catalog(env={CATALOG_ENV: str(tmp_path / "missing.yaml")})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models:\n  - {name: x, extends: frcnn-res50-coco, input_siz: 512}\n",
         "models[0] (x): unknown field 'input_siz' (did you mean 'input_size'?)"),
        ("models:\n  - {name: x, extends: frcnn-res50-coco, input_size: 500}\n",
         "models[0] (x): entry: input_size=500 is not a multiple of 64, which model x needs"),
        ("models:\n  - {name: x, extends: nope}\n", "models[0] (x): extends: unknown entry 'nope'"),
        ("models:\n  - {name: x, description: incomplete}\n", "models[0] (x): architecture: Field required"),
        ("models:\n  - {name: x, extends: frcnn-res50-coco, checkpoint: {uri: 'ftp://h/x'}}\n",
         "scheme 'ftp' is not one of https, s3, gs, file or a path"),
        ("models:\n  - {name: x, extends: frcnn-res50-coco, images: {training: img}}\n", "images for unknown stages"),
        ("machines:\n  - {name: big, description: d, gpus: 2, cpu: lots, memory: 1Gi}\n", "machines[0] (big): cpu:"),
        ("model:\n  - {name: x}\n", "unknown catalog section 'model' (did you mean 'models'?)"),
        ("default_model: nope\n", "default_model: unknown model 'nope'"),
        ("models: [1, 2]\n", "models[0]: each entry is a mapping with a 'name'"),
        ("models: {x: {extends: frcnn-res50-coco, batch_size: 0}}\n", "batch_size: Input should be greater than or equal to 1"),
    ],
)
def test_bad_catalog_files_name_the_file_entry_and_field(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as caught:
        load_catalog(path, env={})
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_invalid_yaml_names_the_file_and_the_place_in_one_line(tmp_path):
    path = write(tmp_path, "models: [\n")
    with pytest.raises(CatalogError) as caught:
        load_catalog(path, env={})
    assert str(caught.value) == (f"catalog file {path} is not valid YAML: while parsing a flow node expected the node "
                                 "content, but found '<stream end>' at line 2, column 1")
