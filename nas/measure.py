"""Measured latency and peak memory, on the device the trial ran on.

Method (also stored with every result, so a figure always says how it was made):

* latency: ``model.eval()`` under ``torch.inference_mode``; ``warmup`` untimed forwards, then ``repeats``
  timed ones; median, 90th percentile, and a distribution-free 95% confidence interval of the median (the
  order statistics that the binomial(repeats, 1/2) distribution puts around it). CUDA: CUDA events around
  each forward. CPU: ``time.perf_counter`` around each forward with ``torch.set_num_threads(threads)``.
* memory: the peak bytes held by tensors during one inference forward, and during one training step
  (forward, backward, AdamW update, optimizer state already created), including the tensors alive at its
  start (parameters, optimizer state, inputs). CUDA: ``torch.cuda.max_memory_allocated``. CPU: every
  allocation and free of PyTorch's CPU allocator, recorded by ``torch.profiler`` (``profile_memory=True``),
  summed in time order to its running maximum.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .blocks import aux_loss
from .runtime import autocast, loss_fn

__all__ = ["measure_latency", "timed", "median_interval", "peak_memory", "working_peak", "allocation_trace",
           "inference_memory", "train_step_memory", "sync", "METHOD"]

METHOD = {
    "latency": "median/p90 of repeated inference forwards after warm-up; CUDA events on GPU, perf_counter on CPU",
    "memory": "peak tensor bytes during the step incl. live tensors; CUDA max_memory_allocated, "
              "CPU torch.profiler allocator events",
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Median and p90 milliseconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones: CUDA events
    on a GPU, ``time.perf_counter`` on a CPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    low, high = median_interval(times)
    return {"latency_ms": statistics.median(times), "latency_p90_ms": p90, "latency_ci_low_ms": low,
            "latency_ci_high_ms": high}


def median_interval(samples: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: ``(x_(j), x_(n+1-j))`` of the sorted samples for
    the largest ``j`` with ``P(j <= B < n+1-j) >= confidence``, B ~ binomial(n, 1/2). With too few samples
    for that confidence (n < 6 at 95%), the full range."""
    xs, n = sorted(samples), len(samples)
    if n == 0:
        return math.nan, math.nan
    cdf = [0.0]  # cdf[k] = P(B < k)
    for k in range(n + 1):
        cdf.append(cdf[-1] + math.comb(n, k) / 2**n)
    j = 1
    while j + 1 <= n // 2 and cdf[n + 1 - (j + 1)] - cdf[j + 1] >= confidence:
        j += 1
    return xs[j - 1], xs[n - j]


def measure_latency(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int, threads: int,
                    precision: str = "fp32") -> dict[str, float]:
    """Median and p90 forward latency in milliseconds of ``model(x)`` on ``x``'s device."""
    device = x.device
    model.eval()
    previous_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode(), autocast(device, precision):
            return timed(lambda: model(x), device, warmup, repeats)
    finally:
        torch.set_num_threads(previous_threads)


@contextlib.contextmanager
def _silence_native_stderr() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to /dev/null for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _live_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared tensors counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def allocation_trace(fn: Callable[[], Any], device: torch.device) -> tuple[int, int]:
    """``(peak, retained)`` bytes allocated while ``fn()`` runs, above what was allocated before it: the
    running maximum, and what is still held when it returns."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base, torch.cuda.memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _silence_native_stderr():  # kineto prints a line to fd 2 on every start and stop
        prof.start()
    try:
        fn()
    finally:
        with _silence_native_stderr():
            prof.stop()
    # Private but stable since torch 2.0: the raw allocator events, each with a signed byte count.
    assert prof.profiler is not None and prof.profiler.kineto_results is not None
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()  # type: ignore[attr-defined]  # memory events carry a signed byte count
        peak = max(peak, current)
    return peak, current


def working_peak(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated while ``fn()`` runs above what was allocated before it (CUDA and CPU alike)."""
    return allocation_trace(fn, device)[0]


def peak_memory(fn: Callable[[], Any], device: torch.device, live: Any = ()) -> int:
    """Peak bytes held by tensors while ``fn()`` runs, counting the tensors alive before it: on CUDA all that
    is allocated on the device, on CPU the tensors in ``live``."""
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _live_bytes(live)
    return before + allocation_trace(fn, device)[0]


def inference_memory(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> int:
    """Peak bytes of one inference forward of ``model(x)``."""
    model.eval()

    def step() -> None:
        with torch.inference_mode(), autocast(x.device, precision):
            model(x)

    step()  # warm-up: lazily created buffers and caches are not part of the steady state
    return peak_memory(step, x.device, live=[*model.parameters(), *model.buffers(), x])


def train_step_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str = "fp32") -> int:
    """Peak bytes of one steady-state training step (AdamW) on a copy of ``model``; ``model`` is untouched."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: the copy's weights stay as they are

    def step() -> None:
        with autocast(x.device, precision):
            loss = loss_fn(model(x), y)
            aux = aux_loss(model)
            if aux is not None:
                loss = loss + aux
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # creates the optimizer state, as in any step after the first
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return peak_memory(step, x.device, live=[*model.parameters(), *model.buffers(), *state, x, y])
