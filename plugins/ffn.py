"""Built-in feed-forward blocks."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from nas import BlockConfig, Dims, register

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


@register("ffn", "mlp")
class MLP(nn.Module):
    """Position-wise two-layer MLP (Vaswani et al. 2017): Linear(C, e*C) -> activation -> Linear(e*C, C)."""

    class Config(BlockConfig):
        type: Literal["mlp"] = "mlp"
        expansion: int = Field(4, ge=1, le=16, description="hidden width as a multiple of d_model")
        activation: Literal["gelu", "relu"] = "gelu"

    def __init__(self, config: Config, dims: Dims):
        super().__init__()
        hidden = config.expansion * dims.d_model
        self.up = nn.Linear(dims.d_model, hidden)
        self.act = _ACTIVATIONS[config.activation]()
        self.down = nn.Linear(hidden, dims.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return self.down(self.act(self.up(x)))
