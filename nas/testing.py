"""The conformance kit: the checks every registered block must pass, as reusable pytest classes.

Each class is parametrized over the registry when pytest collects it, so every block registered at that time
(built-ins, installed plugins, modules imported by the test file) is covered without listing it::

    # test_my_plugin.py, in a plugin package
    import my_plugin  # noqa: F401  (registers its blocks; or rely on its entry point)
    from nas.testing import AttentionConformance

    class TestMyAttention(AttentionConformance):
        names = ["my_attention"]                          # default: every registered attention block
        example_spaces = {"my_attention": {"window": [4, 8, 1000]}}   # choices the space check samples

The checks (each one a test method, also usable on its own as a ``check_*`` function):

* shapes: ``(B, T, C) -> (B, T, C)`` (and the kind's own hooks for positions);
* causal leakage: for every t, changing inputs at positions >= t changes no output before t (blocks that
  claim causality; feed-forward blocks and norms must be causal too, routers included);
* batch independence: each sequence's output is the same computed alone as inside a batch (no batch
  statistics; a capacity-limited router must count capacity per sequence, see :mod:`nas.blocks`);
* determinism: built twice with one seed, a block has the same state and computes the same outputs, in
  eval mode and, under one torch seed, in train mode (dropout); a repeated forward gives the same output;
* gradients reach every parameter (finite, not all zero) through the output and the block's ``aux_loss()``;
* a state-dict round trip into a differently seeded instance reproduces the outputs exactly;
* the parameter count of the block built on the meta device (how trials size models) equals the real one,
  and ``inactive_parameters()``, if defined, is between 0 and the total;
* dtype and device round trips: in float64 the block computes in float64 and agrees with float32; back in
  float32 it computes exactly what it did; integer buffers keep their dtype; moved to the meta device every
  tensor it uses moves with it (none is held outside parameters and buffers); with CUDA, CPU -> CUDA -> CPU;
* finite outputs under bf16 autocast, and with bf16 weights (the ``quantize: bf16`` compression);
* the block's search space (generic or its own ``search_space``) samples only configs that validate and
  build, for several model sizes, with a fixed choice set per Optuna parameter name;
* blocks that declare :class:`~nas.blocks.Sharing`: in a one-shot supernet over a space of two widths and two
  depths, every extracted subnet computes what the supernet computed on its path (to 1e-6 in fp32), and a
  path's gradient reaches only the slices it used (:func:`check_supernet_slicing`).

Every check runs on three kinds of config, so that the kit tests what a search will sample:

* the block's default config and each config its class lists in ``conformance_configs`` (a class attribute:
  a list of field overrides, e.g. the ``top_k`` and capacities of a mixture of experts), in every direction
  it claims and, for attention, with a position scheme of every mode it takes;
* a handful of configs drawn from the block's own search space (:func:`sampled_configs`: the space the kit's
  ``example_spaces`` give plus every value of each Literal/bool field, sampled as a search samples it, with
  fixed seeds; every listed value appears at least once when that takes at most
  :data:`MAX_SAMPLED_CONFIGS` configs), in every direction, with the attention's most demanding position mode.

A case's id (and so every failure message) names its config: ``talking_heads-causal-rope-post_mix=False``,
``sampled`` for a drawn one.

Compression plugins get their own class: applied to a tiny trained Transformer, outputs stay finite,
the compressed model is still causal and batch-independent (within a bound for compressions that declare a
``position_coupling()``), and applying twice gives the same model. Tasks get shapes and seeded, repeatable
data. Sizes are tiny: the whole kit over the built-ins takes well under a minute.
"""

from __future__ import annotations

import itertools
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from . import registry
from .blocks import (
    POSITION_MODES,
    BlockConfig,
    Compression,
    Dims,
    InactiveParameters,
    PositionScheme,
    aux_loss,
    conformance_configs,
)
from .registry import Entry

__all__ = [
    "AttentionConformance",
    "PositionConformance",
    "NormConformance",
    "FFNConformance",
    "CompressionConformance",
    "TaskConformance",
    "Case",
    "check_shapes",
    "check_causal",
    "check_batch_independence",
    "check_determinism",
    "check_dtype_device",
    "check_gradients",
    "check_state_dict",
    "check_param_count",
    "check_bf16",
    "check_supernet_slicing",
    "supernet_spec",
    "check_search_space",
    "check_compressed_causal",
    "check_compressed_batch_independence",
    "case_configs",
    "sampled_configs",
    "representative_position",
    "SAMPLED_CONFIGS",
    "MAX_SAMPLED_CONFIGS",
]

#: Small sizes every check runs at: batch 2, 16 positions, width 32, 4 heads of 8.
B, T, C, H = 2, 16, 32, 4


