"""One trial end to end: build the sampled architecture, train it, evaluate it, measure it.

:func:`run_trial` never raises for a bad architecture: an exception, a NaN loss or running out of memory
becomes a result with ``status="failed"`` and the reason, so a search can record it and go on.
"""

from __future__ import annotations

import math
import platform
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from . import registry
from .measure import METHOD, inference_memory, measure_latency, train_step_memory
from .model import Transformer, build_model, meta_costs
from .space import Architecture
from .train import NonFiniteLoss, pick_device, seed_everything, train

__all__ = ["TrialResult", "run_trial", "build_task"]

MB = 2**20


@dataclass
class TrialResult:
    status: str  # "ok" | "failed" | "infeasible" (ruled out by a constraint before training)
    architecture: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_task(spec: Any):
    """The task object of a spec."""
    return registry.build("task", spec.task)


def run_trial(spec: Any, arch: Architecture, on_log: Callable[[int, float], None] | None = None,
              keep_model: bool = False) -> TrialResult:
    """Train and measure ``arch`` under ``spec``'s task, training and measurement settings."""
    registry.load_plugins(spec.plugins)
    device = pick_device(spec.training.device)
    info: dict[str, Any] = {"device": _device_name(device), "torch": torch.__version__, "method": METHOD}
    result = TrialResult(status="ok", architecture=arch.model_dump(), info=info)
    started = time.perf_counter()
    try:
        task = build_task(spec)
        # Sizing on the meta device: free, exact, and done before anything is trained.
        x_meta, _ = task.example_batch(spec.measure.batch_size)
        result.metrics.update(meta_costs(arch, task, x_meta))
        limit = spec.constraints.max_params
        if limit is not None and result.metrics["params"] > limit:
            result.status = "infeasible"
            result.reason = f"{int(result.metrics['params'])} parameters exceed constraints.max_params={limit}"
            return result

        seed_everything(spec.training.seed)
        model = build_model(arch, task)
        if spec.training.workers > 1:
            from .distributed import train_data_parallel

            trained = train_data_parallel(spec, arch, model)
            model.to(device)
        else:
            trained = train(model, task, spec.training, device, on_log=on_log)
        result.curve = trained.curve
        info["train_seconds"] = trained.seconds
        model.eval()
        result.metrics.update(task.evaluate(model, spec.training.eval_batch_size, device))
        bad = {k: v for k, v in result.metrics.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLoss(f"non-finite metric(s) after training: {bad}")
        result.metrics.update(_measure(model, task, spec, device))
        info.update(latency_threads=spec.measure.threads if device.type == "cpu" else None,
                    latency_batch=spec.measure.batch_size, seq_len=task.seq_len)
        if keep_model:
            info["model"] = model
    except NonFiniteLoss as exc:
        result.status, result.reason = "failed", f"nan: {exc}"
    except (torch.OutOfMemoryError, MemoryError) as exc:
        result.status, result.reason = "failed", f"out of memory: {str(exc).splitlines()[0] if str(exc) else ''}"
    except Exception as exc:  # a bad block, a shape error... recorded with its reason; the search goes on
        result.status = "failed"
        result.reason = f"error: {type(exc).__name__}: {exc}"
        info["traceback"] = traceback.format_exc(limit=8)
    finally:
        info["seconds"] = time.perf_counter() - started
    return result


def _measure(model: Transformer, task: Any, spec: Any, device: torch.device) -> dict[str, float]:
    m, precision = spec.measure, spec.training.precision
    x, _ = task.example_batch(m.batch_size)
    x = x.to(device)
    out = measure_latency(model, x, m.warmup, m.repeats, m.threads, precision)

    out["infer_memory_mb"] = inference_memory(model, x, precision) / MB
    tx, ty = task.example_batch(m.train_batch_size or spec.training.batch_size)
    out["train_memory_mb"] = train_step_memory(model, tx.to(device), ty.to(device), precision) / MB
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
