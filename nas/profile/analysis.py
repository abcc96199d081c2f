"""The analysis of a profile: power-law fits, Korthikanti et al.'s activation count, and the exponents a
block's declared complexity and the kernel that ran lead one to expect."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .. import kernels, registry
from ..blocks import capabilities_of

__all__ = ["AGREEMENT", "fit_power_law", "korthikanti_bytes", "activation_formula", "expected_exponents", "fit_rows"]

AGREEMENT = 0.3  # a fitted exponent "agrees" when within this of the expected one


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


