"""FlexAttention patterns (``mask_mod``) and score biases (``score_mod``), and how they are run.

A :class:`Pattern` describes which keys each query may see twice over: a ``mask_mod`` for FlexAttention and a
hashable ``key`` under which its block mask is cached per sequence length and device. The definitions here
must equal the dense masks of the plugins' reference paths; ``tests/test_kernels.py`` checks that on CPU with
FlexAttention's eager (unfused) implementation.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._triton import outside_compile

_BLOCK_MASKS: "OrderedDict[tuple, Any]" = OrderedDict()
_BLOCK_MASKS_MAX = 64
_LOCK = threading.Lock()
_compiled: Callable | None = None


@dataclass(frozen=True)
class Pattern:
    """Which keys a query may see: ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor``, cached under ``key``."""

    key: tuple
    mask_mod: Callable = None  # type: ignore[assignment]

    def dense(self, T: int, device: torch.device | None = None) -> torch.Tensor:
        """(T, T) bool: the same pattern as a dense mask (for tests and the explicit-mask SDPA baseline)."""
        i = torch.arange(T, device=device)[:, None]
        j = torch.arange(T, device=device)[None, :]
        zero = torch.zeros((), dtype=torch.long, device=device)
        return self.mask_mod(zero, zero, i, j).expand(T, T)


_PATTERNS: dict[tuple, Pattern] = {}  # one Pattern object per key (a plain dict: torch.compile reads it)


def _pattern(key: tuple, make: Callable[[], Callable]) -> Pattern:
    found = _PATTERNS.get(key)
    if found is None:
        found = _PATTERNS[key] = Pattern(key, make())
    return found


def causal() -> Pattern:
    def make() -> Callable:
        def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            return kv_idx <= q_idx

        return mask_mod

    return _pattern(("causal",), make)


def sliding_window(window: int, causal: bool) -> Pattern:
    """Keys fewer than ``window`` positions away (only earlier ones when ``causal``)."""

    def make() -> Callable:
        def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            allowed = (q_idx - kv_idx < window) & (kv_idx - q_idx < window)
            return allowed & (kv_idx <= q_idx) if causal else allowed

        return mask_mod

    return _pattern(("window", window, causal), make)


def block_sparse(block_size: int, local_blocks: int, global_tokens: int, strided: bool, causal: bool) -> Pattern:
    """Neighbouring blocks, the last token of every block (``strided``) and ``global_tokens`` leading positions."""

    def make() -> Callable:
        def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            allowed = (q_idx // block_size - kv_idx // block_size).abs() <= local_blocks
            if strided:
                allowed = allowed | (kv_idx % block_size == block_size - 1)
            if global_tokens > 0:
                allowed = allowed | (q_idx < global_tokens) | (kv_idx < global_tokens)
            return allowed & (kv_idx <= q_idx) if causal else allowed

        return mask_mod

    return _pattern(("sparse", block_size, local_blocks, global_tokens, strided, causal), make)


def bias_score_mod(bias: torch.Tensor) -> Callable:
    """``score + bias[h, q_idx, kv_idx]`` for a dense (H, T, T) bias (any position scheme's ``score_bias``)."""

    def score_mod(score: torch.Tensor, b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return score + bias[h, q_idx, kv_idx]

    return score_mod


def alibi_score_mod(slopes: torch.Tensor) -> Callable:
    """ALiBi without a (H, T, T) tensor: ``score - slopes[h] * |q_idx - kv_idx|`` (Press et al. 2022)."""

    def score_mod(score: torch.Tensor, b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return score - slopes[h] * (q_idx - kv_idx).abs()

    return score_mod


def block_mask(pattern: Pattern, T: int, device: torch.device, compiled: bool) -> Any:
    """The cached FlexAttention block mask of ``pattern`` at length ``T`` on ``device``: a cache lookup (and, once
    per length, building the mask), never part of a graph."""
    return outside_compile(_block_mask, pattern, T, device, compiled)


def _block_mask(pattern: Pattern, T: int, device: torch.device, compiled: bool) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    key = (pattern.key, T, str(device))
    with _LOCK:
        found = _BLOCK_MASKS.get(key)
        if found is not None:
            _BLOCK_MASKS.move_to_end(key)
            return found
    mask = create_block_mask(pattern.mask_mod, None, None, T, T, device=device, _compile=compiled)
    with _LOCK:
        _BLOCK_MASKS[key] = mask
        while len(_BLOCK_MASKS) > _BLOCK_MASKS_MAX:
            _BLOCK_MASKS.popitem(last=False)
    return mask


def flex_function(compiled: bool) -> Callable:
    """``flex_attention`` compiled to Triton (CUDA), or the eager unfused implementation (CPU tests)."""
    global _compiled
    from torch.nn.attention.flex_attention import flex_attention

    if not compiled:
        return flex_attention
    if _compiled is None:
        # One compiled kernel per shape, pattern and score_mod: a sweep over lengths and patterns needs more than
        # dynamo's default 8 recompilations, after which it would silently run the unfused (T x T) eager path.
        import torch._dynamo.config as dynamo_config

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))
                break
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | None,
        score_mod: Callable | None, compiled: bool) -> torch.Tensor:
    """FlexAttention of (B, H, T, D) inputs under ``pattern`` (None: every key) and ``score_mod``."""
    mask = block_mask(pattern, q.shape[-2], q.device, compiled) if pattern is not None else None
    if compiled:
        return flex_function(True)(q, k, v, score_mod=score_mod, block_mask=mask)
    import warnings

    with warnings.catch_warnings():  # "called without torch.compile": intended off CUDA (tests only)
        warnings.simplefilter("ignore", UserWarning)
        return flex_function(False)(q, k, v, score_mod=score_mod, block_mask=mask)


_flex_found: bool | None = None


def flex_available() -> bool:
    """FlexAttention exists in this PyTorch (2.5 and later); probed once."""
    if _flex_found is None:
        outside_compile(_probe_flex)
    return bool(_flex_found)


def _probe_flex() -> None:
    global _flex_found
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except Exception:
        _flex_found = False
    else:
        _flex_found = True
