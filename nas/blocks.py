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
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

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

#: Where a position scheme acts: added to the token embeddings, rotating queries and keys, or as an
#: additive bias on attention scores. ``none`` adds no position information at all.
POSITION_MODES = ("none", "embedding", "rotary", "bias")
PositionMode = Literal["none", "embedding", "rotary", "bias"]


class BlockConfig(BaseModel):
    """Base class of every block's config. Subclasses add ``type: Literal["name"] = "name"`` and their fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str = ""  # the registered name; each subclass narrows it to its Literal (the registry checks)


#: How one axis of a shared parameter is cut from the supernet's widest copy (:class:`Sharing`):
#:
#: * ``front``: the first n entries (a d_model axis, a feed-forward hidden axis, any plain width);
#: * ``heads``: ``n_heads`` query heads of ``head_dim``, laid out head-major (H * D): the first H heads, and
#:   the first D entries of each;
#: * ``qkv``: a packed ``[q (H * D) | k (G * D) | v (G * D)]`` axis; the key/value heads G are read from the
#:   block's own size. The widest copy holds as many key/value heads as query heads.
SLICE_LAYOUTS = ("front", "heads", "qkv")


@dataclass(frozen=True)
class Sharing:
    """A block whose parameters can be cut from a wider copy of themselves (weight sharing by slicing, as in
    HAT and AutoFormer), declared as ``Capabilities(sharing=Sharing(...))``; read by :mod:`nas.supernet`.

    The promise: built for any smaller ``Dims`` (and any config of its search space), the block's parameters
    have the same names, and each is the slice of the widest copy that ``layouts`` describes (every axis not
    listed is ``front``); its buffers depend only on its config, its sizes and the seed it is built under.
    The conformance kit checks it (:func:`nas.testing.check_supernet_slicing`).

    ``family``: blocks of one kind with the same family share their parameters of the same name in a
    supernet (softmax, sliding-window and linear attention all have the same ``qkv`` and ``out``); a block
    alone in its family has weights of its own that its configs share.
    """

    family: str
    layouts: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """``(("qkv.weight", ("qkv", "front")), ("out.weight", ("front", "heads")))``: the parameters with an axis
    that is not plain ``front``, each with one layout (``SLICE_LAYOUTS``) per axis."""

    def __post_init__(self) -> None:
        if not self.family:
            raise ValueError("Sharing.family must name the family whose parameters the block shares")
        for name, axes in self.layouts:
            bad = [a for a in axes if a not in SLICE_LAYOUTS]
            if bad:
                raise ValueError(f"Sharing layout of '{name}': unknown {bad}; valid: {', '.join(SLICE_LAYOUTS)}")

    def layout(self, name: str, ndim: int) -> tuple[str, ...]:
        """The layout of each axis of parameter ``name`` (``front`` unless declared)."""
        axes = dict(self.layouts).get(name, ())
        if len(axes) > ndim:
            raise ValueError(f"Sharing layout of '{name}' names {len(axes)} axes; the parameter has {ndim}")
        return tuple(axes) + ("front",) * (ndim - len(axes))


@dataclass(frozen=True)
class Capabilities:
    """Class-level facts about a block that the controller checks before sampling or building anything.

    Only the fields relevant to a block's kind matter; the rest keep their defaults.
    """

    causal: bool = True
    """Can run causally (output at t depends only on inputs <= t). Needed by decoder tasks."""
    bidirectional: bool = True
    """Can run without a causal mask (encoder / classification tasks)."""
    needs_gpu: bool = False
    """Only runs on CUDA; filtered out on CPU-only machines."""
    positions: frozenset[str] = field(default_factory=lambda: frozenset({"none", "embedding"}))
    """attention only: the position modes (see ``POSITION_MODES``) this attention can take."""
    position_mode: str = "none"
    """position only: where this scheme acts (one of ``POSITION_MODES``)."""
    time_exponent: tuple[int, str] | None = None
    """attention only: the asymptotic time exponent in the sequence length and why, e.g. ``(2, "every query
    scores every key")``; ``nas profile`` compares its fitted exponent with it."""
    sharing: Sharing | None = None
    """attention, position, norm, ffn: how the block's weights are cut from a wider copy in a one-shot
    supernet (:class:`Sharing`); None: not sliceable, so a supernet keeps separate full-width weights for each
    of its configs and sizes."""

    def supports(self, causal: bool) -> bool:
        """Whether the block can run in this direction (causal, or bidirectional)."""
        return self.causal if causal else self.bidirectional

    def directions(self) -> list[bool]:
        """The directions the block runs in: ``True`` for causal, ``False`` for bidirectional."""
        return [c for c in (True, False) if self.supports(c)]

    def describe(self, kind: str) -> dict[str, Any]:
        """The capabilities that matter for ``kind``, as plain JSON-able values."""
        out: dict[str, Any] = {"needs_gpu": self.needs_gpu}
        if kind in ("attention", "position", "norm", "ffn"):
            out["sharing"] = self.sharing.family if self.sharing is not None else None
        if kind == "attention":
            out.update(causal=self.causal, bidirectional=self.bidirectional,
                       positions=sorted(self.positions))
        elif kind == "position":
            out["position_mode"] = self.position_mode
        elif kind == "task":
            out["causal"] = self.causal
        return out


@dataclass(frozen=True)
class Dims:
    """The model-level sizes every block is built for (sampled before the blocks)."""

    d_model: int  # residual stream width C
    n_heads: int  # attention heads H
    seq_len: int  # longest sequence the model sees T
    causal: bool  # decoder (causal) or encoder (bidirectional)
    n_layers: int = 1

    @property
    def head_dim(self) -> int:  # D = C / H
        return self.d_model // self.n_heads


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

    A task is built once per trial from its config. Data is generated or read locally; nothing is
    downloaded. ``causal`` tasks predict a target per position (decoder); the others predict one class per
    sequence (encoder with mean pooling).
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


# --- the one place the hooks and capabilities are read -------------------------------------------------
def capabilities_of(kind: str, cls: type) -> Capabilities:
    """What a registered class declares: its ``capabilities`` (a task's are derived from ``Task.causal``)."""
    if kind == "task":
        causal = bool(getattr(cls, "causal", True))
        return Capabilities(causal=causal, bidirectional=not causal)
    declared = getattr(cls, "capabilities", None)
    return declared if isinstance(declared, Capabilities) else Capabilities()


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


def search_space_of(cls: type) -> Callable[..., BlockConfig] | None:
    """The block's own define-by-run space (:class:`OwnSearchSpace`), or None for the generic one."""
    fn = getattr(cls, "search_space", None)
    return fn if callable(fn) else None


def conformance_configs(cls: type) -> list[dict[str, Any]]:
    """The config overrides a block class asks the conformance kit to check besides its default config."""
    declared = getattr(cls, "conformance_configs", None) or []
    if not isinstance(declared, (list, tuple)) or not all(isinstance(c, dict) for c in declared):
        raise TypeError(f"{cls.__name__}.conformance_configs must be a list of dicts of config fields")
    return [dict(c) for c in declared]
