"""Pareto fronts and hypervolume, for any number of objectives.

Every function takes points already turned into minimisation form (:func:`to_minimize` negates the
objectives to maximise). Rows with a NaN or infinite value are never on a front and add no hypervolume:
they get rank ``-1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["to_minimize", "dominates", "nondominated_ranks", "pareto_mask", "hypervolume", "reference_point"]


def to_minimize(values: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """``(n, m)`` array in which smaller is better for every column."""
    arr = np.asarray(values, dtype=float).reshape(len(values), len(directions))
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return arr * signs


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` is no worse than ``b`` everywhere and better somewhere (minimisation)."""
    return bool(np.all(a <= b) and np.any(a < b))


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Rank of each row: 0 for the Pareto front, 1 for the front once rank 0 is removed, ...; -1 if not finite.

    Equal points do not dominate each other, so duplicates share a rank.
    """
    points = np.asarray(points, dtype=float)
    n = len(points)
    ranks = np.full(n, -1, dtype=int)
    finite = np.where(np.all(np.isfinite(points), axis=1))[0] if n else np.array([], dtype=int)
    remaining = list(finite)
    rank = 0
    while remaining:
        sub = points[remaining]
        front = [
            idx for i, idx in enumerate(remaining)
            if not any(dominates(sub[j], sub[i]) for j in range(len(remaining)) if j != i)
        ]
        ranks[front] = rank
        remaining = [idx for idx in remaining if idx not in set(front)]
        rank += 1
    return ranks


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows on the Pareto front."""
    return nondominated_ranks(points) == 0


def hypervolume(points: np.ndarray, ref: Sequence[float]) -> float:
    """Volume dominated by ``points`` and bounded by ``ref`` (minimisation). Points not strictly better than
    ``ref`` in every objective contribute nothing. Exact, by slicing along the last objective (HSO)."""
    ref_arr = np.asarray(ref, dtype=float)
    pts = np.asarray(points, dtype=float).reshape(-1, len(ref_arr))
    pts = pts[np.all(np.isfinite(pts), axis=1) & np.all(pts < ref_arr, axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[pareto_mask(pts)]
    return _hso(pts, ref_arr)


def _hso(pts: np.ndarray, ref: np.ndarray) -> float:
    if pts.shape[1] == 1:
        return float(ref[0] - pts[:, 0].min())
    if pts.shape[1] == 2:  # sweep: sort by x, keep the running best y
        order = pts[np.argsort(pts[:, 0], kind="stable")]
        volume, best_y = 0.0, ref[1]
        for x, y in order:
            if y < best_y:  # this box adds the strip between the previous best y and its own y
                volume += (ref[0] - x) * (best_y - y)
                best_y = y
        return float(volume)
    order = pts[np.argsort(pts[:, -1], kind="stable")]
    volume = 0.0
    for i in range(len(order)):
        upper = order[i + 1, -1] if i + 1 < len(order) else ref[-1]
        depth = upper - order[i, -1]
        if depth > 0:
            slab = order[: i + 1, :-1]
            volume += depth * _hso(slab[pareto_mask(slab)], ref[:-1])
    return float(volume)


def reference_point(points: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """A reference point just worse than every finite point: the worst value of each objective plus
    ``margin`` times its range (or of its magnitude, when all values are equal)."""
    pts = np.asarray(points, dtype=float)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) == 0:
        raise ValueError("no finite points to derive a reference point from")
    worst, best = pts.max(axis=0), pts.min(axis=0)
    span = worst - best
    span = np.where(span > 0, span, np.maximum(np.abs(worst), 1e-12))
    return worst + margin * span
