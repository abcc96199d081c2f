"""Where and how a model runs: the device, seeding, autocast precision, and the loss every trial optimizes.

Shared by the trainer (:mod:`nas.train`) and the measurement (:mod:`nas.measure`), which must agree on all
four: a latency measured under another precision, or a training-memory step under another loss, would
describe a different model than the one trained.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

__all__ = ["DTYPES", "pick_device", "device_name", "seed_everything", "autocast", "loss_fn"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def device_name(device: torch.device, threads: int | None = None) -> str:
    """How results name the device they were measured on: ``cuda (<GPU name>)`` or ``cpu (<processor>, N
    threads)`` (``threads``: default torch's current intra-op thread count)."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    import platform

    n = torch.get_num_threads() if threads is None else threads
    return f"cpu ({platform.processor() or platform.machine()}, {n} threads)"


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA). Data streams have their own seeded generators."""
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every target that is not -100; works for (B, T, V) and (B, classes) logits."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=-100)
