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
from collections.abc import Callable, Sequence
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

__all__ = ["TrialResult", "TrialRun", "Status", "run_trial", "execute_trial", "measure_hardware", "verify_latency",
           "broken_limit", "limits_of", "training_threads", "LIMITS", "HARDWARE", "AtRung"]

MB = 2**20

Status = Literal["ok", "failed", "infeasible", "stopped"]
"""``ok``; ``failed`` (exception, NaN, out of memory, worker lost: ``reason`` says which); ``infeasible``
(over a limit of ``constraints``, measured before any training); ``stopped`` (stopped early at a rung of
``search.early_stopping``: its metrics are those of that rung)."""

#: ``constraints`` field -> the metric it limits. Every one depends on the architecture only, so all are
#: checked on the untrained model, before any training.
LIMITS = {
    "max_params": "params",
    "max_flops_per_token": "flops_per_token",
    "max_latency_ms": "latency_ms",
    "max_train_memory_mb": "train_memory_mb",
    "max_infer_memory_mb": "infer_memory_mb",
}

#: The metrics measured before training (on the untrained model, compressed as the architecture says).
HARDWARE = ("params", "params_active", "flops_per_token", "train_memory_mb", "latency_ms", "latency_p90_ms",
            "latency_ci_low_ms", "latency_ci_high_ms", "infer_memory_mb", "model_size_mb")

#: Called at each rung with (steps done, metrics at that point): True to go on training.
AtRung = Callable[[int, dict[str, float]], bool]


def training_threads(spec: Spec) -> int:
    """The torch threads a trial trains with, in a search and under ``nas trial`` alike: the CPUs Ray reserves
    for it (``search.resources.cpus``, default 1), at least one. Latency is measured with ``measure.threads``.
    Left to torch's default (one thread per core), trials that share a loaded machine oversubscribe it: the
    quickstart trial took 41-83 s that way on 2 busy cores, 12.8 s with one thread."""
    return int(max(1, spec.search.resources.cpus))


def limits_of(spec: Spec) -> list[tuple[str, str, float]]:
    """``[(constraint field, metric, limit)]`` of the limits the spec sets."""
    out = []
    for key, metric in LIMITS.items():
        limit = getattr(spec.constraints, key)
        if limit is not None:
            out.append((key, metric, float(limit)))
    return out


def broken_limit(spec: Spec, metrics: dict[str, float]) -> str | None:
    """The first limit of ``constraints`` that ``metrics`` break, as a reason; None when within all of them."""
    for key, metric, limit in limits_of(spec):
        if metric in metrics and metrics[metric] > limit:
            return f"infeasible: {metric} {metrics[metric]:.6g} > constraints.{key} = {limit:g}"
    return None


@dataclass(frozen=True)
class TrialResult:
    """What one trial produced. Small and picklable: it crosses from a Ray worker to the driver."""

    status: Status
    architecture: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    rungs: list[dict[str, Any]] = field(default_factory=list)  # {"step", "metrics", "continued"} per rung reached

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def steps(self) -> int:
        """Training steps this trial ran."""
        return int(self.info.get("steps", 0))

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
    """Measure ``arch`` untrained, then train and evaluate it, under ``spec``'s task, training and
    measurement settings."""
    return execute_trial(spec, arch, on_log).result


