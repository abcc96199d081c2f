"""Built-in position schemes: none, sinusoidal, learned absolute, RoPE."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from nas import BlockConfig, Capabilities, Dims, PositionScheme, register


@register("position", "none")
class NoPosition(PositionScheme):
    """No position information (NoPE; Kazemnejad et al. 2023 show causal decoders can do without)."""

    class Config(BlockConfig):
        type: Literal["none"] = "none"

    capabilities = Capabilities(position_mode="none")

    def __init__(self, config: Config, dims: Dims):
        super().__init__()


@register("position", "sinusoidal")
class SinusoidalPosition(PositionScheme):
    """Fixed sinusoidal absolute positions added to the embeddings (Vaswani et al. 2017)."""

    class Config(BlockConfig):
        type: Literal["sinusoidal"] = "sinusoidal"
        base: float = Field(10000.0, gt=1.0, description="wavelength base")

    capabilities = Capabilities(position_mode="embedding")

    def __init__(self, config: Config, dims: Dims):
        super().__init__()
        pos = torch.arange(dims.seq_len, dtype=torch.float32)[:, None]  # (T, 1)
        freq = torch.exp(-math.log(config.base) * torch.arange(0, dims.d_model, 2) / dims.d_model)
        table = torch.zeros(dims.seq_len, dims.d_model)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq[: dims.d_model // 2])
        self.register_buffer("table", table, persistent=False)  # (T, C)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table[: x.shape[1]].to(x.dtype)


@register("position", "learned")
class LearnedPosition(PositionScheme):
    """Learned absolute position embeddings (GPT-2, BERT)."""

    class Config(BlockConfig):
        type: Literal["learned"] = "learned"

    capabilities = Capabilities(position_mode="embedding")

    def __init__(self, config: Config, dims: Dims):
        super().__init__()
        self.table = nn.Embedding(dims.seq_len, dims.d_model)
        nn.init.normal_(self.table.weight, std=0.02)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table.weight[: x.shape[1]]


@register("position", "rope")
class RotaryPosition(PositionScheme):
    """Rotary position embedding (Su et al. 2021, RoFormer): rotates query/key pairs by position * frequency,
    so that q.k depends only on the relative offset. Needs an even head dimension."""

    class Config(BlockConfig):
        type: Literal["rope"] = "rope"
        base: float = Field(10000.0, gt=1.0, description="frequency base (theta)")

    capabilities = Capabilities(position_mode="rotary")

    def __init__(self, config: Config, dims: Dims):
        super().__init__()
        D = dims.head_dim
        if D % 2:
            raise ValueError(f"rope needs an even head dimension, got d_model/n_heads = {D}")
        inv_freq = config.base ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)  # (D/2,)
        angles = torch.arange(dims.seq_len, dtype=torch.float32)[:, None] * inv_freq  # (T, D/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)


    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = q.shape[-2]
        cos, sin = self.cos[:T], self.sin[:T]  # (T, D/2)
        return _rotate_half(q, cos, sin), _rotate_half(k, cos, sin)


def _rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[..., i], x[..., i + D/2]) by the given angles; computed in fp32."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, T, D/2) each
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)