def position_of_mode(mode: str) -> str:
    """The registered position scheme the checks build attention with for ``mode``: of the schemes acting that
    way, the one with the fewest parameters (then by name), so that the attention's own parameters are what
    the gradient check sees."""
    from .model import position_of_mode as pick

    return pick(mode, Dims(C, H, T, True, n_layers=2))


def universal_attention() -> Entry:
    """An attention that takes every position mode (the default attention when it does): position schemes
    are checked through it."""
    takes_all = [e for e in registry.entries("attention") if set(POSITION_MODES) <= e.capabilities.positions]
    if not takes_all:
        raise registry.RegistryError("no registered attention takes every position mode")
    default = registry.default("attention")
    return next((e for e in takes_all if e.name == default), takes_all[0])


def _pytest() -> Any:
    try:
        import pytest
    except ImportError as exc:  # pragma: no cover
        raise ImportError("nas.testing needs pytest: pip install pytest") from exc
    return pytest


# --- building blocks for the checks ---------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One block to check: its registry entry, whether it runs causally, and (attention) its position scheme."""

    entry: Entry
    causal: bool
    position: str | None = None
    config: BlockConfig | None = None  # default: the block's default config
    sampled: bool = False  # the config was drawn from the block's search space (see sampled_configs)

    @classmethod
    def of(cls, kind: str, name: str, causal: bool = True, position: str | None = None,
           config: dict[str, Any] | None = None) -> "Case":
        """A case by name (plugins are loaded first): ``Case.of("attention", "cosine", config={"init_scale": 2})``."""
        registry.load_plugins()
        entry = registry.get(kind, name)
        return cls(entry, causal, position, entry.config.model_validate({"type": name, **config}) if config else None)

    @property
    def id(self) -> str:
        parts = [self.entry.name, "causal" if self.causal else "bidirectional"]
        if self.position:
            parts.append(self.position)
        if self.config is not None:
            fields = self.config.model_dump(exclude_defaults=True)
            shown = ",".join(f"{k}={_short(v)}" for k, v in sorted(fields.items()) if k != "type") or "default"
            parts.append(f"sampled({shown})" if self.sampled else shown)
        return "-".join(parts)

    def dims(self, d_model: int = C, n_heads: int = H, seq_len: int = T) -> Dims:
        return Dims(d_model, n_heads, seq_len, self.causal, n_layers=2)

    def build(self, seed: int = 0, dims: Dims | None = None, config: BlockConfig | None = None) -> nn.Module:
        """The block, built on the current default device with ``torch.manual_seed(seed)`` (the plugins are
        loaded first, so a check works in a process that has not called :func:`nas.load_plugins`)."""
        registry.load_plugins()
        torch.manual_seed(seed)
        dims = dims or self.dims()
        config = config or self.config or self.entry.config()
        if self.entry.kind == "attention":
            name = self.position or position_of_mode("none")
            position = registry.build("position", registry.get("position", name).config(), dims)
            return self.entry.cls(config, dims, position)
        if self.entry.kind == "position":  # checked inside the attention that takes every mode
            position = self.entry.cls(config, dims)
            return _PositionProbe(position, dims)
        return self.entry.cls(config, dims)


class _PositionProbe(nn.Module):
    """A position scheme exercised end to end: embed, then an attention that takes every position mode (the
    default attention when it does), with its rotary/bias hooks."""

    def __init__(self, position: PositionScheme, dims: Dims):
        super().__init__()
        self.position = position
        attention = universal_attention()
        self.attention = attention.cls(attention.config(), dims, position)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.position.embed(x))


def representative_position(entry: Entry) -> str:
    """The position scheme attention checks use by default: the most demanding mode the block takes."""
    modes = entry.capabilities.positions
    for mode in ("bias", "rotary", "embedding", "none"):
        if mode in modes:
            return position_of_mode(mode)
    raise AssertionError(f"attention '{entry.name}' declares no position mode")


def _inputs(seed: int = 0, dtype: torch.dtype = torch.float32, batch: int = B) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, T, C, generator=g).to(dtype)  # (B, T, C)


def case_configs(entry: Entry) -> list[BlockConfig | None]:
    """The configs the kit checks a block with: its default (None) and each of its ``conformance_configs``."""
    configs: list[BlockConfig | None] = [None]
    for overrides in conformance_configs(entry.cls):
        try:
            configs.append(entry.config.model_validate({"type": entry.name, **overrides}))
        except Exception as exc:
            raise registry.RegistryError(f"{entry.kind} '{entry.name}': conformance config {overrides} is "
                                         f"invalid: {str(exc).splitlines()[0]}") from exc
    return configs


