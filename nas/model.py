"""The Transformer, assembled by dependency injection from built blocks, and its cost functions.

A layer receives already-built attention, feed-forward and norm modules and never branches on block type
strings; :func:`build_model` is the one place that turns an :class:`~nas.architecture.Architecture` into
modules, and :func:`build_task` the one place that builds a spec's task.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import registry
from .architecture import Architecture, block_config
from .blocks import BlockConfig, Dims, PositionScheme, Task, inactive_parameters

__all__ = ["Layer", "Transformer", "build_model", "build_task", "default_block", "position_of_mode", "no_position",
           "count_parameters", "count_active_parameters", "count_flops_per_token", "meta_costs"]


class Layer(nn.Module):
    """norm -> attention -> residual, norm -> feed-forward -> residual, with pre-, post- or sandwich-norm placement.

    pre (GPT-2, Llama): x + f(norm(x)); stable without warm-up tricks, needs a final norm.
    post (original Transformer, BERT): norm(x + f(x)); often better when it trains, touchier at depth.
    sandwich (Ding et al. 2021, CogView): x + norm_out(f(norm(x))); pre-norm whose sub-layer outputs are
    normalised too, so no residual branch can blow up the stream; needs ``norm_attn_out`` and ``norm_ffn_out``.
    """

    def __init__(self, attention: nn.Module, ffn: nn.Module, norm_attn: nn.Module, norm_ffn: nn.Module,
                 placement: str, norm_attn_out: nn.Module | None = None, norm_ffn_out: nn.Module | None = None):
        super().__init__()
        if placement not in ("pre", "post", "sandwich"):
            raise ValueError(f"unknown norm placement '{placement}'; valid: pre, post, sandwich")
        if (placement == "sandwich") != (norm_attn_out is not None and norm_ffn_out is not None):
            raise ValueError("norm_attn_out and norm_ffn_out are needed by, and only by, the sandwich placement")
        self.attention, self.ffn = attention, ffn
        self.norm_attn, self.norm_ffn = norm_attn, norm_ffn
        self.pre, self.sandwich = placement != "post", placement == "sandwich"
        if self.sandwich:
            assert norm_attn_out is not None and norm_ffn_out is not None
            self.norm_attn_out, self.norm_ffn_out = norm_attn_out, norm_ffn_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        if self.sandwich:
            x = x + self.norm_attn_out(self.attention(self.norm_attn(x)))
            return x + self.norm_ffn_out(self.ffn(self.norm_ffn(x)))
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


class HasTask(Protocol):
    """What building a task needs of a spec (:class:`nas.spec.Spec` has it): the ``task`` section."""

    @property
    def task(self) -> BlockConfig: ...


#: Tasks already built in this process, by (class, config): a warm Ray worker builds a task's data once, not
#: once per trial. A few are kept (a benchmark alternates spaces); the oldest is dropped first.
_TASKS: "OrderedDict[tuple[type, str], Task]" = OrderedDict()
_TASKS_KEPT = 4


def build_task(spec: HasTask) -> Task:
    """The task object of a spec's ``task`` section (its ``type`` selects the registered class). Built once per
    process and configuration, then shared by every trial there, with its data (a task holds no per-trial
    state: see :class:`~nas.blocks.Task`)."""
    key = (registry.get("task", spec.task.type).cls, spec.task.model_dump_json())
    found = _TASKS.get(key)
    if found is None:
        found = _TASKS[key] = registry.build("task", spec.task)
        while len(_TASKS) > _TASKS_KEPT:
            _TASKS.popitem(last=False)
    _TASKS.move_to_end(key)
    return found


def build_model(arch: Architecture, task: Task) -> Transformer:
    """Build the modules of ``arch`` for ``task``. Works under ``torch.device("meta")`` for free sizing."""
    dims = arch.dims(task.seq_len, task.causal)
    position = registry.build("position", block_config("position", arch.position), dims)

    def build(kind: str, config: dict[str, Any], *extra: Any) -> nn.Module:
        return registry.build(kind, block_config(kind, config), dims, *extra)

    sandwich = arch.norm_placement == "sandwich"
    layers = [
        Layer(
            attention=build("attention", layer.attention, position),
            ffn=build("ffn", layer.ffn),
            norm_attn=build("norm", layer.norm),
            norm_ffn=build("norm", layer.norm),
            placement=arch.norm_placement,
            norm_attn_out=build("norm", layer.norm) if sandwich else None,
            norm_ffn_out=build("norm", layer.norm) if sandwich else None,
        )
        for layer in arch.layers
    ]
    final_norm = build("norm", arch.layers[-1].norm) if arch.norm_placement != "post" else nn.Identity()
    embedding = task.embedding(arch.d_model)
    head = nn.Linear(arch.d_model, task.num_outputs)
    for module in (embedding, head):  # GPT-2 style small init for the parts the model itself owns
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(weight, torch.Tensor):  # a task's embedding may be any module
            nn.init.normal_(weight, std=0.02)
        if isinstance(bias, torch.Tensor):
            nn.init.zeros_(bias)
    return Transformer(embedding, position, layers, final_norm, head, task.causal)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a shared module is counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_active_parameters(model: nn.Module) -> int:
    """Parameters one token uses: all of them, less what blocks report through ``inactive_parameters()``
    (the experts a mixture-of-experts router does not send the token to)."""
    return count_parameters(model) - inactive_parameters(model)


def count_flops_per_token(model: nn.Module, x: torch.Tensor) -> float:
    """Forward FLOPs per input token, counted by ``torch.utils.flop_counter`` over one forward of ``x``.

    Counts matrix multiplications and attention kernels (2 FLOPs per multiply-add; causal attention is counted
    at full T x T, as the kernels compute it), not element-wise ops. Runs on any device, ``meta`` included.
    What is counted is what the forward computes: a mixture of experts counts the experts' fixed-capacity
    buffers (``capacity_factor * top_k`` experts per token), not all experts; a sliding window counts its
    blocks, a masked dense pattern (block-sparse) the full T x T.
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    # The counter has no formula for the CPU flash-attention op; count it like every other SDPA kernel.
    custom = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        custom[cpu_sdpa] = lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)  # shapes
    with FlopCounterMode(display=False, custom_mapping=custom) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / (x.shape[0] * x.shape[1])


