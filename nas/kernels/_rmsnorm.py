"""Fused RMSNorm in Triton: one program per row forward, a row-blocked backward with partial weight gradients.

Imports Triton at module import: import this module only after :func:`~nas.kernels._triton.triton_importable`
says yes (and, for the interpreter, after ``TRITON_INTERPRET=1`` is set: Triton reads it when the kernels
below are decorated).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton import next_power_of_2

MAX_WIDTH = 65536  # one row must fit one program's registers


@triton.jit
def _rms_norm_fwd(X, W, Y, RSTD, stride_x, stride_y, N, eps, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_norm_bwd(DY, X, W, RSTD, DX, DW_PART, stride_dy, stride_x, stride_dx, M, N, rows_per_program,
                  BLOCK_N: tl.constexpr):
    # dx = rstd * (w*dy - xhat * mean(w*dy*xhat)), xhat = x*rstd; dw = sum over rows of dy*xhat (partial here)
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for row in range(row_start, row_end):
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        xhat = x * rstd
        wdy = w * dy
        c = tl.sum(xhat * wdy, axis=0) / N
        tl.store(DX + row * stride_dx + cols, ((wdy - xhat * c) * rstd).to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
    tl.store(DW_PART + pid * N + cols, dw, mask=mask)


def _programs(rows: int, device: torch.device) -> int:
    """How many programs share the rows in backward: enough to fill the GPU, few enough that the partial
    weight gradients (programs x N) stay small."""
    if device.type == "cuda":
        return max(1, min(rows, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(rows, 8))


class RMSNormFunction(torch.autograd.Function):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis, computed in fp32, output in ``x``'s dtype."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        N = x.shape[-1]
        x2 = x.reshape(-1, N).contiguous()
        M = x2.shape[0]
        y = torch.empty_like(x2)
        rstd = torch.empty(M, device=x.device, dtype=torch.float32)
        BLOCK_N = next_power_of_2(N)
        if M:
            _rms_norm_fwd[(M,)](x2, weight, y, rstd, x2.stride(0), y.stride(0), N, eps, BLOCK_N=BLOCK_N)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, weight, rstd = ctx.saved_tensors
        M, N = x2.shape
        dy2 = dy.reshape(-1, N).contiguous()
        dx = torch.empty_like(x2)
        programs = _programs(M, x2.device)
        dw_part = torch.zeros(programs, N, device=x2.device, dtype=torch.float32)
        if M:
            rows = -(-M // programs)
            _rms_norm_bwd[(programs,)](dy2, x2, weight, rstd, dx, dw_part, dy2.stride(0), x2.stride(0), dx.stride(0),
                                       M, N, rows, BLOCK_N=next_power_of_2(N))
        return dx.view(ctx.shape), dw_part.sum(0).to(weight.dtype), None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Fused RMSNorm of ``x`` (..., N) with ``weight`` (N,). Differentiable in ``x`` and ``weight``."""
    if x.shape[-1] > MAX_WIDTH:
        raise ValueError(f"rms_norm_triton: width {x.shape[-1]} exceeds {MAX_WIDTH}")
    return RMSNormFunction.apply(x, weight, float(eps))
