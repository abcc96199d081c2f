"""The zero-cost proxies (nas.proxies) against closed forms on tiny nets and a plain-PyTorch reference."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from nas.model import build_model
from nas.proxies import grad_norm, synflow, synflow_per_parameter, zero_cost_proxies
from nas.runtime import loss_fn, seed_everything


def _two_layer(n: int = 5, h: int = 4, m: int = 3) -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(n, h, bias=False), nn.ReLU(), nn.Linear(h, m, bias=False))


def test_synflow_of_a_two_layer_linear_net_by_hand():
    net = _two_layer()
    w1, w2 = net[0].weight.detach().double().abs(), net[2].weight.detach().double().abs()  # (h, n), (m, h)
    # R = 1^T |W2| |W1| 1 (ReLU passes everything: positive weights, positive input);
    # dR/dW1_ij = (1^T |W2|)_i, dR/dW2_ki = (|W1| 1)_i
    r = float(w2.sum(0) @ w1.sum(1))
    s1 = float((w1 * w2.sum(0)[:, None]).sum())
    s2 = float((w2 * w1.sum(1)[None, :]).sum())
    scores = synflow_per_parameter(net, torch.ones(1, 5))
    assert scores["0.weight"] == pytest.approx(s1, rel=1e-12)
    assert scores["2.weight"] == pytest.approx(s2, rel=1e-12)
    # the paper's conservation law: without biases, every layer's synaptic flow equals R
    assert s1 == pytest.approx(r, rel=1e-12) and s2 == pytest.approx(r, rel=1e-12)


def test_synflow_ignores_weight_signs_and_scales_with_a_layer():
    net = _two_layer()
    base = sum(synflow_per_parameter(net, torch.ones(1, 5)).values())
    flipped = copy.deepcopy(net)
    with torch.no_grad():
        flipped[0].weight.neg_()
        flipped[2].weight[0].neg_()
        flipped[2].weight.mul_(3.0)  # R, and so each layer's flow, is linear in each layer's scale
    flow = sum(synflow_per_parameter(flipped, torch.ones(1, 5)).values())
    assert flow == pytest.approx(3 * base, rel=1e-6)  # the weights are float32: x3 rounds


def test_synflow_leaves_the_model_as_it_was(make_arch, make_task):
    task = make_task("mqar")
    model = build_model(make_arch(), task).train()
    before = copy.deepcopy(model.state_dict())
    synflow(model, task.example_batch(2)[0])
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_synflow_of_a_token_model_is_the_one_hot_all_ones_input(make_arch, make_task, attention):
    """The reference, written out in plain PyTorch: |params| in double, eval mode, the embedding applied as
    the linear map it is to an all-ones vector of vocabulary length at every position."""
    task = make_task("mqar")
    model = build_model(make_arch(attention=attention, position="learned"), task)
    x = task.example_batch(4)[0]

    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.abs_()
    e = ref.embedding.weight  # (V, C)
    h = torch.ones(1, x.shape[1], e.shape[0], dtype=torch.float64) @ e  # (1, T, C)
    h = ref.position.embed(h)
    for layer in ref.layers:
        h = layer(h)
    out = ref.head(ref.final_norm(h))  # (1, T, V)
    params = list(ref.parameters())
    grads = torch.autograd.grad(out.sum(), params, allow_unused=True)
    expected = sum(float((p.detach() * g).abs().sum()) for p, g in zip(params, grads) if g is not None)

    assert synflow(model, x) == pytest.approx(expected, rel=1e-10)


def test_synflow_needs_no_data(make_arch, make_task):
    task = make_task("mqar")
    model = build_model(make_arch(), task)
    a = task.example_batch(3)[0]
    b = torch.randint_like(a, 0, 32)
    assert synflow(model, a) == synflow(model, b) > 0


def test_synflow_refuses_an_integer_embedding_it_cannot_feed(make_arch, make_task):
    class Hashed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.randn(7, 32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.table[x % 7]

    task = make_task("mqar")
    model = build_model(make_arch(), task)
    model.embedding = Hashed()
    with pytest.raises(ValueError, match="not an nn.Embedding"):
        synflow(model, task.example_batch(2)[0])


def test_grad_norm_of_a_linear_layer_with_mse_by_hand():
    torch.manual_seed(2)
    layer = nn.Linear(4, 3)
    x, t = torch.randn(6, 4), torch.randn(6, 3)
    w, b = layer.weight.detach(), layer.bias.detach()
    err = x @ w.T + b - t  # (N, m); L = mean(err^2) over N*m entries
    scale = 2 / err.numel()
    d_w, d_b = scale * err.T @ x, scale * err.sum(0)
    expected = math.sqrt(float(d_w.pow(2).sum() + d_b.pow(2).sum()))
    assert grad_norm(layer, x, t, nn.functional.mse_loss) == pytest.approx(expected, rel=1e-6)


def test_grad_norm_scales_with_the_loss_and_touches_no_grad():
    torch.manual_seed(3)
    net = _two_layer()
    x, t = torch.randn(8, 5), torch.randn(8, 3)
    one = grad_norm(net, x, t, nn.functional.mse_loss)
    three = grad_norm(net, x, t, lambda out, y: 3 * nn.functional.mse_loss(out, y))
    assert three == pytest.approx(3 * one, rel=1e-6)
    assert all(p.grad is None for p in net.parameters())


def test_zero_cost_proxies_start_from_the_trials_weights_and_first_batch(make_arch, make_task):
    task, arch = make_task("mqar"), make_arch()
    got = zero_cost_proxies(arch, task, seed=5, batch_size=8)
    # the reference: the trial's init and its first training step's gradient, as the trainer computes it
    seed_everything(5)
    model = build_model(arch, task).train()
    x, y = next(iter(task.train_batches(8, seed=5)))
    loss_fn(model(x), y).backward()
    expected = float(torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf))
    assert got.grad_norm == pytest.approx(expected, rel=1e-5)
    assert got.synflow == pytest.approx(synflow(model, x), rel=1e-12)
    assert zero_cost_proxies(arch, task, seed=5, batch_size=8) == got  # deterministic
    assert zero_cost_proxies(arch, task, seed=6, batch_size=8).grad_norm != got.grad_norm
