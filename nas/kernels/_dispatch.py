"""The dispatch layer: which kernel runs each attention or norm call, and the record of what ran.

Every entry point takes the calling module (``owner``) and sets ``owner.kernel`` to the name of the kernel
that ran, so a measured figure can always say what produced it (see :func:`used`). The fast-path entry points
(:func:`flex`, :func:`linear_attention`, :func:`rms_norm`) return ``None`` when no fast kernel applies; the
caller then runs its own plain PyTorch path, which stays the reference every fast path is tested against.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from . import _flex
from ._flex import Pattern
from ._triton import interpreting, triton_importable

POLICIES = ("auto", "reference", "emulate")
"""``auto``: the fastest correct kernel for the device (the default). ``reference``: the plain PyTorch paths
everywhere (no FlexAttention, no Triton; SDPA still picks its own backend). ``emulate``: tests on CPU take
the GPU choices with CPU stand-ins (FlexAttention eager; our Triton kernels when ``TRITON_INTERPRET=1``),
still never a path without a backward when gradients are needed."""

# Process-wide plain globals, not context variables: torch.compile reads globals as constants (guarding on
# them), while ContextVar.get() would break its graphs.
_policy: str = os.environ.get("NAS_KERNELS", "auto")
_broken: set[tuple] = set()  # fast paths that raised once; the reference runs for them from then on

_SDPA_BACKENDS = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


@contextlib.contextmanager
def policy(name: str) -> Iterator[None]:
    """Run the block under a kernel policy (one of :data:`POLICIES`); process-wide while it lasts."""
    global _policy
    if name not in POLICIES:
        raise ValueError(f"unknown kernel policy '{name}'; valid: {', '.join(POLICIES)}")
    previous, _policy = _policy, name
    try:
        yield
    finally:
        _policy = previous


def current_policy() -> str:
    name = _policy
    if name not in POLICIES:
        raise ValueError(f"NAS_KERNELS='{name}' is not a kernel policy; valid: {', '.join(POLICIES)}")
    return name


def record(owner: Any, name: str) -> None:
    """Set ``owner.kernel = name`` (skipped while ``torch.compile`` traces: no side effects in a graph)."""
    if owner is None or torch.compiler.is_compiling():
        return
    if getattr(owner, "kernel", None) != name:
        owner.kernel = name


def used(model: torch.nn.Module) -> dict[str, str]:
    """``{module path: kernel}`` of every module that recorded the kernel of its last call."""
    return {name: m.kernel for name, m in model.named_modules() if isinstance(getattr(m, "kernel", None), str)}


def _needs_grad(*tensors: Any) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


# -- softmax attention ------------------------------------------------------------------------------------
def sdpa_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                 dropout_p: float, is_causal: bool, enable_gqa: bool = False) -> str:
    """The backend SDPA picks for these inputs: ``flash``, ``efficient``, ``cudnn`` or ``math`` (CPU: its fused
    flash-style kernel is ``flash``); ``?`` where it cannot be asked (the meta device, old PyTorch)."""
    if q.device.type not in ("cpu", "cuda"):
        return "?"
    try:
        args = (q, k, v, attn_mask, dropout_p, is_causal)
        # private, stable since 2.0 (enable_gqa since 2.5)
        choice = torch._fused_sdp_choice(*args, enable_gqa=True) if enable_gqa else torch._fused_sdp_choice(*args)
    except Exception:
        return "?"
    return _SDPA_BACKENDS.get(int(choice), str(choice))


def sdpa(owner: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
         dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
         enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, recording the backend it takes as ``sdpa:<backend>[+mask]``.

    SDPA is itself a dispatcher: on CUDA it takes FlashAttention-2, cuDNN or memory-efficient attention when
    the inputs allow (no explicit mask for flash), on CPU a fused flash-style kernel; ``math`` materialises
    the T x T scores.
    """
    if not torch.compiler.is_compiling():
        name = "sdpa:" + sdpa_backend(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa)
        record(owner, name + ("+mask" if attn_mask is not None else ""))
    if enable_gqa:  # only passed when set: the keyword exists from PyTorch 2.5 on
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                              scale=scale, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                          scale=scale)


