"""Built-in compression: none, quantization (bf16, int8 dynamic, QAT; int8/int4 weight-only on CUDA), magnitude
pruning, structured pruning of heads and neurons, and 2:4 semi-structured sparsity on CUDA.

A trial applies the chosen compression after training and before evaluation and measurement (see
:class:`nas.Compression`), so the search sees the accuracy, latency and size of the compressed model.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from nas import BlockConfig, Capabilities, Compression, Finetune, PrunableHeads, PrunableNeurons, register


def layer_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` modules inside the Transformer's layers (not the task's embedding or output head)."""
    root = getattr(model, "layers", model)
    prefix = "layers." if root is not model else ""
    for name, module in root.named_modules():
        if isinstance(module, nn.Linear):
            yield prefix + name, module


def cast_io(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast ``model``'s floating-point inputs to ``dtype`` and its output back to fp32, with forward hooks, so a
    model whose weights are in ``dtype`` serves the same callers (float pixel inputs, fp32 loss)."""

    def cast_in(module: nn.Module, args: tuple) -> tuple:
        return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    def cast_out(module: nn.Module, args: tuple, output: Any) -> Any:
        return output.float() if isinstance(output, torch.Tensor) and output.is_floating_point() else output

    model.register_forward_pre_hook(cast_in)
    model.register_forward_hook(cast_out)


@register("compression", "none", default=True)
class NoCompression(Compression):
    """No compression: the model is measured as trained (the baseline every other level is compared with)."""

    class Config(BlockConfig):
        type: Literal["none"] = "none"


# --- quantization ----------------------------------------------------------------------------------
@register("compression", "quantize")
class Quantize(Compression):
    """Post-training quantization on CPU: bf16 weights, or int8 dynamic quantization of every ``nn.Linear``
    (PyTorch's ``quantize_dynamic``: int8 weights per output channel, activations quantized per tensor on the
    fly; Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
    Inference"), optionally after quantization-aware fine-tuning with fake quantization.

    Levels: ``fp32`` (unchanged, a baseline inside the same choice), ``bf16``, ``int8``. The int8 kernels
    (fbgemm / x86) run on CPU only; on CUDA, use ``weight_only``. Parameters other than ``nn.Linear`` weights
    (embeddings, norms, stacked expert weights) stay in fp32. ``qat_steps`` > 0 fine-tunes first with weights
    and inputs of every quantized layer passed through fake quantization (straight-through gradients) on
    exactly the grids the int8 kernels then use (see :func:`deployed_activation_range`; a test checks that the
    fake-quantized and the deployed forward agree to float rounding).

    The activation scale of the deployed kernels is taken per tensor, from the whole input (every sequence
    and position of the batch): an int8 model's output at one position moves, by about a grid step, with
    inputs elsewhere in the batch, later positions included (:meth:`position_coupling`).
    """

    class Config(BlockConfig):
        type: Literal["quantize"] = "quantize"
        level: Literal["fp32", "bf16", "int8"] = "int8"
        qat_steps: int = Field(0, ge=0, description="quantization-aware fine-tuning steps before int8 conversion")

    conformance_configs = [{"level": "int8", "qat_steps": 2}, {"level": "bf16"}, {"level": "fp32"}]

    def apply(self, model: nn.Module, finetune: Finetune) -> nn.Module:
        level = self.config.level
        if level == "fp32":
            return model
        if level == "bf16":
            model.to(torch.bfloat16)
            cast_io(model, torch.bfloat16)
            return model
        device = next(model.parameters()).device
        if device.type != "cpu":
            raise ValueError("int8 dynamic quantization runs on CPU only; on CUDA use the 'weight_only' compression")
        if self.config.qat_steps:
            with fake_quantized(model):
                finetune(model, self.config.qat_steps)
            model.eval()
            self.info["qat_steps"] = self.config.qat_steps
        self.info["quantized_linears"] = sum(isinstance(m, nn.Linear) for m in model.modules())
        return quantize_dynamic_int8(model)

    def precision(self, trained: str) -> str:
        # bf16 weights run natively; int8 kernels take fp32 activations (autocast would hand them bf16).
        return trained if self.config.level == "fp32" else "fp32"

    def position_coupling(self) -> str | None:
        if self.config.level != "int8":
            return None
        return ("int8 dynamic quantization takes each Linear input's scale and zero point from the whole "
                "tensor (every sequence and position of the batch), so other inputs move an output by about "
                "one grid step")


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` with per-channel int8 weights."""
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as exc:  # pragma: no cover - removed in some future torch
        raise ImportError("int8 dynamic quantization needs torch.ao.quantization (torch<=2.13), "
                          "or install torchao and use the 'weight_only' compression") from exc
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao on every call
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def deployed_activation_range() -> tuple[int, int]:
    """The grid (quant_min, quant_max) onto which the deployed int8 dynamic ``nn.Linear`` puts its input.

    ``torch.ao.nn.quantized.dynamic.Linear`` asks its kernel for ``reduce_range=True``; the x86 and fbgemm
    engines honour it and quantize activations to 7 bits (0..127), which leaves room for their 16-bit
    intermediate sums. Measured with torch 2.13 on x86: inputs go on a per-tensor affine grid of scale
    ``(max(x, 0) - min(x, 0)) / 127`` and zero point ``round(-min(x, 0) / scale)``, which this module's
    parity test checks against ``quantize_dynamic`` itself. Other engines (qnnpack) use the full 0..255.
    """
    return (0, 127) if torch.backends.quantized.engine in ("x86", "fbgemm") else (0, 255)


_OBSERVER_EPS = torch.finfo(torch.float32).eps  # the smallest scale torch's observers hand out


class _FakeQuantWeight(nn.Module):
    """Parametrization: a weight on the deployed int8 grid. ``per_channel_dynamic_qconfig`` observes weights
    with a symmetric per-output-channel ``PerChannelMinMaxObserver`` on qint8: scale ``max|w_row| / 127.5``
    (half the 255 steps of -128..127), zero point 0, values clamped to -128..127."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = (w.detach().abs().amax(dim=1).float() / 127.5).clamp(min=_OBSERVER_EPS)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w.float(), scale, zero, 0, -128, 127).to(w.dtype)


def _fake_quant_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: a layer's input on the grid the deployed dynamic kernel puts it on
    (:func:`deployed_activation_range`), from the input's own range, per tensor, as that kernel does."""
    x = args[0]
    qmin, qmax = deployed_activation_range()
    lo = x.detach().min().clamp(max=0).double()
    hi = x.detach().max().clamp(min=0).double()
    scale = ((hi - lo) / (qmax - qmin)).float()  # the kernel's arithmetic: in double, stored as float
    scale = torch.where((scale == 0) | torch.isinf(1 / scale), torch.full_like(scale, 0.1), scale).reshape(1)
    zero = (qmin - lo.float() / scale).round().clamp(qmin, qmax).int().reshape(1)
    return (torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, qmin, qmax).to(x.dtype), *args[1:])


@contextlib.contextmanager
def fake_quantized(model: nn.Module) -> Iterator[None]:
    """Within the block, every ``nn.Linear`` of ``model`` computes with fake-quantized weights and inputs; on
    exit the layers hold their (fine-tuned) float weights again."""
    from torch.nn.utils import parametrize

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    hooks = []
    for m in linears:
        parametrize.register_parametrization(m, "weight", _FakeQuantWeight())
        hooks.append(m.register_forward_pre_hook(_fake_quant_input))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for m in linears:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)


