"""Checks across fields that the schema alone cannot express, and what they derive (usable blocks, objective
directions). Each returns :class:`~nas.spec.errors.Problem` values located by YAML path."""

from __future__ import annotations

import itertools
import math
from typing import Any

from pydantic import ValidationError

from .. import registry
from ..registry import did_you_mean
from .errors import Problem, YamlPath
from .schema import (BLOCK_KINDS, MEASURED_METRICS, BlockSpace, FloatRange, IntRange, ModelSpace, Objective, Spec)

__all__ = ["values", "partial_checks", "check_model", "check_objectives", "check_semantics", "usable_blocks",
           "check_search", "objective_directions", "Usable"]

Usable = dict[str, list[BlockSpace]]
"""Per block kind, the space entries that can run on the task and device."""


# --- checks that span fields --------------------------------------------------------------------------
def values(space_value: Any) -> list[Any] | None:
    """All values a space entry can take, or None for a continuous range."""
    if isinstance(space_value, list):
        return space_value
    if isinstance(space_value, IntRange) and not space_value.log:
        return list(range(space_value.low, space_value.high + 1, space_value.step))
    if isinstance(space_value, (IntRange, FloatRange)):
        return None
    return [space_value]


def partial_checks(data: dict[str, Any], reported: set[YamlPath]) -> list[Problem]:
    """Cross-field checks of the sections that did validate, so one run reports as much as possible."""
    problems: list[Problem] = []
    model = data.get("model") or {}
    if isinstance(model, dict):  # check the sizes even when other keys of the section are wrong
        try:
            sizes = {k: model[k] for k in ("d_model", "n_heads") if k in model}
            problems += check_model(ModelSpace.model_validate(sizes))
        except ValidationError:
            pass
    task = data.get("task")
    if isinstance(task, dict) and task.get("type") in registry.names("task"):
        try:
            objectives = [Objective.model_validate(o) for o in data.get("objectives") or []]
        except (ValidationError, TypeError):
            return problems
        problems += check_objectives(objectives, registry.get("task", task["type"]).cls.metrics)
    return [p for p in problems if p.path not in reported]


def check_model(model: ModelSpace) -> list[Problem]:
    """Every d_model the space can produce must split evenly into every head count it can produce."""
    d_models, heads = values(model.d_model), values(model.n_heads)
    if d_models is None or heads is None:
        return [Problem(("model", "d_model" if d_models is None else "n_heads"),
                        "use a list of choices or a linear integer range, so every d_model/n_heads pair can be "
                        "checked for divisibility")]
    bad = [(d, h) for d, h in itertools.product(d_models, heads) if d % h]
    if not bad:
        return []
    pairs = ", ".join(f"{d}/{h}" for d, h in bad[:6]) + (" ..." if len(bad) > 6 else "")
    return [Problem(("model", "n_heads"),
                    f"d_model must be divisible by n_heads; impossible pairs (d_model/n_heads): {pairs}")]


def check_objectives(objectives: list[Objective], task_metrics: dict[str, str]) -> list[Problem]:
    """Objectives must name metrics that exist, once each."""
    available = {**MEASURED_METRICS, **task_metrics}
    problems, seen = [], set()
    for i, obj in enumerate(objectives):
        if obj.metric not in available:
            problems.append(Problem(("objectives", i, "metric"),
                                    f"unknown metric '{obj.metric}'{did_you_mean(obj.metric, available)} "
                                    f"available: {', '.join(available)}"))
        elif obj.metric in seen:
            problems.append(Problem(("objectives", i, "metric"), f"metric '{obj.metric}' is listed twice"))
        seen.add(obj.metric)
    return problems


