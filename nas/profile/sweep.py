"""The measured sweep of ``nas profile``: each attention type over sequence lengths, and one layer's activation
memory against the formula. See :mod:`nas.profile`."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .. import registry
from ..architecture import block_config
from ..blocks import Dims
from ..measure import allocation_trace, measure_latency, sync, timed, working_peak
from ..model import default_block, no_position
from ..runtime import device_name
from .analysis import activation_formula, fit_rows, korthikanti_bytes

__all__ = ["ProfileSettings", "ProfileReport", "measure_point", "profile_attention", "layer_activation_memory",
           "run_profile", "MiB"]

MiB = 2**20


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


def _build(name: str, dims: Dims) -> nn.Module:
    entry = registry.get("attention", name)
    return registry.build("attention", entry.config(), dims, no_position(dims))


def _forward_flops(name: str, dims: Dims, batch: int, T: int) -> float | None:
    """FLOPs of one forward of the block at length ``T`` (matrix products and attention, counted by
    :func:`nas.model.count_flops_per_token` on the meta device: free, and the same count a trial reports)."""
    from ..model import count_flops_per_token

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


# -- one layer's activation memory ------------------------------------------------------------------------------
#: The feed-forward settings of Korthikanti et al.'s layer, applied where the default ffn block has such fields.
_KORTHIKANTI_FFN = {"expansion": 4, "activation": "gelu"}


def _layer(dims: Dims) -> nn.Module:
    """Korthikanti et al.'s layer from each kind's default block (the built-ins: full softmax attention, an
    MLP, LayerNorm), the MLP at 4h with GELU."""
    from ..model import Layer

    position = no_position(dims)

    def build(kind: str, **fields: Any) -> nn.Module:
        config = block_config(kind, default_block(kind, **fields))
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
    from ..runtime import pick_device

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
    return ProfileReport(settings=asdict(s), device=device_name(device, threads), torch=torch.__version__,
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


