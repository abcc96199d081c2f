"""What one sampled model is: its sizes and the full config of every block (:class:`Architecture`).

The architecture is plain data. :mod:`nas.space` produces it from a search space; :mod:`nas.model` builds
modules from it; trials, the study and saved models store it as JSON. It knows nothing of either side.
"""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import registry
from .declared import BlockConfig, Dims

__all__ = ["Architecture", "LayerArch", "block_config", "block_label"]


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
        """The one label of this architecture, used wherever one is shown (``nas trial`` and ``nas show``, the
        live view, the front's CSV, JSON, PNG and HTML, MLflow run names). Every chosen block is named::

            rope d64 L2 H4: softmax pre-layernorm mlp(expansion=2)
            rope d64 L4 H4: 3x[gqa(kv_heads=2) pre-rmsnorm swiglu] [softmax pre-layernorm moe(top_k=2)]
            rope d64 L2 H4: softmax pre-layernorm mlp | quantize(qat_steps=2)

        The position scheme and the sizes, then each layer as attention, norm placement and norm, and
        feed-forward block; consecutive layers that are the same are written once with their count; the
        compression after ``|`` when there is one. A block's settings that differ from its defaults are in
        parentheses (:func:`block_label`).
        """
        layers = [" ".join((block_label("attention", layer.attention),
                            f"{self.norm_placement}-{block_label('norm', layer.norm)}",
                            block_label("ffn", layer.ffn))) for layer in self.layers]
        runs = [(text, len(list(group))) for text, group in itertools.groupby(layers)]
        if len(runs) == 1:
            body = runs[0][0]
        else:
            body = " ".join(f"{n}x[{text}]" if n > 1 else f"[{text}]" for text, n in runs)
        label = f"{block_label('position', self.position)} d{self.d_model} L{self.n_layers} H{self.n_heads}: {body}"
        return f"{label} | {self.compression_label()}" if self.compressed else label

    @property
    def compressed(self) -> bool:
        """Whether a compression other than the kind's default (no compression) is applied."""
        return self.compression != _default_compression()

    def compression_label(self) -> str:
        """``quantize(qat_steps=2)``: the compression and its settings that differ from its defaults."""
        return block_label("compression", self.compression)


def block_label(kind: str, config: dict[str, Any]) -> str:
    """``name`` or ``name(k=v,...)``: a block and the settings that differ from its config's defaults (every
    setting when the block is not registered here, so nothing is hidden)."""
    settings = {k: v for k, v in config.items() if k != "type"}
    if config.get("type") in registry.names(kind):
        fields = registry.get(kind, config["type"]).config.model_fields
        settings = {k: v for k, v in settings.items() if k not in fields or fields[k].default != v}
    shown = ",".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())
    return f"{config.get('type')}({shown})" if shown else str(config.get("type"))


def block_config(kind: str, config: dict[str, Any]) -> BlockConfig:
    """The validated config object of a block from its dict form (as stored in an Architecture)."""
    return registry.get(kind, config["type"]).config.model_validate(config)
