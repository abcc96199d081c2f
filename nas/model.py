"""The Transformer, assembled by dependency injection from built blocks, and its cost functions.

A layer receives already-built attention, feed-forward and norm modules and never branches on block type
strings; :func:`build_model` is the one place that turns an :class:`~nas.space.Architecture` into modules.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import registry
from .blocks import Dims, PositionScheme, Task
from .space import Architecture, block_config

__all__ = ["Layer", "Transformer", "build_model", "count_parameters", "count_flops_per_token", "meta_costs"]


class Layer(nn.Module):
    """norm -> attention -> residual, norm -> feed-forward -> residual, with pre- or post-norm placement.

    pre (GPT-2, Llama): x + f(norm(x)); stable without warm-up tricks, needs a final norm.
    post (original Transformer, BERT): norm(x + f(x)); often better when it trains, touchier at depth.
    """

    def __init__(self, attention: nn.Module, ffn: nn.Module, norm_attn: nn.Module, norm_ffn: nn.Module,
                 placement: str):
        super().__init__()
        if placement not in ("pre", "post"):
            raise ValueError(f"unknown norm placement '{placement}'; valid: pre, post")
        self.attention, self.ffn = attention, ffn
        self.norm_attn, self.norm_ffn = norm_attn, norm_ffn
        self.pre = placement == "pre"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        if self.pre:
            x = x + self.attention(self.norm_attn(x))
            return x + self.ffn(self.norm_ffn(x))
        x = self.norm_attn(x + self.attention(x))
        return self.norm_ffn(x + self.ffn(x))


class Transformer(nn.Module):
    """Embedding -> position -> N layers -> final norm -> head.

    Causal models (decoders) return logits per position ``(B, T, V)``; the others (encoders) mean-pool the
    sequence and return ``(B, num_classes)``. The position module is shared: every attention layer holds the
    same instance, so ``parameters()`` counts it once.
    """

    def __init__(self, embedding: nn.Module, position: PositionScheme, layers: list[Layer], final_norm: nn.Module,
                 head: nn.Linear, causal: bool):
        super().__init__()
        self.embedding, self.position = embedding, position
        self.layers = nn.ModuleList(layers)
        self.final_norm, self.head = final_norm, head
        self.causal = causal
        self.checkpointing = False  # recompute each layer's activations in backward (less memory, ~1/3 more compute)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.position.embed(self.embedding(x))  # (B, T, C)
        for layer in self.layers:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(layer, h, use_reentrant=False)
            else:
                h = layer(h)
        h = self.final_norm(h)
        if not self.causal:
            h = h.mean(dim=1)  # (B, C)
        return self.head(h)  # (B, T, V) or (B, classes)

    def aux_loss(self) -> torch.Tensor | None:
        """Sum of the auxiliary losses blocks computed in the last forward (e.g. MoE load balancing)."""
        losses = [m.aux_loss() for m in self.modules() if m is not self and hasattr(m, "aux_loss")]
        losses = [loss for loss in losses if loss is not None]
        return torch.stack(losses).sum() if losses else None


def build_model(arch: Architecture, task: Task) -> Transformer:
    """Build the modules of ``arch`` for ``task``. Works under ``torch.device("meta")`` for free sizing."""
    dims = arch.dims(task.seq_len, task.causal)
    position = registry.build("position", block_config("position", arch.position), dims)

    def build(kind: str, config: dict[str, Any], *extra: Any) -> nn.Module:
        return registry.build(kind, block_config(kind, config), dims, *extra)

    layers = [
        Layer(
            attention=build("attention", layer.attention, position),
            ffn=build("ffn", layer.ffn),
            norm_attn=build("norm", layer.norm),
            norm_ffn=build("norm", layer.norm),
            placement=arch.norm_placement,
        )
        for layer in arch.layers
    ]
    final_norm = build("norm", arch.layers[-1].norm) if arch.norm_placement == "pre" else nn.Identity()
    embedding = task.embedding(arch.d_model)
    head = nn.Linear(arch.d_model, task.num_outputs)
    for module in (embedding, head):  # GPT-2 style small init for the parts the model itself owns
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    return Transformer(embedding, position, layers, final_norm, head, task.causal)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a shared module is counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_flops_per_token(model: nn.Module, x: torch.Tensor) -> float:
    """Forward FLOPs per input token, counted by ``torch.utils.flop_counter`` over one forward of ``x``.

    Counts matrix multiplications and attention kernels (2 FLOPs per multiply-add; causal attention is counted
    at full T x T, as the kernels compute it), not element-wise ops. Runs on any device, ``meta`` included.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / (x.shape[0] * x.shape[1])


def meta_costs(arch: Architecture, task: Task, batch: torch.Tensor) -> dict[str, float]:
    """Parameters and FLOPs per token of ``arch`` without allocating it: built on the meta device."""
    with torch.device("meta"):
        model = build_model(arch, task)
    return {"params": float(count_parameters(model)),
            "flops_per_token": count_flops_per_token(model, batch.to("meta"))}
