"""The contracts a block implements: its config base class, its capabilities and the sizes it is built for.

A block is an ``nn.Module`` subclass registered under a ``(kind, name)`` key (see :mod:`nas.registry`). It
carries three class-level declarations that can be read without building it:

* ``Config``: a frozen pydantic model with ``type: Literal["<name>"]`` and ``extra="forbid"``. Its fields
  are the block's hyper-parameters; the search space of each field is written in YAML next to the block.
* ``capabilities``: what the block can and cannot be combined with (:class:`Capabilities`).
* optionally ``search_space``: a define-by-run classmethod that overrides the generic sampler (see
  :func:`nas.space.suggest_config`), for blocks whose parameters depend on each other or on the model size.

How each kind is constructed and called:

==========  ====================================================  =========================================
kind        constructor                                           forward
==========  ====================================================  =========================================
attention   ``cls(config, dims, position)``                       ``(B, T, C) -> (B, T, C)``
position    ``cls(config, dims)``                                 see :class:`PositionScheme`
norm        ``cls(config, dims)``                                 ``(B, T, C) -> (B, T, C)``
ffn         ``cls(config, dims)``                                 ``(B, T, C) -> (B, T, C)``
task        ``cls(config)``                                       see :class:`Task`
compression ``cls(config)``                                       see :class:`Compression`
==========  ====================================================  =========================================

Optional hooks a block may implement, each declared below as a Protocol and read only by the functions
beside it (:func:`aux_loss`, :func:`block_stats`, :func:`reset_stats`, :func:`inactive_parameters`,
:func:`search_space_of`), never probed elsewhere:

* :class:`AuxLoss`: ``aux_loss() -> Tensor | None``, an auxiliary loss of the last forward, added to the
  training loss (mixture-of-experts load balancing).
* :class:`Stats` / :class:`ResetStats`: ``stats() -> dict[str, float]`` and ``reset_stats()``, what the block
  saw since the reset (expert utilisation); a trial resets them before evaluation and logs them as
  ``<module path>.<key>``.
* :class:`InactiveParameters`: ``inactive_parameters() -> int``, parameters a token does not use (unrouted
  experts), for ``params_active``.
* :class:`PrunableHeads` / :class:`PrunableNeurons`: ``prune_heads(fraction) -> int`` (attention) and
  ``prune_neurons(fraction) -> int`` (ffn), structured pruning that really shrinks the module.
* :class:`OwnSearchSpace`: a classmethod ``search_space(trial, entry, dims, prefix) -> Config``.

One optional class attribute is read by the conformance kit (:mod:`nas.testing`) only, through
:func:`conformance_configs`: ``conformance_configs``, a list of config overrides (``{"top_k": 2,
"capacity_factor": 0.5}``) that the kit checks besides the default config, for blocks whose default does not
reach every code path (tight expert capacity, a window shorter than the kit's sequence).

Two contracts every residual-stream block (attention, position, norm, ffn) keeps, and the kit checks:

* causal: when ``dims.causal``, the output at t depends on inputs at positions <= t only;
* batch-independent: one sequence's output does not depend on the other sequences of the batch (no batch
  statistics; a capacity-limited router counts capacity per sequence). It may depend on the sequence length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from .declared import (POSITION_MODES, SLICE_LAYOUTS, BlockConfig, Capabilities, Dims, Sharing, capabilities_of,
                       search_space_of)

__all__ = [
    "BlockConfig",
    "Capabilities",
    "Sharing",
    "SLICE_LAYOUTS",
    "Dims",
    "PositionScheme",
    "Task",
    "Compression",
    "Batch",
    "Finetune",
    "POSITION_MODES",
    "AuxLoss",
    "Stats",
    "ResetStats",
    "InactiveParameters",
    "PrunableHeads",
    "PrunableNeurons",
    "OwnSearchSpace",
    "capabilities_of",
    "aux_loss",
    "block_stats",
    "reset_stats",
    "inactive_parameters",
    "search_space_of",
    "conformance_configs",
]

class PositionScheme(nn.Module):
    """Base class of position blocks. One instance is shared by the embedding and every attention layer.

    The model calls :meth:`embed` once on the token embeddings; each attention calls :meth:`rotate` on its
    queries and keys and adds :meth:`score_bias` to its attention scores. A scheme overrides only the hooks
    of its ``capabilities.position_mode``; the defaults do nothing.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(position_mode="none")

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, H, T, D)
        return q, k

    def score_bias(self, t_q: int, t_k: int) -> torch.Tensor | None:  # -> (H, Tq, Tk) or None
        return None


Batch = tuple[torch.Tensor, torch.Tensor]
"""``(inputs, targets)``; targets use -100 for positions that carry no loss."""


