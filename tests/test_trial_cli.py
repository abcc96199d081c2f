"""nas.trial and nas.cli: one trial end to end, its failure modes, and the ``nas`` commands."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from typing import Literal

import pytest
import torch
from torch import nn

from nas import BlockConfig, Capabilities, Dims, PositionScheme, registry
from nas.cli import main, sample_one
from nas.model import build_model, build_task, count_parameters
from nas.spec import MEASURED_METRICS, load_spec
from nas.trial import run_trial

#: What every ok trial reports at least (MEASURED_METRICS may grow).
METRICS = {"accuracy", "latency_ms", "latency_p90_ms", "infer_memory_mb", "train_memory_mb", "params",
           "flops_per_token"}


@pytest.fixture
def tiny(write_spec, tiny_spec_text):
    """The loaded tiny MQAR spec and its sampled architecture."""
    loaded = load_spec(write_spec(tiny_spec_text), device="cpu")
    return loaded.spec, sample_one(loaded.spec, seed=0)


def test_trial_ok_with_every_metric(tiny):
    spec, arch = tiny
    logged = []
    result = run_trial(spec, arch, on_log=lambda step, loss: logged.append((step, loss)))
    assert result.status == "ok", result.reason
    assert result.reason is None
    assert METRICS <= set(result.metrics) == {"accuracy", *MEASURED_METRICS}
    assert all(math.isfinite(v) and v > 0 for k, v in result.metrics.items() if k != "accuracy")
    assert 0 <= result.metrics["accuracy"] <= 1
    assert result.metrics["latency_ms"] <= result.metrics["latency_p90_ms"]
    assert result.metrics["params"] == count_parameters(build_model(arch, build_task(spec)))
    assert result.curve == logged and [s for s, _ in logged] == [0, 5, 10, 15, 19]
    assert result.architecture == arch.model_dump()
    assert result.info["device"].startswith("cpu") and result.info["latency_threads"] == 1
    json.dumps(result.to_dict())  # a plain record


def test_trial_is_reproducible(tiny):
    spec, arch = tiny
    a, b = run_trial(spec, arch), run_trial(spec, arch)
    assert a.curve == b.curve
    assert a.metrics["accuracy"] == b.metrics["accuracy"]


def test_max_params_makes_a_trial_infeasible_without_training(write_spec, tiny_spec_text, monkeypatch):
    import nas.trial

    def no_training(*args, **kwargs):
        raise AssertionError("an infeasible architecture must not be trained")

    monkeypatch.setattr(nas.trial, "train", no_training)
    spec = load_spec(write_spec(tiny_spec_text + "constraints: {max_params: 1000}\n"), device="cpu").spec
    result = run_trial(spec, sample_one(spec, seed=0))
    assert result.status == "infeasible"
    assert "> constraints.max_params = 1000" in result.reason
    assert result.metrics["params"] > 1000 and "flops_per_token" in result.metrics
    assert "accuracy" not in result.metrics and result.curve == []


class _BrokenAttention(nn.Module):
    """Raises in forward."""

    class Config(BlockConfig):
        type: Literal["broken_attn_test"] = "broken_attn_test"

    capabilities = Capabilities(positions=frozenset({"none", "embedding", "rotary"}))

    def __init__(self, config: Config, dims: Dims, position: PositionScheme):
        super().__init__()
        self.proj = nn.Linear(dims.d_model, dims.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken attention says no")


class _NaNFFN(nn.Module):
    """Returns NaN."""

    class Config(BlockConfig):
        type: Literal["nan_ffn_test"] = "nan_ffn_test"

    def __init__(self, config: Config, dims: Dims):
        super().__init__()
        self.proj = nn.Linear(dims.d_model, dims.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * float("nan")


def _spec_with(write_spec, tiny_spec_text, kind: str, name: str):
    """The tiny spec with ``name`` as the only ``kind`` block."""
    text = textwrap.dedent(tiny_spec_text).replace("space:\n", f"space:\n  {kind}: [{{type: {name}}}]\n")
    text = text.replace("  ffn: [{type: mlp, expansion: 2}]\n", "") if kind == "ffn" else text
    return load_spec(write_spec(text), device="cpu").spec


def test_block_that_raises_fails_the_trial_with_the_reason(write_spec, tiny_spec_text):
    with registry.REGISTRY.scratch():
        registry.register("attention", "broken_attn_test")(_BrokenAttention)
        spec = _spec_with(write_spec, tiny_spec_text, "attention", "broken_attn_test")
        arch = sample_one(spec, seed=0)
        assert arch.layers[0].attention["type"] == "broken_attn_test"
        result = run_trial(spec, arch)
    assert result.status == "failed"
    assert result.reason == "error: RuntimeError: broken attention says no"
    assert "broken attention says no" in result.info["traceback"]


def test_nan_fails_the_trial_as_nan(write_spec, tiny_spec_text):
    with registry.REGISTRY.scratch():
        registry.register("ffn", "nan_ffn_test")(_NaNFFN)
        spec = _spec_with(write_spec, tiny_spec_text, "ffn", "nan_ffn_test")
        result = run_trial(spec, sample_one(spec, seed=0))
    assert result.status == "failed"
    assert result.reason.startswith("nan: non-finite loss (nan) at step 0")


# --- the nas command --------------------------------------------------------------------------------------
def test_cli_trial_json(write_spec, tiny_spec_text, capsys):
    path = write_spec(tiny_spec_text)
    assert main(["trial", str(path), "--json", "--seed", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "ok"
    assert METRICS <= set(out["metrics"])
    assert out["architecture"]["d_model"] == 32


def test_cli_trial_fixes_threads_as_a_search_trial_does(write_spec, tiny_spec_text, capsys):
    """Default: search.resources.cpus threads (1 unless set), not torch's one per core; --threads overrides."""
    import torch

    before = torch.get_num_threads()
    try:
        path = write_spec(tiny_spec_text.replace("measure:", "search: {resources: {cpus: 2}}\n    measure:"))
        for argv, threads in (([], 2), (["--threads", "1"], 1)):
            torch.set_num_threads(3)
            assert main(["trial", str(path), "--json", *argv]) == 0
            assert json.loads(capsys.readouterr().out)["info"]["train_threads"] == threads
        with pytest.raises(SystemExit) as exc:  # argparse: not a positive integer
            main(["trial", str(path), "--threads", "0"])
        assert exc.value.code == 2
    finally:
        torch.set_num_threads(before)


