"""Pareto ranks, hypervolume and reference points against hand-computed cases and Optuna's own code."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nas.pareto import dominates, hypervolume, nondominated_ranks, pareto_mask, reference_point, to_minimize
from nas.search import natural_reference

nan, inf = math.nan, math.inf


# --- dominance and ranks ---------------------------------------------------------------------------------
def test_dominates_needs_no_worse_everywhere_and_better_somewhere():
    a, b = np.array([1.0, 2.0]), np.array([1.0, 3.0])
    assert dominates(a, b)
    assert not dominates(b, a)
    assert not dominates(a, a)  # equal points do not dominate each other
    assert not dominates(np.array([0.0, 5.0]), np.array([5.0, 0.0]))  # a trade-off


@pytest.mark.parametrize(
    ("points", "ranks"),
    [
        # a staircase, one point behind it, one behind that
        ([[1, 3], [2, 2], [3, 1], [3, 3], [4, 4]], [0, 0, 0, 1, 2]),
        # ties in one objective: the better of the two in the other objective wins
        ([[1, 2], [1, 3], [2, 1]], [0, 1, 0]),
        # duplicates share their rank, on and off the front
        ([[2, 2], [2, 2], [3, 3], [3, 3]], [0, 0, 1, 1]),
        # a single point, and points all equal
        ([[5, 5]], [0]),
        ([[1, 1], [1, 1], [1, 1]], [0, 0, 0]),
        # a chain: each point dominates the next
        ([[3, 3], [1, 1], [2, 2]], [2, 0, 1]),
    ],
)
def test_ranks_two_objectives(points, ranks):
    assert nondominated_ranks(np.array(points, dtype=float)).tolist() == ranks


def test_ranks_three_objectives():
    pts = np.array([
        [1, 0, 0], [0, 1, 0], [0, 0, 1],  # the front: each best in one objective
        [1, 1, 0],  # dominated by (1,0,0) and (0,1,0)
        [1, 1, 1],  # dominated by everything above
        [0, 0, 1],  # duplicate of a front point
        [2, 2, 2],
    ], dtype=float)
    assert nondominated_ranks(pts).tolist() == [0, 0, 0, 1, 2, 0, 3]


def test_non_finite_rows_get_rank_minus_one_and_leave_the_others_alone():
    pts = np.array([[1, 3], [nan, 0], [3, 1], [inf, 0], [-inf, -inf], [2, nan], [4, 4]], dtype=float)
    # -inf would dominate everything if it were ranked; it must not be
    assert nondominated_ranks(pts).tolist() == [0, -1, 0, -1, -1, -1, 1]
    assert pareto_mask(pts).tolist() == [True, False, True, False, False, False, False]


def test_ranks_of_nothing_and_of_only_non_finite_rows():
    assert nondominated_ranks(np.zeros((0, 2))).tolist() == []
    assert nondominated_ranks(np.array([[nan, 1.0], [inf, 2.0]])).tolist() == [-1, -1]


@pytest.mark.parametrize("m", [2, 3, 4])
def test_ranks_match_optunas_non_domination_sort(m):
    from optuna.study._multi_objective import _fast_non_domination_rank

    rng = np.random.default_rng(m)
    for _ in range(20):
        n = int(rng.integers(1, 40))
        pts = rng.integers(0, 5, size=(n, m)).astype(float)  # a coarse grid: many ties and duplicates
        assert nondominated_ranks(pts).tolist() == _fast_non_domination_rank(pts).tolist()


# --- hypervolume ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("points", "ref", "volume"),
    [
        # 2-d staircase: strips 3*1 + 2*1 + 1*1
        ([[1, 3], [2, 2], [3, 1]], [4, 4], 6.0),
        # a dominated point and a duplicate add nothing
        ([[1, 3], [2, 2], [3, 1], [3, 3], [2, 2]], [4, 4], 6.0),
        # 1 objective: the distance from the best point to the reference
        ([[3], [1], [2]], [4], 3.0),
        # 3-d: one box
        ([[1, 1, 1]], [2, 3, 4], 6.0),
        # 3-d: two boxes of 4 overlapping in 2
        ([[0, 0, 1], [0, 1, 0]], [2, 2, 2], 6.0),
        # 3-d: the cube [0,2]^3 minus the undominated corner [0,1]^3
        ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [2, 2, 2], 7.0),
        # 4-d: one box
        ([[0, 0, 0, 0]], [1, 2, 3, 4], 24.0),
    ],
)
def test_hypervolume_hand_computed(points, ref, volume):
    assert hypervolume(np.array(points, dtype=float), ref) == pytest.approx(volume)


def test_points_not_strictly_better_than_the_reference_add_nothing():
    ref = [4.0, 4.0]
    base = hypervolume(np.array([[2.0, 2.0]]), ref)
    assert base == pytest.approx(4.0)
    for worse in ([5, 0], [0, 5], [4, 0], [0, 4], [4, 4], [9, 9]):
        assert hypervolume(np.array([[2.0, 2.0], worse], dtype=float), ref) == pytest.approx(base), worse
    assert hypervolume(np.array([[5.0, 5.0], [4.0, 1.0]]), ref) == 0.0


def test_non_finite_rows_add_no_hypervolume():
    ref = [4.0, 4.0]
    pts = np.array([[2, 2], [nan, 0], [-inf, -inf], [0, inf], [1, nan]], dtype=float)
    assert hypervolume(pts, ref) == pytest.approx(4.0)
    assert hypervolume(np.array([[nan, nan]]), ref) == 0.0


def test_hypervolume_of_nothing_is_zero():
    assert hypervolume(np.zeros((0, 3)), [1, 1, 1]) == 0.0
    assert hypervolume([], [1.0, 1.0]) == 0.0


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_matches_optuna_on_random_sets(m):
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(100 + m)
    ref = np.full(m, 1.0)
    for _ in range(25):
        n = int(rng.integers(1, 25 if m < 4 else 12))
        pts = rng.uniform(-0.2, 1.3, size=(n, m))  # some points cross the reference point
        if rng.random() < 0.5:
            pts = np.round(pts, 1)  # ties and duplicates
        inside = pts[np.all(pts <= ref, axis=1)]  # Optuna refuses points worse than the reference
        expected = compute_hypervolume(inside, ref) if len(inside) else 0.0
        assert hypervolume(pts, ref) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_hypervolume_grows_with_a_new_front_point_and_not_with_a_dominated_one():
    ref = [10.0, 10.0, 10.0]
    pts = np.array([[1, 5, 5], [5, 1, 5]], dtype=float)
    hv = hypervolume(pts, ref)
    assert hypervolume(np.vstack([pts, [[6, 6, 6]]]), ref) == pytest.approx(hv)
    assert hypervolume(np.vstack([pts, [[5, 5, 1]]]), ref) > hv


# --- directions and reference points --------------------------------------------------------------------
def test_to_minimize_negates_the_columns_to_maximise():
    out = to_minimize([[0.9, 5.0, 100.0], [0.5, 2.0, 50.0]], ["maximize", "minimize", "maximize"])
    assert out.shape == (2, 3)
    assert out.tolist() == [[-0.9, 5.0, -100.0], [-0.5, 2.0, -50.0]]


def test_to_minimize_makes_the_best_trade_offs_rank_zero():
    # (accuracy max, latency min): 0.9 @ 5 ms and 0.7 @ 1 ms trade off; 0.6 @ 6 ms loses to both
    values = [[0.9, 5.0], [0.7, 1.0], [0.6, 6.0]]
    assert nondominated_ranks(to_minimize(values, ["maximize", "minimize"])).tolist() == [0, 0, 1]
    # the same numbers with both maximised rank differently: 0.6 @ 6 is now best on the second objective
    assert nondominated_ranks(to_minimize(values, ["maximize", "maximize"])).tolist() == [0, 1, 0]


def test_to_minimize_of_no_rows():
    assert to_minimize([], ["maximize", "minimize"]).shape == (0, 2)


def test_reference_point_is_just_worse_than_every_finite_point():
    pts = np.array([[1.0, 10.0], [3.0, 20.0], [nan, 100.0]])
    assert reference_point(pts).tolist() == pytest.approx([3.2, 21.0])
    # a constant column: 10% of its magnitude
    assert reference_point(np.array([[5.0, 1.0], [5.0, 2.0]])).tolist() == pytest.approx([5.5, 2.1])
    with pytest.raises(ValueError, match="no finite points"):
        reference_point(np.array([[nan, 1.0]]))


def test_natural_reference_for_the_usual_metrics():
    # accuracy (max, >= 0) -> 0; latency and memory (min, > 0) -> twice the worst
    values = [[0.5, 2.0, 10.0], [0.8, 4.0, 30.0]]
    assert natural_reference(values, ["maximize", "minimize", "minimize"]) == pytest.approx([0.0, 8.0, 60.0])


def test_natural_reference_for_signed_metrics_falls_back_to_worst_plus_ten_percent():
    # a negative metric to maximise (e.g. -loss): worst -3, range 2 -> -3.2
    # a minimised metric that crosses zero: worst 1, range 3 -> 1.3
    values = [[-3.0, -2.0], [-1.0, 1.0]]
    assert natural_reference(values, ["maximize", "minimize"]) == pytest.approx([-3.2, 1.3])


def test_natural_reference_is_dominated_by_every_point_it_was_derived_from():
    rng = np.random.default_rng(7)
    directions = ["maximize", "minimize", "minimize", "maximize"]
    values = np.column_stack([rng.uniform(0, 1, 12), rng.uniform(0.1, 5, 12), rng.uniform(-2, 3, 12),
                              rng.uniform(-5, -1, 12)]).tolist()
    ref = natural_reference(values, directions)
    pts, ref_min = to_minimize(values, directions), to_minimize([ref], directions)[0]
    assert np.all(pts < ref_min)
    # so every point adds to the hypervolume
    assert hypervolume(pts, ref_min) > 0


def test_natural_reference_ignores_non_finite_values():
    values = [[0.5, 2.0], [0.9, 4.0], [0.7, inf]]
    assert natural_reference(values, ["maximize", "minimize"]) == pytest.approx([0.0, 8.0])
