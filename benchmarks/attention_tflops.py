"""Attention kernels in TFLOP/s: our dispatch against the library kernels it chooses between (GPU benchmark).

* causal softmax: our dispatch (``SoftmaxAttention.attend``) vs SDPA forced to FlashAttention vs SDPA math;
* sliding window (causal, window W): our dispatch (FlexAttention block mask) vs FlexAttention called directly
  vs SDPA with an explicit boolean mask;
* ALiBi (causal): our dispatch (FlexAttention, the position's dense (H, T, T) bias as ``score_mod``) vs
  FlexAttention with the analytic ALiBi ``score_mod`` (no bias tensor) vs SDPA with an explicit float mask.

FLOPs count the useful multiply-adds only (2 matmuls x 2 FLOPs per multiply-add over the visible query-key
pairs: T(T+1)/2 causal, about T*W in the window); forward + backward counts 3.5x the forward (FlashAttention-2's
convention: backward = 2.5 forwards). Timing: CUDA events, median of ``--repeats`` after ``--warmup`` (the
first FlexAttention call compiles).

    python benchmarks/attention_tflops.py --out results/attention_tflops.json          # CUDA, bf16
    python benchmarks/attention_tflops.py --device cpu --smoke                         # code-path check only
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nas import Dims, kernels, registry
from nas.kernels import _flex
from nas.measure import timed


def _block(name: str, position: str, T: int, H: int, D: int, **fields: Any) -> torch.nn.Module:
    dims = Dims(H * D, H, T, causal=True)
    pos = registry.build("position", registry.get("position", position).config(), dims)
    return registry.build("attention", registry.get("attention", name).config(**fields), dims, pos)


def cases(T: int, H: int, D: int, window: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """For each pattern: the visible pairs and its implementations as ``f(q, k, v) -> out``."""
    causal_pairs = T * (T + 1) / 2
    window_pairs = sum(min(i + 1, window) for i in range(T))
    softmax = _block("softmax", "none", T, H, D).to(device)
    sliding = _block("sliding_window", "none", T, H, D, window=window).to(device)
    alibi = _block("softmax", "alibi", T, H, D).to(device)
    slopes = alibi.position.slopes.float()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def forced(backend: Any) -> Callable:
        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return run

    compiled = device.type == "cuda"
    window_mask = _flex.sliding_window(window, True).dense(T, device)  # (T, T) bool
    alibi_mask = alibi.position.score_bias(T, T).masked_fill(
        torch.ones(T, T, dtype=torch.bool, device=device).triu(1), float("-inf"))  # (H, T, T)
    return {
        "causal": {"pairs": causal_pairs, "impl": {
            "dispatch": lambda q, k, v: softmax.attend(q, k, v),
            "sdpa_flash": forced(SDPBackend.FLASH_ATTENTION),  # on CPU: its fused flash-style kernel
            "sdpa_math": forced(SDPBackend.MATH)}},
        f"sliding_window_{window}": {"pairs": window_pairs, "impl": {
            "dispatch": lambda q, k, v: sliding.attend(q, k, v),
            "flex": lambda q, k, v: _flex.run(q, k, v, _flex.sliding_window(window, True), None, compiled),
            "sdpa_mask": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask)}},
        "alibi": {"pairs": causal_pairs, "impl": {
            "dispatch": lambda q, k, v: alibi.attend(q, k, v),
            "flex": lambda q, k, v: _flex.run(q, k, v, _flex.causal(), _flex.alibi_score_mod(slopes), compiled),
            "sdpa_mask": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=alibi_mask.to(q.dtype))}},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--mode", choices=("forward", "train"), nargs="+", default=["forward", "train"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, fp32, forward only: checks the code paths")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.smoke:
        args.lengths, args.batch, args.heads, args.head_dim, args.window = [128, 256], 1, 2, 16, 32
        args.dtype, args.mode, args.warmup, args.repeats = "fp32", ["forward"], 1, 2
    registry.load_plugins()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark is for GPUs (use --device cpu --smoke to check the code paths)",
              file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    B, H, D = args.batch, args.heads, args.head_dim
    rows: list[dict[str, Any]] = []
    policy = "auto" if device.type == "cuda" else "emulate"  # CPU: FlexAttention eager (forward only)
    for T in args.lengths:
        for case, spec in cases(T, H, D, args.window, device).items():
            for mode in args.mode:
                train = mode == "train"
                flops = 4 * B * H * D * spec["pairs"] * (3.5 if train else 1.0)
                for impl, fn in spec["impl"].items():
                    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=train)
                               for _ in range(3))
                    g = torch.randn(B, H, T, D, device=device, dtype=dtype)

                    def call() -> None:
                        out = fn(q, k, v)
                        if train:
                            out.backward(g)

                    row = {"case": case, "mode": mode, "T": T, "impl": impl}
                    try:
                        with kernels.policy(policy), torch.set_grad_enabled(train):
                            ms = timed(call, device, args.warmup, args.repeats)["latency_ms"]
                        row.update(ms=ms, tflops=flops / (ms * 1e-3) / 1e12)
                        if impl == "dispatch":
                            row["kernel"] = _kernel_of(fn)
                    except Exception as exc:  # e.g. out of memory for the explicit mask at 16K
                        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(format_table(rows, device_name, args))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"device": device_name, "torch": torch.__version__, "settings": vars(args),
                                              "rows": rows}, indent=2), encoding="utf-8")
    return 0


def _kernel_of(fn: Callable) -> str:
    """The kernel the dispatch recorded on the block the lambda closes over."""
    for cell in fn.__closure__ or ():
        owner = cell.cell_contents
        if isinstance(owner, torch.nn.Module):
            return getattr(owner, "kernel", "-")
    return "-"


def format_table(rows: list[dict[str, Any]], device: str, args: argparse.Namespace) -> str:
    lines = [f"attention TFLOP/s on {device}, torch {torch.__version__}: batch {args.batch}, heads {args.heads}, "
             f"head_dim {args.head_dim}, {args.dtype}; useful FLOPs only", ""]
    lines.append(f"{'case':<22}{'mode':<9}{'T':>7}  " + "  ".join(f"{'impl':<12}{'TFLOP/s':>8}" for _ in range(3)))
    keyed: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        keyed.setdefault((r["case"], r["mode"], r["T"]), []).append(r)
    for (case, mode, T), group in keyed.items():
        cells = [f"{r['impl']:<12}{(format(r['tflops'], '.2f') if 'tflops' in r else 'error'):>8}" for r in group]
        kernel = next((r.get("kernel") for r in group if r.get("kernel")), "")
        lines.append(f"{case:<22}{mode:<9}{T:>7}  " + "  ".join(cells) + (f"   dispatch: {kernel}" if kernel else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