#: How many configs the kit draws from each block's search space besides its default and explicit ones.
SAMPLED_CONFIGS = 3
#: At most this many drawn configs per block, even when covering every listed value would take more.
MAX_SAMPLED_CONFIGS = 6


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def sampled_configs(entry: Entry, extra: dict[str, Any] | None = None, n: int = SAMPLED_CONFIGS,
                    seed: int = 0) -> list[BlockConfig]:
    """Configs drawn from the block's search space as a search draws them (its own ``search_space`` if it has
    one, for the kit's model of :data:`H` heads), with fixed seeds.

    The space is every value of each Literal/bool field, the defaults, and ``extra`` (the test class's
    ``example_spaces`` entry). Each of the first configs pins every listed field to one of its values, in a
    seeded order, so that every value appears at least once when that takes at most
    :data:`MAX_SAMPLED_CONFIGS` configs; ranges, and the values a block's own space rules out, are sampled.
    The default config, the block's ``conformance_configs`` and repeats are left out.
    """
    import random

    import optuna

    from .space import suggest_block

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = {k: v for k, v in entry_space(entry, extra).model_dump(exclude_none=True).items() if k != "type"}
    listed = {k: v for k, v in base.items() if isinstance(v, list) and len(v) > 1}
    rng = random.Random(f"{entry.kind}.{entry.name}.{seed}")
    orders = {k: rng.sample(range(len(v)), len(v)) for k, v in listed.items()}
    count = min(MAX_SAMPLED_CONFIGS, max([n, *(len(v) for v in listed.values())]))
    seen = [c.model_dump() for c in case_configs(entry) if c is not None] + [entry.config().model_dump()]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    dims = Dims(C, H, 0, True, 2)  # as sample_architecture: seq_len is the task's
    out: list[BlockConfig] = []
    for i in range(count):
        pinned = {k: [v[orders[k][i % len(v)]]] for k, v in listed.items()}
        config = None
        for overrides in (pinned, {}):  # a block's own space may refuse a pinned value (kv_heads 3 of 4 heads)
            try:
                space = entry_space(entry, {**(extra or {}), **overrides})
                config = entry.config.model_validate(
                    suggest_block(study.ask(), entry.kind, entry.kind, [space], dims))
                break
            except ValueError:
                continue
        if config is not None and config.model_dump() not in seen:
            seen.append(config.model_dump())
            out.append(config)
    return out


