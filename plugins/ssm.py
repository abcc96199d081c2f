"""A sequence mixer that is not attention: the selective state-space block of Mamba, in plain PyTorch.

It is registered as an ``attention`` block because it fills the attention's slot in a layer (the sequence
mixer); the layer's feed-forward block stays, as in hybrid models such as Jamba.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from nas import BlockConfig, Capabilities, Dims, PositionScheme, register
from nas_plugins._common import fp32_region


@register("attention", "mamba")
class Mamba(nn.Module):
    """Selective state-space sequence mixer (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with
    Selective State Spaces"), with a plain sequential scan.

    ``x -> in_proj -> (u, z)``; ``u -> causal depthwise conv -> SiLU -> selective SSM``; ``y * SiLU(z) ->
    out_proj``. The SSM has a diagonal ``A`` (E x N) and input-dependent step ``dt``, ``B`` and ``C``:
    ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``, ``y_t = C_t h_t + D u_t``. The scan is a Python loop over
    positions (no fused kernel): linear in T but slow; correct, and differentiable on CPU. For encoder tasks
    the same mixer also runs right to left and the two scans are summed (shared weights, as a simple form of
    Vision Mamba's bidirectional block); the skip ``D * u`` is a per-position term, so it is added once (the
    mean of the two directions' post-conv ``u``), not once per direction. Order is built in, so it takes no
    position scheme other than absolute embeddings.
    """

    class Config(BlockConfig):
        type: Literal["mamba"] = "mamba"
        d_state: int = Field(16, ge=1, description="state size N per channel")
        expand: int = Field(2, ge=1, le=8, description="inner width E as a multiple of d_model")
        d_conv: int = Field(4, ge=1, description="kernel width of the causal depthwise convolution")

    capabilities = Capabilities(causal=True, bidirectional=True, positions=frozenset({"none", "embedding"}),
                                time_exponent=(1, "sequential scan"))

    def __init__(self, config: Config, dims: Dims, position: PositionScheme):
        super().__init__()
        C, E, N = dims.d_model, config.expand * dims.d_model, config.d_state
        self.causal, self.d_state = dims.causal, N
        self.dt_rank = math.ceil(C / 16)
        self.in_proj = nn.Linear(C, 2 * E, bias=False)
        self.conv = nn.Conv1d(E, E, config.d_conv, groups=E, padding=config.d_conv - 1)
        self.x_proj = nn.Linear(E, self.dt_rank + 2 * N, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, E)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))  # (E, N)
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, C, bias=False)
        # Mamba's initialisation of the step: softplus(dt_proj bias) log-uniform in [1e-3, 1e-1].
        dt = torch.exp(torch.rand(E) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, E) each
        y, skip = self.mix(u)
        if not self.causal:  # right to left as well; the skip D * u counted once, as the mean of both directions
            y_back, skip_back = self.mix(u.flip(1))
            y, skip = y + y_back.flip(1), 0.5 * (skip + skip_back.flip(1))
        return self.out_proj((y + skip) * F.silu(z))

    def mix(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal conv, SiLU and the selective scan over positions left to right: the scan's ``C_t h_t`` and the
        skip ``D * u_t`` (u after the conv), each (B, T, E), from u (B, T, E)."""
        T = u.shape[1]
        u = F.silu(self.conv(u.transpose(1, 2))[..., :T].transpose(1, 2))  # (B, T, E)
        dt, Bm, Cm = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))  # (B, T, E)
        dtype = u.dtype
        with fp32_region(u.device):  # the recurrence in fp32 under any precision
            y = selective_scan(u.float(), dt.float(), -torch.exp(self.A_log.float()), Bm.float(), Cm.float(),
                               torch.zeros_like(self.D, dtype=torch.float32))
        return y.to(dtype), u * self.D.to(dtype)


def selective_scan(u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor) -> torch.Tensor:
    """The reference selective scan. u, dt: (B, T, E); A: (E, N); B, C: (B, T, N); D: (E,) -> (B, T, E)."""
    dA = torch.exp(dt[..., None] * A)  # (B, T, E, N) discretised decay
    dBu = (dt * u)[..., None] * B[:, :, None, :]  # (B, T, E, N)
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])  # (B, E, N)
    ys = []
    # unbind, not dA[:, t]: the backward of T slices would write T full-size gradients; unbind's stacks once.
    # Reading y_t out at each step keeps inference memory at one state, not T of them.
    for dA_t, dBu_t, C_t in zip(dA.unbind(1), dBu.unbind(1), C.unbind(1)):
        h = dA_t * h + dBu_t
        ys.append((h @ C_t[:, :, None])[..., 0])  # (B, E)
    return torch.stack(ys, dim=1) + u * D  # (B, T, E)
