"""Latency and memory of every attention type at several sequence lengths, and what int8 dynamic quantization
and structured pruning change, for one architecture on this machine. Measured with :mod:`nas.measure`, the same
functions a trial uses.

    python benchmarks/blocks_cpu.py                       # seq 128, 512, 1024 on 2 threads (~2-4 min)
    python benchmarks/blocks_cpu.py --seq 128 256 --threads 1 --repeats 10 --json out.json

The models are untrained (latency and memory do not depend on the weights' values). Each attention type runs
in a decoder (causal) except Linformer, which is encoder-only and runs bidirectionally; its row says so.
Latency: median forward time at batch 1, the lowest of ``--rounds`` round-robin rounds over all cases (other
processes on a shared machine only ever add time). Memory: peak tensor bytes of one inference forward (batch 1) and of
one training step (batch ``--train-batch``), parameters and optimizer state included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from nas import Task, registry
from nas.measure import inference_memory, measure_latency, train_step_memory
from nas.model import build_model, count_parameters, meta_costs
from nas.space import Architecture, LayerArch, block_config
from nas.trial import model_bytes

MB = 2**20

#: The attention types and the settings they are benchmarked with.
ATTENTION = [
    {"type": "softmax"},
    {"type": "gqa", "kv_heads": 1},
    {"type": "sliding_window", "window": 128},
    {"type": "block_sparse", "block_size": 64, "local_blocks": 1, "global_tokens": 1},
    {"type": "linear"},
    {"type": "performer", "num_features": 64},
    {"type": "linformer", "proj_len": 128},
    {"type": "mamba"},
]

#: Compression levels compared with the uncompressed baseline.
COMPRESSION = [
    {"type": "none"},
    {"type": "quantize", "level": "bf16"},
    {"type": "quantize", "level": "int8"},
    {"type": "magnitude", "sparsity": 0.5},
    {"type": "structured", "heads": 0.25, "neurons": 0.25},
    {"type": "structured", "heads": 0.5, "neurons": 0.5},
]


class SyntheticTask(Task):
    """Random token sequences of a fixed length, for sizing and timing only (decoder or encoder)."""

    def __init__(self, seq_len: int, causal: bool, vocab: int = 256):
        self._seq_len, self.causal, self.vocab = seq_len, causal, vocab

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @property
    def num_outputs(self) -> int:
        return self.vocab if self.causal else 10

    def embedding(self, d_model: int) -> nn.Module:
        return nn.Embedding(self.vocab, d_model)

    def train_batches(self, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        while True:
            x = torch.randint(0, self.vocab, (batch_size, self._seq_len), generator=g)
            y = torch.randint(0, self.num_outputs, (batch_size, self._seq_len) if self.causal else (batch_size,),
                              generator=g)
            yield x, y


def architecture(args: argparse.Namespace, attention: dict[str, Any], compression: dict[str, Any] | None = None,
                 position: str = "rope") -> Architecture:
    layer = LayerArch(attention=attention, norm={"type": "layernorm"}, ffn={"type": "mlp", "expansion": 4})
    return Architecture(d_model=args.d_model, n_heads=args.heads, n_layers=args.layers, norm_placement="pre",
                        position={"type": position}, layers=[layer] * args.layers,
                        compression=compression or {"type": "none"})


def memory(model: nn.Module, task: SyntheticTask, args: argparse.Namespace, train: bool = True) -> dict[str, float]:
    x, _ = task.example_batch(1)
    out = {"infer_memory_mb": inference_memory(model, x) / MB}
    if train:
        tx, ty = task.example_batch(args.train_batch)
        out["train_memory_mb"] = train_step_memory(model, tx, ty) / MB
    return out


def latencies(cases: list[tuple[dict[str, Any], nn.Module, SyntheticTask]], args: argparse.Namespace) -> None:
    """Time every case in ``args.rounds`` round-robin rounds and keep each one's fastest round median: on a shared
    machine other processes only ever add time, and round-robin spreads a busy spell over all cases."""
    for r in range(args.rounds):
        for row, model, task in cases:
            x, _ = task.example_batch(1)
            timed = measure_latency(model, x, args.warmup, args.repeats, args.threads)
            if r == 0 or timed["latency_ms"] < row["latency_ms"]:
                row.update(timed)
        print(f"  latency round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)


def attention_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = []
    for attention in ATTENTION:
        entry = registry.get("attention", attention["type"])
        causal = entry.capabilities.causal
        position = "rope" if "rotary" in entry.capabilities.positions else "none"
        for T in args.seq:
            task = SyntheticTask(T, causal)
            arch = architecture(args, attention, position=position)
            torch.manual_seed(0)
            model = build_model(arch, task)
            row = {"attention": attention["type"], "mode": "causal" if causal else "encoder", "position": position,
                   "seq_len": T, "params": count_parameters(model),
                   "flops_per_token": meta_costs(arch, task, task.example_batch(1)[0])["flops_per_token"]}
            row.update(memory(model, task, args))
            print(f"  {row['attention']:<15} T={T:<5} infer {row['infer_memory_mb']:7.1f} MB  "
                  f"train {row['train_memory_mb']:8.1f} MB", file=sys.stderr, flush=True)
            cases.append((row, model, task))
    latencies(cases, args)
    return [row for row, _, _ in cases]


def compression_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = []
    task = SyntheticTask(args.compress_seq, causal=True)
    for compression in COMPRESSION:
        torch.manual_seed(0)
        model = build_model(architecture(args, {"type": "softmax"}), task).eval()
        params = count_parameters(model)
        compressor = registry.build("compression", block_config("compression", compression))
        model = compressor.apply(model, finetune=lambda m, steps: None).eval()
        if compressor.changes_shape:  # quantized layers hold packed weights, which are not nn.Parameters
            params = count_parameters(model)
        row: dict[str, Any] = {"compression": _label(compression), "params": params,
                               "size_mb": model_bytes(model) / MB}
        row.update(memory(model, task, args, train=False))
        cases.append((row, model, task))
    latencies(cases, args)
    return [row for row, _, _ in cases]


def _label(config: dict[str, Any]) -> str:
    settings = ",".join(f"{k}={v}" for k, v in config.items() if k != "type")
    return f"{config['type']}({settings})" if settings else config["type"]


def print_tables(attn: list[dict[str, Any]], comp: list[dict[str, Any]], args: argparse.Namespace) -> None:
    seqs = args.seq
    print(f"\n## Attention types: d_model {args.d_model}, {args.layers} layers, {args.heads} heads, MLP x4; "
          f"latency at batch 1 on {args.threads} thread(s), train step at batch {args.train_batch}\n")
    base = {r["seq_len"]: r for r in attn if r["attention"] == "softmax"}
    header = "| attention | " + " | ".join(f"T={T} latency ms (x softmax)" for T in seqs) + " | " + \
             " | ".join(f"T={T} infer / train MB" for T in seqs) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(seqs)))
    for name in dict.fromkeys(r["attention"] for r in attn):
        rs = {r["seq_len"]: r for r in attn if r["attention"] == name}
        label = name + (" (encoder)" if rs[seqs[0]]["mode"] == "encoder" else "")
        lat = " | ".join(f"{rs[T]['latency_ms']:.2f} ({rs[T]['latency_ms'] / base[T]['latency_ms']:.2f}x)"
                         for T in seqs)
        mem = " | ".join(f"{rs[T]['infer_memory_mb']:.1f} / {rs[T]['train_memory_mb']:.1f}" for T in seqs)
        print(f"| {label} | {lat} | {mem} |")
    print(f"\n## Compression: the softmax model above at T={args.compress_seq}, batch 1, {args.threads} thread(s)\n")
    print("| compression | params | size MB (x none) | latency ms (x none) | infer MB |")
    print("|---|---|---|---|---|")
    ref = comp[0]
    for r in comp:
        print(f"| {r['compression']} | {r['params']:,} | {r['size_mb']:.2f} ({r['size_mb'] / ref['size_mb']:.2f}x) | "
              f"{r['latency_ms']:.2f} ({r['latency_ms'] / ref['latency_ms']:.2f}x) | {r['infer_memory_mb']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq", type=int, nargs="+", default=[128, 512, 1024], help="sequence lengths")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="CPU threads of the latency runs")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20, help="timed forwards per round")
    p.add_argument("--rounds", type=int, default=5, help="latency: the fastest round's median is kept")
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--compress-seq", type=int, default=256, help="sequence length of the compression table")
    p.add_argument("--json", metavar="FILE", help="also write every measurement as JSON")
    args = p.parse_args(argv)
    registry.load_plugins()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s), load average {load:.1f} at start", file=sys.stderr)
    warm = SyntheticTask(args.seq[0], causal=True)  # one-time kernel set-up must not land in the first row
    latencies([({}, build_model(architecture(args, {"type": "softmax"}), warm), warm)], args)
    attn = attention_table(args)
    comp = compression_table(args)
    print_tables(attn, comp, args)
    print(f"\nload average (1 min) at start / end: {load:.1f} / {os.getloadavg()[0]:.1f}; other processes on the "
          f"machine inflate latencies")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "attention": attn, "compression": comp}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
