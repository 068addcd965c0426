"""TFRecord framing and tf.train.Example encoding, checked by hand and against TensorFlow itself.

The pure-Python tests pin the byte format; the TensorFlow tests (skipped where TF is not installed)
prove that TF and Model Garden's TfExampleDecoder read exactly what we write, and that we read what
TF writes.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct

import google_crc32c
import pytest

from cvat_argo.data.imagefiles import jpeg_size, png_size
from cvat_argo.errors import DatasetError
from cvat_argo.formats.tfrecord.detection import detection_example, encode_mask_png
from cvat_argo.formats.tfrecord.example import BytesList, FloatList, Int64List, decode_example, encode_example
from cvat_argo.formats.tfrecord.records import (
    ShardedWriter,
    TFRecordWriter,
    frame_record,
    masked_crc32c,
    plan_shards,
    read_records,
    shard_name,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

SAMPLE = {
    "bytes": BytesList([b"", b"abc", bytes(range(256))]),
    "empty_bytes": BytesList([]),
    "floats": FloatList([0.0, -1.5, 0.25, 2.0**100, float("inf")]),  # float32-exact
    "empty_floats": FloatList([]),
    "ints": Int64List([0, 1, -1, 127, 128, 300, INT64_MIN, INT64_MAX]),
    "empty_ints": Int64List([]),
    "ключ/漢字": BytesList(["é ü 漢字 🚗".encode()]),
}


def f32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


# -- tf.train.Example, pure Python ----------------------------------------------------------------


def test_round_trip_keeps_every_type_and_edge_value():
    assert decode_example(encode_example(SAMPLE)) == SAMPLE


def test_encoding_is_pinned_byte_for_byte():
    # Example{features{feature{key: "a" value{int64_list{value: [1]}}}}} by hand from the .proto
    assert encode_example({"a": Int64List([1])}) == b"\n\x0c\n\n\n\x01a\x12\x05\x1a\x03\n\x01\x01"
    # a negative int64 is a 10-byte varint
    assert encode_example({"a": Int64List([-1])})[-10:] == b"\xff" * 9 + b"\x01"


def test_keys_are_sorted_so_output_is_deterministic():
    forward = encode_example({"b": Int64List([2]), "a": Int64List([1])})
    backward = encode_example({"a": Int64List([1]), "b": Int64List([2])})
    assert forward == backward
    assert forward.index(b"\x01a") < forward.index(b"\x01b")


def test_floats_are_stored_as_float32():
    decoded = decode_example(encode_example({"x": FloatList([0.1, 1 / 3])}))
    assert decoded["x"].values == (f32(0.1), f32(1 / 3))


def test_large_bytes_round_trip():
    blob = os.urandom(5 * 2**20)
    assert decode_example(encode_example({"image/encoded": BytesList([blob])}))["image/encoded"].values == (blob,)


def test_lists_accept_numpy_scalars_and_bools_but_not_wrong_types():
    np = pytest.importorskip("numpy")
    assert Int64List([np.int64(5), True]).values == (5, 1)
    assert FloatList([np.float32(0.5), 2]).values == (0.5, 2.0)
    with pytest.raises(TypeError, match="encode text first"):
        BytesList(["text"])
    with pytest.raises(TypeError, match="Int64List takes integers"):
        Int64List([1.5])
    with pytest.raises(TypeError, match="FloatList takes numbers"):
        FloatList(["1.0"])
    with pytest.raises(ValueError, match="outside the int64 range"):
        Int64List([INT64_MAX + 1])
    with pytest.raises(ValueError, match="out of float32 range"):
        encode_example({"x": FloatList([1e40])})


def test_decoder_accepts_unpacked_lists_and_skips_unknown_fields():
    # Int64List with two unpacked varints and FloatList with one unpacked fixed32, plus unknown field 7
    int64_list = b"\x08\x05\x08\x7f"
    float_list = b"\x0d" + struct.pack("<f", 2.5)
    feature_ints = b"\x1a" + bytes([len(int64_list)]) + int64_list
    feature_floats = b"\x12" + bytes([len(float_list)]) + float_list
    entries = b""
    for key, feature in ((b"i", feature_ints), (b"f", feature_floats)):
        entry = b"\x0a\x01" + key + b"\x12" + bytes([len(feature)]) + feature
        entries += b"\x0a" + bytes([len(entry)]) + entry
    example = b"\x0a" + bytes([len(entries)]) + entries + b"\x38\x01"
    assert decode_example(example) == {"i": Int64List([5, 127]), "f": FloatList([2.5])}


@pytest.mark.parametrize("data", [b"\x0a\x05\x0a", b"\x0a\x80", b"\x0b", b"\x0a\x04\x0a\x02\x12\x00"])
def test_malformed_examples_raise_dataset_error(data):
    with pytest.raises(DatasetError, match=r"malformed tf\.train\.Example"):
        decode_example(data)


# -- TFRecord framing --------------------------------------------------------------------------------


def test_crc_is_crc32c_masked_as_tensorflow_does():
    assert google_crc32c.value(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert masked_crc32c(b"") == 0xA282EAD8
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_frame_layout():
    framed = frame_record(b"hello")
    assert framed[:8] == struct.pack("<Q", 5)
    assert framed[8:12] == struct.pack("<I", masked_crc32c(framed[:8]))
    assert framed[12:17] == b"hello"
    assert framed[17:] == struct.pack("<I", masked_crc32c(b"hello"))


def write_records(path, records):
    with TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return writer


def test_writer_and_reader_round_trip(tmp_path):
    records = [b"", b"a", os.urandom(100_000), encode_example(SAMPLE)]
    path = tmp_path / "data.tfrecord"
    writer = write_records(path, records)
    assert list(read_records(path)) == records
    assert writer.bytes_written == path.stat().st_size == sum(len(r) + 16 for r in records)
    assert writer.records_written == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.tfrecord"]


def test_empty_file_has_no_records(tmp_path):
    path = tmp_path / "empty.tfrecord"
    write_records(path, [])
    assert path.stat().st_size == 0
    assert list(read_records(path)) == []


def test_writer_leaves_only_a_partial_file_while_open(tmp_path):
    path = tmp_path / "x.tfrecord"
    with TFRecordWriter(path) as writer:
        writer.write(b"record")
        assert not path.exists()
        assert (tmp_path / "x.tfrecord.partial").exists()
    assert path.exists() and not (tmp_path / "x.tfrecord.partial").exists()
    with pytest.raises(ValueError, match="write after close"):
        writer.write(b"late")


def test_an_exception_leaves_no_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "x.tfrecord"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError), TFRecordWriter(path) as writer:
        writer.write(b"record")
        raise RuntimeError("crash")
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tfrecord"]


def test_data_crc_mismatch_names_file_record_and_offset(tmp_path):
    path = tmp_path / "bad.tfrecord"
    write_records(path, [b"first", b"second"])
    data = bytearray(path.read_bytes())
    second = 16 + 5
    data[second + 12] ^= 0xFF  # first data byte of record 1
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"bad\.tfrecord: record 1 at byte offset {second}: data CRC mismatch"):
        list(read_records(path))
    assert list(read_records(path, verify=False)) == [b"first", bytes([ord("s") ^ 0xFF]) + b"econd"]


def test_length_crc_mismatch_is_caught_even_without_verify(tmp_path):
    path = tmp_path / "bad.tfrecord"
    write_records(path, [b"first"])
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="record 0 at byte offset 0: length CRC mismatch"):
        list(read_records(path, verify=False))


@pytest.mark.parametrize("cut", [1, 11, 12, 20, 25])
def test_truncation_names_file_and_offset(tmp_path, cut):
    path = tmp_path / "short.tfrecord"
    write_records(path, [b"0123456789", b"abcdefghij"])  # 26 bytes each
    path.write_bytes(path.read_bytes()[: 26 + cut])
    with pytest.raises(DatasetError, match=r"short\.tfrecord: record 1 at byte offset 26: truncated .* cut short"):
        list(read_records(path))


# -- shards ------------------------------------------------------------------------------------------


def test_plan_shards():
    assert plan_shards(0) == 1
    assert plan_shards(1) == 1
    assert plan_shards(150 * 2**20) == 1
    assert plan_shards(150 * 2**20 + 1) == 2
    assert plan_shards(1000, target_bytes=100) == 10
    with pytest.raises(ValueError):
        plan_shards(10, target_bytes=0)


def test_sharded_writer_writes_every_shard_even_empty_ones(tmp_path):
    with ShardedWriter(tmp_path / "out", "train", 3) as writer:
        for index in range(5):
            writer.write(f"r{index}".encode(), index % 2)  # shard 2 stays empty
    shards = writer.shards
    assert [s.path.name for s in shards] == [shard_name("train", i, 3) for i in range(3)]
    assert shards[0].path.name == "train-00000-of-00003.tfrecord"
    assert [s.records for s in shards] == [3, 2, 0]
    assert [s.bytes for s in shards] == [s.path.stat().st_size for s in shards]
    assert list(read_records(shards[0].path)) == [b"r0", b"r2", b"r4"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [s.path.name for s in shards]
    assert writer.pattern == str(tmp_path / "out" / "train-*-of-00003.tfrecord")


def test_sharded_writer_removes_everything_on_error(tmp_path):
    with pytest.raises(RuntimeError), ShardedWriter(tmp_path, "val", 2) as writer:
        writer.write(b"x", 0)
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_sharded_writer_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_shards"):
        ShardedWriter(tmp_path, "train", 0)
    with pytest.raises(ValueError, match="plain name"):
        ShardedWriter(tmp_path, "a/b", 1)
    with ShardedWriter(tmp_path, "train", 2) as writer, pytest.raises(ValueError, match=r"shard_index must be in 0\.\.1"):
        writer.write(b"x", 2)


# -- detection examples ------------------------------------------------------------------------------


def image_bytes(fmt: str, width: int = 64, height: int = 48, **save_args) -> tuple[bytes, object]:
    """A small gradient image encoded by Pillow, and its pixels as a NumPy array."""
    np = pytest.importorskip("numpy")
    image_module = pytest.importorskip("PIL.Image")
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    image_module.fromarray(pixels).save(buffer, format=fmt, **save_args)
    return buffer.getvalue(), pixels


def sample_detection(**overrides) -> bytes:
    encoded, _ = image_bytes("PNG")
    args = dict(
        encoded=encoded,
        image_format="png",
        width=64,
        height=48,
        source_id=17,
        filename="frame_000017.png",
        boxes=[(0, 0, 64, 48), (8, 4, 24, 20)],
        labels=[1, 2],
        texts=["car", "🚗 truck"],
    )
    args.update(overrides)
    return detection_example(**args)


def test_detection_example_keys_and_values():
    encoded, _ = image_bytes("PNG")
    features = decode_example(sample_detection(is_crowd=[False, True]))
    assert features["image/encoded"].values == (encoded,)
    assert features["image/format"].values == (b"png",)
    assert features["image/width"].values == (64,)
    assert features["image/height"].values == (48,)
    assert features["image/source_id"].values == (b"17",)
    assert features["image/filename"].values == (b"frame_000017.png",)
    assert features["image/key/sha256"].values == (hashlib.sha256(encoded).hexdigest().encode(),)
    assert features["image/object/bbox/xmin"].values == (0.0, f32(8 / 64))
    assert features["image/object/bbox/ymin"].values == (0.0, f32(4 / 48))
    assert features["image/object/bbox/xmax"].values == (1.0, f32(24 / 64))
    assert features["image/object/bbox/ymax"].values == (1.0, f32(20 / 48))
    assert features["image/object/class/label"].values == (1, 2)
    assert features["image/object/class/text"].values == (b"car", "🚗 truck".encode())
    assert features["image/object/area"].values == (64 * 48, 16 * 16)
    assert features["image/object/is_crowd"].values == (0, 1)
    assert "image/object/mask" not in features


def test_detection_example_without_objects_has_empty_lists():
    features = decode_example(sample_detection(boxes=[], labels=[], texts=[]))
    assert features["image/object/bbox/xmin"] == FloatList([])
    assert features["image/object/class/label"] == Int64List([])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"boxes": [(0, 0, 65, 48), (8, 4, 24, 20)]}, r"box 0 \(0, 0, 65, 48\) is empty or outside the 64x48 image"),
        ({"boxes": [(0, 0, 64, 48), (8, 4, 8, 20)]}, "box 1 .* is empty"),
        ({"boxes": [(-1, 0, 64, 48), (8, 4, 24, 20)]}, "box 0 .* outside"),
        ({"boxes": [(0, 0, 64, float("nan")), (8, 4, 24, 20)]}, "non-finite"),
        ({"labels": [1]}, "1 labels for 2 boxes"),
        ({"texts": ["a", "b", "c"]}, "3 texts for 2 boxes"),
        ({"is_crowd": [False]}, "1 is_crowd for 2 boxes"),
        ({"labels": [0, 1]}, "label 0 must be a 1-based class id"),
        ({"width": 48, "height": 64}, "the PNG is 64x48 but width/height say 48x64"),
        ({"image_format": "jpeg"}, "not a JPEG"),
        ({"image_format": "gif"}, "image_format must be 'jpeg' or 'png'"),
        ({"source_id": -1}, "source_id must be a non-negative integer"),
        ({"masks_png": [b"x", b"y"]}, "mask 0: not a PNG"),
    ],
)
def test_detection_example_validates(overrides, message):
    with pytest.raises(ValueError, match=message):
        sample_detection(**overrides)


def test_masks_must_match_the_image_size():
    np = pytest.importorskip("numpy")
    small = encode_mask_png(memoryview(np.zeros((10, 10), dtype=np.uint8)), 10, 10)
    with pytest.raises(ValueError, match="mask 0 is 10x10, the image is 64x48"):
        sample_detection(masks_png=[small, small])


def test_image_size_sniffing():
    assert png_size(image_bytes("PNG", 33, 21)[0]) == (33, 21)
    assert jpeg_size(image_bytes("JPEG", 33, 21)[0]) == (33, 21)
    assert jpeg_size(image_bytes("JPEG", 40, 30, progressive=True)[0]) == (40, 30)
    exif_rotated, _ = image_bytes("JPEG", 40, 30, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00")
    assert jpeg_size(exif_rotated) == (40, 30)  # stored frame, as TensorFlow decodes it
    with pytest.raises(ValueError, match="the JPEG is 40x30 but width/height say 30x40"):
        detection_example(encoded=exif_rotated, image_format="jpg", width=30, height=40, source_id=1,
                          filename="r.jpg", boxes=[], labels=[], texts=[])


def test_encode_mask_png_is_a_0_1_grayscale_png():
    np = pytest.importorskip("numpy")
    image_module = pytest.importorskip("PIL.Image")
    mask = np.zeros((48, 64), dtype=bool)
    mask[4:20, 8:24] = True
    png = encode_mask_png(memoryview(mask), 64, 48)
    decoded = np.asarray(image_module.open(io.BytesIO(png)))
    assert decoded.dtype == np.uint8 and decoded.shape == (48, 64)
    assert (decoded == mask.astype(np.uint8)).all()
    with pytest.raises(ValueError, match="values must be 0 or 1"):
        encode_mask_png(bytes([0, 255]), 2, 1)
    with pytest.raises(ValueError, match="expected width"):
        encode_mask_png(bytes(3), 2, 1)


# -- against TensorFlow ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def tf_example(tf, features):
    def feature(value):
        if isinstance(value, BytesList):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=value.values))
        if isinstance(value, FloatList):
            return tf.train.Feature(float_list=tf.train.FloatList(value=value.values))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=value.values))

    return tf.train.Example(features=tf.train.Features(feature={k: feature(v) for k, v in features.items()}))


def test_our_bytes_equal_tensorflows_deterministic_serialization(tf):
    assert encode_example(SAMPLE) == tf_example(tf, SAMPLE).SerializeToString(deterministic=True)


def test_tensorflow_parses_our_examples(tf):
    parsed = tf.train.Example.FromString(encode_example(SAMPLE))
    assert parsed == tf_example(tf, SAMPLE)


def test_we_parse_tensorflows_examples(tf):
    assert decode_example(tf_example(tf, SAMPLE).SerializeToString()) == SAMPLE


def test_tfrecord_dataset_reads_our_file(tf, tmp_path):
    records = [b"", os.urandom(70_000), encode_example(SAMPLE)]
    path = tmp_path / "ours.tfrecord"
    write_records(path, records)
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == records


def test_we_read_tensorflows_file(tf, tmp_path):
    records = [b"", os.urandom(70_000), b"x"]
    path = str(tmp_path / "theirs.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    assert list(read_records(path)) == records


@pytest.fixture(scope="module")
def decoder_module(tf):
    return pytest.importorskip("official.vision.dataloaders.tf_example_decoder")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("include_mask", [False, True])
def test_model_garden_decoder_reads_detection_examples(tf, decoder_module, fmt, include_mask):
    np = pytest.importorskip("numpy")
    from official.vision.dataloaders import utils

    encoded, pixels = image_bytes(fmt, quality=95) if fmt == "JPEG" else image_bytes(fmt)
    boxes = [(0, 0, 64, 48), (8, 4, 24, 20), (10.5, 2.25, 30.5, 40)]
    masks = [np.zeros((48, 64), dtype=np.uint8) for _ in boxes]
    for mask, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
        mask[int(y0):int(y1), int(x0):int(x1)] = 1
    example = detection_example(
        encoded=encoded, image_format=fmt.lower(), width=64, height=48, source_id=1234567, filename="f",
        boxes=boxes, labels=[1, 2, 3], texts=["a", "b", "c"], is_crowd=[False, True, False],
        masks_png=[encode_mask_png(memoryview(m), 64, 48) for m in masks] if include_mask else None,
    )
    decoded = decoder_module.TfExampleDecoder(include_mask=include_mask).decode(tf.constant(example))

    expected_boxes = [[y0 / 48, x0 / 64, y1 / 48, x1 / 64] for x0, y0, x1, y1 in boxes]
    np.testing.assert_allclose(decoded["groundtruth_boxes"].numpy(), expected_boxes, rtol=1e-6)
    assert decoded["groundtruth_classes"].numpy().tolist() == [1, 2, 3]
    assert decoded["groundtruth_is_crowd"].numpy().tolist() == [False, True, False]
    np.testing.assert_allclose(decoded["groundtruth_area"].numpy(), [64 * 48, 16 * 16, 20 * 37.75])
    assert decoded["source_id"].numpy() == b"1234567"
    assert utils.process_source_id(decoded["source_id"]).numpy() == 1234567
    assert (decoded["height"].numpy(), decoded["width"].numpy()) == (48, 64)
    image = decoded["image"].numpy()
    assert image.shape == (48, 64, 3)
    if fmt == "PNG":
        assert (image == pixels).all()
    else:
        assert np.abs(image.astype(int) - pixels).mean() < 3
    if include_mask:
        got = decoded["groundtruth_instance_masks"].numpy()
        assert got.shape == (3, 48, 64)
        assert (got == np.stack(masks).astype(np.float32)).all()  # 0/1 floats: Mask R-CNN's BCE targets
