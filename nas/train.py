"""The trainer of one trial: AdamW, warm-up + cosine schedule, autocast, optional checkpointing, compile and
knowledge distillation from a teacher."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .architecture import Architecture
from .blocks import Batch, Task, aux_loss
from .model import Transformer, build_model
from .runtime import autocast, loss_fn
from .spec import DistillConfig, ScheduleConfig, TrainingConfig, teacher_files

__all__ = ["TrainResult", "NonFiniteLoss", "train", "make_optimizer", "lr_factor", "distill_loss", "load_teacher"]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the trial stops with this as its reason."""


@dataclass
class TrainResult:
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) every log_every steps
    steps: int = 0
    seconds: float = 0.0
    final_loss: float = math.nan
    stopped: bool = False  # stopped early at a rung (``steps`` says which)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the positions whose target is not
    -100 (Hinton et al. 2015; the T^2 keeps its gradients on the scale of the task loss). Logits (B, T, V) or
    (B, classes)."""
    keep = targets.flatten() != -100
    s = student.flatten(0, -2).float()[keep] / temperature
    t = teacher.flatten(0, -2).float()[keep] / temperature
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    return kl * temperature**2


def load_teacher(cfg: DistillConfig, task: Task, device: torch.device) -> nn.Module:
    """The teacher of ``cfg``: its architecture built for ``task``, its weights loaded (strictly), frozen, in eval
    mode, on ``device``. Any compression in its architecture is not applied: the teacher is the trained model."""
    from safetensors.torch import load_model

    arch_file, weights = teacher_files(cfg.teacher)
    arch = Architecture.model_validate_json(arch_file.read_text())
    teacher = build_model(arch, task)
    try:
        load_model(teacher, str(weights))
    except RuntimeError as exc:
        raise ValueError(f"teacher '{cfg.teacher}' does not fit its architecture on this task "
                         f"({arch.summary()}): {str(exc).splitlines()[0]}") from None
    return teacher.to(device).eval().requires_grad_(False)


def make_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms, biases or 1-d scales)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    o = cfg.optimizer
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)


def lr_factor(schedule: ScheduleConfig, steps: int) -> Callable[[int], float]:
    """Linear warm-up to the peak, then constant or cosine decay to ``min_lr_ratio`` of the peak."""
    warm = min(schedule.warmup_steps, steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if schedule.type == "constant":
            return 1.0
        progress = (step - warm) / max(steps - warm, 1)
        return schedule.min_lr_ratio + (1 - schedule.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _mean_over_workers(loss: torch.Tensor) -> float:
    """The loss averaged over data-parallel workers (itself when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        loss = loss.clone()
        torch.distributed.all_reduce(loss)
        loss /= torch.distributed.get_world_size()
    return loss.item()


def train(model: nn.Module, task: Task, cfg: TrainingConfig, device: torch.device,
          batches: Iterator[Batch] | None = None, on_log: Callable[[int, float], None] | None = None,
          rungs: Sequence[int] = (), at_rung: Callable[[int], bool] | None = None) -> TrainResult:
    """Train ``model`` in place for ``cfg.steps`` steps. Raises :class:`NonFiniteLoss` on NaN/inf loss.

    After each step count in ``rungs``, ``at_rung(steps done)`` decides whether to go on; False stops here
    (``stopped``). The schedule stays that of the full budget: a trial that goes on is the trial it would have
    been without the rung.

    Deterministic for a fixed ``cfg.seed`` on the same device and thread count.
    """
    model.to(device).train()
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if isinstance(core, Transformer):
        core.checkpointing = cfg.grad_checkpointing
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.schedule, cfg.steps))
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" and device.type == "cuda" else None
    forward = torch.compile(model) if cfg.compile else model
    teacher = load_teacher(cfg.distill, task, device) if cfg.distill is not None else None
    batches = batches if batches is not None else task.train_batches(cfg.batch_size, seed=cfg.seed)
    result = TrainResult()
    rung_set = set(rungs)
    start = time.perf_counter()
    for step in range(cfg.steps):
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, cfg.precision):
            logits = forward(x)
            loss = loss_fn(logits, y)  # the task loss: what the curve logs, with or without a teacher
            total = loss
            if teacher is not None and cfg.distill is not None:
                with torch.no_grad():
                    teacher_logits = teacher(x)
                alpha = cfg.distill.alpha
                total = (1 - alpha) * loss + alpha * distill_loss(logits, teacher_logits, y, cfg.distill.temperature)
            aux = aux_loss(core)
            total = total + aux if aux is not None else total
        if not torch.isfinite(total):
            raise NonFiniteLoss(f"non-finite loss ({total.item()}) at step {step}")
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
        else:
            total.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.steps = step + 1
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            value = _mean_over_workers(loss.detach())
            result.curve.append((step, value))
            if on_log is not None:
                on_log(step, value)
        if at_rung is not None and result.steps in rung_set and not at_rung(result.steps):
            result.stopped = True
            break
    result.final_loss = result.curve[-1][1] if result.curve else math.nan
    result.seconds = time.perf_counter() - start
    return result