def execute_trial(spec: Spec, arch: Architecture, on_log: Callable[[int, float], None] | None = None,
                  keep_model: bool = False, rungs: Sequence[int] = (), at_rung: AtRung | None = None) -> TrialRun:
    """:func:`run_trial`, and the trained model with it when ``keep_model`` (for saving its weights).

    Hardware first: parameters and FLOPs (meta device), training-step memory (one dry-run step), and the
    latency and inference memory of the compressed model are measured on the untrained model; an
    architecture over a limit of ``constraints`` is ``infeasible`` and never trained. Latency and memory do
    not depend on the weights' values, only on shapes and kernels. With ``rungs``, ``at_rung`` is asked at
    each of those step counts (metrics: the task's evaluation then, and the hardware values) whether to go on.
    """
    registry.load_plugins(spec.plugins)
    device = pick_device(spec.training.device)
    info: dict[str, Any] = {"device": device_name(device), "torch": torch.__version__, "method": METHOD, "steps": 0,
                            "train_threads": torch.get_num_threads() if device.type == "cpu" else None}
    metrics: dict[str, float] = {}
    curve: list[tuple[int, float]] = []
    rung_log: list[dict[str, Any]] = []
    status: Status = "ok"
    reason: str | None = None
    kept: Transformer | None = None
    started, wall_start = time.perf_counter(), time.time()
    try:
        task = build_task(spec)
        # Sizing on the meta device: free, exact.
        x_meta, _ = task.example_batch(spec.measure.batch_size)
        metrics.update(meta_costs(arch, task, x_meta))
        reason = broken_limit(spec, metrics)
        if reason is None:
            seed_everything(spec.training.seed)
            model = build_model(arch, task)
            compressor: Compression = registry.build("compression", block_config("compression", arch.compression))
            # measuring draws no random numbers from training's stream
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                metrics.update(measure_hardware(model, task, spec, device, compressor))
            reason = broken_limit(spec, metrics)
        if reason is not None:
            status = "infeasible"
            return TrialRun(TrialResult(status, arch.model_dump(), metrics, reason, curve, info), None)

        decide = _rung_callback(model, task, spec, device, metrics, rung_log, at_rung) if at_rung else None
        if spec.training.workers > 1:
            from .distributed import train_data_parallel

            trained = train_data_parallel(spec, arch, model)
            model.to(device)
        else:
            trained = train(model, task, spec.training, device, on_log=on_log, rungs=rungs, at_rung=decide)
        curve = trained.curve
        info.update(train_seconds=trained.seconds, steps=trained.steps)
        model.eval()
        if trained.stopped:
            status, step = "stopped", trained.steps
            metrics.update(rung_log[-1]["metrics"])
            reason = f"stopped early at rung {step}/{spec.training.steps} steps (search.early_stopping)"
            return TrialRun(TrialResult(status, arch.model_dump(), metrics, reason, curve, info, rung_log), None)
        if keep_model:  # the trained weights, which load into build_model(arch); compression is re-applied
            kept = copy.deepcopy(model) if arch.compressed else model
        measured = _compress(compressor, model, task, spec, device, metrics, info)
        reset_stats(measured)
        metrics.update(task.evaluate(measured, spec.training.eval_batch_size, device))
        metrics.update(block_stats(measured))
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLoss(f"non-finite metric(s) after training: {bad}")
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
        info["busy"] = [wall_start, time.time()]  # wall-clock span of this trial's work (controller overhead)
    result = TrialResult(status, arch.model_dump(), metrics, reason, curve, info, rung_log)
    return TrialRun(result, kept if status == "ok" else None)


def _rung_callback(model: Transformer, task: Task, spec: Spec, device: torch.device, hardware: dict[str, float],
                   log: list[dict[str, Any]], at_rung: AtRung) -> Callable[[int], bool]:
    """At a rung: evaluate the model as it is (uncompressed), ask ``at_rung``, record the rung."""

    def decide(steps: int) -> bool:
        model.eval()
        quality = task.evaluate(model, spec.training.eval_batch_size, device)
        model.train()
        merged = {**hardware, **quality}
        go = bool(at_rung(steps, merged))
        log.append({"step": steps, "metrics": quality, "continued": go})
        return go

    return decide


def measure_hardware(model: Transformer, task: Task, spec: Spec, device: torch.device,
                     compressor: Compression, repeats: int | None = None) -> dict[str, float]:
    """Training-step memory of ``model`` (one dry-run step on a copy), then latency and inference memory of a
    copy compressed as the architecture says (its fine-tuning steps skipped): what depends on the
    architecture, not on trained weights. ``model`` is untouched."""
    model.to(device)
    out = {"train_memory_mb": _train_memory(model, task, spec, device)}
    compressed = compressor.apply(copy.deepcopy(model), lambda m, steps: None)
    compressed.eval()
    out.update(_measure(compressed, task, spec, device, compressor.precision(spec.training.precision), repeats))
    return out


def verify_latency(spec: Spec, arch: Architecture, repeats: int) -> dict[str, float]:
    """The latency of ``arch`` measured again with ``repeats`` timed forwards (the search runs this with
    nothing else running, for the front)."""
    registry.load_plugins(spec.plugins)
    device = pick_device(spec.training.device)
    task = build_task(spec)
    seed_everything(spec.training.seed)
    model = build_model(arch, task).to(device).eval()
    compressor: Compression = registry.build("compression", block_config("compression", arch.compression))
    compressed = compressor.apply(model, lambda m, steps: None)
    compressed.eval()
    x, _ = task.example_batch(spec.measure.batch_size)
    m = spec.measure
    return measure_latency(compressed, x.to(device), m.warmup, repeats, m.threads,
                           compressor.precision(spec.training.precision))


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
             precision: str, repeats: int | None = None) -> dict[str, float]:
    m = spec.measure
    x, _ = task.example_batch(m.batch_size)
    x = x.to(device)
    out = measure_latency(model, x, m.warmup, repeats or m.repeats, m.threads, precision)
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
