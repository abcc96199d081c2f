"""Helpers shared by the built-in blocks (a private module: it registers nothing)."""

from __future__ import annotations

import contextlib

import torch


def fp32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Turn autocast off on ``device`` (for running sums and recurrences that must stay in fp32); a no-op where
    autocast does not exist (the ``meta`` device, on which models are sized)."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
