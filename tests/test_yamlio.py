"""nas.yamlio: the YAML traps of search-space files, and the line of every value."""

from __future__ import annotations

import textwrap

import pytest

from nas.spec import yamlio
from nas.spec.yamlio import YamlError


def loads(text: str):
    return yamlio.loads(textwrap.dedent(text))


def test_duplicate_key_is_an_error_with_both_lines():
    with pytest.raises(YamlError) as info:
        loads("""\
            model:
              d_model: 32
            training:
              steps: 10
            model:
              n_heads: 4
            """)
    assert info.value.line == 5
    assert "duplicate key 'model'" in str(info.value)
    assert "first defined on line 1" in str(info.value)


def test_duplicate_nested_key_is_an_error():
    with pytest.raises(YamlError) as info:
        loads("""\
            training:
              steps: 10
              steps: 20
            """)
    assert info.value.line == 3
    assert "first defined on line 2" in str(info.value)


@pytest.mark.parametrize("text, value", [
    ("1e-3", 1e-3), ("3E5", 3e5), ("-2.5e-4", -2.5e-4), ("1.5", 1.5), (".5", 0.5), ("10", 10), ("-7", -7),
])
def test_numbers_follow_yaml_1_2(text, value):
    data, _ = yamlio.loads(f"x: {text}\n")
    assert data["x"] == value
    assert type(data["x"]) is type(value)  # 1e-3 is a float (PyYAML's YAML 1.1 makes it a string), 10 an int


@pytest.mark.parametrize("word", ["no", "yes", "on", "off", "y", "n", "No", "ON"])
def test_yaml_1_1_booleans_stay_strings(word):
    data, _ = yamlio.loads(f"x: {word}\n{word}: 1\n")
    assert data == {"x": word, word: 1}


@pytest.mark.parametrize("word, value", [("true", True), ("false", False), ("True", True), ("FALSE", False)])
def test_true_and_false_are_booleans(word, value):
    data, _ = yamlio.loads(f"x: {word}\n")
    assert data["x"] is value


@pytest.mark.parametrize("text", [
    "x: !!python/object:os.system {}\n",
    "x: !!python/object/apply:os.system [echo hi]\n",
    "x: !!python/object/new:os.system [echo hi]\n",
    "x: !!python/name:os.system ''\n",
    "x: !!python/tuple [1, 2]\n",
    "x: !custom {a: 1}\n",
])
def test_python_object_tags_are_rejected(text):
    with pytest.raises(YamlError) as info:
        yamlio.loads("a: 1\n" + text)
    assert info.value.line == 2
    assert "unsupported YAML value" in str(info.value)


def test_malformed_yaml_gives_the_line():
    with pytest.raises(YamlError) as info:
        loads("""\
            a: 1
            b: [1, 2
            c: 3
            """)
    assert info.value.line is not None and info.value.line >= 2


def test_lines_of_nested_paths():
    data, locs = loads("""\
        name: demo
        model:
          d_model: [32, 64]
          n_heads: 4
        space:
          attention:
            - type: softmax
              dropout: 0.1
            - type: cosine
          position:
            - type: rope
              base:
                low: 1000
                high: 100000
        """)
    assert data["space"]["position"][0]["base"] == {"low": 1000, "high": 100000}
    expected = {
        ("name",): 1,
        ("model",): 2,  # the key's line, not the line where its mapping starts
        ("model", "d_model"): 3,
        ("model", "d_model", 1): 3,
        ("model", "n_heads"): 4,
        ("space",): 5,
        ("space", "attention"): 6,
        ("space", "attention", 0): 7,
        ("space", "attention", 0, "type"): 7,
        ("space", "attention", 0, "dropout"): 8,
        ("space", "attention", 1): 9,
        ("space", "attention", 1, "type"): 9,
        ("space", "position", 0, "base"): 12,
        ("space", "position", 0, "base", "high"): 14,
    }
    assert {path: locs.lines[path] for path in expected} == expected


def test_line_of_a_missing_path_is_its_deepest_existing_parent():
    _, locs = loads("""\
        training:
          optimizer:
            lr: 0.1
        """)
    assert locs.line_of(("training", "optimizer", "betas")) == 2
    assert locs.line_of(("training", "optimizer", "lr")) == 3
    assert locs.line_of(("nothing", "here")) == 1


def test_load_reads_a_file_and_remembers_its_name(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("a: 1e-2\n")
    data, locs = yamlio.load(path)
    assert data == {"a": 0.01}
    assert locs.source == str(path)


def test_empty_document_is_none():
    assert yamlio.loads("")[0] is None
    assert yamlio.loads("# only a comment\n")[0] is None


def test_merge_keys_are_resolved():
    data, _ = loads("""\
        base: &base {lr: 0.1, steps: 5}
        run:
          <<: *base
          seed: 3
        """)
    assert data["run"] == {"lr": 0.1, "steps": 5, "seed": 3}
