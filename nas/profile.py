"""``nas profile``: how each attention type's time and memory grow with sequence length, measured on this device.

For every registered attention type (built through the registry at fixed sizes, position ``none``), one
attention block is timed and its peak memory taken over a sweep of sequence lengths, in inference
(``forward``) or training (``train``: forward + backward) mode. The scaling exponent ``p`` of
``time ~ T^p`` and ``memory ~ T^p`` is fitted by least squares on log-log axes over the upper part of the
sweep, where the asymptotic term dominates, and printed beside the analytical expectation:

* time: quadratic for full attention (every query scores every key), linear for sliding-window, kernelized
  (linear, Performer), low-rank (Linformer) attention and the state-space scan;
* memory: quadratic when the kernel that ran stores a T x T tensor (SDPA's math backend, an explicit mask or
  bias; see :func:`nas.kernels.materialises_scores`), linear for flash-style kernels and the linear types.

Then one full Transformer layer's training activation memory is compared with Korthikanti et al. 2022
("Reducing Activation Recomputation in Large Transformer Models", eq. 2): ``s*b*h*(34 + 5*a*s/h)`` bytes
per layer in 16-bit training with dropout. Our layer is fp32 without dropout, so the formula is adapted term by
term (:func:`activation_formula`): ``s*b*h*(64 + 4*a*s/h)`` bytes; ``4*a*s^2*b`` is the stored softmax
output that flash-style kernels never keep; full recomputation (activation checkpointing) keeps only the
layer input, ``4*s*b*h`` bytes (their "2sbh" in 16-bit).

Memory figures are the peak bytes allocated while the measured call runs, above what was allocated before
it (parameters and the input are not counted): CPU from the allocator events of ``torch.profiler``, CUDA
from ``max_memory_allocated``, as in :mod:`nas.measure`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import kernels, registry
from .blocks import Dims, capabilities_of
from .measure import allocation_trace, measure_latency, sync, timed, working_peak

__all__ = ["ProfileSettings", "ProfileReport", "fit_power_law", "korthikanti_bytes", "activation_formula",
           "expected_exponents", "run_profile", "format_report", "write_outputs", "log_to_mlflow"]

MiB = 2**20
AGREEMENT = 0.3  # a fitted exponent "agrees" when within this of the expected one

@dataclass
class ProfileSettings:
    """What to profile; the defaults do every attention type to T = 2048 in a few minutes on 2 CPU cores."""

    attention: list[str] | None = None  # None: every registered attention type
    seq_lens: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096])
    batch: int = 1
    heads: int = 4
    head_dim: int = 32
    device: str = "auto"
    mode: str = "forward"  # forward | train
    causal: bool = True  # types that cannot run this way run the other way (noted)
    warmup: int = 2
    repeats: int = 5
    # CPU intra-op threads, as nas.measure's default: one thread does not turn other processes' load into
    # OpenMP barrier stalls (measured here: medians 10x apart between runs with 2 threads on a busy machine)
    threads: int = 1
    budget_s: float = 30.0  # skip a point predicted to take longer than this (all its runs together)
    fit_from: int | None = None  # fit exponents over T >= this (default: the upper half of the sweep)
    layer: bool = True  # also compare a layer's activation memory with Korthikanti et al.
    layer_seq_lens: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    seed: int = 0

    @property
    def d_model(self) -> int:
        return self.heads * self.head_dim


@dataclass
class ProfileReport:
    settings: dict[str, Any]
    device: str
    torch: str
    rows: list[dict[str, Any]]  # one per (attention, seq_len) measured or skipped
    fits: list[dict[str, Any]]  # one per attention type
    layer: list[dict[str, Any]]  # activation-memory comparison, one per (variant, seq_len)
    notes: list[str]
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- analysis -----------------------------------------------------------------------------------------------
def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares line through ``(log x, log y)``: ``(slope, intercept, r2)``, so ``y ~ e^intercept x^slope``.

    ``r2`` is the coefficient of determination of the log-log fit (1 for an exact power law). Needs at least
    two distinct positive ``x`` and positive ``y``.
    """
    pts = [(math.log(a), math.log(b)) for a, b in zip(x, y)]
    if len(pts) < 2:
        raise ValueError("fit_power_law needs at least two points")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        raise ValueError("fit_power_law needs at least two distinct x")
    slope = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    intercept = my - slope * mx
    ss_tot = sum((p[1] - my) ** 2 for p in pts)
    ss_res = sum((p[1] - (intercept + slope * p[0])) ** 2 for p in pts)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return slope, intercept, r2