def _moved(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference between two outputs, relative to the larger of 1 and the outputs' scale."""
    scale = max(1.0, a.detach().abs().max().item() if a.numel() else 1.0)
    return (a.detach().float() - b.detach().float()).abs().max().item() / scale


# --- the checks, usable on their own ---------------------------------------------------------------
def check_shapes(case: Case) -> None:
    """The block maps (B, T, C) to (B, T, C); position hooks return what :class:`~nas.PositionScheme` promises."""
    block = case.build().eval()
    x = _inputs()
    with torch.no_grad():
        y = block(x)
    assert y.shape == x.shape, f"{case.id}: output shape {tuple(y.shape)}, expected {tuple(x.shape)}"
    assert torch.isfinite(y).all(), f"{case.id}: non-finite outputs"
    if case.entry.kind == "position":
        assert isinstance(block, _PositionProbe)
        pos = block.position
        assert pos.embed(x).shape == x.shape
        q = torch.randn(B, H, T, C // H)
        rq, rk = pos.rotate(q, q)
        assert rq.shape == q.shape and rk.shape == q.shape
        bias = pos.score_bias(T, T)
        mode = case.entry.capabilities.position_mode
        if mode == "bias":
            assert bias is not None and bias.shape == (H, T, T), f"{case.id}: score_bias must be (H, T, T)"
        else:
            assert bias is None, f"{case.id}: only 'bias' schemes may return a score bias (mode is '{mode}')"


def check_causal(case: Case, atol: float = 1e-5) -> None:
    """For every t: outputs before position t do not change when the inputs at t and later do."""
    block = case.build().eval()
    x = _inputs()
    with torch.no_grad():
        y = block(x)
        for t in range(1, T):
            x2 = x.clone()
            x2[:, t:] = torch.randn(B, T - t, C, generator=torch.Generator().manual_seed(t))
            leak = (block(x2)[:, :t] - y[:, :t]).abs().max().item()
            assert leak <= atol, f"{case.id}: changing positions >= {t} changed earlier outputs by {leak:.3g}"


def check_batch_independence(case: Case, rtol: float = 1e-5) -> None:
    """Each sequence's output is the same computed alone as in a batch of three (within float rounding of
    batched kernels: ``rtol`` of the outputs' scale). Batch statistics, or a router capacity shared by the
    batch, fail here."""
    block = case.build().eval()
    x = _inputs(seed=2, batch=3)
    with torch.no_grad():
        together = block(x)
        for b in range(3):
            moved = _moved(together[b], block(x[b: b + 1])[0])
            assert moved <= rtol, (f"{case.id}: sequence {b}'s output differs alone and in a batch by {moved:.3g} "
                                   f"(relative); it must not depend on the other sequences")


def check_determinism(case: Case) -> None:
    """Built twice with the same seed: the same parameters and buffers, the same outputs in eval mode and, under
    the same torch seed, in train mode (dropout); a second eval forward repeats the first exactly."""
    a, b = case.build(seed=3), case.build(seed=3)
    state_a = {**a.state_dict(), **dict(a.named_buffers())}
    state_b = {**b.state_dict(), **dict(b.named_buffers())}
    assert state_a.keys() == state_b.keys()
    for name, value in state_a.items():
        assert torch.equal(value, state_b[name]), f"{case.id}: '{name}' differs between two builds with one seed"
    x = _inputs()
    with torch.no_grad():
        a.eval()
        b.eval()
        first, again, other = a(x), a(x), b(x)
        assert torch.equal(first, again), f"{case.id}: a second forward of the same input gives another output"
        assert torch.equal(first, other), f"{case.id}: two builds with one seed compute different outputs"
        a.train()
        b.train()
        torch.manual_seed(7)
        train_a = a(x)
        torch.manual_seed(7)
        train_b = b(x)
    assert torch.equal(train_a, train_b), f"{case.id}: train-mode outputs differ under the same torch seed"


def check_dtype_device(case: Case, rtol: float = 1e-4) -> None:
    """dtype and device round trips.

    float64: parameters and floating buffers follow ``.to(torch.float64)``, integer buffers keep their dtype,
    the output is float64 and agrees with float32 within ``rtol``; back in float32 the block computes exactly
    its first output. meta: a copy moved with ``.to("meta")`` runs on meta inputs, so every tensor the forward
    uses moved with the module (none is held outside parameters and buffers). CUDA (when present, TF32 off):
    outputs agree with the CPU within ``rtol``, and back on the CPU the block computes its first output.
    """
    block = case.build().eval()
    x = _inputs()
    integer = {n: t.dtype for n, t in block.named_buffers() if not t.is_floating_point()}
    with torch.no_grad():
        y = block(x)
        block.to(torch.float64)
        for name, t in [*block.named_parameters(), *block.named_buffers()]:
            expected = integer.get(name, torch.float64)
            assert t.dtype == expected, f"{case.id}: '{name}' is {t.dtype} after .to(float64), expected {expected}"
        y64 = block(x.double())
        assert y64.dtype == torch.float64, f"{case.id}: float64 inputs and weights gave a {y64.dtype} output"
        moved = _moved(y, y64)
        assert moved <= rtol, f"{case.id}: float64 and float32 outputs differ by {moved:.3g} (relative)"
        block.to(torch.float32)
        assert torch.equal(block(x), y), f"{case.id}: float32 -> float64 -> float32 changed the outputs"

        meta = case.build().eval().to("meta")
        for name, t in [*meta.named_parameters(), *meta.named_buffers()]:
            assert t.device.type == "meta", f"{case.id}: '{name}' stayed on {t.device} after .to('meta')"
        try:
            out = meta(x.to("meta"))
        except RuntimeError as exc:
            raise AssertionError(f"{case.id}: the forward fails after .to('meta'), so it uses a tensor that "
                                 f"did not move with the module (keep tensors as parameters or buffers): "
                                 f"{str(exc).splitlines()[0]}") from exc
        assert out.shape == y.shape

        if torch.cuda.is_available():
            tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            try:
                block.to("cuda")
                moved = _moved(y, block(x.to("cuda")).cpu())
                assert moved <= rtol, f"{case.id}: CUDA and CPU outputs differ by {moved:.3g} (relative)"
                block.to("cpu")
                assert torch.equal(block(x), y), f"{case.id}: CPU -> CUDA -> CPU changed the outputs"
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def check_gradients(case: Case) -> None:
    """Every parameter gets a finite gradient that is not all zero, from the output and ``aux_loss()``."""
    block = case.build().train()
    x = _inputs().requires_grad_()
    y = block(x)
    loss = (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))).sum()
    aux = aux_loss(block)
    if aux is not None:
        loss = loss + aux
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all(), f"{case.id}: no finite gradient reaches the input"
    for name, p in block.named_parameters():
        assert p.grad is not None, f"{case.id}: parameter '{name}' gets no gradient (unused?)"
        assert torch.isfinite(p.grad).all(), f"{case.id}: parameter '{name}' has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{case.id}: parameter '{name}' has an all-zero gradient"


def check_state_dict(case: Case) -> None:
    """A differently seeded instance that loads the state dict computes exactly the same outputs."""
    a, b = case.build(seed=0).eval(), case.build(seed=1).eval()
    b.load_state_dict(a.state_dict())
    x = _inputs()
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert torch.equal(ya, yb), (f"{case.id}: outputs differ after load_state_dict by "
                                 f"{(ya - yb).abs().max().item():.3g}; is some state not in the state dict "
                                 f"(a non-persistent random buffer)?")


