"""Built-in position schemes: none, sinusoidal, learned absolute, RoPE, ALiBi, T5-style relative bias."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from nas import BlockConfig, Capabilities, Dims, PositionScheme, register, suggest_among, suggest_value
from nas.blocks import Sharing


@register("position", "none")
class NoPosition(PositionScheme):
    """No position information (NoPE; Kazemnejad et al. 2023 show causal decoders can do without)."""

    class Config(BlockConfig):
        type: Literal["none"] = "none"

    capabilities = Capabilities(position_mode="none", sharing=Sharing("none"))

    def __init__(self, config: Config, dims: Dims):
        super().__init__()


@register("position", "sinusoidal")
class SinusoidalPosition(PositionScheme):
    """Fixed sinusoidal absolute positions added to the embeddings (Vaswani et al. 2017)."""

    class Config(BlockConfig):
        type: Literal["sinusoidal"] = "sinusoidal"
        base: float = Field(10000.0, gt=1.0, description="wavelength base")

    capabilities = Capabilities(position_mode="embedding", sharing=Sharing("sinusoidal"))

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

    capabilities = Capabilities(position_mode="embedding", sharing=Sharing("learned"))

    def __init__(self, config: Config, dims: Dims):
        super().__init__()
        self.table = nn.Embedding(dims.seq_len, dims.d_model)
        nn.init.normal_(self.table.weight, std=0.02)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table.weight[: x.shape[1]]


@register("position", "rope", default=True)
class RotaryPosition(PositionScheme):
    """Rotary position embedding (Su et al. 2021, RoFormer): rotates query/key pairs by position * frequency,
    so that q.k depends only on the relative offset. Needs an even head dimension."""

    class Config(BlockConfig):
        type: Literal["rope"] = "rope"
        base: float = Field(10000.0, gt=1.0, description="frequency base (theta)")

    capabilities = Capabilities(position_mode="rotary", sharing=Sharing("rope"))

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


def alibi_slopes(n_heads: int) -> list[float]:
    """The per-head slopes of ALiBi (Press et al. 2022, section 3): a geometric sequence starting at
    ``2^(-8/n)`` with that ratio for ``n`` a power of two; otherwise the slopes of the nearest smaller power of
    two ``m``, followed by every other slope of ``2m`` heads."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_two(n_heads)
    m = 2 ** math.floor(math.log2(n_heads))
    return power_of_two(m) + power_of_two(2 * m)[0::2][: n_heads - m]


@register("position", "alibi")
class ALiBi(PositionScheme):
    """Attention with Linear Biases (Press et al. 2022, "Train Short, Test Long"): no position embedding;
    each head h adds ``-m_h * |i - j|`` to the score of query i and key j, with fixed slopes ``m_h``.

    The paper defines the causal case, ``-m_h * (i - j)`` for ``j <= i``; encoders use the symmetric form.
    """

    class Config(BlockConfig):
        type: Literal["alibi"] = "alibi"

    capabilities = Capabilities(position_mode="bias", sharing=Sharing("alibi"))

    def __init__(self, config: Config, dims: Dims):
        super().__init__()
        self.register_buffer("slopes", torch.tensor(alibi_slopes(dims.n_heads)), persistent=False)  # (H,)

    def score_bias(self, t_q: int, t_k: int) -> torch.Tensor:  # (H, Tq, Tk)
        i = torch.arange(t_k - t_q, t_k, device=self.slopes.device)[:, None]  # queries are the last t_q positions
        j = torch.arange(t_k, device=self.slopes.device)[None, :]
        return -self.slopes.float()[:, None, None] * (i - j).abs().float()


def t5_bucket(relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucket of each relative position ``key - query``: exact for small distances, log-spaced up to
    ``max_distance``, one bucket beyond; bidirectional buckets keep the sign (half the buckets each way)."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)  # only keys in the past carry information
    exact = num_buckets // 2
    log_part = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    large = (exact + (log_part * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return bucket + torch.where(distance < exact, distance, large)


@register("position", "relative")
class RelativeBias(PositionScheme):
    """T5-style relative position bias (Raffel et al. 2020, "Exploring the Limits of Transfer Learning",
    section 2.1): a learned scalar per head and relative-distance bucket, added to the attention scores."""

    class Config(BlockConfig):
        type: Literal["relative"] = "relative"
        num_buckets: int = Field(32, ge=4, description="distance buckets (half per direction in encoders)")
        max_distance: int = Field(128, ge=2, description="distances from here on share the last bucket")

        @model_validator(mode="after")
        def _check(self) -> "RelativeBias.Config":
            if self.max_distance <= self.num_buckets // 2:
                raise ValueError("max_distance must exceed num_buckets / 2, where the log-spaced buckets start")
            return self

    capabilities = Capabilities(position_mode="bias", sharing=Sharing("relative"))

    @classmethod
    def search_space(cls, trial: Any, entry: Any, dims: Dims, prefix: str) -> Config:
        """``num_buckets`` as listed; ``max_distance`` among the listed values above ``num_buckets / 2``."""
        defaults = cls.Config()
        buckets = entry.num_buckets if entry.num_buckets is not None else defaults.num_buckets
        buckets = suggest_value(trial, f"{prefix}.num_buckets", buckets)
        distance = entry.max_distance if entry.max_distance is not None else defaults.max_distance
        distance = suggest_among(trial, f"{prefix}.max_distance", distance, lambda d: d > buckets // 2,
                                 condition=f"num_buckets={buckets}", why=f"exceeds num_buckets/2={buckets // 2}")
        return cls.Config(num_buckets=buckets, max_distance=distance)

    def __init__(self, config: Config, dims: Dims):
        super().__init__()
        self.bias = nn.Embedding(config.num_buckets, dims.n_heads)
        nn.init.normal_(self.bias.weight, std=0.02)
        pos = torch.arange(dims.seq_len)
        buckets = t5_bucket(pos[None, :] - pos[:, None], not dims.causal, config.num_buckets, config.max_distance)
        self.register_buffer("buckets", buckets, persistent=False)  # (T, T) bucket of key j for query i

    def score_bias(self, t_q: int, t_k: int) -> torch.Tensor:  # (H, Tq, Tk)
        return self.bias(self.buckets[t_k - t_q: t_k, :t_k]).permute(2, 0, 1)
