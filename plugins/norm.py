"""Built-in norms. Their placement (pre / post) is a model-level choice, see ``model.norm_placement``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from nas import BlockConfig, Capabilities, Dims, kernels, register
from nas.blocks import Sharing


@register("norm", "layernorm", default=True)
class LayerNorm(nn.LayerNorm):
    """Layer normalization (Ba et al. 2016): zero mean, unit variance, learned scale and shift."""

    class Config(BlockConfig):
        type: Literal["layernorm"] = "layernorm"
        eps: float = Field(1e-5, gt=0)
        bias: bool = True

    capabilities = Capabilities(sharing=Sharing("layernorm"))  # scale and shift: the first d_model entries

    def __init__(self, config: Config, dims: Dims):
        super().__init__(dims.d_model, eps=config.eps, bias=config.bias)


@register("norm", "rmsnorm")
class RMSNorm(nn.RMSNorm):
    """Root-mean-square normalization (Zhang & Sennrich 2019): rescales by the RMS, no centring, no bias."""

    class Config(BlockConfig):
        type: Literal["rmsnorm"] = "rmsnorm"
        eps: float = Field(1e-6, gt=0)

    capabilities = Capabilities(sharing=Sharing("rmsnorm"))

    def __init__(self, config: Config, dims: Dims):
        super().__init__(dims.d_model, eps=config.eps)

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        y = kernels.rms_norm(self, x, self.weight, self.eps)  # CUDA: our fused Triton kernel (nas.kernels)
        if y is None:
            kernels.record(self, "torch:rms_norm")
            y = super().forward(x)
        return y
