"""What a block declares without being built: its config base class, its capabilities and the sizes it is
built for. Plain data (pydantic and dataclasses, no torch), so that the registry, the spec and the
architecture (`nas validate`, `nas schema`, `nas show`) never need torch for themselves; :mod:`nas.blocks`
re-exports all of it next to the module contracts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["POSITION_MODES", "PositionMode", "SLICE_LAYOUTS", "BlockConfig", "Sharing", "Capabilities", "Dims",
           "capabilities_of",
           "search_space_of"]

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


def capabilities_of(kind: str, cls: type) -> Capabilities:
    """What a registered class declares: its ``capabilities`` (a task's are derived from ``Task.causal``)."""
    if kind == "task":
        causal = bool(getattr(cls, "causal", True))
        return Capabilities(causal=causal, bidirectional=not causal)
    declared = getattr(cls, "capabilities", None)
    return declared if isinstance(declared, Capabilities) else Capabilities()


def search_space_of(cls: type) -> Callable[..., BlockConfig] | None:
    """The block's own define-by-run space (:class:`nas.blocks.OwnSearchSpace`), or None for the generic one."""
    fn = getattr(cls, "search_space", None)
    return fn if callable(fn) else None
