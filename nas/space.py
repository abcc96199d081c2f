"""Define-by-run sampling: from a validated spec and an Optuna trial to a concrete :class:`Architecture`.

Parameter names are namespaced and stable, so Optuna's samplers can learn across trials:
``model.d_model``, ``position.type``, ``position.rope.base``, ``attention.type`` (shared across layers) or
``layers.3.attention.type`` (``model.per_layer: true``), ``layers.3.attention.softmax.dropout``. A block's
parameters appear only when that block is chosen.

The same dotted names are used everywhere a parameter is shown: the YAML (``model.d_model``; a block's field
under its kind and type), the study, MLflow params and ``nas show`` (:func:`architecture_params`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from . import registry
from .architecture import Architecture, LayerArch
from .declared import BlockConfig, Dims, search_space_of
from .spec import BlockSpace, FloatRange, IntRange, Spec, usable_blocks, values

__all__ = ["sample_architecture", "suggest_value", "suggest_among", "suggest_config", "suggest_block", "Suggest",
           "architecture_params", "param_name"]


class Suggest(Protocol):
    """The part of ``optuna.Trial`` that sampling uses (``optuna.trial.FixedTrial`` works too)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...


def suggest_value(trial: Suggest, name: str, space: Any) -> Any:
    """One value from a space entry: a fixed value, a list of choices, or an int/float range."""
    if isinstance(space, list):
        return space[0] if len(space) == 1 else trial.suggest_categorical(name, space)
    if isinstance(space, IntRange):
        return trial.suggest_int(name, space.low, space.high, step=space.step, log=space.log)
    if isinstance(space, FloatRange):
        return trial.suggest_float(name, space.low, space.high, step=space.step, log=space.log)
    return space


def suggest_among(trial: Suggest, name: str, space: Any, allowed: Callable[[Any], bool], condition: str,
                  why: str = "is allowed") -> Any:
    """One value of ``space`` for which ``allowed(value)`` holds: for a parameter constrained by another one
    (``kv_heads`` must divide ``n_heads``, ``top_k`` must not exceed ``num_experts``). For a block's
    ``search_space``.

    Optuna needs a fixed set of choices per parameter name, so when the filter removes some of a list's
    choices the parameter is named ``name|condition`` (e.g. ``attention.gqa.kv_heads|n_heads=4``): one name per
    distinct choice set. A continuous range cannot be filtered: its value is suggested, then checked. Raises
    ``ValueError`` naming the choices when none is allowed.
    """
    choices = values(space)
    if choices is None:  # a log or float range
        value = suggest_value(trial, name, space)
        if not allowed(value):
            raise ValueError(f"{name}: the sampled value {value} is not valid (it must be one that {why}); "
                             f"list the choices instead of a range")
        return value
    valid = [c for c in choices if allowed(c)]
    if not valid:
        raise ValueError(f"{name}: none of the choices {choices} {why}")
    if len(valid) == 1:
        return valid[0]
    return trial.suggest_categorical(name if len(valid) == len(choices) else f"{name}|{condition}", valid)


def suggest_config(trial: Suggest, entry: BlockSpace, config: type[BlockConfig], prefix: str) -> BlockConfig:
    """The generic define-by-run space of a block: each field given in ``entry`` is suggested on its own."""
    values = {"type": entry.type}
    for field in config.model_fields:
        space = getattr(entry, field, None)
        if field != "type" and space is not None:
            values[field] = suggest_value(trial, f"{prefix}.{field}", space)
    return config.model_validate(values)


def suggest_block(trial: Suggest, kind: str, prefix: str, entries: list[BlockSpace], dims: Dims,
                  type_suffix: str = "") -> dict[str, Any]:
    """Choose one of ``entries`` (``{prefix}.type``) and sample its parameters (``{prefix}.{type}.*``).

    ``type_suffix`` renames only the choice parameter, for a choice set reduced by another choice: Optuna
    needs a fixed set of choices per name, while the block's own parameters keep their names.
    """
    types = [e.type for e in entries]
    name = types[0] if len(types) == 1 else trial.suggest_categorical(f"{prefix}.type{type_suffix}", types)
    entry = entries[types.index(name)]
    cls = registry.get(kind, name).cls
    space_fn = search_space_of(cls)
    if space_fn is not None:  # the block's own define-by-run space
        config = space_fn(trial, entry, dims, f"{prefix}.{name}")
    else:
        config = suggest_config(trial, entry, cls.Config, f"{prefix}.{name}")
    return config.model_dump()


