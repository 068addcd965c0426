"""label_map.pbtxt and labels.json: round trips, quoting of odd names, and refusal of broken id lists."""

from __future__ import annotations

import json

import pytest

from cvat_argo.errors import DatasetError
from cvat_argo.formats.label_map import read_label_map, read_labels_json, write_label_map, write_labels_json

ODD_NAMES = ["car", "it's", 'say "hi"', "back\\slash", "two\nlines", "tab\there", "bell\x07", "é ü 漢字 🚗", "#not a comment"]


def test_label_map_format(tmp_path):
    path = tmp_path / "label_map.pbtxt"
    write_label_map(path, ["car", "person"])
    assert path.read_text() == "item {\n  id: 1\n  name: 'car'\n}\nitem {\n  id: 2\n  name: 'person'\n}\n"


def test_label_map_round_trip_with_odd_names(tmp_path):
    path = tmp_path / "label_map.pbtxt"
    write_label_map(path, ODD_NAMES)
    assert read_label_map(path) == ODD_NAMES
    text = path.read_text(encoding="utf-8")
    assert r"name: 'it\'s'" in text
    assert r"name: 'back\\slash'" in text
    assert r"name: 'two\nlines'" in text
    assert r"name: 'bell\007'" in text


def test_label_map_reader_takes_other_writers_styles(tmp_path):
    path = tmp_path / "label_map.pbtxt"
    path.write_text(
        "# written by hand\n"
        'item { name: "person" id: 2 display_name: "Person" }\n'
        "item {\n  id: 1  # first\n  name: '\\303\\251\\x41'\n}\n",
        encoding="utf-8",
    )
    assert read_label_map(path) == ["éA", "person"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("item { id: 1 name: 'a' }\nitem { id: 3 name: 'b' }\n", r"label ids must be 1\.\.2 without gaps, got \[1, 3\]"),
        ("item { id: 0 name: 'a' }\n", "without gaps"),
        ("item { id: 1 name: 'a' }\nitem { id: 1 name: 'b' }\n", "label id 1 appears twice"),
        ("item { id: 1 name: 'a' }\nitem { id: 2 name: 'a' }\n", "label 'a' appears twice"),
        ("item { id: 1 }\n", "needs an integer 'id' and a quoted 'name'"),
        ("item { id: 1 name: 'a' \n", "not closed"),
        ("items { id: 1 name: 'a' }\n", "expected 'item {'"),
        ("item { id: 1 name: 'a }\n", "cannot parse"),
        ("", "no labels"),
    ],
)
def test_label_map_reader_refuses_broken_files(tmp_path, text, message):
    path = tmp_path / "label_map.pbtxt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match=message) as error:
        read_label_map(path)
    assert str(path) in str(error.value)


def test_missing_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="cannot read the label map"):
        read_label_map(tmp_path / "nope.pbtxt")
    with pytest.raises(DatasetError, match="cannot read the labels file"):
        read_labels_json(tmp_path / "nope.json")


@pytest.mark.parametrize("names", [[], ["a", "a"], ["a", ""]])
def test_writers_refuse_empty_or_duplicate_names(tmp_path, names):
    with pytest.raises(DatasetError):
        write_label_map(tmp_path / "label_map.pbtxt", names)
    with pytest.raises(DatasetError):
        write_labels_json(tmp_path / "labels.json", names)


def test_labels_json_round_trip(tmp_path):
    path = tmp_path / "labels.json"
    write_labels_json(path, ODD_NAMES)
    assert read_labels_json(path) == ODD_NAMES
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["labels"][:2] == [{"id": 1, "name": "car"}, {"id": 2, "name": "it's"}]
    assert "漢字" in path.read_text(encoding="utf-8")  # UTF-8, not \\u escapes


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"labels": [{"id": 2, "name": "a"}]}, "without gaps"),
        ({"labels": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}, "appears twice"),
        ({"labels": [{"id": "1", "name": "a"}]}, "integer 'id'"),
        ({"labels": [{"id": True, "name": "a"}]}, "integer 'id'"),
        ({"names": ["a"]}, "expected"),
        (["a"], "expected"),
    ],
)
def test_labels_json_refuses_broken_files(tmp_path, document, message):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        read_labels_json(path)


@pytest.fixture(scope="module")
def label_map_class():
    """A StringIntLabelMap message class built at run time (same field numbers as the TF OD API proto)."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="string_int_label_map_test.proto", package="test", syntax="proto2")
    item = proto.message_type.add(name="StringIntLabelMapItem")
    item.field.add(name="name", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    item.field.add(name="id", number=2, type=field.TYPE_INT32, label=field.LABEL_OPTIONAL)
    item.field.add(name="display_name", number=3, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    label_map = proto.message_type.add(name="StringIntLabelMap")
    label_map.field.add(name="item", number=1, type=field.TYPE_MESSAGE, label=field.LABEL_REPEATED,
                        type_name=".test.StringIntLabelMapItem")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("test.StringIntLabelMap"))


def test_protobuf_text_format_parses_what_we_write(tmp_path, label_map_class):
    from google.protobuf import text_format

    path = tmp_path / "label_map.pbtxt"
    write_label_map(path, ODD_NAMES)
    parsed = text_format.Parse(path.read_text(encoding="utf-8"), label_map_class())
    assert [(item.id, item.name) for item in parsed.item] == list(enumerate(ODD_NAMES, 1))


def test_we_parse_what_protobuf_text_format_writes(tmp_path, label_map_class):
    from google.protobuf import text_format

    message = label_map_class()
    for label_id, name in enumerate(ODD_NAMES, 1):
        message.item.add(id=label_id, name=name, display_name=name.upper())
    path = tmp_path / "label_map.pbtxt"
    for as_utf8 in (False, True):  # octal escapes for non-ASCII, or raw UTF-8
        path.write_text(text_format.MessageToString(message, as_utf8=as_utf8), encoding="utf-8")
        assert read_label_map(path) == ODD_NAMES
