"""nas.measure: latency figures and peak memory (no timing assertions: only signs, order and exact byte counts)."""

from __future__ import annotations

import copy

import pytest
import torch

from nas.measure import inference_memory, measure_latency, peak_memory, train_step_memory
from nas.model import build_model, count_parameters

CPU = torch.device("cpu")
MiB = 2**20


@pytest.fixture
def model_and_task(make_arch, make_task):
    task = make_task("mqar")
    return build_model(make_arch(d_model=64, n_layers=2), task), task


def test_latency_figures_present_and_positive(model_and_task):
    model, task = model_and_task
    x, _ = task.example_batch(2)
    threads = torch.get_num_threads()
    result = measure_latency(model, x, warmup=1, repeats=5, threads=1)
    assert set(result) == {"latency_ms", "latency_p90_ms", "latency_ci_low_ms", "latency_ci_high_ms"}
    assert 0 < result["latency_ms"] <= result["latency_p90_ms"]
    assert result["latency_ci_low_ms"] <= result["latency_ms"] <= result["latency_ci_high_ms"]
    assert torch.get_num_threads() == threads  # restored after the timed runs
    assert not model.training


def test_peak_memory_of_one_allocation_is_exact():
    assert peak_memory(lambda: torch.ones(MiB), CPU) == 4 * MiB  # fp32


def test_peak_memory_is_the_running_maximum():
    def step():
        a, b = torch.ones(MiB), torch.ones(MiB)  # 8 MiB at once
        del a, b
        torch.ones(MiB)  # 4 MiB: below the peak

    assert peak_memory(step, CPU) == 8 * MiB


def test_live_tensors_count_once_per_storage():
    t = torch.ones(1000)
    assert peak_memory(lambda: None, CPU) == 0
    assert peak_memory(lambda: None, CPU, live=[t, t[:10], t.view(10, 100), "not a tensor"]) == 4000


@pytest.mark.parametrize("measure", ["inference", "train"])
def test_memory_positive_and_growing_with_batch_size(model_and_task, measure):
    model, task = model_and_task
    figures = []
    for batch in (4, 64):
        x, y = task.example_batch(batch)
        figures.append(inference_memory(model, x) if measure == "inference" else train_step_memory(model, x, y))
    params_bytes = 4 * count_parameters(model)
    assert params_bytes < figures[0] < figures[1]


def test_training_step_needs_more_memory_than_inference(model_and_task):
    """Training's forward holds every activation inference holds, plus the two AdamW moments (2 x params)."""
    model, task = model_and_task
    x, y = task.example_batch(4)
    params_bytes = 4 * count_parameters(model)
    assert train_step_memory(model, x, y) >= inference_memory(model, x) + 2 * params_bytes


def test_train_step_memory_leaves_the_model_untouched(model_and_task):
    model, task = model_and_task
    model.eval()
    before = copy.deepcopy(model.state_dict())
    x, y = task.example_batch(4)
    assert train_step_memory(model, x, y) > 0
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_memory_with_bf16_autocast(model_and_task):
    model, task = model_and_task
    x, y = task.example_batch(4)
    assert inference_memory(model, x, precision="bf16") > 0
    assert train_step_memory(model, x, y, precision="bf16") > 0
