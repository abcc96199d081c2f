"""nas.model and the built-in blocks: shapes, causality, gradient flow, placements, and the cost functions."""

from __future__ import annotations

import pytest
import torch

from nas import Dims, registry
from nas.architecture import block_config
from nas.model import Layer, build_model, count_flops_per_token, count_parameters, meta_costs

POSITIONS = registry.names("position")
PLACEMENTS = ("pre", "post")


def _causal_pairs() -> list[tuple[str, str]]:
    """Every (attention, position) pair that can run causally together."""
    pairs = []
    for attention in registry.entries("attention"):
        if not attention.capabilities.causal or attention.capabilities.needs_gpu:
            continue
        for position in registry.entries("position"):
            if position.capabilities.position_mode in attention.capabilities.positions:
                pairs.append((attention.name, position.name))
    return pairs


CAUSAL_PAIRS = _causal_pairs()


def test_all_position_schemes_pair_with_softmax():
    assert {p for a, p in CAUSAL_PAIRS if a == "softmax"} == set(POSITIONS)
    assert {"none", "sinusoidal", "learned", "rope"} <= set(POSITIONS)


def test_causal_task_output_shape(make_arch, make_task):
    task = make_task("mqar")
    model = build_model(make_arch(), task)
    x, y = task.example_batch(3)
    assert x.shape == y.shape == (3, 16)
    assert model(x).shape == (3, 16, 32)  # (B, T, V)


def test_classification_task_output_shape(make_arch, make_task):
    task = make_task("digits", patch_size=2)
    model = build_model(make_arch(position="learned"), task)
    x, y = task.example_batch(5)
    assert x.shape == (5, 16, 4) and y.shape == (5,)  # 16 patches of 2x2 pixels
    assert model(x).shape == (5, 10)  # (B, classes)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("attention, position", CAUSAL_PAIRS)
def test_no_causal_leakage(make_arch, make_task, attention, position, placement):
    """Changing token t+1 (and everything after it) never changes the output at positions <= t."""
    task = make_task("mqar")
    model = build_model(make_arch(attention=attention, position=position, placement=placement), task).eval()
    x = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
        for t in range(15):
            changed = x.clone()
            changed[:, t + 1:] = (changed[:, t + 1:] + 1 + torch.arange(15 - t)) % 32
            new = model(changed)
            torch.testing.assert_close(new[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-6)
            assert not torch.allclose(new[:, t + 1:], out[:, t + 1:])  # the change is seen where it may be


@pytest.mark.parametrize("attention", [e.name for e in registry.entries("attention") if e.capabilities.bidirectional])
def test_encoder_attention_sees_the_future(make_arch, attention):
    """Without a causal mask, the first position depends on the last token."""
    dims = Dims(d_model=32, n_heads=2, seq_len=16, causal=False)
    position = registry.build("position", block_config("position", {"type": "none"}), dims)
    block = registry.build("attention", block_config("attention", {"type": attention}), dims, position).eval()
    x = torch.randn(1, 16, 32)
    changed = x.clone()
    changed[:, -1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(block(x)[:, 0], block(changed)[:, 0])


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("position", POSITIONS)
def test_gradients_reach_every_parameter(make_arch, make_task, position, placement):
    task = make_task("mqar")
    model = build_model(make_arch(position=position, placement=placement, norm="rmsnorm"), task)
    x, y = task.example_batch(4)
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_pre_and_post_placement_differ(make_arch, make_task):
    task = make_task("mqar")
    x, _ = task.example_batch(2)
    outputs = {}
    for placement in PLACEMENTS:
        torch.manual_seed(0)
        model = build_model(make_arch(placement=placement), task)
        outputs[placement] = model(x)
        assert torch.isfinite(outputs[placement]).all()
        # pre: a final norm before the head; post: the last layer's norm already is the final one
        assert isinstance(model.final_norm, torch.nn.Identity) == (placement == "post")
    assert not torch.allclose(outputs["pre"], outputs["post"])


def test_layer_rejects_an_unknown_placement():
    identity = torch.nn.Identity()
    with pytest.raises(ValueError, match="unknown norm placement 'middle'"):
        Layer(identity, identity, identity, identity, "middle")


def test_post_placement_normalises_the_residual_stream():
    """post: norm(x + f(x)); with layer norms and zero sublayers the output is the normalised input."""
    dims = Dims(d_model=8, n_heads=2, seq_len=4, causal=True)
    norm = registry.build("norm", block_config("norm", {"type": "layernorm"}), dims)

    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x)

    x = torch.randn(2, 4, 8) * 5 + 3
    post = Layer(Zero(), Zero(), norm, norm, "post")
    pre = Layer(Zero(), Zero(), norm, norm, "pre")
    torch.testing.assert_close(post(x), torch.nn.functional.layer_norm(x, (8,)))
    torch.testing.assert_close(pre(x), x)


def test_layers_do_not_share_weights(make_arch, make_task):
    model = build_model(make_arch(n_layers=2), make_task("mqar"))
    first, second = model.layers
    assert first.attention.qkv.weight.data_ptr() != second.attention.qkv.weight.data_ptr()
    assert first.attention.position is second.attention.position is model.position  # one shared scheme


def test_state_dict_round_trip(make_arch, make_task):
    task = make_task("mqar")
    torch.manual_seed(1)
    a = build_model(make_arch(position="learned"), task).eval()
    torch.manual_seed(2)
    b = build_model(make_arch(position="learned"), task).eval()
    x, _ = task.example_batch(2)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_same_gradients(make_arch, make_task):
    task = make_task("mqar")
    x, y = task.example_batch(4)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(make_arch(), task)
        model.checkpointing = checkpointing
        torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100).backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed)


