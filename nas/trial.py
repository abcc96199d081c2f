"""One trial end to end: build the sampled architecture, train it, compress it, evaluate it, measure it.

:func:`run_trial` never raises for a bad architecture: an exception, a NaN loss or running out of memory
becomes a result with ``status="failed"`` and the reason, so a search can record it and go on.
"""

from __future__ import annotations

import copy
import io
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from . import kernels, registry
from .architecture import Architecture, block_config
from .blocks import Compression, Task, block_stats, reset_stats
from .measure import METHOD, inference_memory, measure_latency, train_step_memory
from .model import (Transformer, build_model, build_task, count_active_parameters, count_flops_per_token,
                    count_parameters, meta_costs)
from .runtime import device_name, pick_device, seed_everything
from .spec import Spec
from .train import NonFiniteLoss, train

__all__ = ["TrialResult", "TrialRun", "Status", "run_trial", "execute_trial"]

MB = 2**20

Status = Literal["ok", "failed", "infeasible"]
"""``ok``; ``failed`` (exception, NaN, out of memory, worker lost: ``reason`` says which); ``infeasible``
(ruled out by a constraint before training)."""


@dataclass(frozen=True)
class TrialResult:
    """What one trial produced. Small and picklable: it crosses from a Ray worker to the driver."""

    status: Status
    architecture: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def failed(cls, arch: Architecture, reason: str) -> "TrialResult":
        """A trial that failed outside :func:`run_trial` (its worker died, or it never started)."""
        return cls("failed", arch.model_dump(), reason=reason)


@dataclass(frozen=True)
class TrialRun:
    """A result and the trained model (uncompressed: compression is re-applied wherever it is loaded)."""

    result: TrialResult
    model: Transformer | None


def run_trial(spec: Spec, arch: Architecture, on_log: Callable[[int, float], None] | None = None) -> TrialResult:
    """Train and measure ``arch`` under ``spec``'s task, training and measurement settings."""
    return execute_trial(spec, arch, on_log).result


def execute_trial(spec: Spec, arch: Architecture, on_log: Callable[[int, float], None] | None = None,
                  keep_model: bool = False) -> TrialRun:
    """:func:`run_trial`, and the trained model with it when ``keep_model`` (for saving its weights)."""
    registry.load_plugins(spec.plugins)
    device = pick_device(spec.training.device)
    info: dict[str, Any] = {"device": device_name(device), "torch": torch.__version__, "method": METHOD}
    metrics: dict[str, float] = {}
    curve: list[tuple[int, float]] = []
    status: Status = "ok"
    reason: str | None = None
    kept: Transformer | None = None
    started = time.perf_counter()
    try:
        task = build_task(spec)
        # Sizing on the meta device: free, exact, and done before anything is trained.
        x_meta, _ = task.example_batch(spec.measure.batch_size)
        metrics.update(meta_costs(arch, task, x_meta))
        limit = spec.constraints.max_params
        if limit is not None and metrics["params"] > limit:
            status = "infeasible"
            reason = f"{int(metrics['params'])} parameters exceed constraints.max_params={limit}"
            return TrialRun(TrialResult(status, arch.model_dump(), metrics, reason, curve, info), None)

        seed_everything(spec.training.seed)
        model = build_model(arch, task)
        if spec.training.workers > 1:
            from .distributed import train_data_parallel

            trained = train_data_parallel(spec, arch, model)
            model.to(device)
        else:
            trained = train(model, task, spec.training, device, on_log=on_log)
        curve = trained.curve
        info["train_seconds"] = trained.seconds
        model.eval()
        # Training memory is that of the model as trained; everything after compression is measured on the
        # compressed model (which may not be trainable at all, e.g. int8).
        metrics["train_memory_mb"] = _train_memory(model, task, spec, device)
        compressor: Compression = registry.build("compression", block_config("compression", arch.compression))
        if keep_model:  # the trained weights, which load into build_model(arch); compression is re-applied
            kept = copy.deepcopy(model) if arch.compressed else model
        measured = _compress(compressor, model, task, spec, device, metrics, info)
        reset_stats(measured)
        metrics.update(task.evaluate(measured, spec.training.eval_batch_size, device))
        metrics.update(block_stats(measured))
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLoss(f"non-finite metric(s) after training: {bad}")
        metrics.update(_measure(measured, task, spec, device, compressor.precision(spec.training.precision)))
        info["kernels"] = kernels.used(measured)  # {module path: kernel} of the measured forward (nas.kernels)
        info.update(latency_threads=spec.measure.threads if device.type == "cpu" else None,
                    latency_batch=spec.measure.batch_size, seq_len=task.seq_len)
    except NonFiniteLoss as exc:
        status, reason = "failed", f"nan: {exc}"
    except (torch.OutOfMemoryError, MemoryError) as exc:
        status, reason = "failed", f"out of memory: {_first_line(exc) or type(exc).__name__}"
    except RuntimeError as exc:
        # torch's CPU allocator raises a plain RuntimeError when an allocation fails.
        kind = "out of memory" if "can't allocate memory" in str(exc) else f"error: {type(exc).__name__}"
        status, reason = "failed", f"{kind}: {_first_line(exc)}"
        info["traceback"] = traceback.format_exc(limit=8)
    except Exception as exc:  # a bad block, a shape error... recorded with its reason; the search goes on
        status, reason = "failed", f"error: {type(exc).__name__}: {exc}"
        info["traceback"] = traceback.format_exc(limit=8)
    finally:
        info["seconds"] = time.perf_counter() - started
    result = TrialResult(status, arch.model_dump(), metrics, reason, curve, info)
    return TrialRun(result, kept if status == "ok" else None)