@register("compression", "weight_only")
class WeightOnlyQuantize(Compression):
    """Weight-only int8 or int4 quantization of every ``nn.Linear`` with torchao on CUDA (int4: group-wise
    scales, as in GPTQ/AWQ-style kernels; Frantar et al. 2023, Lin et al. 2024). Needs ``pip install torchao``.
    """

    class Config(BlockConfig):
        type: Literal["weight_only"] = "weight_only"
        bits: Literal[8, 4] = 8
        group_size: Literal[32, 64, 128, 256] = Field(128, description="int4 only: input channels per scale")

    capabilities = Capabilities(needs_gpu=True)

    def apply(self, model: nn.Module, finetune: Finetune) -> nn.Module:
        try:
            import torchao.quantization as tq
        except ImportError as exc:
            raise ImportError("the 'weight_only' compression needs torchao: pip install torchao") from exc
        model.to(torch.bfloat16)  # the int4 kernels take bf16 activations; int8 ones are fine with it
        cast_io(model, torch.bfloat16)
        if self.config.bits == 8:
            config = tq.Int8WeightOnlyConfig() if hasattr(tq, "Int8WeightOnlyConfig") else tq.int8_weight_only()
        else:
            gs = self.config.group_size
            config = (tq.Int4WeightOnlyConfig(group_size=gs) if hasattr(tq, "Int4WeightOnlyConfig")
                      else tq.int4_weight_only(group_size=gs))
        tq.quantize_(model, config)
        return model

    def precision(self, trained: str) -> str:
        return "fp32"