def korthikanti_bytes(s: int, b: int, h: int, a: int) -> float:
    """Activation bytes per layer, 16-bit training with dropout, no recomputation (Korthikanti et al. 2022,
    eq. 2): ``s*b*h*(34 + 5*a*s/h)``; s sequence, b batch, h hidden size, a heads."""
    return s * b * h * (34 + 5 * a * s / h)


def activation_formula(s: int, b: int, h: int, a: int, variant: str) -> dict[str, float]:
    """Korthikanti et al.'s count adapted to our fp32 layer without dropout (pre-norm, MLP 4h with GELU).

    Their 16-bit terms, each doubled for fp32, dropout masks and dropout outputs removed:
    layer-norm inputs 2 x 4sbh; attention: QKV input 4sbh, Q, K, V 12sbh, output-projection input 4sbh;
    MLP: input 4sbh, GELU input 16sbh, second linear's input 16sbh; in all ``64*s*b*h``. The attention
    matrix: softmax output ``4*a*s^2*b`` (their ``5as^2b`` = 2 softmax output + 1 dropout mask + 2 dropout
    output, in 16-bit). ``variant``: ``materialised`` (scores stored), ``flash`` (no T x T term) or
    ``checkpointed`` (full recomputation: the layer input only, ``4*s*b*h``).
    """
    linear = 64.0 * s * b * h
    attn = 4.0 * a * s * s * b
    if variant == "materialised":
        return {"linear": linear, "attention_matrix": attn, "total": linear + attn}
    if variant == "flash":
        return {"linear": linear, "attention_matrix": 0.0, "total": linear}
    if variant == "checkpointed":
        return {"linear": 4.0 * s * b * h, "attention_matrix": 0.0, "total": 4.0 * s * b * h}
    raise ValueError(f"unknown variant '{variant}'; valid: materialised, flash, checkpointed")


def expected_exponents(name: str, cls: type, kernel: str | None) -> dict[str, Any]:
    """The analytical time and memory exponents of attention type ``name`` when ``kernel`` ran: its declared
    ``capabilities.time_exponent``, and the memory exponent that follows from it and the kernel."""
    declared = capabilities_of("attention", cls).time_exponent
    time_exp, why = declared if declared is not None else (None, "no complexity declared")
    if time_exp is None:
        return {"time": None, "time_why": why, "memory": None, "memory_why": why}
    if time_exp >= 2 and kernel is not None and kernels.materialises_scores(kernel):
        mem, mem_why = 2, f"{kernel} stores a T x T tensor"
    elif time_exp >= 2:
        mem, mem_why = 1, f"{kernel or 'kernel'} keeps no T x T tensor"
    else:
        mem, mem_why = 1, why
    return {"time": time_exp, "time_why": why, "memory": mem, "memory_why": mem_why}


# -- measurement ----------------------------------------------------------------------------------------------
def _train_latency(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, warmup: int,
                   repeats: int) -> dict[str, float]:
    """Median and p90 milliseconds of forward + backward of ``module`` on ``x`` (which requires grad)."""
    module.train()

    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(grad)

    return timed(step, x.device, warmup, repeats)


MIN_TIMED_S = 0.25  # short calls are repeated until about this long in all, at most MAX_REPEATS times
MAX_REPEATS = 50


def _repeats_for(module: nn.Module, x: torch.Tensor, mode: str, repeats: int) -> int:
    """At least ``repeats``; more for short calls, so that a median is not at the mercy of one scheduler hiccup
    on a busy machine. One untimed call estimates the duration."""
    sync(x.device)
    t0 = time.perf_counter()
    if mode == "forward":
        with torch.inference_mode():
            module.eval()(x)
    else:
        module.train()(x.detach().requires_grad_(True)).sum().backward()
        module.zero_grad(set_to_none=True)
    sync(x.device)
    once = time.perf_counter() - t0
    return max(repeats, min(MAX_REPEATS, math.ceil(MIN_TIMED_S / max(once, 1e-6))))


