"""An example plugin package for `nas`: one new attention type, written as a user would write it.

Install it with ``pip install -e examples/nas-example-plugin``; ``nas plugins --kind attention`` then lists
``cosine``, and a search space can use ``- type: cosine``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from nas import BlockConfig, Capabilities, Dims, PositionScheme, register


@register("attention", "cosine")
class CosineAttention(nn.Module):
    """Cosine-similarity attention (Henry et al. 2020, "Query-Key Normalization for Transformers").

    Queries and keys are L2-normalised per head, so scores are cosines in [-1, 1] scaled by a learned
    temperature g (initialised to ``init_scale``) instead of 1/sqrt(D). Softmax cannot saturate early.
    """

    class Config(BlockConfig):
        type: Literal["cosine"] = "cosine"
        init_scale: float = Field(10.0, gt=0, description="initial temperature g of the cosine scores")

    # Causal and bidirectional; takes absolute positions and RoPE, not additive score biases.
    capabilities = Capabilities(causal=True, bidirectional=True, positions=frozenset({"none", "embedding", "rotary"}))

    def __init__(self, config: Config, dims: Dims, position: PositionScheme):
        super().__init__()
        self.n_heads, self.causal = dims.n_heads, dims.causal
        self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model, bias=False)
        self.out = nn.Linear(dims.d_model, dims.d_model, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(math.log(config.init_scale)))
        self.position = position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        q, k = self.position.rotate(q, k)
        # The temperature scales the queries: SDPA's `scale` takes a Python float, and a tensor there would be
        # read with .item() (a host sync, and impossible on the meta device where models are sized).
        q, k = F.normalize(q, dim=-1) * self.log_scale.exp(), F.normalize(k, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=1.0)
        return self.out(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
