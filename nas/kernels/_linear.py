"""Chunked causal linear attention in Triton, forward and backward.

The core is the causal dot product ``o_i = sum_{j <= i} (a_i . b_j) c_j`` (Katharopoulos et al. 2020,
section 3.2), computed chunk by chunk with a running ``M x D`` state in registers: inside a chunk the masked
quadratic form, across chunks ``a_i . S`` with ``S = sum b_j^T c_j`` of the earlier chunks. Nothing of size
``T x T`` or ``T/chunk x M x D`` is ever stored, so memory is that of the inputs and the output.

Its gradients are causal dot products again (anti-causal for two of them), so backward runs the same
kernel three times: ``dA = cdp(dO, C, B)``, ``dB = rcdp(C, dO, A)``, ``dC = rcdp(B, A, dO)``, where
``rcdp`` sums over ``j >= i``. Normalised linear attention divides by ``a_i . sum_{j<=i} b_j``, which is
computed with a cumulative sum in PyTorch (autograd handles it).

Imports Triton at module import; see :mod:`nas.kernels._rmsnorm` for when to import it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton import next_power_of_2


@triton.jit
def _causal_dot_product(A, B, C, O, s_ab, s_at, s_am, s_bb, s_bt, s_bm, s_cb, s_ct, s_cd, s_ob, s_ot, s_od,
                        T, M, DV, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                        REVERSE: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(0)  # one (batch, head)
    pd = tl.program_id(1)  # one tile of the value width
    offs_c = tl.arange(0, CHUNK)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = pd * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    mask_d = offs_d < DV
    if REVERSE:
        keep = offs_c[:, None] <= offs_c[None, :]  # key j at or after query i
    else:
        keep = offs_c[:, None] >= offs_c[None, :]  # key j at or before query i
    state = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)  # sum over finished chunks of b^T c
    n_chunks = tl.cdiv(T, CHUNK)
    for step in range(0, n_chunks):
        if REVERSE:
            t = (n_chunks - 1 - step) * CHUNK + offs_c
        else:
            t = step * CHUNK + offs_c
        mask_t = t < T
        a = tl.load(A + bh * s_ab + t[:, None] * s_at + offs_m[None, :] * s_am,
                    mask=mask_t[:, None] & mask_m[None, :], other=0.0).to(tl.float32)  # (CHUNK, BLOCK_M)
        b = tl.load(B + bh * s_bb + t[:, None] * s_bt + offs_m[None, :] * s_bm,
                    mask=mask_t[:, None] & mask_m[None, :], other=0.0).to(tl.float32)
        c = tl.load(C + bh * s_cb + t[:, None] * s_ct + offs_d[None, :] * s_cd,
                    mask=mask_t[:, None] & mask_d[None, :], other=0.0).to(tl.float32)  # (CHUNK, BLOCK_D)
        s = tl.dot(a, tl.trans(b), input_precision=PRECISION)  # (CHUNK, CHUNK)
        s = tl.where(keep, s, 0.0)
        o = tl.dot(s, c, input_precision=PRECISION) + tl.dot(a, state, input_precision=PRECISION)
        tl.store(O + bh * s_ob + t[:, None] * s_ot + offs_d[None, :] * s_od, o.to(O.dtype.element_ty),
                 mask=mask_t[:, None] & mask_d[None, :])
        state += tl.dot(tl.trans(b), c, input_precision=PRECISION)


def _precision(device: torch.device) -> str:
    """TF32 exactly when PyTorch's own CUDA matmuls may use it, so the kernel is as exact as the reference."""
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def causal_dot_product(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, reverse: bool = False,
                       chunk: int = 64) -> torch.Tensor:
    """``o_i = sum_{j<=i} (a_i . b_j) c_j`` (``j >= i`` when ``reverse``), no autograd.

    a, b: (..., T, M); c: (..., T, D) -> (..., T, D) in ``c``'s dtype.
    """
    *lead, T, M = a.shape
    D = c.shape[-1]
    a3, b3, c3 = a.reshape(-1, T, M), b.reshape(-1, T, M), c.reshape(-1, T, D)
    out = torch.empty(c3.shape, device=c.device, dtype=c.dtype)
    BLOCK_M = max(16, next_power_of_2(M))
    BLOCK_D = max(16, min(64, next_power_of_2(D)))
    CHUNK = max(16, min(chunk, next_power_of_2(T)))
    grid = (a3.shape[0], triton.cdiv(D, BLOCK_D))
    if a3.shape[0] and T:
        _causal_dot_product[grid](a3, b3, c3, out, *a3.stride(), *b3.stride(), *c3.stride(), *out.stride(), T, M, D,
                                  CHUNK=CHUNK, BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D, REVERSE=reverse,
                                  PRECISION=_precision(a.device))
    return out.view(*lead, T, D)


class CausalDotProduct(torch.autograd.Function):
    """Differentiable :func:`causal_dot_product`; saves only its inputs."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b, c)
        return causal_dot_product(a, b, c)

    @staticmethod
    def backward(ctx, do: torch.Tensor):
        a, b, c = ctx.saved_tensors
        do = do.contiguous()
        # da_i = sum_{j<=i} (dO_i . c_j) b_j; db_j = sum_{i>=j} (c_j . dO_i) a_i; dc_j = sum_{i>=j} (b_j . a_i) dO_i
        da = causal_dot_product(do, c, b) if ctx.needs_input_grad[0] else None
        db = causal_dot_product(c, do, a, reverse=True) if ctx.needs_input_grad[1] else None
        dc = causal_dot_product(b, a, do, reverse=True) if ctx.needs_input_grad[2] else None
        return da, db, dc


def causal_linear_attention_triton(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                                   eps: float) -> torch.Tensor:
    """``sum_{j<=i} (phi_q_i . phi_k_j) v_j / (phi_q_i . sum_{j<=i} phi_k_j + eps)``, differentiable.

    phi_q, phi_k: (B, H, T, M) non-negative features; v: (B, H, T, D) -> (B, H, T, D).
    """
    num = CausalDotProduct.apply(phi_q, phi_k, v)  # (B, H, T, D)
    den = (phi_q * phi_k.cumsum(-2)).sum(-1, keepdim=True)  # (B, H, T, 1)
    return num / (den + eps)
