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


# --- hostile input is bounded: each refused quickly, with the limit named ---------------------------------------
def _bomb(levels: int = 9) -> str:
    """A "billion laughs" document: each level repeats the previous one 9 times (9**levels values)."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_in_well_under_a_second():
    import time

    started = time.perf_counter()
    with pytest.raises(YamlError, match=r"more than 50000 values once aliases are expanded"):
        yamlio.loads(_bomb())
    assert time.perf_counter() - started < 1.0  # not a speed goal: the old loader ran 53 s, then ran out of memory


def test_aliases_within_the_budget_still_work():
    data, _ = yamlio.loads(_bomb(levels=3))
    assert len(data["l2"]) == 9 and data["l2"][0][0] == ["x"] * 9


def test_deep_nesting_is_refused_with_the_line_not_a_recursion_error():
    with pytest.raises(YamlError, match="nested more than 64 levels deep") as info:
        yamlio.loads("a: 1\nb: " + "[" * 10_000 + "]" * 10_000 + "\n")
    assert info.value.line == 2


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "big.yaml"
    path.write_text("name: x\n" + "# padding\n" * 2000)
    monkeypatch.setenv("NAS_MAX_SPEC_BYTES", "1000")
    with pytest.raises(YamlError, match=r"may be at most 0.0 MiB \(set NAS_MAX_SPEC_BYTES"):
        yamlio.load(path)
    monkeypatch.delenv("NAS_MAX_SPEC_BYTES")
    assert yamlio.load(path)[0] == {"name": "x"}


def test_a_file_that_is_not_utf8_names_the_byte_and_where(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: ok\ntask: {type: caf\u00e9}\n".encode("latin-1"))
    with pytest.raises(YamlError, match=r"not UTF-8: byte 0xe9 at line 2, column 17") as info:
        yamlio.load(path)
    assert info.value.line == 2


def test_the_cli_refuses_hostile_files_with_exit_2_and_the_file_named(tmp_path, capsys):
    from nas.cli import main

    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1:" in err and "alias bomb" in err
