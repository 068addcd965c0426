"""The argument string CVAT users type: good inputs parse, each bad input names what is wrong."""

from __future__ import annotations

import pytest

from cvat_argo import ArgumentError, Arguments, RequestError, TrainingRequest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("epochs=100,batch_size=24,initial_learning_rate=0.004,num_clones=4",
         {"epochs": 100, "batch_size": 24, "initial_learning_rate": 0.004, "num_clones": 4}),
        (" epochs = 3 , batch_size=8, ", {"epochs": 3, "batch_size": 8}),
        ("initial_learning_rate=1e-5", {"initial_learning_rate": 1e-5}),
        ("", {}),
        ("epochs: 5\nbatch_size: 4\n", {"epochs": 5, "batch_size": 4}),
        ("input_size=256", {"input_size": 256}),
    ],
)
def test_parses_what_users_type(text, expected):
    assert Arguments.parse(text).set_values() == expected


def test_parses_mappings_and_passes_arguments_through():
    parsed = Arguments.parse({"epochs": "7", "num_clones": 2, "batch_size": 4})
    assert parsed.set_values() == {"epochs": 7, "batch_size": 4, "num_clones": 2}
    assert Arguments.parse(parsed) is parsed
    assert Arguments.parse(None) == Arguments()


def test_canonical_string_round_trips():
    text = "epochs=100,batch_size=24,initial_learning_rate=0.004,num_clones=4"
    assert Arguments.parse(text).to_string() == text
    small = Arguments.parse("initial_learning_rate=1e-5")
    assert Arguments.parse(small.to_string()) == small


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epoch=5", "unknown argument 'epoch' (did you mean 'epochs'?); known: batch_size, epochs, "
                    "initial_learning_rate, input_size, num_clones"),
        ("learning_rate=0.1", "unknown argument 'learning_rate' (did you mean 'initial_learning_rate'?)"),
        ("bogus=1", "unknown argument 'bogus'; known:"),
        ("num_steps=1000", "num_steps is not supported: epochs are real passes over the training images"),
        ("epochs=0", "argument epochs=0 is invalid: input should be greater than or equal to 1"),
        ("epochs=300000", "argument epochs=300000 is invalid: input should be less than or equal to 10000"),
        ("epochs=ten", "argument epochs=ten is invalid: input should be a valid integer"),
        ("epochs=1.5", "argument epochs=1.5 is invalid"),
        ("initial_learning_rate=-0.1", "argument initial_learning_rate=-0.1 is invalid: input should be greater than 0"),
        ("initial_learning_rate=fast", "argument initial_learning_rate=fast is invalid: input should be a valid number"),
        ("batch_size=7,num_clones=2", "batch_size=7 cannot be split evenly over num_clones=2 GPUs: use a multiple of 2"),
        ("num_clones=0", "argument num_clones=0 is invalid"),
        ("epochs", "argument 'epochs' is not key=value"),
        ("epochs=", "argument epochs has no value"),
        ("epochs=1,epochs=2", "argument epochs is given twice (epochs=1 and epochs=2)"),
        ("- 1\n- 2", "arguments YAML must be a mapping"),
    ],
)
def test_bad_arguments_name_the_key_and_value(text, message):
    with pytest.raises(ArgumentError) as caught:
        Arguments.parse(text)
    assert message in str(caught.value)


def test_several_problems_are_reported_together():
    with pytest.raises(ArgumentError) as caught:
        Arguments.parse("epoch=5,batchsize=3")
    assert "'epoch'" in str(caught.value) and "'batchsize'" in str(caught.value)
    assert "did you mean 'batch_size'?" in str(caught.value)


def test_request_needs_exactly_one_source():
    with pytest.raises(RequestError, match="give exactly one dataset source"):
        TrainingRequest.create()
    with pytest.raises(RequestError, match="give exactly one dataset source"):
        TrainingRequest.create(source="s3://b/x.zip", task_id=3)


@pytest.mark.parametrize(
    ("source", "kind"),
    [("s3://bucket/exports/task.zip", "s3"), ("https://example.com/t.zip", "url"), ("./export.zip", "path"),
     ("/data/export", "path")],
)
def test_source_kinds(source, kind):
    assert TrainingRequest.create(source=source).source.kind == kind


@pytest.mark.parametrize(
    ("source", "message"),
    [("ftp://host/x.zip", "scheme 'ftp'"), ("s3:///x.zip", "names no bucket"), ("  ", "is empty")],
)
def test_bad_sources_are_refused(source, message):
    with pytest.raises(RequestError, match=message):
        TrainingRequest.create(source=source)


def test_output_prefix_is_checked():
    assert TrainingRequest.create(task_id=1, output_prefix="/team/runs/").output_prefix == "team/runs"
    with pytest.raises(RequestError, match="output prefix"):
        TrainingRequest.create(task_id=1, output_prefix="../escape")


def test_an_alias_bomb_in_the_arguments_is_refused_quickly():
    """--args-file is YAML a person wrote: it is read to the same kind of budget as a catalog."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        for prev, name in zip("abcdefgh", "bcdefghi", strict=True)) + "epochs: 3\n"
    with pytest.raises(ArgumentError, match=r"the training arguments: .*refused: .*(nodes|aliases)"):
        Arguments.parse(bomb)
    assert Arguments.parse("epochs: 3\nbatch_size: 8\n").epochs == 3