def test_cli_trial_text_output(write_spec, tiny_spec_text, capsys):
    assert main(["trial", str(write_spec(tiny_spec_text))]) == 0
    out = capsys.readouterr().out
    assert "architecture: rope d32 L1 H2: softmax pre-layernorm mlp(expansion=2)" in out
    assert "status: ok" in out and "latency_ms" in out and "step     0  loss" in out


def test_cli_trial_with_a_fixed_architecture(write_spec, tiny_spec_text, make_arch, capsys):
    arch = make_arch(d_model=16, n_heads=2, n_layers=1, position="learned", norm="rmsnorm", placement="post")
    arch_file = write_spec(json.dumps(arch.model_dump()), name="arch.json")  # JSON is YAML
    assert main(["trial", str(write_spec(tiny_spec_text)), "--arch", str(arch_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["architecture"] == arch.model_dump()
    assert out["status"] == "ok"


def test_cli_trial_bad_arch_file_exits_2(write_spec, tiny_spec_text, capsys):
    bad = write_spec("d_model: 32\n", name="arch.yaml")
    assert main(["trial", str(write_spec(tiny_spec_text)), "--arch", str(bad)]) == 2
    assert f"--arch {bad}" in capsys.readouterr().err


def test_cli_failed_trial_exits_1(write_spec, tiny_spec_text, capsys):
    with registry.REGISTRY.scratch():
        registry.register("attention", "broken_attn_test")(_BrokenAttention)
        text = textwrap.dedent(tiny_spec_text).replace("space:\n", "space:\n  attention: [{type: broken_attn_test}]\n")
        assert main(["trial", str(write_spec(text)), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "failed" and "broken attention says no" in out["reason"]


def test_cli_plugins_json(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_key = {(r["kind"], r["name"]): r for r in rows}
    assert len(by_key) == len(rows) == len(registry.entries())
    softmax = by_key[("attention", "softmax")]
    assert softmax["provider"] == "nas-transformers"
    assert softmax["parameters"]["dropout"]["default"] == 0.0
    assert softmax["capabilities"]["causal"] is True and "rotary" in softmax["capabilities"]["positions"]
    assert by_key[("position", "rope")]["capabilities"]["position_mode"] == "rotary"
    assert by_key[("attention", "cosine")]["provider"] == "nas-example-plugin"
    for row in rows:
        assert {"kind", "name", "provider", "version", "parameters", "capabilities", "summary"} <= set(row)
        assert "type" not in row["parameters"]


def test_cli_plugins_one_kind(capsys):
    assert main(["plugins", "--kind", "norm", "--json"]) == 0
    assert {r["name"] for r in json.loads(capsys.readouterr().out)} == set(registry.names("norm"))
    assert main(["plugins", "--kind", "norm"]) == 0
    text = capsys.readouterr().out
    assert "layernorm" in text and "rmsnorm" in text and "softmax" not in text


def test_cli_plugins_unknown_kind_exits_2(capsys):
    assert main(["plugins", "--kind", "atention"]) == 2
    assert "did you mean 'attention'?" in capsys.readouterr().err


def test_cli_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "nas search space"
    assert {"attention_softmax", "attention_cosine", "position_rope", "ffn_mlp", "task_mqar"} <= set(schema["$defs"])
    assert {"task", "space", "model", "training", "objectives"} <= set(schema["properties"])


def test_cli_plugins_in_a_fresh_process():
    """Entry points are found by a new process on its own, the example plugin's included."""
    proc = subprocess.run([sys.executable, "-m", "nas.cli", "plugins", "--json", "--kind", "attention"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    providers = {r["name"]: r["provider"] for r in json.loads(proc.stdout)}
    assert providers["softmax"] == "nas-transformers" and providers["cosine"] == "nas-example-plugin"


def test_cli_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
