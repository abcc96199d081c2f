"""The one-shot supernet: slicing against its index formula, a path against the model computed by hand from the
supernet's tensors, extraction, shared families, blocks without Sharing, saving, inherited scores.

Tolerances: 1e-6 (fp32) between a path and its extracted subnet (the issue's bar; they run the same kernels on
the same numbers), 1e-5 between a path and the hand-written model (different op order).
"""

from __future__ import annotations

import math
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas import BlockConfig, Capabilities, registry, testing
from nas.blocks import Sharing
from nas.spec import spec_from_data
from nas.supernet import Supernet, cut, inherited_scores, sample_path, sandwich_paths, train_supernet


def tiny_spec(space: dict | None = None, **model) -> object:
    data = {
        "name": "tiny",
        "task": {"type": "mqar", "vocab_size": 16, "seq_len": 16, "num_kv_pairs": 2, "train_examples": 64,
                 "test_examples": 32},
        "model": {"d_model": [16, 32], "n_heads": [2, 4], "n_layers": [1, 2], "norm_placement": ["pre"], **model},
        "space": space or {"attention": [{"type": "softmax"}], "position": [{"type": "none"}],
                           "norm": [{"type": "layernorm"}], "ffn": [{"type": "mlp", "expansion": [2, 4]}]},
        "training": {"steps": 4, "batch_size": 8, "eval_batch_size": 16},
    }
    return spec_from_data(data)


def test_cut_takes_heads_and_packed_qkv_as_the_index_formula_says():
    Hm, Dm, C = 3, 4, 5
    full = torch.arange(3 * Hm * Dm * C, dtype=torch.float64).view(3 * Hm * Dm, C)
    H, G, D, c = 2, 1, 3, 4
    got = cut(full, ((H + 2 * G) * D, c), ("qkv", "front"), H, D, Hm, Dm)
    rows = [h * Dm + j for h in range(H) for j in range(D)]  # q: head h, entry j
    rows += [Hm * Dm + g * Dm + j for g in range(G) for j in range(D)]  # k
    rows += [2 * Hm * Dm + g * Dm + j for g in range(G) for j in range(D)]  # v
    assert torch.equal(got, full[rows, :c])
    out = torch.arange(C * Hm * Dm, dtype=torch.float64).view(C, Hm * Dm)
    got = cut(out, (c, H * D), ("front", "heads"), H, D, Hm, Dm)
    assert torch.equal(got, out[:c, [h * Dm + j for h in range(H) for j in range(D)]])
    with pytest.raises(ValueError, match="widest copy has"):
        cut(torch.zeros(4, 4), (5, 4), ("front", "front"), 1, 1, 1, 1)


