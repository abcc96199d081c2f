"""Zero-cost proxies: scores of an untrained model that are meant to rank architectures without training them.

Two published proxies, each computed at initialisation (the trial's own seed and init), no optimiser step:

* :func:`synflow` (Tanaka et al. 2020, "Pruning neural networks without any data by iteratively conserving
  synaptic flow"): the network with every parameter replaced by its absolute value, fed an all-ones input;
  ``R`` is the sum of its output and the score is ``sum over parameters of |theta * dR/dtheta|``. No data, no
  labels.
* :func:`grad_norm` (one of the proxies of Abdelfattah et al. 2021, "Zero-Cost Proxies for Lightweight
  NAS"): the L2 norm of the gradient of the task loss on one training batch, taken over all parameters
  together (one vector), the gradient the first training step would follow. Some implementations add up
  per-layer norms instead; the single norm is the one that has a closed form to test against.

The parameter count and FLOPs per token, the two costs every search already has, live beside the model
(:func:`nas.model.meta_costs`). The field notes' warning applies: a proxy earns its place only by beating the
parameter count on our own spaces (``benchmarks/cheap_signals.py`` measures it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .architecture import Architecture
from .blocks import Task
from .model import Transformer, build_model
from .runtime import loss_fn, seed_everything

__all__ = ["synflow", "synflow_per_parameter", "grad_norm", "ProxyScores", "zero_cost_proxies"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _AllTokens(nn.Module):
    """Stands in for an ``nn.Embedding`` fed the all-ones vector in its one-hot input space: every position
    receives ``ones(V) @ |E|``, the sum of all rows of the (absolute) embedding table."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.weight = embedding.weight  # (V, C), the same parameter: its gradient is the embedding's

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) ids, only their shape is used -> (B, T, C)
        return self.weight.sum(0).expand(*x.shape, self.weight.shape[1])


def synflow_per_parameter(model: nn.Module, x: torch.Tensor,
                          dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """``{parameter name: sum |theta * dR/dtheta|}`` of ``model`` for the input ``x`` (all ones, for the
    proxy), computed on a copy whose parameters are their absolute values, in ``dtype`` (double: the product
    of absolute weights over many layers overflows float32 less readily), in eval mode (norms and dropout as
    at inference). ``R`` is the sum of the copy's output. ``model`` is untouched. A parameter that does not
    reach the output scores 0. Floating inputs are cast to ``dtype``; integer inputs are passed as they are.
    """
    twin = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        for p in twin.parameters():
            p.abs_()
    names, params = zip(*[(n, p) for n, p in twin.named_parameters() if p.requires_grad])
    out = twin(x.to(dtype) if x.is_floating_point() else x)
    grads = torch.autograd.grad(out.sum(), params, allow_unused=True)
    return {n: 0.0 if g is None else float((p.detach() * g).abs().sum()) for n, p, g in zip(names, params, grads)}


def synflow(model: Transformer, example: torch.Tensor) -> float:
    """The synflow score of a Transformer at its current weights (call it on the untrained model). One forward
    and one backward pass at batch size 1; ``example`` gives the input's shape and kind (a task's example
    batch), not its values.

    What "all ones" means for a token model: an ``nn.Embedding`` is a linear map applied to one-hot vectors,
    so the all-ones input of the paper is the all-ones vector in that one-hot space, at every position: each
    position receives the sum of all rows of ``|E|``, and every row of the embedding table gets its share of
    the score. (The alternatives lose what the proxy is for: the token id 1 everywhere credits one arbitrary
    row and makes the vocabulary size invisible; ones *after* the embedding drop the embedding from the score.)
    A task whose embedding takes floating inputs (patches of pixels) gets a tensor of ones of the input's
    shape. An embedding that takes integer inputs but is not an ``nn.Embedding`` has no agreed all-ones input:
    ``ValueError``.
    """
    shape = (1, *example.shape[1:])
    if isinstance(model.embedding, nn.Embedding):
        twin = copy.deepcopy(model)
        table = twin.embedding
        assert isinstance(table, nn.Embedding)
        twin.embedding = _AllTokens(table)
        x = torch.zeros(shape, dtype=torch.long, device=example.device)
        return sum(synflow_per_parameter(twin, x).values())
    if example.is_floating_point():
        return sum(synflow_per_parameter(model, torch.ones(shape, device=example.device)).values())
    raise ValueError(f"synflow: the task's embedding ({type(model.embedding).__name__}) takes integer inputs "
                     f"but is not an nn.Embedding; there is no all-ones input to give it")


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss = loss_fn) -> float:
    """``||d loss(model(x), y) / d theta||_2`` over all trainable parameters at once (one forward, one
    backward). The model stays in the mode it is in (train mode for the gradient its first training step
    would take); its ``.grad`` fields are not touched."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss(model(x), y), params, allow_unused=True)
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))


@dataclass(frozen=True)
class ProxyScores:
    """The zero-cost proxies of one architecture at its trial's initialisation. Higher predicts better for
    synflow (the paper's reading); for grad-norm the literature gives no agreed direction (measure it)."""

    synflow: float
    grad_norm: float
    passes: dict[str, str]  # what each cost: forward and backward passes and their batch size


def zero_cost_proxies(arch: Architecture, task: Task, seed: int, batch_size: int) -> ProxyScores:
    """Synflow and grad-norm of ``arch`` built for ``task`` with the weights a trial seeded ``seed`` starts
    from (:func:`nas.runtime.seed_everything`, then :func:`nas.model.build_model`, as the trial does), the
    gradient taken on the first training batch of that seed (``batch_size`` examples), on the CPU."""
    seed_everything(seed)
    model = build_model(arch, task)
    x, y = next(iter(task.train_batches(batch_size, seed=seed)))
    flow = synflow(model, x)
    model.train()
    norm = grad_norm(model, x, y)
    return ProxyScores(synflow=flow, grad_norm=norm,
                       passes={"synflow": "1 forward + 1 backward, batch 1, float64",
                               "grad_norm": f"1 forward + 1 backward, batch {batch_size}"})
