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

__all__ = ["POSITION_MODES", "PositionMode", "BlockConfig", "Capabilities", "Dims", "capabilities_of",
           "search_space_of"]

#: Where a position scheme acts: added to the token embeddings, rotating queries and keys, or as an
#: additive bias on attention scores. ``none`` adds no position information at all.
POSITION_MODES = ("none", "embedding", "rotary", "bias")
PositionMode = Literal["none", "embedding", "rotary", "bias"]


class BlockConfig(BaseModel):
    """Base class of every block's config. Subclasses add ``type: Literal["name"] = "name"`` and their fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str = ""  # the registered name; each subclass narrows it to its Literal (the registry checks)


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

    def supports(self, causal: bool) -> bool:
        """Whether the block can run in this direction (causal, or bidirectional)."""
        return self.causal if causal else self.bidirectional

    def directions(self) -> list[bool]:
        """The directions the block runs in: ``True`` for causal, ``False`` for bidirectional."""
        return [c for c in (True, False) if self.supports(c)]

    def describe(self, kind: str) -> dict[str, Any]:
        """The capabilities that matter for ``kind``, as plain JSON-able values."""
        out: dict[str, Any] = {"needs_gpu": self.needs_gpu}
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