def test_a_path_is_the_model_computed_by_hand_from_the_supernet_tensors():
    """Embedding, pre-norm softmax attention and MLP, final norm and head, written out with plain PyTorch on
    slices taken by index from the supernet's widest tensors."""
    spec = tiny_spec()
    net = Supernet(spec, seed=3).eval()
    arch = sample_path(spec, 0, "smallest")  # d 16, 2 heads of 8, 1 layer, expansion 2
    assert (arch.d_model, arch.n_heads, arch.n_layers, arch.layers[0].ffn["expansion"]) == (16, 2, 1, 2)
    x = next(net.task.train_batches(4, seed=1))[0]
    with torch.no_grad():
        got = net(x, arch)
    s = {k.replace(":", "."): v.detach() for k, v in net.store.items()}
    C, H, D, Hm, Dm, T = 16, 2, 8, 4, 16, x.shape[1]

    def ln(h, where):
        return F.layer_norm(h, (C,), s[f"{where}|layernorm|weight"][:C], s[f"{where}|layernorm|bias"][:C])

    qkv = s["layers.0.attention|heads|qkv.weight"].view(3, Hm, Dm, -1)[:, :H, :D, :C]  # (3, H, D, C)
    w_out = s["layers.0.attention|heads|out.weight"].view(-1, Hm, Dm)[:C, :H, :D]  # (C, H, D)
    h = s["embedding|model|weight"][:, :C][x]  # (B, T, C)
    a = ln(h, "layers.0.norm_attn")
    q, k, v = (torch.einsum("btc,hdc->bhtd", a, qkv[i]) for i in range(3))  # (B, H, T, D)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = scores.softmax(-1) @ v  # (B, H, T, D)
    h = h + torch.einsum("bhtd,chd->btc", y, w_out)
    f = ln(h, "layers.0.norm_ffn")
    up_w, up_b = s["layers.0.ffn|mlp|up.weight"][:2 * C, :C], s["layers.0.ffn|mlp|up.bias"][:2 * C]
    down_w, down_b = s["layers.0.ffn|mlp|down.weight"][:C, :2 * C], s["layers.0.ffn|mlp|down.bias"][:C]
    h = h + F.linear(F.gelu(F.linear(f, up_w, up_b)), down_w, down_b)
    want = F.linear(ln(h, "final_norm"), s["head|model|weight"][:, :C], s["head|model|bias"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert s["layers.0.ffn|mlp|up.weight"].shape == (4 * 32, 32)  # the widest copy: expansion 4 at d 32
    assert s["layers.0.attention|heads|qkv.weight"].shape == (3 * Hm * Dm, 32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_extracted_subnets_equal_their_paths_on_the_quickstart_blocks(seed):
    spec = tiny_spec({"attention": [{"type": "softmax"}, {"type": "sliding_window", "window": [4, 8]},
                                    {"type": "linear"}, {"type": "gqa", "kv_heads": [1, 2]}],
                      "position": [{"type": "rope"}, {"type": "learned"}, {"type": "none"}],
                      "norm": [{"type": "layernorm"}, {"type": "rmsnorm"}],
                      "ffn": [{"type": "mlp", "expansion": [2, 4]}, {"type": "swiglu"}]},
                     norm_placement=["pre", "post", "sandwich"])
    net = Supernet(spec).eval()
    x = next(net.task.train_batches(4, seed=0))[0]
    for arch in sandwich_paths(spec, seed):
        with torch.no_grad():
            moved = (net(x, arch) - net.extract(arch)(x)).abs().max().item()
        assert moved <= 1e-6, f"{arch.summary()}: {moved}"


def test_attention_types_share_their_projections_and_norms_do_not():
    spec = tiny_spec({"attention": [{"type": "softmax"}, {"type": "linear"}, {"type": "sliding_window"}],
                      "position": [{"type": "none"}], "norm": [{"type": "layernorm"}, {"type": "rmsnorm"}]})
    net = Supernet(spec)
    base = sample_path(spec, 0, "largest")

    def slots(arch):
        return {p.name: p.slot for p in net.plan(arch, net.build(arch))}

    layer = base.layers[0]
    archs = {t: base.model_copy(update={"layers": [layer.model_copy(update={"attention": {"type": t}})] *
                                       base.n_layers}) for t in ("softmax", "linear")}
    a, b = slots(archs["softmax"]), slots(archs["linear"])
    assert a["layers.0.attention.qkv.weight"] == b["layers.0.attention.qkv.weight"]
    assert a["layers.0.attention.out.weight"] == b["layers.0.attention.out.weight"]
    norms = {n: base.model_copy(update={"layers": [layer.model_copy(update={"norm": {"type": n}})] * base.n_layers})
             for n in ("layernorm", "rmsnorm")}
    key = "layers.0.norm_attn.weight"
    assert slots(norms["layernorm"])[key] != slots(norms["rmsnorm"])[key]


def _register_unshared(name: str = "unshared_mix"):
    """A plugin attention that declares no Sharing (a gated token mixer with a width-dependent shape)."""
    config = type("Config", (BlockConfig,), {"__annotations__": {"type": Literal[name]}, "type": name})

    class Unshared(nn.Module):
        Config = config
        capabilities = Capabilities(positions=frozenset({"none", "embedding"}))

        def __init__(self, config, dims, position):
            super().__init__()
            self.mix = nn.Linear(dims.d_model, dims.d_model)
            self.gate = nn.Parameter(torch.zeros(dims.d_model))
            self.causal = dims.causal

        def forward(self, x):  # causal running mean, gated
            mean = x.cumsum(1) / torch.arange(1, x.shape[1] + 1, device=x.device)[:, None]
            return self.mix(mean) * torch.sigmoid(self.gate)

    Unshared.__doc__ = "A plugin block without weight sharing."
    registry.register("attention", name)(Unshared)
    return name


def test_a_block_without_sharing_gets_separate_full_width_weights_per_size():
    with registry.REGISTRY.scratch():
        name = _register_unshared()
        spec = tiny_spec({"attention": [{"type": name}, {"type": "softmax"}], "position": [{"type": "none"}]})
        net = Supernet(spec)
        trained = train_supernet(net, steps=6, seed=0)
        assert trained.steps == 6 and 6 <= trained.passes <= 18
        own = [k for k in net.store if k.startswith("layers:0:attention|own-")]
        sizes = {tuple(net.store[k].shape) for k in own if k.endswith("mix:weight")}
        assert sizes <= {(16, 16), (32, 32)} and sizes, own
        x = next(net.task.train_batches(2, seed=0))[0]
        for widths in ("largest", "smallest"):
            arch = sample_path(spec, 1, widths)
            arch = arch.model_copy(update={"layers": [layer.model_copy(update={"attention": {"type": name}})
                                                      for layer in arch.layers]})
            with torch.no_grad():
                assert (net(x, arch) - net.extract(arch)(x)).abs().max().item() <= 1e-6


def test_the_kit_catches_a_block_whose_forward_bypasses_its_parameters():
    """A block that computes with a reference to its weight kept outside the module's parameters would run
    with its own initial weights in a supernet path, not the shared ones."""
    name = "sneaky"
    config = type("Config", (BlockConfig,), {"__annotations__": {"type": Literal[name]}, "type": name})

    class Sneaky(nn.Module):
        Config = config
        capabilities = Capabilities(positions=frozenset({"none"}), sharing=Sharing("sneaky"))

        def __init__(self, config, dims, position):
            super().__init__()
            self.proj = nn.Linear(dims.d_model, dims.d_model)
            self.kept = [self.proj.weight]  # not seen by functional_call

        def forward(self, x):
            return F.linear(x, self.kept[0], self.proj.bias)

    Sneaky.__doc__ = "Broken on purpose."
    with registry.REGISTRY.scratch():
        registry.register("attention", name)(Sneaky)
        case = testing.Case(registry.get("attention", name), causal=True, position="none")
        with pytest.raises(AssertionError, match="differs from the supernet's path"):
            testing.check_supernet_slicing(case)


def test_saved_supernet_extracts_the_same_subnets(tmp_path):
    spec = tiny_spec()
    net = Supernet(spec)
    train_supernet(net, steps=3, seed=0)
    net.save(tmp_path, {"seed": 0, "steps": 3})
    again, state = Supernet.load(tmp_path, spec)
    assert state["steps"] == 3 and Supernet.saved(tmp_path)
    x = next(net.task.train_batches(2, seed=0))[0]
    for arch in sandwich_paths(spec, 5):
        with torch.no_grad():
            assert torch.equal(net.extract(arch)(x), again.extract(arch)(x))


def test_training_lowers_the_loss_and_leaves_no_gradient_behind():
    spec = tiny_spec()
    net = Supernet(spec)
    trained = train_supernet(net, steps=30, seed=0)
    assert trained.curve[-1][1] < trained.curve[0][1]
    assert all(p.grad is None for p in net.parameters())


def test_inherited_scores_are_deterministic_qualities():
    spec = tiny_spec()
    archs = [sample_path(spec, s) for s in range(3)]
    scores, passes = inherited_scores(spec, archs, steps=3, seed=0)
    again, _ = inherited_scores(spec, archs, steps=3, seed=0)
    assert scores == again and len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    assert 3 <= passes <= 9  # three paths per step under the sandwich rule, fewer where widths coincide
