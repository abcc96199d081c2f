"""nas.space: define-by-run sampling with stable, namespaced, conditional parameter names."""

from __future__ import annotations

from typing import Literal

import optuna
import pytest

from nas import BlockConfig, Capabilities, registry
from nas.architecture import Architecture
from nas.space import sample_architecture
from nas.spec import load_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = """\
    task: {type: mqar, vocab_size: 32, seq_len: 16}
    model:
      d_model: [16, 32]
      n_heads: [2, 4]
      n_layers: {low: 1, high: 3}
      norm_placement: [pre, post]
      per_layer: PER_LAYER
    space:
      attention:
        - type: softmax
          dropout: [0.0, 0.1]
      position:
        - type: rope
          base: {low: 1000.0, high: 100000.0, log: true}
        - type: sinusoidal
        - type: learned
      norm:
        - type: layernorm
        - type: rmsnorm
      ffn:
        - type: mlp
          expansion: {low: 1, high: 4}
          activation: [gelu, relu]
    """


@pytest.fixture
def spec(write_spec):
    def load(per_layer: bool = False):
        return load_spec(write_spec(SPACE.replace("PER_LAYER", str(per_layer).lower())), device="cpu").spec
    return load


def sample(spec, seed: int) -> tuple[Architecture, dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    return sample_architecture(spec, trial, device="cpu"), trial.params


def test_same_seed_same_architecture(spec):
    s = spec()
    for seed in range(5):
        a, params_a = sample(s, seed)
        b, params_b = sample(s, seed)
        assert a == b and params_a == params_b
    assert len({sample(s, seed)[0].model_dump_json() for seed in range(10)}) > 1  # seeds do matter


def test_conditional_parameters_appear_only_with_their_block(spec):
    s = spec()
    seen = set()
    for seed in range(30):
        arch, params = sample(s, seed)
        position = params["position.type"]
        assert arch.position["type"] == position
        seen.add(position)
        assert ("position.rope.base" in params) == (position == "rope")
        if position == "rope":
            assert 1000.0 <= params["position.rope.base"] <= 100000.0
            assert arch.position["base"] == params["position.rope.base"]
        norm = params["norm.type"]
        assert not any(k.startswith("norm.") and k != "norm.type" for k in params)  # norms have no space here
        assert arch.layers[0].norm["type"] == norm
    assert seen == {"rope", "sinusoidal", "learned"}


def test_shared_layers_use_unprefixed_names(spec):
    arch, params = sample(spec(), 0)
    expected = {"model.d_model", "model.n_heads", "model.n_layers", "model.norm_placement", "position.type",
                "attention.softmax.dropout", "norm.type", "ffn.mlp.expansion", "ffn.mlp.activation"}
    assert expected <= set(params)
    assert not any(k.startswith("layers.") for k in params)
    assert all(layer == arch.layers[0] for layer in arch.layers)


def test_per_layer_names_are_namespaced_by_layer(spec):
    s = spec(per_layer=True)
    for seed in range(5):
        arch, params = sample(s, seed)
        n = params["model.n_layers"]
        assert arch.n_layers == n == len(arch.layers)
        for i in range(n):
            for name in ("attention.softmax.dropout", "norm.type", "ffn.mlp.expansion", "ffn.mlp.activation"):
                assert f"layers.{i}.{name}" in params
            assert arch.layers[i].ffn["expansion"] == params[f"layers.{i}.ffn.mlp.expansion"]
        assert not any(k.startswith(f"layers.{n}.") for k in params)
        assert not any(k.startswith(("attention.", "ffn.", "norm.")) for k in params)


def test_sampled_values_lie_in_the_space(spec):
    s = spec()
    for seed in range(20):
        arch, _ = sample(s, seed)
        assert arch.d_model in (16, 32) and arch.n_heads in (2, 4) and 1 <= arch.n_layers <= 3
        assert arch.norm_placement in ("pre", "post")
        ffn = arch.layers[0].ffn
        assert 1 <= ffn["expansion"] <= 4 and ffn["activation"] in ("gelu", "relu")


def test_fixed_values_are_not_parameters(write_spec):
    s = load_spec(write_spec("task: {type: mqar}\nmodel: {d_model: 32, n_heads: 2, n_layers: 1}\n"),
                  device="cpu").spec
    arch, params = sample(s, 0)
    assert params == {}  # nothing to choose: the defaults are one block each with default configs
    assert arch.position == {"type": "rope", "base": 10000.0}
    assert arch.layers[0].attention == {"type": "softmax", "dropout": 0.0}


def test_flat_has_one_entry_per_layer_and_field(spec):
    arch, _ = sample(spec(), 3)
    flat = arch.flat()
    assert flat["layers.0.attention.type"] == "softmax"
    assert flat["position.type"] == arch.position["type"]
    assert flat["d_model"] == arch.d_model
    for i in range(arch.n_layers):
        assert f"layers.{i}.ffn.expansion" in flat
        assert f"layers.{i}.norm.type" in flat
    assert f"layers.{arch.n_layers}.attention.type" not in flat


def test_summary(make_arch):
    assert (make_arch(d_model=32, n_heads=2, n_layers=2, position="rope").summary()
            == "rope d32 L2 H2: softmax pre-layernorm mlp(expansion=2)")


def test_architecture_round_trips_through_json(spec):
    arch, _ = sample(spec(per_layer=True), 1)
    assert Architecture.model_validate_json(arch.model_dump_json()) == arch


class _BiasPosition:
    """A score-bias position scheme (never built here)."""

    class Config(BlockConfig):
        type: Literal["bias_pos_test"] = "bias_pos_test"

    capabilities = Capabilities(position_mode="bias")


class _BiasAttention:
    """An attention that takes score biases (never built here)."""

    class Config(BlockConfig):
        type: Literal["bias_attn_test"] = "bias_attn_test"

    capabilities = Capabilities(positions=frozenset({"none", "bias"}))


def test_attention_that_cannot_take_the_position_is_never_sampled(write_spec):
    """Each position scheme leaves only the attentions that take it; one study sees no conflicting choice sets."""
    with registry.REGISTRY.scratch():
        registry.register("position", "bias_pos_test")(_BiasPosition)
        registry.register("attention", "bias_attn_test")(_BiasAttention)
        s = load_spec(write_spec("""\
            task: {type: mqar, vocab_size: 32, seq_len: 16}
            model: {d_model: 32, n_heads: 2, n_layers: 1}
            space:
              attention: [{type: softmax}, {type: cosine}, {type: bias_attn_test}]
              position: [{type: rope}, {type: bias_pos_test}]
            """), device="cpu").spec
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        chosen: dict[str, set] = {"rope": set(), "bias_pos_test": set()}
        names: dict[str, set] = {"rope": set(), "bias_pos_test": set()}
        for _ in range(40):
            trial = study.ask()
            arch = sample_architecture(s, trial, device="cpu")
            study.tell(trial, 0.0)  # Optuna rejects a name whose choice set changed between trials
            position = arch.position["type"]
            chosen[position].add(arch.layers[0].attention["type"])
            names[position] |= {k for k in trial.params if k.startswith("attention")}
    assert chosen["bias_pos_test"] == {"softmax", "bias_attn_test"}  # cosine takes no score bias
    assert chosen["rope"] == {"softmax", "cosine"}  # bias_attn_test takes no rotary positions
    assert len(names["rope"]) == len(names["bias_pos_test"]) == 1
    assert names["rope"] != names["bias_pos_test"]


def test_architecture_params_are_the_study_names(spec):
    from nas.space import architecture_params, param_name

    arch, params = sample(spec(), 3)
    named = architecture_params(arch)
    assert all(named[param_name(k)] == v for k, v in params.items())  # every sampled parameter, same name
    assert named["model.d_model"] == arch.d_model and named["position.type"] == arch.position["type"]
    assert not any(k.startswith("layers.") for k in named) and None not in named.values()
    per_layer = architecture_params(arch, per_layer=True)
    assert per_layer["layers.1.attention.type"] == arch.layers[1].attention["type"]
    assert param_name("attention.gqa.kv_heads|n_heads=4") == "attention.gqa.kv_heads"
