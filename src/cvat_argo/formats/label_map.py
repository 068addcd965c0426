"""Class names next to the TFRecords: ``label_map.pbtxt`` for TF OD API tools, ``labels.json`` for us.

Class ids are 1-based and follow the order of the task's labels (0 is background in every TF
detector). Both files say the same thing; the pbtxt exists because TF OD API-era tools (and people)
expect it, the JSON because it needs no protobuf text parser. Readers insist on ids 1..N with no
gaps or repeats: a gap would shift every class after it and silently mislabel predictions.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from cvat_argo.errors import DatasetError

PathLike = str | os.PathLike[str]


def _check_names(path: PathLike, names: Sequence[str]) -> list[str]:
    checked = list(names)
    if not checked:
        raise DatasetError(f"{path}: no labels to write; the task defines no labels")
    seen: set[str] = set()
    for name in checked:
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{path}: label names must be non-empty strings, got {name!r}")
        if name in seen:
            raise DatasetError(f"{path}: label {name!r} appears twice; label names must be unique")
        seen.add(name)
    return checked


def _ordered(path: PathLike, items: list[tuple[int, str]]) -> list[str]:
    """Names by id, refusing anything but ids 1..N each once and unique names."""
    by_id: dict[int, str] = {}
    for label_id, name in items:
        if label_id in by_id:
            raise DatasetError(f"{path}: label id {label_id} appears twice")
        by_id[label_id] = name
    if sorted(by_id) != list(range(1, len(by_id) + 1)):
        raise DatasetError(f"{path}: label ids must be 1..{len(by_id)} without gaps, got {sorted(by_id)}")
    names = [by_id[i] for i in range(1, len(by_id) + 1)]
    return _check_names(path, names)


# --------------------------------------------------------------------------------------------------
# label_map.pbtxt (protobuf text format of object_detection.protos.StringIntLabelMap)
# --------------------------------------------------------------------------------------------------

_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _quote(name: str) -> str:
    """A single-quoted protobuf text string; other control characters as octal, UTF-8 left as is."""
    out = []
    for char in name:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    return "'" + "".join(out) + "'"


def write_label_map(path: PathLike, names: Sequence[str]) -> None:
    """Write ``item { id: i name: '...' }`` for each name, ids 1..N in order."""
    items = [f"item {{\n  id: {i}\n  name: {_quote(name)}\n}}\n" for i, name in enumerate(_check_names(path, names), 1)]
    Path(path).write_text("".join(items), encoding="utf-8")


_TOKEN = re.compile(
    r"""\s+|\#[^\n]*
    |(?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
    |(?P<word>[A-Za-z_][A-Za-z0-9_.]*|[-+]?\d+)
    |(?P<punct>[{}:])
    """,
    re.VERBOSE,
)
_UNESCAPE = re.compile(rb"""\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))""", re.DOTALL)
_SIMPLE = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b", b"f": b"\f", b"v": b"\v"}


def _unescape(literal: str) -> str:
    """Protobuf text string literal -> str; octal and hex escapes are bytes of the UTF-8 text."""

    def replace(match: re.Match[bytes]) -> bytes:
        octal, hexa, char = match.groups()
        if octal:
            return bytes([int(octal, 8) & 0xFF])
        if hexa:
            return bytes([int(hexa, 16)])
        return _SIMPLE.get(char, char)

    return _UNESCAPE.sub(replace, literal[1:-1].encode("utf-8")).decode("utf-8")


def _tokens(path: PathLike, text: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            line = text.count("\n", 0, pos) + 1
            raise DatasetError(f"{path}: line {line}: cannot parse {text[pos:pos + 20]!r}")
        pos = match.end()
        if match.lastgroup:
            yield match.lastgroup, match.group()


def _parse_items(path: PathLike, text: str) -> list[dict[str, str]]:
    """``item { key: value ... }`` blocks as dicts of raw tokens (strings still quoted)."""
    items: list[dict[str, str]] = []
    tokens = _tokens(path, text)
    for kind, value in tokens:
        if (kind, value) != ("word", "item") or next(tokens, None) != ("punct", "{"):
            raise DatasetError(f"{path}: expected 'item {{', got {value!r}")
        fields: dict[str, str] = {}
        for kind, key in tokens:
            if (kind, key) == ("punct", "}"):
                break
            if kind != "word" or next(tokens, None) != ("punct", ":"):
                raise DatasetError(f"{path}: expected 'field: value' inside an item, got {key!r}")
            value_token = next(tokens, None)
            if value_token is None or value_token[0] == "punct":
                raise DatasetError(f"{path}: field {key!r} has no value")
            fields[key] = value_token[1]
        else:
            raise DatasetError(f"{path}: an item is not closed with '}}'")
        items.append(fields)
    return items


def read_label_map(path: PathLike) -> list[str]:
    """Names in id order from a ``label_map.pbtxt`` (``display_name`` and other fields are ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the label map: {error}") from None
    pairs = []
    for item in _parse_items(path, text):
        raw_id, raw_name = item.get("id"), item.get("name")
        if raw_id is None or raw_name is None or raw_name[0] not in "'\"":
            raise DatasetError(f"{path}: every item needs an integer 'id' and a quoted 'name', got {item}")
        try:
            pairs.append((int(raw_id), _unescape(raw_name)))
        except (ValueError, UnicodeDecodeError):
            raise DatasetError(f"{path}: item {item} has an invalid id or name") from None
    return _ordered(path, pairs)


# --------------------------------------------------------------------------------------------------
# labels.json
# --------------------------------------------------------------------------------------------------


def write_labels_json(path: PathLike, names: Sequence[str]) -> None:
    """Write ``{"labels": [{"id": 1, "name": ...}, ...]}``, UTF-8, ids 1..N in order."""
    labels = [{"id": i, "name": name} for i, name in enumerate(_check_names(path, names), 1)]
    Path(path).write_text(json.dumps({"labels": labels}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def read_labels_json(path: PathLike) -> list[str]:
    """Names in id order from ``labels.json``."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the labels file: {error}") from None
    labels = document.get("labels") if isinstance(document, dict) else None
    if not isinstance(labels, list):
        raise DatasetError(f'{path}: expected {{"labels": [{{"id": 1, "name": "..."}}, ...]}}')
    pairs = []
    for entry in labels:
        label_id = entry.get("id") if isinstance(entry, dict) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(label_id, int) or isinstance(label_id, bool) or not isinstance(name, str):
            raise DatasetError(f"{path}: every label needs an integer 'id' and a string 'name', got {entry!r}")
        pairs.append((label_id, name))
    return _ordered(path, pairs)