def test_rope_needs_an_even_head_dimension(make_arch, make_task):
    with pytest.raises(ValueError, match="even head dimension"):
        build_model(make_arch(d_model=18, n_heads=2), make_task("mqar"))  # head_dim 9


def test_rope_scores_depend_only_on_the_offset():
    dims = Dims(d_model=16, n_heads=1, seq_len=16, causal=True)
    rope = registry.build("position", block_config("position", {"type": "rope", "base": 100.0}), dims)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    rq, rk = rope.rotate(q.expand(1, 1, 16, 16), k.expand(1, 1, 16, 16))  # the same q and k at every position
    scores = rq[0, 0] @ rk[0, 0].T  # (T, T)
    for offset in range(-3, 4):
        diagonal = torch.diagonal(scores, offset)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(torch.diagonal(scores, 0)[:1], torch.diagonal(scores, 3)[:1])
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1).expand(1, 1, 16))  # a rotation keeps lengths


def test_sinusoidal_table_matches_the_formula():
    dims = Dims(d_model=8, n_heads=2, seq_len=5, causal=True)
    scheme = registry.build("position", block_config("position", {"type": "sinusoidal"}), dims)
    pos, i = 3, 2  # the pair of columns (2i, 2i+1) at position 3
    angle = pos / 10000 ** (2 * i / 8)
    torch.testing.assert_close(scheme.table[pos, 2 * i], torch.tensor(angle).sin())
    torch.testing.assert_close(scheme.table[pos, 2 * i + 1], torch.tensor(angle).cos())


# --- cost functions ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_meta_parameter_count_equals_the_real_model(make_arch, make_task, position, placement):
    task = make_task("mqar")
    arch = make_arch(position=position, placement=placement)
    x, _ = task.example_batch(2)
    costs = meta_costs(arch, task, x)
    real = build_model(arch, task)
    assert costs["params"] == count_parameters(real) > 0
    assert costs["flops_per_token"] > 0


def test_parameter_count_by_hand(make_arch, make_task):
    """d=32, V=32, one layer, mlp x2, layernorm, pre, no position parameters (rope)."""
    model = build_model(make_arch(n_layers=1, expansion=2, position="rope"), make_task("mqar"))
    d, v = 32, 32
    attention = 3 * d * d + d * d
    mlp = (d * 2 * d + 2 * d) + (2 * d * d + d)
    norms = 3 * 2 * d  # two in the layer, one final; weight and bias
    assert count_parameters(model) == v * d + attention + mlp + norms + (d * v + v)


def test_shared_position_parameters_are_counted_once(make_arch, make_task):
    task = make_task("mqar")
    one = count_parameters(build_model(make_arch(n_layers=1, position="learned"), task))
    two = count_parameters(build_model(make_arch(n_layers=2, position="learned"), task))
    none_one = count_parameters(build_model(make_arch(n_layers=1, position="none"), task))
    none_two = count_parameters(build_model(make_arch(n_layers=2, position="none"), task))
    assert one - none_one == two - none_two == 16 * 32  # the (T, C) table, once


def test_flops_per_token_positive_and_growing_with_d_model(make_arch, make_task):
    task = make_task("mqar")
    x, _ = task.example_batch(2)
    flops = [count_flops_per_token(build_model(make_arch(d_model=d), task), x) for d in (16, 32, 64)]
    assert 0 < flops[0] < flops[1] < flops[2]


def test_flops_per_token_do_not_depend_on_batch_size(make_arch, make_task):
    task = make_task("mqar")
    model = build_model(make_arch(), task)
    assert count_flops_per_token(model, task.example_batch(1)[0]) == count_flops_per_token(
        model, task.example_batch(8)[0])


def test_meta_flops_count_the_linear_layers(make_arch, make_task):
    """2 FLOPs per multiply-add of every Linear, plus attention (2 matmuls of T x T x D per head)."""
    task = make_task("mqar")
    x, _ = task.example_batch(2)
    d, v, t = 32, 32, 16
    linear = 2 * (4 * d * d + 2 * d * 2 * d) + 2 * d * v  # one layer: qkv + out, mlp up + down; head
    attention = 2 * 2 * t * d  # q @ k^T and p @ v, full T x T, summed over heads
    assert meta_costs(make_arch(n_layers=1), task, x)["flops_per_token"] == linear + attention


def test_flops_per_token_same_on_cpu_and_meta(make_arch, make_task):
    task = make_task("mqar")
    arch = make_arch()
    x, _ = task.example_batch(2)
    assert count_flops_per_token(build_model(arch, task), x) == meta_costs(arch, task, x)["flops_per_token"]


def test_the_hook_readers_find_blocks_by_their_declared_protocol():
    """aux_loss / block_stats / reset_stats / inactive_parameters read each hook in one place, on any module."""
    import torch
    from torch import nn

    from nas.blocks import AuxLoss, aux_loss, block_stats, inactive_parameters, reset_stats

    class Routed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seen = 3.0

        def aux_loss(self) -> torch.Tensor:
            return torch.tensor(0.5)

        def stats(self) -> dict[str, float]:
            return {"seen": self.seen}

        def reset_stats(self) -> None:
            self.seen = 0.0

        def inactive_parameters(self) -> int:
            return 7

    model = nn.Sequential(nn.Linear(2, 2), Routed(), Routed())
    assert isinstance(model[1], AuxLoss) and not isinstance(model[0], AuxLoss)
    assert aux_loss(model).item() == 1.0 and aux_loss(nn.Linear(2, 2)) is None
    assert inactive_parameters(model) == 14
    assert block_stats(model) == {"1.seen": 3.0, "2.seen": 3.0}
    reset_stats(model)
    assert block_stats(model) == {"1.seen": 0.0, "2.seen": 0.0}