def check_param_count(case: Case) -> None:
    """Built on the meta device (how a trial sizes a model) the block has as many parameters as for real."""
    with torch.device("meta"):
        meta = case.build()
    real = case.build()
    n_meta, n_real = sum(p.numel() for p in meta.parameters()), sum(p.numel() for p in real.parameters())
    assert n_meta == n_real, f"{case.id}: {n_meta} parameters on the meta device, {n_real} for real"
    with torch.no_grad():  # the forward must run on meta too: FLOPs are counted there
        meta(_inputs().to("meta"))
    for m in real.modules():
        if isinstance(m, InactiveParameters):
            inactive = m.inactive_parameters()
            total = sum(p.numel() for p in m.parameters())
            assert 0 <= inactive < total, f"{case.id}: inactive_parameters() = {inactive} of {total}"


def check_bf16(case: Case) -> None:
    """Finite outputs of the right shape under bf16 autocast, and with bf16 weights and inputs."""
    block = case.build().eval()
    x = _inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert y.shape == x.shape and torch.isfinite(y.float()).all(), f"{case.id}: bad output under bf16 autocast"
    block = block.to(torch.bfloat16)
    with torch.no_grad():
        y = block(x.to(torch.bfloat16))
    assert y.shape == x.shape and torch.isfinite(y.float()).all(), f"{case.id}: bad output with bf16 weights"


