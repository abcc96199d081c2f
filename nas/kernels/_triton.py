"""Whether our Triton kernels can run, and how they are launched (compiled on CUDA, interpreted on CPU)."""

from __future__ import annotations

import functools
import os

import torch

INSTALL_HINT = "Triton is not installed; `pip install 'nas[triton]'` (or `pip install triton`) to use the fused kernels"


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    """True when ``import triton`` works. Cached: call ``triton_importable.cache_clear()`` after changing that."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install that fails while importing
        return False
    return True


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1``: kernels run in Triton's NumPy interpreter, on CPU tensors too."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_runs_on(device: torch.device) -> bool:
    """Can our Triton kernels take tensors on ``device``? On CUDA when Triton imports; anywhere under the
    interpreter (which is how CPU-only CI proves their parity)."""
    if not triton_importable():
        return False
    return device.type == "cuda" or (interpreting() and device.type == "cpu")


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
