"""The shape of Long Range Arena's Table 2 (Tay et al. 2020, arXiv 2011.04006) on our kernels.

LRA Table 2 reports, on byte-level text classification at sequence lengths 1K-4K, the training speed
(steps per second) of each efficient Transformer relative to the vanilla one, and peak memory. This script
trains the same kind of model (a byte-level encoder: embedding, sinusoidal positions, pre-norm layers,
mean-pooled classifier) built from our registered blocks and measures:

* speed: median seconds of one training step (forward, backward, AdamW update) after warm-up -> steps/s;
* memory: the peak bytes of one steady-state training step (:func:`nas.measure.train_step_memory`).

The baseline "vanilla" is full softmax attention whose T x T scores are materialised (SDPA's math backend), as
in the 2020 JAX implementation the paper timed. Our dispatched softmax (a fused flash-style kernel, on CPU as
on GPU) is shown too: it removes most of the gap the efficient attentions were built to close.

The paper ran on 4x4 TPU v3 chips with batch 32 and larger models; on a 2-core CPU this uses batch 1, two
layers of width 128 (4 heads of 32) and each attention's registry defaults (Performer 64 features, Linformer
proj_len 32, local attention window 64), so absolute figures differ and only ratios are comparable.

    python benchmarks/lra_table2.py                      # CPU, about 2 minutes
    python benchmarks/lra_table2.py --device cuda --batch 8 --out results/lra_table2_cuda.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas import registry
from nas.blocks import Dims
from nas.measure import _sync, train_step_memory
from nas.model import Layer, Transformer
from nas.train import loss_fn, pick_device

LENGTHS = (1024, 2048, 3072, 4096)
#: Table 2 of arXiv 2011.04006 as recorded in ../shared/FIELD-NOTES.md: steps/s relative to vanilla.
PAPER_SPEED = {"performer": (1.2, 1.9, 3.8, 5.7), "linformer": (1.2, 1.9, 3.7, 5.5),
               "sliding_window": (1.1, 1.7, 3.2, 5.3)}
#: Peak memory in GB: vanilla at every length; Linformer only at 1K and 4K (the notes give its range 0.37..0.99).
PAPER_MEMORY_GB = {"vanilla": (0.85, 2.65, 5.51, 9.48), "linformer": (0.37, None, None, 0.99)}
#: Our rows: (label, attention type, force SDPA's math backend)
ROWS = (("vanilla", "softmax", True), ("softmax (flash)", "softmax", False), ("performer", "performer", False),
        ("linformer", "linformer", False), ("local", "sliding_window", False))


def build(attention: str, T: int, args: argparse.Namespace) -> Transformer:
    """A byte-level encoder classifier with ``args.layers`` layers of ``attention`` (its default config)."""
    dims = Dims(args.d_model, args.heads, T, causal=False, n_layers=args.layers)
    position = registry.build("position", registry.get("position", "sinusoidal").config(), dims)

    def block(kind: str, name: str, *extra: Any) -> nn.Module:
        return registry.build(kind, registry.get(kind, name).config(), dims, *extra)

    layers = [Layer(block("attention", attention, position), block("ffn", "mlp"), block("norm", "layernorm"),
                    block("norm", "layernorm"), "pre") for _ in range(args.layers)]
    return Transformer(nn.Embedding(256, args.d_model), position, layers, block("norm", "layernorm"),
                       nn.Linear(args.d_model, 2), causal=False)


class _Math:
    """SDPA restricted to its math backend (materialised scores) while active."""

    def __init__(self, on: bool):
        self.on = on
        self.ctx: Any = None

    def __enter__(self) -> None:
        if self.on:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            self.ctx = sdpa_kernel(SDPBackend.MATH)
            self.ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, warmup: int, repeats: int) -> float:
    """Median seconds of one training step (forward, backward, AdamW)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss_fn(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        _sync(x.device)
        t0 = time.perf_counter()
        step()
        _sync(x.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    registry.load_plugins()
    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    for label, attention, math_only in ROWS:
        results[label] = {}
        for T in args.lengths:
            torch.manual_seed(0)
            model = build(attention, T, args).to(device)
            x = torch.randint(0, 256, (args.batch, T), device=device)
            y = torch.randint(0, 2, (args.batch,), device=device)
            with _Math(math_only):
                seconds = step_seconds(model, x, y, args.warmup, args.repeats)
                peak = train_step_memory(model, x, y)
            kernel = getattr(model.layers[0].attention, "kernel", "-")
            results[label][T] = {"steps_per_s": 1.0 / seconds, "peak_mb": peak / 2**20, "kernel": kernel}
            print(f"  {label:<16} T={T:<5} {1 / seconds:8.2f} steps/s  {peak / 2**20:9.1f} MiB  {kernel}",
                  file=sys.stderr, flush=True)
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({platform.machine()}, {args.threads} threads)")
    return {"device": device_name, "torch": torch.__version__, "settings": vars(args), "results": results}


def _cell(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(data: dict[str, Any]) -> str:
    lengths = data["settings"]["lengths"]
    res = {label: {int(T): r for T, r in by_len.items()} for label, by_len in data["results"].items()}  # JSON: str keys
    base = res["vanilla"]
    s = data["settings"]
    head = "".join(f"{f'{T // 1024}K' if T % 1024 == 0 else T:>20}" for T in lengths)
    lines = [f"LRA Table 2 shape on {data['device']}, torch {data['torch']}: batch {s['batch']}, {s['layers']} layers, "
             f"d_model {s['d_model']}, {s['heads']} heads; median of {s['repeats']} steps after {s['warmup']}",
             "", "speed: steps/s relative to vanilla (softmax with materialised scores)    ours / paper",
             f"{'':<18}{head}"]
    for label, attention, _ in ROWS:
        paper = PAPER_SPEED.get(attention if label != "softmax (flash)" else "")
        cells = []
        for T in lengths:
            ours = res[label][T]["steps_per_s"] / base[T]["steps_per_s"]
            ref = paper[LENGTHS.index(T)] if paper and T in LENGTHS else None
            cells.append(f"{ours:.2f}x / {_cell(ref, '.1f')}")
        lines.append(f"{label:<18}" + "".join(f"{c:>20}" for c in cells))
    lines.append(f"{'vanilla steps/s':<18}" + "".join(f"{base[T]['steps_per_s']:>20.2f}" for T in lengths))
    lines += ["", "peak training-step memory: ours MiB (relative to vanilla) / paper's relative figure",
              f"{'':<18}{head}"]
    for label, attention, _ in ROWS:
        paper_key = "vanilla" if label == "vanilla" else (attention if label != "softmax (flash)" else "")
        paper = PAPER_MEMORY_GB.get(paper_key)
        cells = []
        for T in lengths:
            ours = res[label][T]["peak_mb"]
            i = LENGTHS.index(T) if T in LENGTHS else None
            ref = None
            if paper and i is not None and paper[i] is not None:
                ref = paper[i] / PAPER_MEMORY_GB["vanilla"][i]
            cells.append(f"{ours:.0f} ({ours / base[T]['peak_mb']:.2f}) / {_cell(ref)}")
        lines.append(f"{label:<18}" + "".join(f"{c:>20}" for c in cells))
    lines.append("paper vanilla GB: " + ", ".join(f"{g}" for g in PAPER_MEMORY_GB["vanilla"]) +
                 "; Linformer 0.37 (1K) .. 0.99 (4K)")
    kernels = {label: res[label][lengths[-1]]["kernel"] for label, _, _ in ROWS}
    lines.append("kernels: " + ", ".join(f"{k}: {v}" for k, v in kernels.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1, as nas.measure)")
    p.add_argument("--out", help="also write the measurements and the table as JSON here")
    p.add_argument("--table", metavar="JSON", help="only print the table of an earlier --out file")
    args = p.parse_args(argv)
    if args.table:
        print(format_table(json.loads(Path(args.table).read_text(encoding="utf-8"))))
        return 0
    data = measure(args)
    table = format_table(data)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**data, "table": table}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