def measure_point(module: nn.Module, x: torch.Tensor, mode: str, warmup: int, repeats: int,
                  threads: int) -> dict[str, Any]:
    """Time (median of ``repeats`` after ``warmup``) and peak working memory of one attention call."""
    device = x.device
    repeats = _repeats_for(module, x, mode, repeats)
    if mode == "forward":
        timing = measure_latency(module, x, warmup, repeats, threads)

        def call() -> None:
            with torch.inference_mode():
                module(x)

        peak = working_peak(call, device)
    elif mode == "train":
        x = x.detach().requires_grad_(True)
        grad = torch.randn_like(x)
        timing = _train_latency(module, x, grad, warmup, repeats)

        module(x).backward(grad)  # one step outside the trace: lazily created state exists
        module.zero_grad(set_to_none=True)  # freed outside the trace, so the peak counts the gradients once
        x.grad = None
        peak = working_peak(lambda: module(x).backward(grad), device)
        module.zero_grad(set_to_none=True)
    else:
        raise ValueError(f"unknown mode '{mode}'; valid: forward, train")
    return {"time_ms": timing["latency_ms"], "time_p90_ms": timing["latency_p90_ms"], "peak_mb": peak / MiB,
            "repeats": repeats, "kernel": getattr(module, "kernel", None)}


def _available_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return math.inf


def _device_label(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {threads} threads)"


def _no_position(dims: Dims) -> nn.Module:
    """A position scheme that adds nothing (mode ``none``): attention is profiled on its own."""
    entry = next(e for e in registry.entries("position") if e.capabilities.position_mode == "none")
    return registry.build("position", entry.config(), dims)


def _build(name: str, dims: Dims) -> nn.Module:
    entry = registry.get("attention", name)
    return registry.build("attention", entry.config(), dims, _no_position(dims))


def _forward_flops(name: str, dims: Dims, batch: int, T: int) -> float | None:
    """FLOPs of one forward of the block at length ``T`` (matrix products and attention, counted by
    :func:`nas.model.count_flops_per_token` on the meta device: free, and the same count a trial reports)."""
    from .model import count_flops_per_token

    try:
        with torch.device("meta"):
            module = _build(name, dims)
        return count_flops_per_token(module, torch.empty(batch, T, dims.d_model, device="meta")) * batch * T
    except Exception:  # a block the FLOP counter cannot trace on meta: no FLOP expectation for it
        return None