# --- pruning ---------------------------------------------------------------------------------------
@register("compression", "magnitude")
class MagnitudePrune(Compression):
    """Unstructured magnitude pruning (Han et al. 2015, "Learning both Weights and Connections"): the smallest
    ``sparsity`` fraction of each ``nn.Linear`` weight inside the layers is set to zero, optionally followed by
    a fine-tune that keeps them at zero. Storage stays dense, so size and latency do not change: this shows
    what the sparsity costs in accuracy (sparse kernels are what ``semi_structured`` measures on CUDA).
    """

    class Config(BlockConfig):
        type: Literal["magnitude"] = "magnitude"
        sparsity: float = Field(0.5, ge=0, lt=1, description="fraction of each layer's weights set to zero")
        finetune_steps: int = Field(0, ge=0, description="recovery fine-tuning steps with the zeros held")

    conformance_configs = [{"finetune_steps": 2}]

    def apply(self, model: nn.Module, finetune: Finetune) -> nn.Module:
        from torch.nn.utils import prune

        linears = [m for _, m in layer_linears(model)]
        for m in linears:
            prune.l1_unstructured(m, "weight", amount=self.config.sparsity)
        if self.config.finetune_steps:
            finetune(model, self.config.finetune_steps)  # the masks are re-applied before every forward
            model.eval()
        for m in linears:
            prune.remove(m, "weight")
        zeros = sum(int((m.weight == 0).sum()) for m in linears)
        self.info["sparsity"] = zeros / max(sum(m.weight.numel() for m in linears), 1)
        return model


@register("compression", "structured")
class StructuredPrune(Compression):
    """Structured pruning of attention heads (Michel et al. 2019, "Are Sixteen Heads Really Better than One?")
    and feed-forward neurons, by weight-magnitude importance, optionally followed by a recovery fine-tune.

    Pruned modules are rebuilt smaller, so parameters, FLOPs and latency really drop. Each block prunes itself
    through its ``prune_heads`` / ``prune_neurons`` method; blocks without one (state-space mixers, mixtures of
    experts) are left whole and listed in the trial's info.
    """

    class Config(BlockConfig):
        type: Literal["structured"] = "structured"
        heads: float = Field(0.25, ge=0, lt=1, description="fraction of heads (or kv groups) removed per layer")
        neurons: float = Field(0.25, ge=0, lt=1, description="fraction of feed-forward neurons removed per layer")
        finetune_steps: int = Field(0, ge=0, description="recovery fine-tuning steps after pruning")

    changes_shape = True
    conformance_configs = [{"heads": 0.5, "neurons": 0.5, "finetune_steps": 2}]

    def apply(self, model: nn.Module, finetune: Finetune) -> nn.Module:
        heads = neurons = 0
        skipped = []
        for layer_index, layer in enumerate(getattr(model, "layers", [])):
            attention, ffn = getattr(layer, "attention", None), getattr(layer, "ffn", None)
            for kind, block, fraction in (("attention", attention, self.config.heads),
                                          ("ffn", ffn, self.config.neurons)):
                if block is None or not fraction:
                    continue
                if kind == "attention" and isinstance(block, PrunableHeads):
                    heads += block.prune_heads(fraction)
                elif kind == "ffn" and isinstance(block, PrunableNeurons):
                    neurons += block.prune_neurons(fraction)
                else:
                    skipped.append(f"layers.{layer_index}.{kind} ({type(block).__name__})")
        self.info.update(heads_removed=heads, neurons_removed=neurons, not_prunable=skipped)
        if self.config.finetune_steps:
            finetune(model, self.config.finetune_steps)
            model.eval()
        return model


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """The 2:4 mask of a weight (out, in): in every group of 4 consecutive inputs, keep the 2 largest magnitudes."""
    groups = weight.detach().abs().reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(2, dim=1).indices, True)
    return keep.reshape(weight.shape)


@register("compression", "semi_structured")
class SemiStructuredSparsity(Compression):
    """2:4 semi-structured sparsity (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"): two of
    every four consecutive weights of each ``nn.Linear`` in the layers are zeroed by magnitude and the weights
    stored in PyTorch's compressed semi-structured format, served by sparse tensor-core kernels (CUDA, Ampere
    or newer, bf16). Layers whose shapes the kernels do not take stay dense and are listed in the info.
    """

    class Config(BlockConfig):
        type: Literal["semi_structured"] = "semi_structured"
        finetune_steps: int = Field(0, ge=0, description="recovery fine-tuning steps with the 2:4 zeros held")

    capabilities = Capabilities(needs_gpu=True)

    def apply(self, model: nn.Module, finetune: Finetune) -> nn.Module:
        from torch.nn.utils import prune
        from torch.sparse import to_sparse_semi_structured

        linears = [(n, m) for n, m in layer_linears(model) if m.in_features % 4 == 0]
        for _, m in linears:
            prune.custom_from_mask(m, "weight", two_four_mask(m.weight))
        if self.config.finetune_steps:
            finetune(model, self.config.finetune_steps)
            model.eval()
        for _, m in linears:
            prune.remove(m, "weight")
        model.to(torch.bfloat16)
        cast_io(model, torch.bfloat16)
        dense = []
        for name, m in linears:
            try:
                m.weight = nn.Parameter(to_sparse_semi_structured(m.weight.detach()), requires_grad=False)
            except (RuntimeError, ValueError) as exc:  # shape or dtype the kernels do not support
                dense.append(f"{name}: {str(exc).splitlines()[0]}")
        self.info.update(sparse_linears=len(linears) - len(dense), dense_linears=dense)
        return model

    def precision(self, trained: str) -> str:
        return "fp32"
