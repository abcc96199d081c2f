"""Multi-objective asynchronous successive halving: which trials stop early, at which training step.

Optuna's pruners are single-objective (``trial.report`` refuses a multi-objective study) and Ray's ASHA takes
one metric, so the rule is ours (after MO-ASHA, Schmucker et al. 2021):

* **Rungs** on training steps: ``r, r*eta, r*eta^2, ...`` below the full budget ``R``, with
  ``r = ceil(min_fraction * R)`` and as many rungs as ``floor(log_eta(R / r))`` (300 steps, a tenth, eta 3:
  rungs at 30 and 90; the full budget is the top).
* **Asynchronous**: a trial reaching a rung is compared at once with every result recorded at that rung so far
  (its own included), never waiting for the rung to fill.
* **Ranking**: non-dominated sorting of the objective vectors (quality at the rung; hardware objectives as
  measured before training), then, within one non-dominated rank, the larger exclusive hypervolume
  contribution first (objectives scaled to the rung's observed range), then the lower trial number.
* **Decision**: the trial continues when its position in that order is among the best
  ``max(1, floor(n / eta))`` of the ``n`` recorded; otherwise it stops. A trial that dominates every other
  recorded result is alone in the first rank, so it always continues, whatever the order of arrival.

The rule is a pure function of the recorded results, so stopping is deterministic for a given arrival order
(with ``search.concurrency: 1``, for a given seed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..pareto import hypervolume, nondominated_ranks, to_minimize

__all__ = ["rung_steps", "rung_order", "continues", "RungPlan", "RungBoard"]


def rung_steps(steps: int, min_fraction: float, eta: int) -> list[int]:
    """The training steps at which trials are compared (the full budget itself is not a rung)."""
    r = max(1, math.ceil(min_fraction * steps))
    if r >= steps:
        return []
    k = int(math.floor(math.log(steps / r, eta) + 1e-9))
    return [r * eta**i for i in range(k) if r * eta**i < steps]


def rung_order(points: Sequence[Sequence[float]], directions: Sequence[str], numbers: Sequence[int]) -> list[int]:
    """Indices of ``points`` from best to worst: non-dominated rank, then exclusive hypervolume contribution
    (larger first) within a rank, then trial number. Non-finite points come last."""
    n = len(points)
    if n == 0:
        return []
    pts = to_minimize(points, directions)
    finite = np.all(np.isfinite(pts), axis=1)
    ranks = nondominated_ranks(pts)
    contribution = np.zeros(n)
    if finite.any():
        lo, hi = pts[finite].min(axis=0), pts[finite].max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        scaled = np.where(finite[:, None], (pts - lo) / span, np.nan)
        ref = [1.1] * pts.shape[1]  # just past the worst observed value of each objective
        for rank in set(ranks[finite].tolist()):
            members = np.where(ranks == rank)[0]
            total = hypervolume(scaled[members], ref)
            for i in members:
                rest = scaled[[j for j in members if j != i]]
                contribution[i] = total - (hypervolume(rest, ref) if len(rest) else 0.0)
    key = [(int(ranks[i]) if finite[i] else n + 1, -round(float(contribution[i]), 12), numbers[i]) for i in range(n)]
    return sorted(range(n), key=lambda i: key[i])


def continues(mine: Sequence[float], number: int, recorded: Mapping[int, Sequence[float]], directions: Sequence[str],
              eta: int) -> bool:
    """Whether trial ``number`` with objective vector ``mine`` at a rung goes on, given the vectors
    ``recorded`` there by other trials (``{number: vector}``)."""
    others = {k: v for k, v in recorded.items() if k != number}
    numbers = [number, *others]
    order = rung_order([list(mine), *[list(v) for v in others.values()]], directions, numbers)
    keep = max(1, len(numbers) // eta)
    return order.index(0) < keep


@dataclass
class RungPlan:
    """What a worker needs to decide at each rung, as plain data: the rungs, the objectives (metric,
    direction), the hardware values measured before training are filled in by the worker, and a snapshot
    of the results recorded at each rung when the trial was submitted (``{step: {trial: vector}}``)."""

    number: int
    steps: list[int]
    objectives: list[tuple[str, str]]
    eta: int
    recorded: dict[int, dict[int, list[float]]] = field(default_factory=dict)

    def vector(self, metrics: dict[str, float]) -> list[float]:
        return [float(metrics.get(m, math.nan)) for m, _ in self.objectives]

    def decide(self, step: int, metrics: dict[str, float]) -> bool:
        """True to continue training after ``step``."""
        return continues(self.vector(metrics), self.number, self.recorded.get(step, {}),
                         [d for _, d in self.objectives], self.eta)


class RungBoard:
    """The results recorded at each rung of one search (the driver's copy; the journal holds each trial's
    ``rungs`` and ``metrics``, from which it is rebuilt on resume)."""

    def __init__(self, steps: list[int], objectives: list[tuple[str, str]], eta: int):
        self.steps, self.objectives, self.eta = steps, objectives, eta
        self.recorded: dict[int, dict[int, list[float]]] = {s: {} for s in steps}

    def add(self, number: int, rungs: list[dict[str, Any]], hardware: dict[str, float]) -> None:
        """Record trial ``number``'s rungs: its quality there, with the hardware values measured before training."""
        for r in rungs:
            if int(r["step"]) in self.recorded:
                merged = {**hardware, **r["metrics"]}
                self.recorded[int(r["step"])][number] = [float(merged.get(m, math.nan)) for m, _ in self.objectives]

    def plan(self, number: int) -> RungPlan:
        """The plan a new trial takes to its worker: a snapshot of what is recorded now."""
        snapshot = {s: dict(v) for s, v in self.recorded.items()}
        return RungPlan(number, list(self.steps), list(self.objectives), self.eta, snapshot)