def supernet_spec(case: Case) -> Any:
    """A tiny spec whose space holds the case's block, with d_model {C/2, C}, n_heads {H/2, H} and 1 or 2
    layers, on the default task (or one of the case's direction) at the kit's sizes; None when no registered
    task runs in the case's direction."""
    from .spec import spec_from_data

    tasks = [e for e in registry.entries("task") if e.capabilities.causal == case.causal]
    if not tasks:
        return None
    task = next((e for e in tasks if e.name == registry.default("task")), tasks[0])
    config = case.config or case.entry.config()
    block = {**config.model_dump(mode="json", exclude_defaults=True), "type": case.entry.name}
    space: dict[str, Any] = {case.entry.kind: [block]}
    if case.entry.kind == "attention" and case.position:
        space["position"] = [{"type": case.position}]
    if case.entry.kind == "position":
        space["attention"] = [{"type": universal_attention().name}]
    data = {"name": "kit", "task": task.cls.tiny_config(T).model_dump(mode="json"),
            "model": {"d_model": [C // 2, C], "n_heads": [H // 2, H], "n_layers": [1, 2],
                      "norm_placement": ["pre", "post"]},
            "space": space, "training": {"steps": 1, "batch_size": B}}
    return spec_from_data(data)


def check_supernet_slicing(case: Case, atol: float = 1e-6) -> None:
    """For a block that declares ``Sharing``: the names its layouts give are parameters it has; on the
    largest, the smallest and random paths of a supernet over :func:`supernet_spec`, the extracted subnet's
    output equals the supernet's output on that path (within ``atol``, fp32), and the path's gradient is zero
    everywhere outside the slices the path used."""
    from .supernet import Supernet, sample_path

    sharing = case.entry.capabilities.sharing
    if sharing is None:
        _pytest().skip(f"{case.entry.name} declares no Sharing: a supernet keeps separate weights for it")
    assert sharing is not None
    own = {name for name, _ in case.build().named_parameters()}
    unknown = [name for name, _ in sharing.layouts if name not in own]
    assert not unknown, f"{case.id}: Sharing layouts name parameters the block does not have: {unknown}"
    spec = supernet_spec(case)
    if spec is None:
        _pytest().skip(f"no registered task runs {'causally' if case.causal else 'bidirectionally'}")
    registry.load_plugins()
    net = Supernet(spec, seed=0).eval()
    x = next(net.task.train_batches(B, seed=0))[0]
    paths = [sample_path(spec, seed, widths) for widths in ("largest", "smallest", "random") for seed in (0, 1)]
    for arch in paths:
        with torch.no_grad():
            got = net(x, arch)
            want = net.extract(arch)(x)
        moved = (got - want).abs().max().item()
        assert moved <= atol, (f"{case.id}: the subnet extracted for {arch.summary()} differs from the supernet's "
                               f"path by {moved:.3g} (allowed {atol:g})")
        net.zero_grad(set_to_none=True)
        net(x, arch).float().square().mean().backward()
        for piece in net.plan(arch, net.build(arch)):
            grad = net.store[piece.slot].grad
            if grad is None:
                continue
            assert torch.isfinite(grad).all(), f"{case.id}: non-finite gradient on {piece.slot}"
            index = torch.arange(grad.numel(), dtype=torch.float64).view(grad.shape)
            used = torch.zeros(grad.numel(), dtype=torch.bool)
            used[net.cut(piece, index).flatten().long()] = True
            stray = grad.flatten()[~used].abs().max().item() if (~used).any() else 0.0
            assert stray == 0.0, (f"{case.id}: {arch.summary()}: the gradient of {piece.name} reaches supernet "
                                  f"weights outside its slice ({stray:.3g})")
        net.zero_grad(set_to_none=True)


def _choices(annotation: Any, default: Any) -> list[Any]:
    """Every value of a Literal or bool field; the default of anything else."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return list(typing.get_args(annotation))
    if annotation is bool:
        return [False, True]
    return [default]


def entry_space(entry: Entry, extra: dict[str, Any] | None = None) -> Any:
    """A space entry (as a YAML ``space:`` list item) for ``entry``: every Literal/bool choice, the defaults,
    and ``extra`` (field -> list of choices, or a range) on top."""
    from .spec import block_space_model

    data: dict[str, Any] = {"type": entry.name}
    for name, field in entry.config.model_fields.items():
        if name != "type" and not field.is_required():
            data[name] = _choices(field.annotation, field.default)
    data.update(extra or {})
    return block_space_model(entry.config, f"{entry.kind}_{entry.name}").model_validate(data)


def check_search_space(case: Case, extra: dict[str, Any] | None = None, trials: int = 12) -> None:
    """Sampling the block's space (its own ``search_space`` if it has one) for models with 1, 2 and 4 heads
    yields configs that validate and build; one Optuna study throughout, so a parameter name whose choice set
    changes from trial to trial fails here as it would in a search."""
    import optuna

    from .space import suggest_block

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = entry_space(case.entry, extra)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for i, n_heads in zip(range(trials), itertools.cycle((1, 2, 4))):
        trial = study.ask()
        sampling_dims = Dims(C, n_heads, 0, case.causal, 2)  # as sample_architecture: seq_len is the task's
        config = suggest_block(trial, case.entry.kind, case.entry.kind, [space], sampling_dims)
        validated = case.entry.config.model_validate(config)
        if case.entry.kind in ("attention", "position", "norm", "ffn"):
            block = case.build(seed=i, dims=case.dims(n_heads=n_heads), config=validated).eval()
            with torch.no_grad():
                y = block(_inputs())
            assert torch.isfinite(y).all(), f"{case.id}: non-finite output for sampled config {config}"
        study.tell(trial, 0.0)


#: How far (relative to the largest logit) a compressed model's output may move with inputs elsewhere in the
#: batch when its compression declares a ``position_coupling()``: int8 activations have 128 steps over each
#: tensor's range, and a change elsewhere moves the grid by about a step per layer (measured on the kit's
#: model: 2%). A real leak (a mask or a router reading the future) moves outputs by their own size.
COUPLED_RTOL = 0.05


def _compressed(case: Case) -> tuple[nn.Module, Any, Compression]:
    model, task = CompressionConformance.tiny_model()
    compressor = case.entry.cls(case.config or case.entry.config())
    out = compressor.apply(model, CompressionConformance.finetune_for(task))
    return out.eval(), task, compressor


def _tolerance(compressor: Compression) -> float:
    return COUPLED_RTOL if compressor.position_coupling() else 1e-5


def check_compressed_causal(case: Case) -> None:
    """The compressed tiny decoder is still causal: for every t, changing the tokens at t and later leaves the
    logits before t where they were (within :data:`COUPLED_RTOL` when the compression declares a coupling)."""
    model, task, compressor = _compressed(case)
    x, _ = task.example_batch(B)
    tol = _tolerance(compressor)
    with torch.inference_mode():
        y = model(x)
        for t in range(1, x.shape[1]):
            x2 = x.clone()
            g = torch.Generator().manual_seed(t)
            x2[:, t:] = torch.randint(0, task.num_outputs, x2[:, t:].shape, generator=g)
            leak = _moved(y[:, :t], model(x2)[:, :t])
            assert leak <= tol, (f"{case.id}: after compression, changing tokens >= {t} moved earlier logits by "
                                 f"{leak:.3g} (relative; allowed {tol:g})")


def check_compressed_batch_independence(case: Case) -> None:
    """Each sequence's logits from the compressed tiny model are the same alone as in a batch of three (within
    :data:`COUPLED_RTOL` when the compression declares a coupling)."""
    model, task, compressor = _compressed(case)
    x, _ = task.example_batch(3)
    tol = max(_tolerance(compressor), 1e-5)
    with torch.inference_mode():
        together = model(x)
        for b in range(3):
            moved = _moved(together[b], model(x[b: b + 1])[0])
            assert moved <= tol, (f"{case.id}: after compression, sequence {b}'s logits differ alone and in a "
                                  f"batch by {moved:.3g} (relative; allowed {tol:g})")


# --- pytest classes ---------------------------------------------------------------------------------
_COLLECTED: dict[type, list[Case]] = {}


class _Conformance:
    """Parametrizes the ``case`` argument of every test method over the registered blocks of ``kind``."""

    kind: ClassVar[str]
    #: Only these block names (default: every registered block of the kind).
    names: ClassVar[Sequence[str] | None] = None
    #: Block name -> {field: choices or range} sampled by ``test_search_space`` on top of Literal/bool choices.
    example_spaces: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Extra plugin modules to import before collecting.
    plugins: ClassVar[Sequence[str]] = ()
    #: How many configs to draw from each block's search space (at least; more to cover every listed value).
    n_sampled: ClassVar[int] = SAMPLED_CONFIGS

    def pytest_generate_tests(self, metafunc: Any) -> None:
        if "case" in metafunc.fixturenames:
            cases = _COLLECTED.get(type(self))
            if cases is None:  # once per class: drawing configs and choosing position schemes is not free
                cases = _COLLECTED[type(self)] = list(self.cases())
            if getattr(metafunc.function, "causal_only", False):
                cases = [c for c in cases if c.causal]
            if getattr(metafunc.function, "default_config_only", False):
                cases = [c for c in cases if c.config is None]
            metafunc.parametrize("case", cases, ids=[c.id for c in cases])

    @classmethod
    def entries(cls) -> list[Entry]:
        registry.load_plugins(cls.plugins)
        entries = registry.entries(cls.kind)
        if cls.names is not None:
            missing = set(cls.names) - {e.name for e in entries}
            if missing:
                raise registry.RegistryError(f"{cls.kind} block(s) not registered: {', '.join(sorted(missing))}")
            entries = [e for e in entries if e.name in cls.names]
        return entries

    @classmethod
    def cases(cls) -> Iterator[Case]:
        for entry in cls.entries():
            for config in case_configs(entry):
                for causal in _modes(entry):
                    yield Case(entry, causal, config=config)
            yield from cls.sampled_cases(entry)

    @classmethod
    def sampled_cases(cls, entry: Entry) -> Iterator[Case]:
        """The cases of the configs drawn from ``entry``'s search space (see :func:`sampled_configs`)."""
        for config in sampled_configs(entry, cls.example_spaces.get(entry.name), cls.n_sampled):
            for causal in _modes(entry):
                position = representative_position(entry) if entry.kind == "attention" else None
                yield Case(entry, causal, position, config, sampled=True)

    @staticmethod
    def skip_if_unrunnable(case: Case) -> None:
        if case.entry.capabilities.needs_gpu and not torch.cuda.is_available():
            _pytest().skip(f"{case.entry.name} needs a CUDA GPU")