def sample_architecture(spec: Spec, trial: Suggest, device: str | None = None) -> Architecture:
    """Sample one architecture. Blocks the task, device or position scheme rule out are never offered."""
    m = spec.model
    causal = registry.get("task", spec.task.type).capabilities.causal
    usable = usable_blocks(spec, device)[0]
    d_model = suggest_value(trial, "model.d_model", m.d_model)
    n_heads = suggest_value(trial, "model.n_heads", m.n_heads)
    n_layers = suggest_value(trial, "model.n_layers", m.n_layers)
    placement = suggest_value(trial, "model.norm_placement", m.norm_placement)
    dims = Dims(d_model, n_heads, 0, causal, n_layers)  # seq_len is the task's, not searched

    position = suggest_block(trial, "position", "position", usable["position"], dims)
    mode = registry.get("position", position["type"]).capabilities.position_mode
    attention = [a for a in usable["attention"] if mode in registry.get("attention", a.type).capabilities.positions]
    # A reduced choice set gets its own parameter name: Optuna needs a fixed set of choices per name.
    attn_suffix = "" if len(attention) == len(usable["attention"]) else f"|position={mode}"

    def layer(prefix: str) -> LayerArch:
        return LayerArch(
            attention=suggest_block(trial, "attention", prefix + "attention", attention, dims, attn_suffix),
            norm=suggest_block(trial, "norm", prefix + "norm", usable["norm"], dims),
            ffn=suggest_block(trial, "ffn", prefix + "ffn", usable["ffn"], dims),
        )

    if m.per_layer:
        layers = [layer(f"layers.{i}.") for i in range(n_layers)]
    else:
        layers = [layer("")] * n_layers
    compression = suggest_block(trial, "compression", "compression", usable["compression"], dims)
    return Architecture(d_model=d_model, n_heads=n_heads, n_layers=n_layers, norm_placement=placement,
                        position=position, layers=layers, compression=compression)


def param_name(study_name: str) -> str:
    """The dotted name of a study parameter: ``attention.gqa.kv_heads|n_heads=4`` -> ``attention.gqa.kv_heads``
    (the ``|condition`` suffix only tells Optuna's choice sets apart, see :func:`suggest_among`)."""
    return study_name.partition("|")[0]


def architecture_params(arch: Architecture, per_layer: bool = False) -> dict[str, Any]:
    """Every setting of ``arch`` under the names sampling gives them (``model.d_model``, ``position.type``,
    ``position.rope.base``, ``attention.type``, ``ffn.mlp.expansion``, ``compression.type``; ``layers.3.`` in
    front of the layer blocks with ``per_layer``, or when the layers differ), fixed settings and defaults included.
    Unset (``None``) fields are left out."""
    out: dict[str, Any] = {f"model.{k}": getattr(arch, k) for k in ("d_model", "n_heads", "n_layers", "norm_placement")}

    def block(prefix: str, config: dict[str, Any]) -> None:
        out[f"{prefix}.type"] = config["type"]
        out.update({f"{prefix}.{config['type']}.{k}": v for k, v in config.items() if k != "type" and v is not None})

    block("position", arch.position)
    per_layer = per_layer or any(layer != arch.layers[0] for layer in arch.layers)
    layers = list(enumerate(arch.layers)) if per_layer else [(0, arch.layers[0])]
    for i, layer in layers:
        for kind in ("attention", "norm", "ffn"):
            block(f"layers.{i}.{kind}" if per_layer else kind, getattr(layer, kind))
    block("compression", arch.compression)
    return out
