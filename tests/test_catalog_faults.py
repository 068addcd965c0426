"""Hostile catalog files: alias bombs, oversized files, deep or huge free-form fields, Model Garden typos.

A catalog is user input read by ``plan``, ``render`` and ``submit`` on a laptop or in CI: whatever a
file holds, it is refused in a fraction of a second with one line naming the file and the entry.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from cvat_argo import CatalogError, load_catalog
from cvat_argo.request import catalog as catalog_module
from cvat_argo.request.catalog import MAX_CATALOG_BYTES, entry_from_parameters, model_garden_problem

pytestmark = pytest.mark.faults

# Nine aliases of the level below at each of nine levels: 9**9 (387 million) strings once written out,
# in about 600 bytes. It overrides the default model, so every command that plans a run touches it.
ALIAS_BOMB = textwrap.dedent("""\
    models:
      - name: ssd-mobilenet-v2-coco
        backbone:
          type: mobilenet
          a: &a [x, x, x, x, x, x, x, x, x]
          b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
          c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
          d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
          e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
          f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
          g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
          h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
          i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
""")

# The same with mappings and merge keys: each level merges the one below nine times.
MERGE_BOMB = "models:\n  - name: x\n    extends: frcnn-res50-coco\n    backbone:\n" + "".join(
    f"      l{level}: &l{level} {{{', '.join(f'k{k}: *l{level - 1}' if level else f'k{k}: v' for k in range(9))}}}\n"
    for level in range(9)
)


def _write(tmp_path: Path, text: str | bytes, name: str = "catalog.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _oversized(tmp_path: Path) -> Path:
    """A valid, harmless YAML file (comments) one byte over the budget."""
    line = "# " + "x" * 97 + "\n"
    text = "default_model: ssd-mobilenet-v2-coco\n" + line * (MAX_CATALOG_BYTES // len(line) + 1)
    return _write(tmp_path, text[: MAX_CATALOG_BYTES + 1], "big.yaml")


@pytest.mark.parametrize("text", [ALIAS_BOMB, MERGE_BOMB], ids=["sequences", "merge-keys"])
def test_alias_bomb_is_refused_fast_and_small(tmp_path, text):
    path = _write(tmp_path, text)
    assert len(text) < 1000
    tracemalloc.start()
    try:
        with pytest.raises(CatalogError) as caught:
            load_catalog(path, env={})
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert peak < 20 * 2**20, peak  # the expansion was never built (it would be gigabytes)
    assert str(path) in message and "\n" not in message
    assert "refused: the YAML expands to more than" in message and "alias bomb" in message
    assert ".backbone." in message  # where it blew up: the entry and the field


def _run_cli(args: list[str], cwd: Path, timeout: float = 60.0) -> tuple[int, str, str, float, int]:
    """Run ``python -m cvat_argo ARGS``; returns (exit code, stdout, stderr, seconds, peak RSS in KiB).

    The child's own peak RSS comes from wait4 (not RUSAGE_CHILDREN, which mixes in earlier children),
    and an address-space limit keeps a runaway child from taking the machine down with the test.
    """
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))

    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "cvat_argo", *args], stdout=stdout, stderr=stderr,
                                   cwd=cwd, preexec_fn=limit_memory)
        watchdog = threading.Timer(timeout, process.kill)
        watchdog.start()
        try:
            _pid, status, usage = os.wait4(process.pid, 0)
        finally:
            watchdog.cancel()
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    return (process.returncode, out.read_text(encoding="utf-8", errors="replace"),
            err.read_text(encoding="utf-8", errors="replace"), seconds, usage.ru_maxrss)


@pytest.mark.parametrize("kind", ["alias-bomb", "over-1MiB"])
def test_plan_refuses_hostile_catalog_in_one_line(tmp_path, kind):
    path = _write(tmp_path, ALIAS_BOMB) if kind == "alias-bomb" else _oversized(tmp_path)
    code, _out, _err, _seconds, baseline_kib = _run_cli(["plan", "--task-id", "1"], tmp_path)
    assert code == 0, _err  # the same command without the file: what a normal plan costs
    code, out, err, seconds, peak_kib = _run_cli(["plan", "--catalog", str(path), "--task-id", "1"], tmp_path)
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], err[-2000:]
    assert ("alias bomb" in lines[0]) if kind == "alias-bomb" else ("refused unread" in lines[0])
    assert seconds < 20  # the whole interpreter start; the refusal itself is milliseconds (above)
    assert peak_kib - baseline_kib < 50 * 1024, (peak_kib, baseline_kib)


def test_oversized_file_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    path = _oversized(tmp_path)
    parsed: list[str] = []
    parse = catalog_module.load_catalog_yaml
    monkeypatch.setattr(catalog_module, "load_catalog_yaml", lambda data, source: parsed.append(source) or parse(data, source))
    with pytest.raises(CatalogError) as caught:
        load_catalog(path, env={})
    assert parsed == ["built-in catalog.yaml"]  # the user's file was never parsed
    assert str(caught.value) == (f"catalog file {path} is {MAX_CATALOG_BYTES + 1} bytes, over the {MAX_CATALOG_BYTES} "
                                 "bytes a catalog may have; refused unread")
    fifo = tmp_path / "fifo.yaml"  # no size up front: refused after reading one byte over the budget
    os.mkfifo(fifo)
    def write_fifo() -> None:
        with contextlib.suppress(BrokenPipeError), fifo.open("wb") as stream:
            stream.write(path.read_bytes())

    writer = threading.Thread(target=write_fifo, daemon=True)
    writer.start()
    with pytest.raises(CatalogError, match=r"fifo.yaml is over the 1048576 bytes a catalog may have; refused"):
        load_catalog(fifo, env={})
    writer.join(timeout=5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x: &x 1\nmodels: [" + ", ".join(["*x"] * 201) + "]\n",
         "models[200]: refused: more than 200 YAML aliases (*name)"),
        ("models: " + "[" * 40 + "]" * 40 + "\n", "refused: nested deeper than 32 levels"),
        ("models:\n  - &e {name: x, extends: frcnn-res50-coco, backbone: {type: resnet, r: *e}}\n",
         "models[0] (x).backbone.r: refused: alias *e repeats a node that contains it (a cycle)"),
        ("models: [\n", "is not valid YAML: while parsing a flow node expected the node content, but found"),
        ("models:\n  - {name: x, extends: [a]}\n", "models[0] (x): extends: expected an entry name, got ['a']"),
        ("default_model: {a: 1}\n", "default_model: expected a model name, got {'a': 1}"),
        ("models: {x: [1, 2]}\n", "models.x: expected a mapping of fields, got list"),
    ],
    ids=["aliases", "yaml-depth", "cycle", "syntax", "extends-list", "default-mapping", "entry-list"],
)
def test_hostile_structure_is_one_line_naming_file_and_entry(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(CatalogError) as caught:
        load_catalog(path, env={})
    assert str(path) in str(caught.value) and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_not_utf8_and_unreadable_files_are_catalog_errors(tmp_path):
    with pytest.raises(CatalogError, match=r"catalog.yaml is not UTF-8 text \(byte 0\)"):
        load_catalog(_write(tmp_path, b"\xff\xfe models: []"), env={})
    with pytest.raises(CatalogError, match=r"cannot be read: Is a directory"):
        load_catalog(tmp_path, env={})


@pytest.mark.parametrize(
    ("backbone", "message"),
    [
        ({"type": "resnet", "a": [[[[[[1]]]]]]}, "backbone: backbone.a[0][0][0][0][0]: nested deeper than 6 levels"),
        ({"type": "resnet", "resnet": {"model_id": 50}, "l": list(range(300))},
         "backbone: more than 256 keys and values"),
        ({"type": "resnet", "resnet": {"stem_type": "v" * 2000}},
         "backbone: backbone.resnet.stem_type: a string of 2000 characters, over 1024"),
        ({"resnet": {"model_id": 101}}, "backbone: needs a 'type' naming the Model Garden backbone (e.g. type: resnet)"),
    ],
    ids=["depth", "items", "text", "no-type"],
)
def test_free_form_fields_are_bounded(tmp_path, backbone, message):
    entry = {"name": "x", "extends": "frcnn-res50-coco", "backbone": backbone}
    path = _write(tmp_path, json.dumps({"models": [entry]}))  # JSON is YAML
    with pytest.raises(CatalogError) as caught:
        load_catalog(path, env={})
    assert f"{path}: models[0] (x): {message}" in str(caught.value)
    assert len(str(caught.value)) < 400
    # The same bounds hold for the entry a step gets as --model-spec JSON.
    spec = load_catalog(env={}).model("frcnn-res50-coco").model_dump(mode="json") | {"backbone": backbone}
    with pytest.raises(CatalogError, match=r"--model-spec is not a valid catalog entry: backbone: "):
        entry_from_parameters("", json.dumps(spec))


def test_shared_free_form_values_count_each_time_they_appear(tmp_path):
    """Under the YAML budget but shared 16 times: the entry bound counts what a dump would write."""
    text = textwrap.dedent("""\
        models:
          - name: x
            extends: frcnn-res50-coco
            backbone:
              type: resnet
              a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
              b: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
    """)
    with pytest.raises(CatalogError, match=r"models\[0\] \(x\): backbone: more than 256 keys and values"):
        load_catalog(_write(tmp_path, text), env={})


def test_error_messages_show_a_short_excerpt_of_large_values(tmp_path):
    text = "models:\n  - name: x\n    extends: frcnn-res50-coco\n    description: &a [" + ", ".join(["word"] * 5000) + "]\n"
    with pytest.raises(CatalogError) as caught:
        load_catalog(_write(tmp_path, text), env={})
    assert "description: Input should be a valid string (got ['word', 'word', 'word', 'word', ...])" in str(caught.value)
    assert len(str(caught.value)) < 300


def test_builtin_catalog_goes_through_the_same_loader(monkeypatch):
    monkeypatch.setattr(catalog_module, "MAX_YAML_NODES", 50)
    with pytest.raises(CatalogError, match=r"^built-in catalog.yaml: .*refused: the YAML expands to more than 50 nodes"):
        load_catalog(env={})


needs_model_garden = pytest.mark.skipif(importlib.util.find_spec("official") is None,
                                        reason="tf-models-official is not installed: the check is left to training")


@needs_model_garden
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backbone": {"type": "resnet", "resnet": {"model_idd": 101}}},
         "backbone.resnet: unknown field 'model_idd' (did you mean 'model_id'?)"),
        ({"backbone": {"type": "resnett"}}, "backbone.type: unknown Model Garden backbone type 'resnett' "
                                            "(did you mean 'resnet'?)"),
        ({"decoder": {"type": "fpn", "fpn": {"num_filters": {"a": 1}}}},
         "decoder.fpn.num_filters: expected a single value, got dict"),
        ({"decoder": {"type": "fpn", "fpn": 256}}, "decoder.fpn: expected a mapping (Model Garden's FPN config), got 256"),
        ({"backbone": {"type": "vit", "vit": {"transformer": {"mlp_dimm": 3}}}},
         "backbone.vit.transformer: unknown field 'mlp_dimm' (did you mean 'mlp_dim'?)"),
    ],
)
def test_free_form_fields_are_checked_against_model_garden_without_tensorflow(tmp_path, fields, message):
    path = _write(tmp_path, json.dumps({"models": [{"name": "x", "extends": "frcnn-res50-coco", **fields}]}))
    with pytest.raises(CatalogError) as caught:
        load_catalog(path, env={})
    assert f"{path}: models[0] (x): {message}" in str(caught.value)


@needs_model_garden
def test_model_garden_check_imports_neither_model_garden_nor_tensorflow(tmp_path):
    path = _write(tmp_path, json.dumps({"models": [{"name": "x", "extends": "frcnn-res50-coco",
                                                    "backbone": {"type": "resnet", "resnet": {"model_idd": 1}}}]}))
    code = ("import sys; from cvat_argo import CatalogError, load_catalog\n"
            f"try: load_catalog({str(path)!r}, env={{}})\n"
            "except CatalogError as e: print(e)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('official', 'tensorflow', 'tf_keras')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "unknown field 'model_idd'" in result.stdout and result.stdout.strip().endswith("[]"), result.stdout


@needs_model_garden
def test_valid_model_garden_configs_pass(tmp_path):
    fields = {"backbone": {"type": "resnet", "resnet": {"model_id": 101, "se_ratio": 0.25}},
              "decoder": {"type": "nasfpn", "nasfpn": {"num_repeats": 3}}}
    path = _write(tmp_path, json.dumps({"models": [{"name": "x", "extends": "frcnn-res50-coco", **fields}]}))
    entry = load_catalog(path, env={}).model("x")
    assert entry.backbone == fields["backbone"] and model_garden_problem(entry) is None


@needs_model_garden
@pytest.mark.slow
def test_source_reading_agrees_with_model_garden_configs():
    """The fields read from Model Garden's source are the fields its config classes have."""
    import dataclasses

    from official.vision.configs import backbones, decoders

    for kind, config_class in (("backbone", backbones.Backbone), ("decoder", decoders.Decoder)):
        schema = catalog_module._garden_classes(kind)
        assert schema is not None
        top, classes = schema
        real = config_class()
        assert set(classes[top].fields) == {f.name for f in dataclasses.fields(real)}
        for branch in classes[top].fields:
            if branch == "type":
                continue
            read = classes[classes[top].fields[branch]]
            assert set(read.fields) == {f.name for f in dataclasses.fields(getattr(real, branch))}, branch