def check_semantics(spec: Spec, device: str | None = None) -> tuple[list[Problem], list[Problem]]:
    """Checks across fields that the schema cannot express. Returns (errors, warnings)."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    task_entry = registry.get("task", spec.task.type)

    errors += check_model(spec.model)

    # Blocks that cannot run on this task or device are filtered; if none is left, that is an error.
    cuda = _cuda_available() if device is None else device == "cuda"
    usable, skipped = usable_blocks(spec, "cuda" if cuda else "cpu")
    warnings.extend(skipped)
    for kind in BLOCK_KINDS:
        if not usable[kind]:
            errors.append(Problem(("space", kind), f"no usable {kind} block left (see the warnings above)"))
        seen_types: set[str] = set()
        for i, entry in enumerate(getattr(spec.space, kind)):
            if entry.type in seen_types:
                errors.append(Problem(("space", kind, i, "type"),
                                      f"{kind} '{entry.type}' is listed twice; give it one entry with lists of "
                                      "choices"))
            seen_types.add(entry.type)

    # Each position scheme must be takeable by at least one attention block.
    for i, pos in enumerate(spec.space.position):
        mode = registry.get("position", pos.type).capabilities.position_mode
        takers = [a.type for a in usable["attention"]
                  if mode in registry.get("attention", a.type).capabilities.positions]
        if usable["attention"] and not takers:
            errors.append(Problem(("space", "position", i, "type"),
                                  f"position '{pos.type}' acts as '{mode}', which none of the attention choices "
                                  f"({', '.join(a.type for a in usable['attention'])}) can take"))

    errors += check_objectives(spec.objectives, task_entry.cls.metrics)

    errors += check_search(spec)
    if spec.training.device == "cuda" and not cuda:
        errors.append(Problem(("training", "device"), "device is 'cuda' but no CUDA GPU is available"))
    if spec.training.precision == "fp16" and not cuda and spec.training.device != "cuda":
        warnings.append(Problem(("training", "precision"), "fp16 on CPU runs without a GradScaler; bf16 is "
                                "the better choice there"))
    if spec.training.grad_checkpointing and spec.training.compile:
        warnings.append(Problem(("training",), "grad_checkpointing with compile: compile time grows"))
    if math.isfinite(spec.training.optimizer.lr) is False:
        errors.append(Problem(("training", "optimizer", "lr"), "lr must be finite"))
    return errors, warnings


def usable_blocks(spec: Spec, device: str | None = None) -> tuple[Usable, list[Problem]]:
    """The space entries of each block kind that can run on this task and device, and why others cannot."""
    causal = registry.get("task", spec.task.type).capabilities.causal
    cuda = _cuda_available() if device is None else device == "cuda"
    usable: Usable = {}
    skipped: list[Problem] = []
    for kind in BLOCK_KINDS:
        usable[kind] = []
        for i, entry in enumerate(getattr(spec.space, kind)):
            caps = registry.get(kind, entry.type).capabilities
            reason = None
            if kind == "attention" and not caps.supports(causal):
                reason = (f"{entry.type} cannot run causally, and task '{spec.task.type}' is causal" if causal
                          else f"{entry.type} is causal-only, and task '{spec.task.type}' is not causal")
            elif caps.needs_gpu and not cuda:
                reason = f"{entry.type} needs a CUDA GPU and none is available"
            if reason:
                skipped.append(Problem(("space", kind, i, "type"), f"skipped: {reason}"))
            else:
                usable[kind].append(entry)
    return usable, skipped


def check_search(spec: Spec) -> list[Problem]:
    """The sampler must accept its options; a reference point must name each objective."""
    from .sampler import make_sampler

    problems = []
    try:  # built as the search will build it: unknown options and refused values both show here
        make_sampler(spec)
    except (TypeError, ValueError) as exc:
        problems.append(Problem(("search", "sampler", "options"), f"not accepted by the {spec.search.sampler.type} "
                                f"sampler: {exc}"))
    ref = spec.search.reference_point
    if ref is not None:
        metrics = [o.metric for o in spec.objectives]
        if set(ref) != set(metrics):
            problems.append(Problem(("search", "reference_point"),
                                    f"needs exactly one value per objective ({', '.join(metrics)}); got "
                                    f"{', '.join(ref) or 'none'}"))
    return problems


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def objective_directions(spec: Spec) -> list[tuple[str, str]]:
    """``[(metric, direction)]`` with defaults filled from the metric's natural direction."""
    task_metrics = registry.get("task", spec.task.type).cls.metrics
    natural = {**MEASURED_METRICS, **task_metrics}
    return [(o.metric, o.direction or natural[o.metric]) for o in spec.objectives]
