"""What one sampled model is: its sizes and the full config of every block (:class:`Architecture`).

The architecture is plain data. :mod:`nas.space` produces it from a search space; :mod:`nas.model` builds
modules from it; trials, the study and saved models store it as JSON. It knows nothing of either side.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import registry
from .blocks import BlockConfig, Dims

__all__ = ["Architecture", "LayerArch", "block_config"]


def _default_compression() -> dict[str, Any]:
    return {"type": registry.default("compression")}


class LayerArch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    attention: dict[str, Any]
    norm: dict[str, Any]
    ffn: dict[str, Any]


class Architecture(BaseModel):
    """One concrete model: sizes plus the full config (``type`` and every field) of every block."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    d_model: int
    n_heads: int
    n_layers: int
    norm_placement: str
    position: dict[str, Any]
    layers: list[LayerArch]
    # applied after training, before evaluation and measurement; default: the kind's default block
    compression: dict[str, Any] = Field(default_factory=_default_compression)

    def dims(self, seq_len: int, causal: bool) -> Dims:
        return Dims(self.d_model, self.n_heads, seq_len, causal, self.n_layers)

    def flat(self) -> dict[str, Any]:
        """Flat ``{"layers.0.attention.type": <name>, ...}`` params, one entry per layer (for MLflow)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ("d_model", "n_heads", "n_layers", "norm_placement")}
        out.update({f"position.{k}": v for k, v in self.position.items()})
        out.update({f"compression.{k}": v for k, v in self.compression.items()})
        for i, layer in enumerate(self.layers):
            for kind in ("attention", "norm", "ffn"):
                out.update({f"layers.{i}.{kind}.{k}": v for k, v in getattr(layer, kind).items()})
        return out

    def summary(self) -> str:
        """A short human-readable label, e.g. ``softmax+rope d64 L2 H4`` (the compression only when there is one)."""
        attn = "/".join(dict.fromkeys(layer.attention["type"] for layer in self.layers))
        label = f"{attn}+{self.position['type']} d{self.d_model} L{self.n_layers} H{self.n_heads}"
        return f"{label} {self.compression_label()}" if self.compressed else label

    @property
    def compressed(self) -> bool:
        """Whether a compression other than the kind's default (no compression) is applied."""
        return self.compression != _default_compression()

    def compression_label(self) -> str:
        """``quantize(level=int8)``: the compression type and its settings."""
        settings = ",".join(f"{k}={v}" for k, v in self.compression.items() if k != "type")
        return f"{self.compression['type']}({settings})" if settings else self.compression["type"]


def block_config(kind: str, config: dict[str, Any]) -> BlockConfig:
    """The validated config object of a block from its dict form (as stored in an Architecture)."""
    return registry.get(kind, config["type"]).config.model_validate(config)