def meta_costs(arch: Architecture, task: Task, batch: torch.Tensor) -> dict[str, float]:
    """Parameters (all, and active per token) and FLOPs per token of ``arch`` without allocating it: built on
    the meta device."""
    with torch.device("meta"):
        model = build_model(arch, task)
    return {"params": float(count_parameters(model)), "params_active": float(count_active_parameters(model)),
            "flops_per_token": count_flops_per_token(model, batch.to("meta"))}


# --- picking blocks by what they are, not by name (the kit and the profile) -------------------------------
def default_block(kind: str, **fields: Any) -> dict[str, Any]:
    """The config (dict form, as in an Architecture) of the kind's default block, with those of ``fields`` it
    has (``expansion=4`` applies to a feed-forward block with an ``expansion`` field and is dropped otherwise)."""
    entry = registry.get(kind, registry.default(kind))
    return {"type": entry.name, **{k: v for k, v in fields.items() if k in entry.config.model_fields}}


def position_of_mode(mode: str, dims: Dims) -> str:
    """The registered position scheme acting as ``mode`` with the fewest parameters (then by name): the one to
    put beside an attention block that is being examined on its own."""
    candidates = [e for e in registry.entries("position") if e.capabilities.position_mode == mode]
    if not candidates:
        raise registry.RegistryError(f"no registered position scheme acts as '{mode}'")

    def size(entry: registry.Entry) -> int:
        with torch.device("meta"):
            return count_parameters(entry.cls(entry.config(), dims))

    return min(candidates, key=lambda e: (size(e), e.name)).name


def no_position(dims: Dims) -> PositionScheme:
    """A built position scheme that adds no position information (mode ``none``)."""
    name = position_of_mode("none", dims)
    built: PositionScheme = registry.build("position", registry.get("position", name).config(), dims)
    return built
