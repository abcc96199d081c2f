"""A front a user can trust: the latency of the front, and of every trial that might be on it, measured again
at the end of a search with nothing else running.

During a search a trial's latency is timed while other trials train on the same machine, so the median can be
several times the quiet figure. Each trial records a 95% confidence interval of its median
(:func:`nas.measure.median_interval`). At the end, the candidates are the front and every trial that could
be on it within those intervals: not dominated, at the low end of its interval, by any front trial at the high
end of its own. Each is re-timed alone (one Ray task at a time, the spec's thread count, ``search.verify.repeats``
forwards), the values are stored beside the first ones (study attribute ``verified.<trial>``, MLflow metrics
``verified_<metric>``), and the front is recomputed from them (:func:`nas.search.store.study_rows`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..architecture import Architecture
from ..pareto import dominates, nondominated_ranks, to_minimize
from ..report import TrialRow
from ..spec import Spec
from ..trial import limits_of
from .executor import RayExecutor
from .store import StudyStore, study_rows
from .tracking import SearchTracker

__all__ = ["verification_candidates", "verify_front", "LATENCY_METRICS"]

#: Latency metrics re-measured, and the interval each one's first value came with (low, high), if any.
LATENCY_METRICS = {"latency_ms": ("latency_ci_low_ms", "latency_ci_high_ms"), "latency_p90_ms": None}


def verification_candidates(rows: list[TrialRow], objectives: list[tuple[str, str]]) -> list[int]:
    """The numbers of the feasible rows to re-measure: the front, and each row whose optimistic vector (latency
    at the low end of its interval) no front row's pessimistic vector (the high end) dominates."""
    rows = [r for r in rows if r.feasible]
    if not rows:
        return []
    directions = [d for _, d in objectives]
    values = np.array([r.values for r in rows], dtype=float)
    low, high = values.copy(), values.copy()
    for i, (metric, _) in enumerate(objectives):
        bounds = LATENCY_METRICS.get(metric)
        if bounds:
            low[:, i] = [r.metrics.get(bounds[0], r.values[i]) for r in rows]
            high[:, i] = [r.metrics.get(bounds[1], r.values[i]) for r in rows]
    on_front = nondominated_ranks(to_minimize(values.tolist(), directions)) == 0
    # optimistic for "minimize" latency is the low end; the pessimistic the high end
    best_case, worst_case = to_minimize(low.tolist(), directions), to_minimize(high.tolist(), directions)
    front = [i for i in range(len(rows)) if on_front[i]]
    out = []
    for i, row in enumerate(rows):
        if on_front[i] or not any(dominates(worst_case[f], best_case[i]) for f in front):
            out.append(row.number)
    return out


def verify_front(spec: Spec, store: StudyStore, executor: RayExecutor, tracker: SearchTracker,
                 objectives: list[tuple[str, str]], wait: Callable[[object], None],
                 say: Callable[[str], None]) -> int:
    """Re-measure the candidates not yet verified, one at a time; returns how many were. ``wait(ref)`` blocks
    until a Ray ref is ready (checking for a stop request while it waits)."""
    if not spec.search.verify.enabled or not any(m in LATENCY_METRICS for m, _ in objectives):
        return 0
    study = store.study
    todo = [n for n in verification_candidates(study_rows(study), objectives)
            if f"verified.{n}" not in study.user_attrs]
    limits = [(metric, limit) for _, metric, limit in limits_of(spec)]
    trials = study.get_trials(deepcopy=False)
    done = 0
    for number in todo:
        t = trials[number]
        arch = Architecture.model_validate(t.user_attrs["architecture"])
        ref = executor.submit(arch, verify_repeats=spec.search.verify.repeats)
        wait(ref)
        out = executor.output(ref, arch)
        if out.result.status != "ok":
            say(f"  verification of trial {number} failed ({out.result.reason}); its first values stay")
            continue
        measured = {k: v for k, v in out.result.metrics.items() if k.startswith("latency")}
        metrics = {**t.user_attrs.get("metrics", {}), **measured}
        constraints = [metrics[m] - limit for m, limit in limits if m in metrics]
        study.set_user_attr(f"verified.{number}", {"metrics": measured, "constraints": constraints})
        tracker.log_verified(number, measured)
        first = t.user_attrs.get("metrics", {}).get("latency_ms", float("nan"))
        say(f"  verified trial {number}: latency_ms {first:.4g} -> {measured['latency_ms']:.4g} "
            f"(95% CI {measured['latency_ci_low_ms']:.4g}-{measured['latency_ci_high_ms']:.4g}, measured alone)")
        done += 1
    return done