def flex(owner: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | None = None,
         bias: torch.Tensor | Callable[[], torch.Tensor | None] | None = None, score_mod: Callable | None = None,
         dropout_p: float = 0.0) -> torch.Tensor | None:
    """FlexAttention for a masked (``pattern``) or biased (``bias`` (H, T, T) or ``score_mod``) softmax
    attention, where it is the device's fastest correct kernel; ``None`` otherwise (the caller runs its
    reference path). ``bias`` may be a function returning it (or None), called only when FlexAttention runs.

    Taken on CUDA (compiled to Triton; forward and backward) when FlexAttention and Triton are available and
    there is no dropout. Never on CPU under ``auto``: unfused it is slower than SDPA with a mask, and it has no
    backward there. Under ``emulate`` it runs eagerly on CPU when no gradient is needed.
    """
    mode = current_policy()
    if mode == "reference" or dropout_p > 0 or not (q.device.type == "cuda" or mode == "emulate"):
        return None
    if callable(bias) and not isinstance(bias, torch.Tensor):
        bias = bias()
    if pattern is None and bias is None and score_mod is None:
        return None  # plain attention: SDPA's job
    if q.device.type == "cuda":
        if not (_flex.flex_available() and triton_importable()):
            return None
        compiled = True
    elif q.device.type == "cpu" and mode == "emulate" and _flex.flex_available():
        if _needs_grad(q, k, v, bias):
            return None  # FlexAttention has no backward on CPU
        compiled = False
    else:
        return None
    key = ("flex", pattern.key if pattern is not None else None, bias is not None, score_mod is not None,
           q.device.type, q.dtype)
    if key in _broken:
        return None
    if bias is not None and score_mod is None:
        score_mod = _flex.bias_score_mod(bias.to(q.dtype) if q.dtype != torch.float32 else bias)
    out = _guarded(key, compiled, "FlexAttention", f"the reference path for {key[1:3]}",
                   lambda: _flex.run(q, k, v, pattern, score_mod, compiled))
    if out is None:
        return None
    record(owner, "flex" + ("" if compiled else "-eager") + ("+bias" if bias is not None else ""))
    return out


def _guarded(key: tuple, disable_on_error: bool, what: str, fallback: str,
             run: Callable[[], torch.Tensor]) -> torch.Tensor | None:
    """``run()``, or ``None`` when it raises on a real fast path (compiled, on CUDA): that path is then switched
    off for the rest of the process with a warning, and the caller takes ``fallback``. Where the fast path is
    an emulation (eager FlexAttention, the Triton interpreter on CPU), errors propagate: they are bugs."""
    try:
        return run()
    except Exception as exc:
        if not disable_on_error:
            raise
        _broken.add(key)
        warnings.warn(f"{what} failed ({type(exc).__name__}: {str(exc)[:200]}); using {fallback} from now on",
                      RuntimeWarning, stacklevel=4)
        return None


# -- linear attention and norms ---------------------------------------------------------------------------
def _triton_allowed(device: torch.device, key: tuple) -> bool:
    mode = current_policy()
    if mode == "reference" or key in _broken or not triton_importable():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and mode == "emulate" and interpreting()


def linear_attention(owner: Any, phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                     eps: float) -> torch.Tensor | None:
    """Causal normalised linear attention by our chunked Triton kernel (forward and backward), or ``None``.

    phi_q, phi_k: (B, H, T, M) non-negative features; v: (B, H, T, D). Taken on CUDA when Triton imports.
    """
    key = ("triton:linear_attention", phi_q.device.type)
    if not _triton_allowed(phi_q.device, key):
        return None
    from ._linear import causal_linear_attention_triton

    out = _guarded(key, phi_q.device.type == "cuda", "Triton linear attention", "the PyTorch reference",
                   lambda: causal_linear_attention_triton(phi_q, phi_k, v, eps))
    if out is None:
        return None
    record(owner, "triton:chunked_linear_attention")
    return out


def rms_norm(owner: Any, x: torch.Tensor, weight: torch.Tensor | None, eps: float | None) -> torch.Tensor | None:
    """RMSNorm by our fused Triton kernel (forward and backward), or ``None`` (the caller runs
    ``torch.nn.RMSNorm``). Taken on CUDA when Triton imports and the module has a weight."""
    key = ("triton:rms_norm", x.device.type)
    if weight is None or not _triton_allowed(x.device, key):
        return None
    from ._rmsnorm import MAX_WIDTH, rms_norm_triton

    if x.shape[-1] > MAX_WIDTH:
        return None
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        x = x.float()  # as autocast does for torch's rms_norm (an fp32 op)
    out = _guarded(key, x.device.type == "cuda", "Triton RMSNorm", "torch.nn.RMSNorm",
                   lambda: rms_norm_triton(x, weight, eps))
    if out is None:
        return None
    record(owner, "triton:rms_norm")
    return out
