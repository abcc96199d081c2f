"""nas.train: the loss falls, runs are reproducible, a NaN stops the trial, bf16 autocast runs on CPU."""

from __future__ import annotations

import math

import pytest
import torch

from nas.model import build_model
from nas.runtime import loss_fn, seed_everything
from nas.spec import ScheduleConfig, TrainingConfig
from nas.train import NonFiniteLoss, lr_factor, make_optimizer, train

CPU = torch.device("cpu")


def config(**overrides) -> TrainingConfig:
    base = dict(steps=80, batch_size=32, log_every=10, device="cpu", seed=0,
                optimizer={"lr": 1e-2}, schedule={"warmup_steps": 5})
    return TrainingConfig.model_validate({**base, **overrides})


def run(make_arch, make_task, **overrides):
    task = make_task("mqar")
    cfg = config(**overrides)
    seed_everything(cfg.seed)
    model = build_model(make_arch(n_layers=1), task)
    return model, train(model, task, cfg, CPU)


def test_loss_falls_on_mqar(make_arch, make_task):
    _, result = run(make_arch, make_task)
    first, last = result.curve[0][1], result.curve[-1][1]
    assert first == pytest.approx(math.log(32), abs=0.3)  # near-uniform over the vocabulary at the start
    assert last < first - 0.5
    assert result.steps == 80 and result.final_loss == last


def test_curve_is_logged_every_log_every_steps_and_at_the_end(make_arch, make_task):
    seen = []
    task = make_task("mqar")
    model = build_model(make_arch(n_layers=1), task)
    result = train(model, task, config(steps=23, log_every=10), CPU, on_log=lambda s, v: seen.append((s, v)))
    assert [step for step, _ in result.curve] == [0, 10, 20, 22]
    assert seen == result.curve


def test_same_seed_same_curve(make_arch, make_task):
    model_a, a = run(make_arch, make_task, steps=30, log_every=3)
    model_b, b = run(make_arch, make_task, steps=30, log_every=3)
    assert a.curve == b.curve
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


def test_another_seed_another_curve(make_arch, make_task):
    _, a = run(make_arch, make_task, steps=10, log_every=3)
    _, b = run(make_arch, make_task, steps=10, log_every=3, seed=1)
    assert a.curve != b.curve


def test_explicit_batches_are_used(make_arch, make_task):
    task = make_task("mqar")
    x, y = task.example_batch(8)
    model = build_model(make_arch(n_layers=1), task)
    result = train(model, task, config(steps=40, log_every=39), CPU, batches=iter([(x, y)] * 40))
    assert result.curve[-1][1] < 0.5 * result.curve[0][1]  # one batch, memorised


def test_nan_loss_raises(make_arch, make_task):
    task = make_task("mqar")
    model = build_model(make_arch(n_layers=1), task)
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss \(nan\) at step 0"):
        train(model, task, config(steps=5), CPU)


def test_loss_that_becomes_nan_later_raises_at_that_step(make_arch, make_task, monkeypatch):
    import nas.train

    calls = []

    def loss_nan_from_step_3(logits, targets):
        calls.append(1)
        loss = loss_fn(logits, targets)
        return loss * float("nan") if len(calls) > 3 else loss

    monkeypatch.setattr(nas.train, "loss_fn", loss_nan_from_step_3)
    task = make_task("mqar")
    with pytest.raises(NonFiniteLoss, match="at step 3"):
        train(build_model(make_arch(n_layers=1), task), task, config(steps=10), CPU)


def test_bf16_autocast_on_cpu(make_arch, make_task):
    model, result = run(make_arch, make_task, steps=30, precision="bf16")
    assert all(math.isfinite(v) for _, v in result.curve)
    assert result.curve[-1][1] < result.curve[0][1]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a bf16 model


def test_gradient_checkpointing_trains_the_same(make_arch, make_task):
    _, plain = run(make_arch, make_task, steps=10, log_every=3)
    model, checkpointed = run(make_arch, make_task, steps=10, log_every=3, grad_checkpointing=True)
    assert model.checkpointing is True
    assert [s for s, _ in plain.curve] == [s for s, _ in checkpointed.curve]
    for (_, a), (_, b) in zip(plain.curve, checkpointed.curve):
        assert a == pytest.approx(b, rel=1e-5)


def test_loss_fn_ignores_minus_100():
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, -100, 2], [-100, -100, 4]])
    kept = logits[targets != -100]
    expected = torch.nn.functional.cross_entropy(kept, targets[targets != -100])
    torch.testing.assert_close(loss_fn(logits, targets), expected)
    torch.testing.assert_close(loss_fn(logits[:, 0], targets[:, 0].clamp(min=0)),  # (B, classes) logits
                               torch.nn.functional.cross_entropy(logits[:, 0], targets[:, 0].clamp(min=0)))


def test_weight_decay_only_on_matrices(make_arch, make_task):
    model = build_model(make_arch(n_layers=1), make_task("mqar"))
    decay, no_decay = make_optimizer(model, config(optimizer={"lr": 1e-3, "weight_decay": 0.1})).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedule_warmup_then_cosine_to_min_ratio():
    factor = lr_factor(ScheduleConfig(type="cosine", warmup_steps=4, min_lr_ratio=0.1), steps=20)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == pytest.approx(1.0)
    values = [factor(s) for s in range(4, 21)]
    assert values == sorted(values, reverse=True)
    assert factor(20) == pytest.approx(0.1)
    assert factor(12) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2


def test_constant_schedule_and_warmup_longer_than_training():
    constant = lr_factor(ScheduleConfig(type="constant", warmup_steps=2), steps=10)
    assert [constant(s) for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    long_warmup = lr_factor(ScheduleConfig(type="cosine", warmup_steps=100), steps=4)
    assert [long_warmup(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
