"""nas.spec: every shipped search space validates; every kind of mistake is reported with its path and line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import pytest

from nas import registry
from nas.blocks import BlockConfig
from nas.cli import main
from nas.spec import FloatRange, IntRange, SpecError, load_spec, objective_directions, spec_model

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for folder in ("search_spaces", "examples") for ext in ("*.yaml", "*.yml")
                 for p in (REPO / folder).rglob(ext))


def test_shipped_spaces_are_found():
    assert REPO / "search_spaces" / "quickstart.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_space_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)  # data paths in a space are relative to where `nas` runs: the repository root
    loaded = load_spec(path, device="cpu")
    assert loaded.spec.task.type in registry.names("task")


# A valid file; each case below changes one line of it.
VALID = """\
    name: t
    task:
      type: mqar
      vocab_size: 32
      seq_len: 16
    model:
      d_model: 32
      n_heads: 2
    space:
      attention:
        - type: softmax
      ffn:
        - type: mlp
          expansion: [2, 4]
    training:
      steps: 10
    objectives:
      - metric: accuracy
    """


def test_the_base_file_is_valid(write_spec):
    spec = load_spec(write_spec(VALID), device="cpu").spec
    assert spec.space.ffn[0].expansion == [2, 4]
    assert objective_directions(spec) == [("accuracy", "maximize")]


def _one_problem(write_spec, old: str, new: str):
    text = textwrap.dedent(VALID)
    assert old in text
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(text.replace(old, new)), device="cpu")
    assert len(info.value.problems) == 1, str(info.value)
    return info.value.problems[0], str(info.value)


@pytest.mark.parametrize("old, new, path, line, message", [
    pytest.param("  d_model: 32", "  d_modle: 32", ("model", "d_modle"), 7, "did you mean 'd_model'?",
                 id="misspelled-key"),
    pytest.param("training:", "trainig:", ("trainig",), 15, "did you mean 'training'?", id="misspelled-section"),
    pytest.param("  steps: 10", "  steps: ten", ("training", "steps"), 16, "valid integer", id="wrong-type"),
    pytest.param("    - type: softmax", "    - type: sofmax", ("space", "attention", 0), 11,
                 "unknown attention 'sofmax'; did you mean 'softmax'?", id="unknown-attention"),
    pytest.param("  type: mqar", "  type: mqr", ("task",), 2, "unknown task 'mqr'; did you mean 'mqar'?",
                 id="unknown-task"),
    pytest.param("  n_heads: 2", "  n_heads: 3", ("model", "n_heads"), 8, "d_model must be divisible by n_heads",
                 id="d_model-not-divisible"),
    pytest.param("  - metric: accuracy", "  - metric: acuracy", ("objectives", 0, "metric"), 18,
                 "unknown metric 'acuracy'; did you mean 'accuracy'?", id="unknown-metric"),
    pytest.param("expansion: [2, 4]", "expansion: {low: 4, high: 2}", ("space", "ffn", 0, "expansion"), 14,
                 "low (4) must not exceed high (2)", id="int-range-low-above-high"),
    pytest.param("  d_model: 32", "  d_model: {low: 64, high: 32}", ("model", "d_model"), 7,
                 "low (64) must not exceed high (32)", id="model-range-low-above-high"),
    pytest.param("expansion: [2, 4]", "expansion: 99", ("space", "ffn", 0, "expansion"), 14,
                 "less than or equal to 16", id="out-of-bounds"),
    pytest.param("    - type: softmax", "    - {type: softmax, dropot: 0.1}", ("space", "attention", 0, "dropot"),
                 11, "unknown key 'dropot'; did you mean 'dropout'?", id="misspelled-block-param"),
    pytest.param("    - type: mlp", "    - type: mlp\n      activation: tanh", ("space", "ffn", 0, "activation"), 14,
                 "'gelu' or 'relu'", id="bad-literal-param"),
    pytest.param("  - metric: accuracy", "  - metric: accuracy\n  - metric: accuracy", ("objectives", 1, "metric"),
                 19, "listed twice", id="objective-twice"),
    pytest.param("    - type: softmax", "    - type: softmax\n    - type: softmax", ("space", "attention", 1, "type"),
                 12, "listed twice", id="block-twice"),
])
def test_one_mistake_one_problem_with_path_and_line(write_spec, old, new, path, line, message):
    problem, text = _one_problem(write_spec, old, new)
    assert problem.path == path
    assert problem.line == line
    assert message in problem.message
    assert f"space.yaml:{line}: {'.'.join(map(str, path))}: " in text


def test_bad_literal_is_not_reported_as_an_unknown_block(write_spec):
    problem, _ = _one_problem(write_spec, "    - type: mlp", "    - type: mlp\n      activation: tanh")
    assert "unknown" not in problem.message


def test_unknown_block_lists_the_registered_names(write_spec):
    problem, _ = _one_problem(write_spec, "    - type: softmax", "    - type: sofmax")
    for name in registry.names("attention"):
        assert name in problem.message


def test_several_problems_are_reported_at_once(write_spec):
    path = write_spec("""\
        task:
          type: mqar
          vocab_size: 32
          seq_len: 16
        model:
          d_model: 30
          n_heads: 4
          n_layrs: 2
        space:
          attention:
            - type: sofmax
          ffn:
            - type: mlp
              expansion: {low: 8, high: 2}
        training:
          steps: many
        objectives:
          - metric: acuracy
        """)
    with pytest.raises(SpecError) as info:
        load_spec(path, device="cpu")
    found = {(p.path, p.line) for p in info.value.problems}
    assert found == {
        (("model", "n_heads"), 7),
        (("model", "n_layrs"), 8),
        (("space", "attention", 0), 11),
        (("space", "ffn", 0, "expansion"), 14),
        (("training", "steps"), 16),
        (("objectives", 0, "metric"), 18),
    }
    lines = [p.line for p in info.value.problems]
    assert lines == sorted(lines)


def test_plugin_module_that_does_not_exist(write_spec):
    path = write_spec("""\
        name: t
        plugins:
          - nas_no_such_plugin_module_xyz
        task: {type: mqar}
        """)
    with pytest.raises(SpecError) as info:
        load_spec(path, device="cpu")
    [problem] = info.value.problems
    assert (problem.path, problem.line) == (("plugins", 0), 3)
    assert "nas_no_such_plugin_module_xyz" in problem.message and "failed to import" in problem.message


def test_plugin_module_that_raises_on_import(write_spec, tmp_path, monkeypatch):
    (tmp_path / "nas_test_raising_plugin.py").write_text("raise RuntimeError('plugin is broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_spec("""\
        task: {type: mqar}
        plugins: [json, nas_test_raising_plugin]
        """)
    try:
        with pytest.raises(SpecError) as info:
            load_spec(path, device="cpu")
    finally:
        sys.modules.pop("nas_test_raising_plugin", None)
    [problem] = info.value.problems
    assert (problem.path, problem.line) == (("plugins", 1), 2)
    assert "RuntimeError: plugin is broken" in problem.message


def test_missing_file():
    with pytest.raises(SpecError) as info:
        load_spec("/nonexistent/dir/space.yaml")
    assert "cannot read file" in str(info.value)


def test_yaml_error_becomes_a_spec_error_with_the_line(write_spec):
    path = write_spec("""\
        task: {type: mqar}
        model:
          d_model: 32
        model:
          n_heads: 2
        """)
    with pytest.raises(SpecError) as info:
        load_spec(path, device="cpu")
    [problem] = info.value.problems
    assert problem.line == 4 and "duplicate key 'model'" in problem.message


def test_top_level_must_be_a_mapping(write_spec):
    with pytest.raises(SpecError) as info:
        load_spec(write_spec("- 1\n- 2\n"), device="cpu")
    assert "expected a mapping" in str(info.value)


def test_missing_task(write_spec):
    with pytest.raises(SpecError) as info:
        load_spec(write_spec("name: t\n"), device="cpu")
    assert [p.path for p in info.value.problems] == [("task",)]


def test_space_values_fixed_list_and_range(write_spec):
    spec = load_spec(write_spec("""\
        task: {type: mqar}
        model:
          d_model: {low: 32, high: 64, step: 16}
          n_heads: [2, 4]
          n_layers: 2
        space:
          position:
            - type: rope
              base: {low: 1e3, high: 1e5, log: true}
        """), device="cpu").spec
    assert spec.model.d_model == IntRange(low=32, high=64, step=16)
    assert spec.model.n_heads == [2, 4]
    assert spec.model.n_layers == 2
    assert spec.space.position[0].base == FloatRange(low=1000.0, high=100000.0, log=True)
    # defaults of the kinds not written
    assert [a.type for a in spec.space.attention] == ["softmax"]


def test_every_d_model_of_a_range_is_checked_against_every_head_count(write_spec):
    with pytest.raises(SpecError) as info:
        load_spec(write_spec("""\
            task: {type: mqar}
            model:
              d_model: {low: 32, high: 48, step: 8}
              n_heads: [2, 16]
            """), device="cpu")
    [problem] = info.value.problems
    assert problem.path == ("model", "n_heads")
    assert "40/16" in problem.message and "48/16" not in problem.message


def test_fp16_on_cpu_is_a_warning_not_an_error(write_spec):
    loaded = load_spec(write_spec("task: {type: mqar}\ntraining: {precision: fp16}\n"), device="cpu")
    assert [(w.path, w.line) for w in loaded.warnings] == [(("training", "precision"), 2)]


class _DepthFFN:
    class Config(BlockConfig):
        type: Literal["scratch_ffn"] = "scratch_ffn"
        depth: int = 1


class _WidthFFN:
    class Config(BlockConfig):
        type: Literal["scratch_ffn"] = "scratch_ffn"
        width: int = 1


def test_spec_model_is_rebuilt_when_a_name_is_registered_again_with_another_class(write_spec):
    """``REGISTRY.scratch()`` frees a name; a later block under that name must get its own schema."""
    path = write_spec("""\
        task: {type: mqar}
        space:
          ffn: [{type: scratch_ffn, width: 3}]
        """)
    with registry.REGISTRY.scratch():
        registry.register("ffn", "scratch_ffn")(_DepthFFN)
        with pytest.raises(SpecError, match="unknown key 'width'"):
            load_spec(path, device="cpu")
    with registry.REGISTRY.scratch():
        registry.register("ffn", "scratch_ffn")(_WidthFFN)
        assert load_spec(path, device="cpu").spec.space.ffn[0].width == 3
    assert "scratch_ffn" not in registry.names("ffn")


def test_schema_has_one_model_per_block():
    defs = spec_model().model_json_schema()["$defs"]
    for kind in ("attention", "position", "norm", "ffn"):
        for name in registry.names(kind):
            assert f"{kind}_{name}" in defs
    for name in registry.names("task"):
        assert f"task_{name}" in defs


# --- through the CLI ------------------------------------------------------------------------------------
def test_cli_validate_bad_file_exits_2_with_path_and_line(write_spec, capsys):
    path = write_spec(textwrap.dedent(VALID).replace("type: softmax", "type: sofmax"), name="bad.yaml")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "1 problem(s)" in err
    assert f"{path}:11: space.attention.0: unknown attention 'sofmax'; did you mean 'softmax'?" in err


def test_cli_validate_good_file(write_spec, capsys):
    path = write_spec(VALID)
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok"


def test_cli_validate_in_a_fresh_process(write_spec):
    """A real process: entry points are discovered there from scratch, and the exit code reaches the shell."""
    bad = write_spec(textwrap.dedent(VALID).replace("  n_heads: 2", "  n_heads: 3"), name="bad.yaml")
    good = write_spec(VALID, name="good.yaml")
    proc = subprocess.run([sys.executable, "-m", "nas.cli", "validate", str(good), str(bad)],
                          capture_output=True, text=True, timeout=120, cwd=bad.parent)
    assert proc.returncode == 2, proc.stderr
    assert f"{good}: ok" in proc.stdout
    assert f"{bad}:8: model.n_heads: d_model must be divisible by n_heads" in proc.stderr