class Task:
    """Base class of task plugins: the data, the input embedding and the quality metrics of one problem.

    A task is built once per process and config (:func:`nas.model.build_task`) and shared by every trial that
    process runs: build its data lazily and once (``functools.cached_property``), hand out fresh iterators and
    tensors, and keep no per-trial state. Data is generated or read locally; nothing is downloaded.
    ``causal`` tasks predict a target per position (decoder); the others predict one class per sequence
    (encoder with mean pooling).
    """

    Config: ClassVar[type[BlockConfig]]
    #: metric name -> "maximize" | "minimize"; the first one is the task's headline metric.
    metrics: ClassVar[dict[str, str]] = {"accuracy": "maximize"}
    #: The task's one declaration of direction: decoder (True) or encoder (False). Its capabilities
    #: (:func:`capabilities_of`) are derived from it.
    causal: ClassVar[bool] = True

    def __init__(self, config: BlockConfig):
        self.config = config

    @property
    def seq_len(self) -> int:
        """Length of every input sequence."""
        raise NotImplementedError

    @property
    def num_outputs(self) -> int:
        """Vocabulary size (causal tasks) or number of classes."""
        raise NotImplementedError

    def embedding(self, d_model: int) -> nn.Module:
        """A module mapping a batch's inputs to ``(B, T, C)`` token embeddings."""
        raise NotImplementedError

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        """An endless, seeded stream of training batches."""
        raise NotImplementedError

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        """The held-out set, the same on every call."""
        raise NotImplementedError

    def example_batch(self, batch_size: int) -> Batch:
        """A batch of the right shapes and dtypes for timing and memory measurement."""
        return next(iter(self.train_batches(batch_size, seed=0)))

    @classmethod
    def tiny_config(cls, seq_len: int) -> BlockConfig:
        """A config of this task small enough for the conformance kit (a few examples, ``seq_len`` positions
        where the task lets the length be chosen). Default: the default config."""
        return cls.Config()

    def evaluate(self, model: nn.Module, batch_size: int, device: torch.device) -> dict[str, float]:
        """Quality metrics on the held-out set. The default: accuracy over targets != -100."""
        correct = total = 0
        with torch.inference_mode():
            for x, y in self.eval_batches(batch_size):
                x, y = x.to(device), y.to(device)
                pred = model(x).argmax(-1)
                mask = y != -100
                correct += int((pred[mask] == y[mask]).sum().item())
                total += int(mask.sum().item())
        return {"accuracy": correct / max(total, 1)}


Finetune = Callable[[nn.Module, int], None]
"""``finetune(model, steps)``: train ``model`` in place for ``steps`` more steps of the trial's task."""


class Compression:
    """Base class of compression plugins: turns the trained model into the model that is evaluated and measured.

    Built once per trial from its config; :meth:`apply` is called after training and before evaluation and
    measurement, so accuracy, latency, inference memory and size are those of the compressed model
    (training memory is that of the model as trained). ``capabilities.needs_gpu`` rules a method out on
    CPU-only machines.
    """

    Config: ClassVar[type[BlockConfig]]
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: True if :meth:`apply` changes the model's shapes (structured pruning): the trial then recounts
    #: ``params``, ``params_active`` and ``flops_per_token`` on the compressed model.
    changes_shape: ClassVar[bool] = False

    def __init__(self, config: BlockConfig):
        self.config = config
        self.info: dict = {}  # what apply did (e.g. heads removed), stored with the trial's result

    def apply(self, model: nn.Module, finetune: Finetune) -> nn.Module:
        """Compress the trained ``model`` (in place or into a new module) and return it.

        ``model`` is on the trial's device, in eval mode. ``finetune`` trains it further on the trial's task
        (for quantization-aware training or recovery after pruning); it leaves the model in train mode.
        """
        return model

    def precision(self, trained: str) -> str:
        """The autocast precision to measure the compressed model under, given the one it was trained in."""
        return trained

    def position_coupling(self) -> str | None:
        """Why the compressed model's output at one position may move, by rounding, with inputs at other
        positions and in other sequences of the batch (a quantization scale taken over the whole tensor), or
        None when it does not. The conformance kit then bounds that movement instead of requiring none."""
        return None


# --- optional hooks, declared ------------------------------------------------------------------------
@runtime_checkable
class AuxLoss(Protocol):
    def aux_loss(self) -> torch.Tensor | None: ...


@runtime_checkable
class Stats(Protocol):
    def stats(self) -> dict[str, float]: ...


@runtime_checkable
class ResetStats(Protocol):
    def reset_stats(self) -> None: ...


@runtime_checkable
class InactiveParameters(Protocol):
    def inactive_parameters(self) -> int: ...


@runtime_checkable
class PrunableHeads(Protocol):
    def prune_heads(self, fraction: float) -> int: ...


@runtime_checkable
class PrunableNeurons(Protocol):
    def prune_neurons(self, fraction: float) -> int: ...


class OwnSearchSpace(Protocol):
    """A block class whose parameters depend on each other or on the model size samples them itself."""

    @classmethod
    def search_space(cls, trial: Any, entry: Any, dims: Dims, prefix: str) -> BlockConfig: ...


# --- the one place the hooks are read (capabilities: nas.declared.capabilities_of) ---------------------
def aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The sum of the auxiliary losses the model's blocks computed in the last forward, or None."""
    losses = [m.aux_loss() for m in model.modules() if isinstance(m, AuxLoss)]
    present = [loss for loss in losses if loss is not None]
    return torch.stack(present).sum() if present else None


def block_stats(model: nn.Module) -> dict[str, float]:
    """What blocks report through ``stats()`` (e.g. expert utilisation), as ``<module path>.<key>`` figures."""
    out: dict[str, float] = {}
    for name, m in model.named_modules():
        if isinstance(m, Stats):
            out.update({f"{name}.{k}": float(v) for k, v in m.stats().items()})
    return out


def reset_stats(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, ResetStats):
            m.reset_stats()


def inactive_parameters(model: nn.Module) -> int:
    """Parameters of the model a token does not use, summed over the blocks that say so."""
    return int(sum(m.inactive_parameters() for m in model.modules() if isinstance(m, InactiveParameters)))


def conformance_configs(cls: type) -> list[dict[str, Any]]:
    """The config overrides a block class asks the conformance kit to check besides its default config."""
    declared = getattr(cls, "conformance_configs", None) or []
    if not isinstance(declared, (list, tuple)) or not all(isinstance(c, dict) for c in declared):
        raise TypeError(f"{cls.__name__}.conformance_configs must be a list of dicts of config fields")
    return [dict(c) for c in declared]