def _modes(entry: Entry) -> list[bool]:
    return entry.capabilities.directions()


def _causal_only(method: Any) -> Any:
    """Collect this test method for the causal cases only."""
    method.causal_only = True
    return method


def _default_config_only(method: Any) -> Any:
    """Collect this test method for each block's default config only (it samples or reads its own)."""
    method.default_config_only = True
    return method


class _ModuleConformance(_Conformance):
    """The checks shared by every kind of block that is an ``nn.Module`` on the residual stream."""

    def test_shapes(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_shapes(case)

    @_causal_only
    def test_no_causal_leakage(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_causal(case)

    def test_batch_independence(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_batch_independence(case)

    def test_deterministic_under_a_seed(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_determinism(case)

    def test_dtype_and_device_round_trips(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_dtype_device(case)

    def test_gradients_reach_every_parameter(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_gradients(case)

    def test_state_dict_round_trip(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_state_dict(case)

    def test_param_count_matches_meta_build(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_param_count(case)

    def test_bf16_finite(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_bf16(case)

    @_default_config_only
    def test_search_space_samples_valid_configs(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_search_space(case, self.example_spaces.get(case.entry.name))

    @_default_config_only
    def test_supernet_path_equals_extracted_subnet(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_supernet_slicing(case)


class AttentionConformance(_ModuleConformance):
    """Every attention block, in each mode it claims (causal, bidirectional), with each position mode it takes."""

    kind = "attention"

    @classmethod
    def cases(cls) -> Iterator[Case]:
        for entry in cls.entries():
            for config in case_configs(entry):
                for causal in _modes(entry):
                    for mode in sorted(entry.capabilities.positions):
                        yield Case(entry, causal, position_of_mode(mode), config)
            yield from cls.sampled_cases(entry)

    @_default_config_only
    def test_declares_position_modes(self, case: Case) -> None:
        unknown = set(case.entry.capabilities.positions) - set(POSITION_MODES)
        assert not unknown, f"{case.id}: unknown position modes {unknown}; valid: {POSITION_MODES}"


class PositionConformance(_ModuleConformance):
    """Every position scheme, exercised through an attention that takes every mode (:func:`universal_attention`)."""

    kind = "position"


class NormConformance(_ModuleConformance):
    kind = "norm"


class FFNConformance(_ModuleConformance):
    kind = "ffn"


class CompressionConformance(_Conformance):
    """Every compression plugin applied to a tiny trained Transformer on a tiny MQAR task."""

    kind = "compression"

    @classmethod
    def cases(cls) -> Iterator[Case]:
        for entry in cls.entries():
            for config in case_configs(entry):
                yield Case(entry, causal=True, config=config)
            for config in sampled_configs(entry, cls.example_spaces.get(entry.name), cls.n_sampled):
                yield Case(entry, causal=True, config=config, sampled=True)

    @staticmethod
    def tiny_model(seed: int = 0) -> tuple[nn.Module, Any]:
        """A 2-layer Transformer of each kind's default block (the built-ins: softmax, RoPE, LayerNorm, an MLP
        of expansion 2) on the default task's tiny config (16 positions), trained for 5 steps."""
        from .architecture import Architecture, LayerArch
        from .model import build_model, default_block
        from .spec import TrainingConfig
        from .train import train

        registry.load_plugins()
        task_entry = registry.get("task", registry.default("task"))
        task = registry.build("task", task_entry.cls.tiny_config(T))

        layer = LayerArch(attention=default_block("attention"), norm=default_block("norm"),
                          ffn=default_block("ffn", expansion=2))
        arch = Architecture(d_model=C, n_heads=H, n_layers=2, norm_placement="pre",
                            position=default_block("position"), layers=[layer] * 2)
        torch.manual_seed(seed)
        model = build_model(arch, task)
        train(model, task, TrainingConfig(steps=5, batch_size=4), torch.device("cpu"))
        return model.eval(), task

    @staticmethod
    def finetune_for(task: Any) -> Any:
        from .spec import TrainingConfig
        from .train import train

        def finetune(model: nn.Module, steps: int) -> None:
            train(model, task, TrainingConfig(steps=steps, batch_size=4, seed=1), torch.device("cpu"))

        return finetune

    def _apply(self, case: Case, config: BlockConfig | None = None) -> tuple[torch.Tensor, torch.Tensor, Any]:
        model, task = self.tiny_model()
        x, _ = task.example_batch(2)
        with torch.no_grad():
            before = model(x)
        compressor = case.entry.cls(config or case.config or case.entry.config())
        out = compressor.apply(model, self.finetune_for(task))
        out.eval()
        with torch.inference_mode():
            after = out(x)
        return before, after, compressor

    def test_apply_keeps_outputs_finite(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        before, after, compressor = self._apply(case)
        assert after.shape == before.shape, f"{case.id}: output shape changed"
        assert torch.isfinite(after.float()).all(), f"{case.id}: non-finite outputs after compression"
        assert compressor.precision("fp32") in ("fp32", "bf16", "fp16")
        assert isinstance(compressor.info, dict)

    def test_compressed_model_is_causal(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_compressed_causal(case)

    def test_compressed_model_is_batch_independent(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_compressed_batch_independence(case)

    def test_apply_is_deterministic(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        (first, task, _), (second, _, _) = _compressed(case), _compressed(case)
        x, _ = task.example_batch(2)
        with torch.inference_mode():
            assert torch.equal(first(x), second(x)), f"{case.id}: applying twice gave two different models"

    @_default_config_only
    def test_search_space_samples_valid_configs(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_search_space(case, self.example_spaces.get(case.entry.name), trials=3)


class TaskConformance(_Conformance):
    """Every task whose config has defaults for all fields: batch shapes and seeded, repeatable data."""

    kind = "task"

    @classmethod
    def cases(cls) -> Iterator[Case]:
        for entry in cls.entries():
            yield Case(entry, causal=entry.capabilities.causal)

    def test_batches(self, case: Case) -> None:
        try:
            config = case.entry.config()
        except Exception as exc:  # a required field (e.g. the text task's paths)
            _pytest().skip(f"{case.entry.name} has no default config: {str(exc).splitlines()[0]}")
        task = case.entry.cls(config)
        x, y = task.example_batch(3)
        assert x.shape[:2] == (3, task.seq_len), f"{case.id}: inputs {tuple(x.shape)}"
        assert y.shape == ((3, task.seq_len) if task.causal else (3,)), f"{case.id}: targets {tuple(y.shape)}"
        a, b = task.train_batches(3, seed=5), task.train_batches(3, seed=5)
        for _ in range(2):
            (xa, ya), (xb, yb) = next(a), next(b)
            assert torch.equal(xa, xb) and torch.equal(ya, yb), f"{case.id}: same seed, different batches"
        first = [t for batch in task.eval_batches(4) for t in batch]
        again = [t for batch in task.eval_batches(4) for t in batch]
        assert all(torch.equal(p, q) for p, q in zip(first, again)), f"{case.id}: eval set differs between calls"
        emb = task.embedding(C)
        assert emb(x).shape == (3, task.seq_len, C), f"{case.id}: embedding must give (B, T, d_model)"

