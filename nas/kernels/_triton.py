"""Whether our Triton kernels can run, and how they are launched (compiled on CUDA, interpreted on CPU)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")

INSTALL_HINT = ("Triton is not installed; `pip install 'nas-transformers[triton]'` (or `pip install triton`) to use "
                "the fused kernels")


_importable: bool | None = None  # a plain global, so that torch.compile reads it as a constant after the probe


def triton_importable() -> bool:
    """True when ``import triton`` works; probed once (:func:`reset_probe` forgets the answer)."""
    if _importable is None:
        outside_compile(_probe)
    return bool(_importable)


def outside_compile(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` where no ``torch.compile`` trace sees it (a one-time probe, a cache lookup). Under a trace it
    runs through ``torch.compiler.disable``, applied only then: used as a decorator at import time, that would
    import ``torch._dynamo`` (about a second here, sympy included) in every process that imports nas, Ray
    workers and ``nas validate`` included. Outside a trace it is a plain call."""
    if torch.compiler.is_compiling():
        return torch.compiler.disable(fn)(*args)
    return fn(*args)


def _probe() -> None:
    global _importable
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install that fails while importing
        _importable = False
    else:
        _importable = True


def reset_probe() -> None:
    """Forget whether Triton imports (tests that hide or restore it)."""
    global _importable
    _importable = None


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1``: kernels run in Triton's NumPy interpreter, on CPU tensors too. Never
    while ``torch.compile`` traces (the interpreter is for eager tests only)."""
    if torch.compiler.is_compiling():
        return False
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_runs_on(device: torch.device) -> bool:
    """Can our Triton kernels take tensors on ``device``? On CUDA when Triton imports; anywhere under the
    interpreter (which is how CPU-only CI proves their parity)."""
    if not triton_importable():
        return False
    return device.type == "cuda" or (interpreting() and device.type == "cpu")


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
