"""Built-in feed-forward blocks: MLP, gated linear units (SwiGLU, GeGLU), mixture of experts."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from nas import BlockConfig, Capabilities, Dims, register, suggest_among, suggest_value
from nas.blocks import Sharing

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


@register("ffn", "mlp", default=True)
class MLP(nn.Module):
    """Position-wise two-layer MLP (Vaswani et al. 2017): Linear(C, e*C) -> activation -> Linear(e*C, C)."""

    class Config(BlockConfig):
        type: Literal["mlp"] = "mlp"
        expansion: int = Field(4, ge=1, le=16, description="hidden width as a multiple of d_model")
        activation: Literal["gelu", "relu"] = "gelu"

    capabilities = Capabilities(sharing=Sharing("mlp"))  # the first e*C hidden neurons of the widest MLP

    def __init__(self, config: Config, dims: Dims):
        super().__init__()
        hidden = config.expansion * dims.d_model
        self.up = nn.Linear(dims.d_model, hidden)
        self.act = _ACTIVATIONS[config.activation]()
        self.down = nn.Linear(hidden, dims.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return self.down(self.act(self.up(x)))

    @torch.no_grad()
    def prune_neurons(self, fraction: float) -> int:
        """Structured pruning: remove ``floor(fraction * hidden)`` hidden neurons, really shrinking ``up`` and
        ``down``; importance is ``||W_up[i, :]|| * ||W_down[:, i]||``. Called by compression plugins after
        training; returns the number removed (at least one neuron stays)."""
        keep = _keep_neurons(self.up.weight.norm(dim=1) * self.down.weight.norm(dim=0), fraction)
        if keep is None:
            return 0
        removed = self.up.out_features - len(keep)
        self.up = _sliced_linear(self.up, rows=keep)
        self.down = _sliced_linear(self.down, cols=keep)
        return removed


def _keep_neurons(importance: torch.Tensor, fraction: float) -> torch.Tensor | None:
    """Sorted indices of the neurons to keep, or None when nothing is removed."""
    n = importance.numel()
    drop = min(int(fraction * n), n - 1)
    return importance.topk(n - drop).indices.sort().values if drop > 0 else None


def _sliced_linear(old: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A smaller copy of ``old`` keeping output ``rows`` and/or input ``cols``."""
    weight = old.weight if rows is None else old.weight[rows]
    weight = weight if cols is None else weight[:, cols]
    bias = old.bias if old.bias is None or rows is None else old.bias[rows]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    return new.train(old.training)