def profile_attention(name: str, s: ProfileSettings, device: torch.device, threads: int,
                      log: Callable[[str], None] = lambda m: None) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for one attention type over the sweep, and notes about how it was run."""
    entry = registry.get("attention", name)
    caps = entry.capabilities
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    causal = s.causal
    if not caps.supports(causal):
        causal = not causal
        notes.append(f"{name}: cannot run {'bidirectionally' if causal else 'causally'}; profiled "
                     f"{'causally' if causal else 'bidirectionally'}")
    base = {"attention": name, "direction": "causal" if causal else "bidirectional", "mode": s.mode,
            "batch": s.batch, "heads": s.heads, "head_dim": s.head_dim}
    lens = sorted(set(s.seq_lens))
    if caps.needs_gpu and device.type != "cuda":
        return [{**base, "seq_len": T, "status": "skipped", "reason": "needs a GPU"} for T in lens], notes
    torch.manual_seed(s.seed)
    dims = Dims(s.d_model, s.heads, max(lens), causal)
    try:
        module = _build(name, dims).to(device)
    except Exception as exc:
        reason = f"cannot be built: {type(exc).__name__}: {exc}"
        return [{**base, "seq_len": T, "status": "failed", "reason": reason} for T in lens], notes
    available = _available_bytes(device)
    gen = torch.Generator().manual_seed(s.seed)
    previous: dict[str, Any] | None = None
    skip_reason: str | None = None
    for T in lens:
        row: dict[str, Any] = {**base, "seq_len": T}
        if skip_reason is None and previous is not None:
            ratio = T / previous["seq_len"]
            per_call = previous["time_ms"] / 1e3 * ratio**2  # quadratic: the safe side for every type
            runs = s.warmup + s.repeats + (3 if s.mode == "train" else 2)  # + the estimate and memory calls
            if per_call * runs > s.budget_s:
                skip_reason = (f"predicted {per_call * runs:.0f} s at T={T} (from {previous['time_ms']:.0f} ms at "
                               f"T={previous['seq_len']}, quadratic) exceeds --budget {s.budget_s:g} s")
            elif previous["peak_mb"] * MiB * ratio**2 > 0.5 * available:
                skip_reason = f"predicted memory at T={T} exceeds half of the {available / 2**30:.1f} GiB free"
        if skip_reason is not None:
            rows.append({**row, "status": "skipped", "reason": skip_reason})
            continue
        x = torch.randn(s.batch, T, s.d_model, generator=gen).to(device)
        try:
            row.update(measure_point(module, x, s.mode, s.warmup, s.repeats, threads), status="ok", reason="",
                       flops=_forward_flops(name, dims, s.batch, T))
        except (torch.OutOfMemoryError, MemoryError) as exc:
            skip_reason = f"out of memory at T={T}"
            rows.append({**row, "status": "failed", "reason": f"out of memory: {str(exc).splitlines()[0]}"})
            continue
        except Exception as exc:
            skip_reason = f"failed at T={T}"
            rows.append({**row, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append(row)
        previous = row
        log(f"  {name:<15} T={T:<6} {row['time_ms']:10.2f} ms  {row['peak_mb']:9.2f} MiB  {row['kernel'] or '-'}")
    return rows, notes


def fit_rows(name: str, rows: list[dict[str, Any]], fit_from: int | None) -> dict[str, Any]:
    """Fitted time and memory exponents of one type's measured rows, beside the analytical expectation."""
    ok = [r for r in rows if r["status"] == "ok"]
    kernel = next((r["kernel"] for r in reversed(ok) if r.get("kernel")), None)
    entry = registry.get("attention", name)
    out: dict[str, Any] = {"attention": name, "kernel": kernel, "direction": rows[0]["direction"] if rows else None,
                           "points": len(ok)}
    exp = expected_exponents(name, entry.cls, kernel)
    out.update(expected_time=exp["time"], expected_time_why=exp["time_why"], expected_memory=exp["memory"],
               expected_memory_why=exp["memory_why"])
    lens = [r["seq_len"] for r in ok]
    start = fit_from if fit_from is not None else (sorted(lens)[len(lens) // 2] if lens else 0)
    tail = [r for r in ok if r["seq_len"] >= start]
    if len(tail) < 3:  # too few points at the top: take the largest three (or all)
        tail = ok[-3:]
    out["fit_range"] = [tail[0]["seq_len"], tail[-1]["seq_len"]] if tail else None
    for metric, key in (("time", "time_ms"), ("memory", "peak_mb"), ("flops", "flops")):
        for label, pts in (("", tail), ("_all", ok)):
            try:
                slope, _, r2 = fit_power_law([r["seq_len"] for r in pts], [r[key] for r in pts])
            except (ValueError, TypeError):  # too few points, or no FLOP count
                slope, r2 = math.nan, math.nan
            out[f"{metric}_exponent{label}"], out[f"{metric}_r2{label}"] = slope, r2
    # Time against the analytical cost at these sizes (the FLOP count's exponent over the same lengths: full
    # attention's T^2 term shares the time with the T * d^2 projections), else the asymptotic class; memory
    # against its class.
    flops = out["flops_exponent"]
    out["expected_time_at_sizes"] = None if math.isnan(flops) else flops
    for metric, expected in (("time", out["expected_time_at_sizes"] if not math.isnan(flops) else out["expected_time"]),
                             ("memory", out["expected_memory"])):
        fitted = out[f"{metric}_exponent"]
        known = expected is not None and not math.isnan(fitted)
        out[f"{metric}_agrees"] = abs(fitted - expected) <= AGREEMENT if known else None
    return out


# -- one layer's activation memory ------------------------------------------------------------------------------
#: The feed-forward settings of Korthikanti et al.'s layer, applied where the default ffn block has such fields.
_KORTHIKANTI_FFN = {"expansion": 4, "activation": "gelu"}


def _layer(dims: Dims) -> nn.Module:
    """Korthikanti et al.'s layer from each kind's default block (the built-ins: full softmax attention, an
    MLP, LayerNorm), the MLP at 4h with GELU."""
    from .model import Layer

    position = _no_position(dims)

    def build(kind: str, **fields: Any) -> nn.Module:
        entry = registry.get(kind, registry.default(kind))
        config = entry.config(**{k: v for k, v in fields.items() if k in entry.config.model_fields})
        return registry.build(kind, config, dims, *((position,) if kind == "attention" else ()))

    return Layer(attention=build("attention"), ffn=build("ffn", **_KORTHIKANTI_FFN), norm_attn=build("norm"),
                 norm_ffn=build("norm"), placement="pre")


def layer_activation_memory(s: ProfileSettings, device: torch.device,
                            log: Callable[[str], None] = lambda m: None) -> list[dict[str, Any]]:
    """One pre-norm Transformer layer (softmax attention, MLP 4h GELU, LayerNorm, fp32, no dropout), causal:
    activations stored by its forward and the peak of forward + backward, for three variants, beside
    :func:`activation_formula` and Korthikanti et al.'s 16-bit figure."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.checkpoint import checkpoint

    rows: list[dict[str, Any]] = []
    b, a, h = s.batch, s.heads, s.d_model
    for T in sorted(set(s.layer_seq_lens)):
        torch.manual_seed(s.seed)
        layer = _layer(Dims(h, a, T, True)).to(device).train()
        x = torch.randn(b, T, h, device=device, requires_grad=True)
        grad = torch.randn(b, T, h, device=device)
        variants: dict[str, Callable[[], Any]] = {
            "materialised": lambda: sdpa_kernel(SDPBackend.MATH),
            "flash": contextlib.nullcontext,
            "checkpointed": contextlib.nullcontext,
        }
        for variant, context in variants.items():
            def forward() -> torch.Tensor:
                with context():
                    if variant == "checkpointed":
                        return checkpoint(layer, x, use_reentrant=False)
                    return layer(x)

            kept: list[torch.Tensor] = []
            forward().backward(grad)  # warm-up, outside the traces
            _, stored = allocation_trace(lambda: kept.append(forward()), device)
            kept.pop().backward(grad)
            layer.zero_grad(set_to_none=True)  # gradients freed outside the trace: the step peak counts them once
            x.grad = None
            step_peak, _ = allocation_trace(lambda: forward().backward(grad), device)
            layer.zero_grad(set_to_none=True)
            x.grad = None
            formula = activation_formula(T, b, h, a, variant)
            rows.append({
                "variant": variant, "seq_len": T, "batch": b, "hidden": h, "heads": a,
                "kernel": getattr(layer.attention, "kernel", None),
                "stored_mb": stored / MiB, "step_peak_mb": step_peak / MiB,
                "formula_fp32_mb": formula["total"] / MiB,
                "formula_attention_matrix_mb": formula["attention_matrix"] / MiB,
                "korthikanti_16bit_mb": korthikanti_bytes(T, b, h, a) / MiB,
                "korthikanti_attention_matrix_16bit_mb": 5 * a * T * T * b / MiB,
                "ratio": stored / formula["total"],
            })
            log(f"  layer {variant:<13} T={T:<6} stored {stored / MiB:8.2f} MiB  "
                f"formula {formula['total'] / MiB:8.2f} MiB")
    return rows


# -- the command ------------------------------------------------------------------------------------------------
def run_profile(s: ProfileSettings, log: Callable[[str], None] = lambda m: None) -> ProfileReport:
    """Profile every requested attention type and (if ``s.layer``) the layer's activation memory."""
    from .runtime import pick_device

    registry.load_plugins()
    started = time.perf_counter()
    load_before = _load_average()
    device = pick_device(s.device)
    if s.mode not in ("forward", "train"):
        raise ValueError(f"unknown mode '{s.mode}'; valid: forward, train")
    names = s.attention or registry.names("attention")
    for name in names:
        registry.get("attention", name)  # unknown names fail here, with the registered ones listed
    previous_threads = torch.get_num_threads()
    threads = s.threads if device.type == "cpu" else previous_threads
    if device.type == "cpu":
        torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    fits: list[dict[str, Any]] = []
    notes: list[str] = []
    layer_rows: list[dict[str, Any]] = []
    try:
        _warm_up(s, device, threads)
        for name in names:
            type_rows, type_notes = profile_attention(name, s, device, threads, log)
            rows += type_rows
            notes += type_notes
            fits.append(fit_rows(name, type_rows, s.fit_from))
        if s.layer:
            layer_rows = layer_activation_memory(s, device, log)
    finally:
        torch.set_num_threads(previous_threads)
    if device.type == "cpu" and load_before is not None:
        notes.append(f"machine load average (1 min) {load_before:.2f} before, {_load_average():.2f} after, on "
                     f"{os.cpu_count()} cores: other processes share the cores when it exceeds 1")
    for r in rows:
        if r["status"] != "ok":
            notes.append(f"{r['attention']} T={r['seq_len']}: {r['status']}: {r['reason']}")
    return ProfileReport(settings=asdict(s), device=_device_label(device, threads), torch=torch.__version__,
                         rows=rows, fits=fits, layer=layer_rows, notes=_dedupe(notes),
                         seconds=time.perf_counter() - started)


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _warm_up(s: ProfileSettings, device: torch.device, threads: int) -> None:
    """A few untimed calls first, so that thread-pool start-up and first-touch allocation do not land on
    whichever type happens to be measured first."""
    T = min(s.seq_lens)
    module = _build(registry.default("attention"), Dims(s.d_model, s.heads, T, True)).to(device)
    x = torch.randn(s.batch, T, s.d_model, device=device)
    measure_point(module, x, s.mode, 2, 3, threads)


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_report(report: ProfileReport) -> str:
    """The terminal tables: time and memory by sequence length, fitted exponents, the layer comparison."""
    s = report.settings
    lens = sorted({r["seq_len"] for r in report.rows})
    lines = [f"nas profile: {s['mode']} on {report.device}, torch {report.torch}; batch {s['batch']}, heads "
             f"{s['heads']}, head_dim {s['head_dim']} (d_model {s['heads'] * s['head_dim']}); warm-up {s['warmup']}, "
             f"median of {s['repeats']}; memory = peak bytes above parameters and input"]
    by_type: dict[str, dict[int, dict[str, Any]]] = {}
    for r in report.rows:
        by_type.setdefault(r["attention"], {})[r["seq_len"]] = r
    for title, key, spec in (("time (ms)", "time_ms", ".2f"), ("peak MiB", "peak_mb", ".2f")):
        lines.append("")
        lines.append(f"{title:<16}{'dir':<6}" + "".join(f"{T:>10}" for T in lens))
        for name, points in by_type.items():
            direction = next(iter(points.values()))["direction"][:6]
            cells = [(_fmt(points[T].get(key), spec) if points.get(T, {}).get("status") == "ok" else
                      points.get(T, {}).get("status", "-")) for T in lens]
            lines.append(f"{name:<16}{direction:<6}" + "".join(f"{c:>10}" for c in cells))
    lines.append("")
    lines.append("scaling exponent p of T^p, least squares on log-log over the fit range (R^2). Analytical: FLOPs p =\n"
                 f"the counted FLOPs' exponent over the same lengths, class = the asymptotic one; ok/OFF: time within "
                 f"{AGREEMENT} of FLOPs p (of the class without a count), memory within {AGREEMENT} of its class")
    lines.append(f"{'attention':<16}{'kernel':<22}{'fit T':<11}{'time p':>7}{'R^2':>7}{'FLOPs p':>8}{'class':>6}  "
                 f"{'memory p':>8}{'R^2':>7}{'class':>6}")
    for f in report.fits:
        rng = f"{f['fit_range'][0]}-{f['fit_range'][1]}" if f["fit_range"] else "-"

        def mark(metric: str) -> str:
            agrees = f[f"{metric}_agrees"]
            return "" if agrees is None else (" ok" if agrees else " OFF")

        lines.append(f"{f['attention']:<16}{(f['kernel'] or '-'):<22}{rng:<11}{_fmt(f['time_exponent'], '.2f'):>7}"
                     f"{_fmt(f['time_r2'], '.3f'):>7}{_fmt(f['flops_exponent'], '.2f'):>8}"
                     f"{_fmt(f['expected_time'], 'd'):>6}{mark('time'):<4}"
                     f"{_fmt(f['memory_exponent'], '.2f'):>8}{_fmt(f['memory_r2'], '.3f'):>7}"
                     f"{_fmt(f['expected_memory'], 'd'):>6}{mark('memory')}")
    lines += [f"  {f['attention']}: time: {f['expected_time_why']}; memory: {f['expected_memory_why']}"
              for f in report.fits]
    if report.layer:
        lines.append("")
        lines.append("one layer's training activations (fp32, no dropout) vs Korthikanti et al. 2022, adapted: "
                     "s*b*h*(64 + 4*a*s/h) bytes")
        lines.append(f"{'variant':<14}{'kernel':<16}{'T':>6}{'stored MiB':>12}{'formula':>10}{'ratio':>7}"
                     f"{'attn term':>11}{'step peak':>11}{'16-bit paper':>14}")
        for r in report.layer:
            lines.append(f"{r['variant']:<14}{(r['kernel'] or '-'):<16}{r['seq_len']:>6}{r['stored_mb']:>12.2f}"
                         f"{r['formula_fp32_mb']:>10.2f}{r['ratio']:>7.2f}{r['formula_attention_matrix_mb']:>11.2f}"
                         f"{r['step_peak_mb']:>11.2f}{r['korthikanti_16bit_mb']:>14.2f}")
        lines.append("stored = bytes allocated by the forward and still held for backward; attn term = 4*a*s^2*b "
                     "(paper: 5*a*s^2*b in 16-bit with dropout); checkpointed formula = 4*s*b*h (layer input only)")
    if report.notes:
        lines.append("")
        lines += [f"note: {n}" for n in report.notes]
    if report.files:
        lines.append("")
        lines.append("wrote " + ", ".join(report.files.values()))
    lines.append(f"({report.seconds:.0f} s)")
    return "\n".join(lines)


def write_outputs(report: ProfileReport, out: Path) -> dict[str, str]:
    """``profile.csv``, ``activation_memory.csv``, ``profile.json``, ``time.png``, ``memory.png`` and
    ``activation_memory.png`` into ``out``; returns ``{kind: path}`` (also stored in ``report.files``)."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    columns = ["attention", "kernel", "direction", "mode", "batch", "heads", "head_dim", "seq_len", "time_ms",
               "time_p90_ms", "peak_mb", "flops", "repeats", "status", "reason"]
    path = out / "profile.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(report.rows)
    files["csv"] = str(path)
    if report.layer:
        path = out / "activation_memory.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(report.layer[0]))
            writer.writeheader()
            writer.writerows(report.layer)
        files["layer_csv"] = str(path)
    files.update(_plots(report, out))
    path = out / "profile.json"
    report.files = {**files, "json": str(path)}
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
    return report.files


def _plots(report: ProfileReport, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}
    fits = {f["attention"]: f for f in report.fits}
    for key, label, fname in (("time_ms", "time (ms)", "time.png"), ("peak_mb", "peak memory (MiB)", "memory.png")):
        fig, ax = plt.subplots(figsize=(7, 5))
        lens: list[int] = []
        for name in fits:
            pts = [r for r in report.rows if r["attention"] == name and r["status"] == "ok"]
            if not pts:
                continue
            lens += [r["seq_len"] for r in pts]
            metric = "time" if key == "time_ms" else "memory"
            p = fits[name][f"{metric}_exponent"]
            ax.loglog([r["seq_len"] for r in pts], [r[key] for r in pts], marker="o",
                      label=f"{name} (p={_fmt(p, '.2f')})")
        if lens:  # reference slopes through the first point of the sweep
            lo, hi = min(lens), max(lens)
            ys = [r[key] for r in report.rows if r["status"] == "ok" and r["seq_len"] == lo]
            y0 = statistics.median(ys) if ys else 1.0
            for power, style in ((1, ":"), (2, "--")):
                ax.loglog([lo, hi], [y0, y0 * (hi / lo) ** power], color="grey", linestyle=style, linewidth=1,
                          label=f"T^{power}")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        s = report.settings
        ax.set_title(f"{s['mode']}, {report.device}\nbatch {s['batch']}, heads {s['heads']}, head_dim {s['head_dim']}",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        files[fname.split(".")[0] + "_png"] = str(out / fname)
    if report.layer:
        fig, ax = plt.subplots(figsize=(7, 5))
        for variant in dict.fromkeys(r["variant"] for r in report.layer):
            pts = [r for r in report.layer if r["variant"] == variant]
            line, = ax.loglog([r["seq_len"] for r in pts], [r["stored_mb"] for r in pts], marker="o",
                              label=f"{variant} measured")
            ax.loglog([r["seq_len"] for r in pts], [r["formula_fp32_mb"] for r in pts], linestyle="--",
                      color=line.get_color(), label=f"{variant} formula")
        ax.set_xlabel("sequence length s")
        ax.set_ylabel("stored activations (MiB)")
        ax.set_title("one layer, fp32: measured vs s*b*h*(64 + 4as/h) (Korthikanti et al. 2022, adapted)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "activation_memory.png", dpi=110)
        plt.close(fig)
        files["layer_png"] = str(out / "activation_memory.png")
    return files


def log_to_mlflow(report: ProfileReport, out: Path, root: Path, experiment: str = "nas-profile") -> str:
    """Log the profile as one MLflow run under ``root``'s tracking store; returns the run id.

    params: the settings; metrics: ``<type>.time_exponent`` / ``.memory_exponent`` (and R^2), and
    ``<type>.time_ms`` / ``.peak_mb`` stepped by sequence length; tags: device, kernels; artifacts: ``out``.
    """
    from mlflow.entities import Metric, Param, RunTag

    from .tracking import open_experiment

    client, experiment_id = open_experiment(root, experiment)
    s = report.settings
    run = client.create_run(experiment_id, run_name=f"profile-{s['mode']}",
                            tags={"nas.kind": "profile", "device": report.device, "torch": report.torch})
    rid = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in s.items()]
    metrics: list[Metric] = []
    for f in report.fits:
        for key in ("time_exponent", "time_r2", "memory_exponent", "memory_r2"):
            if f[key] is not None and math.isfinite(f[key]):
                metrics.append(Metric(f"{f['attention']}.{key}", float(f[key]), now, 0))
    for r in report.rows:
        if r["status"] == "ok":
            metrics.append(Metric(f"{r['attention']}.time_ms", float(r["time_ms"]), now, int(r["seq_len"])))
            metrics.append(Metric(f"{r['attention']}.peak_mb", float(r["peak_mb"]), now, int(r["seq_len"])))
    for r in report.layer:
        metrics.append(Metric(f"layer.{r['variant']}.stored_mb", float(r["stored_mb"]), now, int(r["seq_len"])))
        metrics.append(Metric(f"layer.{r['variant']}.ratio", float(r["ratio"]), now, int(r["seq_len"])))
    kernels_used = {f["attention"]: f["kernel"] for f in report.fits if f["kernel"]}
    tags = [RunTag("kernels", json.dumps(kernels_used)[:4000])]
    client.log_batch(rid, params=params[:90], tags=tags)
    for i in range(0, len(metrics), 900):
        client.log_batch(rid, metrics=metrics[i: i + 900])
    client.log_artifacts(rid, str(out))
    client.set_terminated(rid, "FINISHED")
    return rid