def _compress(compressor: Compression, model: Transformer, task: Task, spec: Spec, device: torch.device,
              metrics: dict[str, float], info: dict[str, Any]) -> torch.nn.Module:
    """Apply the architecture's compression; recount sizes if it changed shapes. Returns the model to measure."""

    def finetune(m: torch.nn.Module, steps: int) -> None:
        """A few more steps at the learning rate training ended with, constant, on a fresh data stream."""
        t = spec.training
        cfg = t.model_copy(update={
            "steps": steps, "seed": t.seed + 1, "compile": False,
            "optimizer": t.optimizer.model_copy(update={"lr": t.optimizer.lr * t.schedule.min_lr_ratio}),
            "schedule": t.schedule.model_copy(update={"type": "constant", "warmup_steps": 0}),
        })
        train(m, task, cfg, device)

    compressed = compressor.apply(model, finetune)
    compressed.eval()
    info["compression"] = {"type": compressor.config.type, **compressor.info}
    if compressor.changes_shape:
        x, _ = task.example_batch(spec.measure.batch_size)
        metrics.update(params=float(count_parameters(compressed)),
                       params_active=float(count_active_parameters(compressed)),
                       flops_per_token=count_flops_per_token(compressed, x.to(device)))
    return compressed


def _train_memory(model: Transformer, task: Task, spec: Spec, device: torch.device) -> float:
    tx, ty = task.example_batch(spec.measure.train_batch_size or spec.training.batch_size)
    return train_step_memory(model, tx.to(device), ty.to(device), spec.training.precision) / MB


def _measure(model: torch.nn.Module, task: Task, spec: Spec, device: torch.device,
             precision: str) -> dict[str, float]:
    m = spec.measure
    x, _ = task.example_batch(m.batch_size)
    x = x.to(device)
    out = measure_latency(model, x, m.warmup, m.repeats, m.threads, precision)
    out["infer_memory_mb"] = inference_memory(model, x, precision) / MB
    out["model_size_mb"] = model_bytes(model) / MB
    return out


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's serialized state dict (how big it is on disk, packed quantized weights included)."""
    buffer = io.BytesIO()
    try:
        torch.save(model.state_dict(), buffer)
    except Exception:  # a tensor subclass that does not pickle: count the bytes of what is there
        return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    return buffer.getbuffer().nbytes


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""
