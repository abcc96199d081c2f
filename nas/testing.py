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
* causal leakage: changing inputs at positions >= t changes no output before t (blocks that claim causality;
  feed-forward blocks and norms must be causal too);
* gradients reach every parameter (finite, not all zero) through the output and the block's ``aux_loss()``;
* a state-dict round trip into a differently seeded instance reproduces the outputs exactly;
* the parameter count of the block built on the meta device (how trials size models) equals the real one,
  and ``inactive_parameters()``, if defined, is between 0 and the total;
* finite outputs under bf16 autocast, and with bf16 weights (the ``quantize: bf16`` compression);
* the block's search space (generic or its own ``search_space``) samples only configs that validate and
  build, for several model sizes, with a fixed choice set per Optuna parameter name.

Compression plugins get their own class (apply to a tiny trained Transformer, outputs stay finite), as do
tasks (shapes and seeded, repeatable data). Sizes are tiny: the whole kit over the built-ins takes seconds.
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
from .blocks import POSITION_MODES, BlockConfig, Dims, InactiveParameters, PositionScheme, aux_loss
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
    "check_gradients",
    "check_state_dict",
    "check_param_count",
    "check_bf16",
    "check_search_space",
    "representative_position",
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

    @property
    def id(self) -> str:
        parts = [self.entry.name, "causal" if self.causal else "bidirectional"]
        return "-".join(parts + ([self.position] if self.position else []))

    def dims(self, d_model: int = C, n_heads: int = H, seq_len: int = T) -> Dims:
        return Dims(d_model, n_heads, seq_len, self.causal, n_layers=2)

    def build(self, seed: int = 0, dims: Dims | None = None, config: BlockConfig | None = None) -> nn.Module:
        """The block, built on the current default device with ``torch.manual_seed(seed)``."""
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


def _inputs(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, C, generator=g).to(dtype)  # (B, T, C)


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
    """Outputs before position t do not change when inputs at t and later do (every t, one at a time)."""
    block = case.build().eval()
    x = _inputs()
    with torch.no_grad():
        y = block(x)
        for t in (1, T // 2, T - 1):
            x2 = x.clone()
            x2[:, t:] = torch.randn(B, T - t, C, generator=torch.Generator().manual_seed(t))
            y2 = block(x2)
            leak = (y2[:, :t] - y[:, :t]).abs().max().item()
            assert leak <= atol, f"{case.id}: changing positions >= {t} changed earlier outputs by {leak:.3g}"


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


# --- pytest classes ---------------------------------------------------------------------------------
class _Conformance:
    """Parametrizes the ``case`` argument of every test method over the registered blocks of ``kind``."""

    kind: ClassVar[str]
    #: Only these block names (default: every registered block of the kind).
    names: ClassVar[Sequence[str] | None] = None
    #: Block name -> {field: choices or range} sampled by ``test_search_space`` on top of Literal/bool choices.
    example_spaces: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Extra plugin modules to import before collecting.
    plugins: ClassVar[Sequence[str]] = ()

    def pytest_generate_tests(self, metafunc: Any) -> None:
        if "case" in metafunc.fixturenames:
            cases = list(self.cases())
            if getattr(metafunc.function, "causal_only", False):
                cases = [c for c in cases if c.causal]
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
            for causal in _modes(entry):
                yield Case(entry, causal)

    @staticmethod
    def skip_if_unrunnable(case: Case) -> None:
        if case.entry.capabilities.needs_gpu and not torch.cuda.is_available():
            _pytest().skip(f"{case.entry.name} needs a CUDA GPU")


def _modes(entry: Entry) -> list[bool]:
    return entry.capabilities.directions()


class _ModuleConformance(_Conformance):
    """The checks shared by every kind of block that is an ``nn.Module`` on the residual stream."""

    def test_shapes(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_shapes(case)

    def test_no_causal_leakage(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_causal(case)

    setattr(test_no_causal_leakage, "causal_only", True)  # collected for causal cases only  # noqa: B010

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

    def test_search_space_samples_valid_configs(self, case: Case) -> None:
        self.skip_if_unrunnable(case)
        check_search_space(case, self.example_spaces.get(case.entry.name))


class AttentionConformance(_ModuleConformance):
    """Every attention block, in each mode it claims (causal, bidirectional), with each position mode it takes."""

    kind = "attention"

    @classmethod
    def cases(cls) -> Iterator[Case]:
        for entry in cls.entries():
            for causal in _modes(entry):
                for mode in sorted(entry.capabilities.positions):
                    yield Case(entry, causal, position_of_mode(mode))

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
            yield Case(entry, causal=True)

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
        compressor = case.entry.cls(config or case.entry.config())
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