class GatedFFN(nn.Module):
    """``down(act(gate(x)) * up(x))``: a gated linear unit feed-forward (Shazeer 2020, "GLU Variants Improve
    Transformer"). Sub-classes pick the activation."""

    act: nn.Module

    def __init__(self, config: Any, dims: Dims):
        super().__init__()
        hidden = max(1, round(config.expansion * dims.d_model))
        self.gate = nn.Linear(dims.d_model, hidden, bias=False)
        self.up = nn.Linear(dims.d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, dims.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return self.down(self.act(self.gate(x)) * self.up(x))

    @torch.no_grad()
    def prune_neurons(self, fraction: float) -> int:
        """As :meth:`MLP.prune_neurons`, with importance ``||W_gate[i]|| * ||W_up[i]|| * ||W_down[:, i]||``."""
        importance = self.gate.weight.norm(dim=1) * self.up.weight.norm(dim=1) * self.down.weight.norm(dim=0)
        keep = _keep_neurons(importance, fraction)
        if keep is None:
            return 0
        removed = self.up.out_features - len(keep)
        self.gate, self.up = _sliced_linear(self.gate, rows=keep), _sliced_linear(self.up, rows=keep)
        self.down = _sliced_linear(self.down, cols=keep)
        return removed


_GLU_EXPANSION = Field(8 / 3, gt=0, le=16, description="hidden width as a multiple of d_model (8/3 matches "
                       "the parameters of a 4x MLP)")


@register("ffn", "swiglu")
class SwiGLU(GatedFFN):
    """SwiGLU feed-forward (Shazeer 2020, "GLU Variants Improve Transformer"; PaLM, Llama): ``down(SiLU(gate x)
    * up x)``, no biases."""

    class Config(BlockConfig):
        type: Literal["swiglu"] = "swiglu"
        expansion: float = _GLU_EXPANSION

    capabilities = Capabilities(sharing=Sharing("swiglu"))

    act = nn.SiLU()


@register("ffn", "geglu")
class GeGLU(GatedFFN):
    """GeGLU feed-forward (Shazeer 2020, "GLU Variants Improve Transformer"): ``down(GELU(gate x) * up x)``,
    no biases."""

    class Config(BlockConfig):
        type: Literal["geglu"] = "geglu"
        expansion: float = _GLU_EXPANSION

    capabilities = Capabilities(sharing=Sharing("geglu"))

    act = nn.GELU()


@register("ffn", "moe")
class MixtureOfExperts(nn.Module):
    """Mixture-of-experts feed-forward with top-k token routing (Shazeer et al. 2017; GShard, Lepikhin et al.
    2021; Switch Transformer, Fedus et al. 2022): ``num_experts`` MLP experts, each token sent to ``top_k``.

    Routing: a linear router gives each token a softmax over experts; the token goes to its ``top_k`` experts
    and their outputs are summed, weighted by the gates. With ``renormalize`` (the default) and ``top_k >= 2``
    the gates are the chosen probabilities divided by their sum, so they add up to 1 (GShard's top-2, Mixtral);
    otherwise they are the router probabilities themselves (with ``top_k = 1`` always: a renormalised single
    gate would be 1 and the task loss would give the router no gradient, Switch's reason for keeping p).

    Capacity, per sequence: in each sequence of T tokens, each expert takes at most ``capacity =
    min(T, ceil(capacity_factor * top_k * T / num_experts))`` tokens; the choices over it are dropped (that
    expert adds nothing for them; the residual carries them on). Within a sequence the choices are served
    token by token in position order, each token's ``top_k`` choices in rank order, before any choice of a
    later token. So whether a token keeps a choice depends only on itself and earlier positions of its own
    sequence, which gives the block's two guarantees, both checked by ``nas.testing``:

    * causal: the output at t does not depend on inputs after t (for every ``top_k`` and capacity);
    * batch-independent: a sequence's output does not depend on the other sequences of the batch (a
      capacity shared by the batch would make it depend on them, and on the batch size at evaluation).

    It does depend on the sequence length T, through the capacity. Tokens are dispatched by gathering them
    into fixed (E, B * capacity, C) buffers, so the experts' cost is about ``capacity_factor * top_k``
    experts per token, whatever the routing, and FLOP counting on the meta device counts exactly that.

    Training adds ``aux_loss()``: the Switch load-balancing loss ``E * sum_e f_e * P_e`` (``f_e`` the share of
    routing choices, ``P_e`` the mean router probability of expert e) times ``balance_loss``, plus the router
    z-loss (ST-MoE, Zoph et al. 2022) ``mean(logsumexp(logits)^2)`` times ``z_loss``. ``stats()`` reports each
    expert's share of routed tokens and the dropped share since ``reset_stats()``.
    """

    #: Configs the conformance kit (``nas.testing``) checks besides the default one: several ``top_k`` and
    #: capacities, tight ones included, where routing order decides which choices are dropped.
    conformance_configs = [
        {"num_experts": 4, "top_k": 1, "capacity_factor": 0.5},
        {"num_experts": 4, "top_k": 2, "capacity_factor": 1.0},
        {"num_experts": 4, "top_k": 2, "capacity_factor": 0.5},
        {"num_experts": 4, "top_k": 3, "capacity_factor": 1.25},
        {"num_experts": 4, "top_k": 2, "capacity_factor": 0.5, "renormalize": False},
    ]

    class Config(BlockConfig):
        type: Literal["moe"] = "moe"
        num_experts: int = Field(4, ge=1, description="experts E")
        top_k: int = Field(1, ge=1, description="experts per token k (1: Switch, 2: GShard)")
        capacity_factor: float = Field(1.25, gt=0, description="expert capacity as a multiple of an even share")
        expansion: int = Field(4, ge=1, le=16, description="hidden width of each expert as a multiple of d_model")
        activation: Literal["gelu", "relu"] = "gelu"
        balance_loss: float = Field(0.01, ge=0, description="weight of the load-balancing auxiliary loss")
        z_loss: float = Field(0.0, ge=0, description="weight of the router z-loss (0: off)")
        renormalize: bool = Field(True, description="top_k >= 2: gates are the chosen probabilities over their "
                                  "sum (they add up to 1); off: the raw router probabilities")

        @model_validator(mode="after")
        def _check(self) -> "MixtureOfExperts.Config":
            if self.top_k > self.num_experts:
                raise ValueError(f"top_k ({self.top_k}) exceeds num_experts ({self.num_experts})")
            return self

    def __init__(self, config: Config, dims: Dims):
        super().__init__()
        C, Hd, E = dims.d_model, config.expansion * dims.d_model, config.num_experts
        self.config = config
        self.router = nn.Linear(C, E, bias=False)
        # Experts stacked for batched matmuls; initialised like nn.Linear (uniform, bound 1/sqrt(fan_in)).
        self.w_up = nn.Parameter(torch.empty(E, C, Hd).uniform_(-1, 1) / math.sqrt(C))  # (E, C, Hd)
        self.b_up = nn.Parameter(torch.empty(E, Hd).uniform_(-1, 1) / math.sqrt(C))
        self.w_down = nn.Parameter(torch.empty(E, Hd, C).uniform_(-1, 1) / math.sqrt(Hd))  # (E, Hd, C)
        self.b_down = nn.Parameter(torch.empty(E, C).uniform_(-1, 1) / math.sqrt(Hd))
        self.act = _ACTIVATIONS[config.activation]()
        self._aux: torch.Tensor | None = None
        # Counters (integers: a bf16 model must still count exactly), not part of the state dict.
        self.register_buffer("_load", torch.zeros(E, dtype=torch.long), persistent=False)  # routed tokens per expert
        self.register_buffer("_dropped", torch.zeros((), dtype=torch.long), persistent=False)  # choices over capacity
        self.register_buffer("_choices", torch.zeros((), dtype=torch.long), persistent=False)  # routing choices made

    @classmethod
    def search_space(cls, trial: Any, entry: Any, dims: Dims, prefix: str) -> Config:
        """Every field from its space as usual, except ``top_k``: only listed values up to ``num_experts``."""
        defaults = cls.Config()
        values: dict[str, Any] = {}
        for name in cls.Config.model_fields:
            space = getattr(entry, name, None)
            if name in ("type", "top_k") or space is None:
                continue
            values[name] = suggest_value(trial, f"{prefix}.{name}", space)
        E = values.get("num_experts", defaults.num_experts)
        top_k = entry.top_k if entry.top_k is not None else defaults.top_k
        values["top_k"] = suggest_among(trial, f"{prefix}.top_k", top_k, lambda k: k <= E,
                                        condition=f"num_experts={E}", why=f"is at most num_experts={E}")
        return cls.Config(**values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        B, T, C = x.shape
        E, k = self.config.num_experts, self.config.top_k
        logits = self.router(x).float()  # (B, T, E)
        probs = logits.softmax(-1)
        gate, expert = probs.topk(k, dim=-1)  # (B, T, k), in rank order
        if self.config.renormalize and k > 1:
            gate = gate / gate.sum(-1, keepdim=True)
        # Routing choices in priority order within each sequence: token 0's k choices, then token 1's, ...
        expert, gate = expert.reshape(B, T * k), gate.reshape(B, T * k)  # (B, Tk)
        onehot = torch.zeros(B, T * k, E, device=x.device).scatter_(2, expert[..., None], 1.0)  # (B, Tk, E)
        slot_in_expert = ((onehot.cumsum(1) - 1.0) * onehot).sum(-1).long()  # place in its expert's queue
        capacity = min(T, math.ceil(self.config.capacity_factor * k * T / E))
        kept = slot_in_expert < capacity  # (B, Tk)
        # Buffer rows expert-major: row (e, b, slot) = e * B * capacity + b * capacity + slot; overflow -> spare
        sequence = torch.arange(B, device=x.device)[:, None]  # (B, 1)
        slot = torch.where(kept, (expert * B + sequence) * capacity + slot_in_expert, E * B * capacity)  # (B, Tk)
        slot = slot.reshape(-1)  # (BTk,)
        token = (sequence * T + torch.arange(T * k, device=x.device) // k).reshape(-1)  # (BTk,) row of x
        tokens = x.reshape(B * T, C)
        buffer = tokens.new_zeros(E * B * capacity + 1, C).index_add(0, slot, tokens[token])  # (E*B*cap + 1, C)
        h = buffer[:-1].view(E, B * capacity, C)
        h = self.act(torch.baddbmm(self.b_up[:, None, :].to(h.dtype), h, self.w_up.to(h.dtype)))  # (E, Bcap, Hd)
        h = torch.baddbmm(self.b_down[:, None, :].to(h.dtype), h, self.w_down.to(h.dtype))  # (E, Bcap, C)
        h = torch.cat([h.reshape(E * B * capacity, C), h.new_zeros(1, C)])  # the spare row contributes zero
        weight = (gate * kept).to(h.dtype).reshape(-1, 1)  # (BTk, 1)
        out = tokens.new_zeros(B * T, C, dtype=h.dtype).index_add(0, token, h[slot] * weight)  # (BT, C)

        share = onehot.mean((0, 1)) * E  # (E,) routing share relative to an even one; f_e = share / E
        aux = self.config.balance_loss * (share * probs.mean((0, 1))).sum()
        if self.config.z_loss:
            aux = aux + self.config.z_loss * torch.logsumexp(logits, -1).pow(2).mean()
        self._aux = aux if torch.is_grad_enabled() else None  # inference needs no auxiliary loss
        with torch.no_grad():
            self._load += (onehot * kept[..., None]).sum((0, 1)).long()
            self._dropped += (~kept).sum()
            self._choices += kept.numel()
        return out.view(B, T, C).to(x.dtype)

    def aux_loss(self) -> torch.Tensor | None:
        """The auxiliary loss of the last forward (load balancing + z-loss), added to the training loss.

        Handed out once: a second call returns None until the next forward, so no stale graph is kept alive."""
        aux, self._aux = self._aux, None
        return aux

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_aux"] = None  # a graph of the last forward: not part of the module (and cannot be deep-copied)
        return state

    def stats(self) -> dict[str, float]:
        """Expert utilisation since the last ``reset_stats()``: ``load.<e>`` each expert's share of the routed
        tokens, ``dropped`` the share of routing choices over capacity, ``imbalance`` the largest load over an
        even share (1.0 is perfectly balanced)."""
        routed = float(self._load.sum())
        if routed == 0:
            return {}
        load = (self._load.double() / routed).tolist()
        out = {f"load.{e}": v for e, v in enumerate(load)}
        out["dropped"] = float(self._dropped) / max(float(self._choices), 1.0)
        out["imbalance"] = max(load) * len(load)
        return out

    def reset_stats(self) -> None:
        self._load.zero_()
        self._dropped.zero_()
        self._choices.zero_()

    def inactive_parameters(self) -> int:
        """Parameters a token does not use: the experts it is not routed to."""
        E, k = self.config.num_experts, self.config.top_k
        per_expert = sum(p[0].numel() for p in (self.w_up, self.b_up, self.w_down, self.b_down))
        return (E - k) * per_expert
