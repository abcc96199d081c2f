"""Built-in attention blocks."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from nas import BlockConfig, Capabilities, Dims, PositionScheme, register


@register("attention", "softmax")
class SoftmaxAttention(nn.Module):
    """Full softmax attention (Vaswani et al. 2017, "Attention Is All You Need") through PyTorch SDPA.

    On CUDA, SDPA dispatches to FlashAttention-2 / memory-efficient kernels when there is no score bias; a
    position scheme that adds a score bias (ALiBi, relative bias) forces an explicit float mask instead.
    """

    class Config(BlockConfig):
        type: Literal["softmax"] = "softmax"
        dropout: float = Field(0.0, ge=0.0, lt=1.0, description="attention-probability dropout in training")

    capabilities = Capabilities(causal=True, bidirectional=True,
                                positions=frozenset({"none", "embedding", "rotary", "bias"}))

    def __init__(self, config: Config, dims: Dims, position: PositionScheme):
        super().__init__()
        self.n_heads, self.causal, self.dropout = dims.n_heads, dims.causal, config.dropout
        self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model, bias=False)
        self.out = nn.Linear(dims.d_model, dims.d_model, bias=False)
        self.position = position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        q, k = self.position.rotate(q, k)
        bias = self.position.score_bias(T, T)  # (H, T, T) or None
        dropout = self.dropout if self.training else 0.0
        if bias is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=self.causal)
        else:
            if self.causal:
                bias = bias.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout)
        return self.out(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
