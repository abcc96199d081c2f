"""The multi-objective rung rule of early stopping (nas.search.stopping), against hand-computed cases and
properties: a trial dominating every other always continues whatever the arrival order, the decision does not
depend on the order the recorded results are held in, and 1/eta of a rung goes on."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from nas.pareto import dominates, nondominated_ranks, to_minimize
from nas.search.stopping import RungBoard, continues, rung_order, rung_steps

MIN2 = ["minimize", "minimize"]
OBJ3 = ["maximize", "minimize", "minimize"]  # accuracy, latency, memory: the quickstart's objectives


@pytest.mark.parametrize(("steps", "fraction", "eta", "expected"), [
    (300, 0.1, 3, [30, 90]),      # the full budget (300) is the top rung, never a stopping point
    (20, 0.1, 3, [2, 6]),
    (1000, 0.1, 2, [100, 200, 400]),  # 800 = r * eta^floor(log_eta(R / r)) stands for the top rung
    (100, 0.5, 3, []),            # r = 50, 50 * 3 > 100: no room for a rung
    (10, 0.1, 3, [1, 3]),
])
def test_rungs_are_geometric_from_a_fraction_of_the_budget(steps, fraction, eta, expected):
    assert rung_steps(steps, fraction, eta) == expected


def test_non_dominated_rank_comes_first():
    # (min, min): a=(0,0) dominates everything; b and c are mutually non-dominated; d is dominated by b and c
    points = [[2, 2], [0, 0], [1, 0.5], [0.5, 1]]
    order = rung_order(points, MIN2, numbers=[10, 11, 12, 13])
    assert order[0] == 1 and order[-1] == 0
    assert set(order[1:3]) == {2, 3}


def test_within_a_rank_the_larger_hypervolume_contribution_first():
    # Scaled to [0, 1] with the reference at 1.1 in each objective, the exclusive contributions are:
    # a=(0,1): 0.5 * 0.1 = 0.05; b=(0.5,0.5): 0.5 * 0.5 = 0.25; c=(1,0): 0.1 * 0.5 = 0.05.
    points = [[0, 1], [0.5, 0.5], [1, 0]]
    assert rung_order(points, MIN2, numbers=[7, 8, 9]) == [1, 0, 2]  # b; then a and c tie: lower number first
    assert rung_order(points, MIN2, numbers=[9, 8, 7]) == [1, 2, 0]


def test_non_finite_points_come_last():
    points = [[float("nan"), 0], [1, 1], [2, 2]]
    assert rung_order(points, MIN2, numbers=[0, 1, 2]) == [1, 2, 0]


def test_the_order_is_a_valid_non_dominated_sorting():
    """No point comes after a point it dominates (checked by brute force against the definition)."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        points = rng.random((9, 3)).round(1).tolist()  # rounding makes ties and duplicates common
        order = rung_order(points, OBJ3, numbers=list(range(9)))
        assert sorted(order) == list(range(9))
        pts = to_minimize(points, OBJ3)
        position = {i: k for k, i in enumerate(order)}
        for i, j in itertools.permutations(range(9), 2):
            if dominates(pts[i], pts[j]):
                assert position[i] < position[j], (points, order)
        ranks = nondominated_ranks(pts)
        assert [ranks[i] for i in order] == sorted(ranks)


def arrive(vectors: dict[int, list[float]], order: list[int], eta: int,
           directions: list[str] = OBJ3) -> dict[int, bool]:
    """Trials reach a rung one at a time in ``order``: each is decided against those before it."""
    recorded: dict[int, list[float]] = {}
    decided = {}
    for number in order:
        decided[number] = continues(vectors[number], number, recorded, directions, eta)
        recorded[number] = vectors[number]
    return decided


def test_a_trial_dominating_all_others_continues_whatever_the_arrival_order():
    rng = random.Random(0)
    others = {n: [rng.uniform(0.2, 0.8), rng.uniform(2, 8), rng.uniform(20, 80)] for n in range(1, 7)}
    best = {0: [0.95, 1.0, 10.0]}  # higher accuracy, lower latency and memory than every other
    vectors = {**best, **others}
    for order in itertools.permutations(vectors):  # all 5040 orders of arrival
        assert arrive(vectors, list(order), eta=3)[0], order


def test_a_dominating_trial_continues_among_many_large_contributors():
    """The others are mutually non-dominated and each holds a large exclusive hypervolume; the dominating
    trial is still ranked first, at every position of arrival and for every eta."""
    others = {n: [0.1 * n, 0.5 * n, 8 - n] for n in range(1, 8)}  # a trade-off curve: all rank 0
    vectors = {0: [0.9, 0.4, 0.5], **others}
    pts = to_minimize(list(vectors.values()), OBJ3)
    assert all(dominates(pts[0], p) for p in pts[1:])
    for eta in (2, 3, 4):
        for position in range(len(vectors)):
            order = [n for n in others][:position] + [0] + [n for n in others][position:]
            assert arrive(vectors, order, eta)[0]


def test_the_decision_does_not_depend_on_how_the_recorded_results_are_held():
    rng = random.Random(1)
    recorded = {n: [rng.random(), rng.random() * 10, rng.random() * 100] for n in range(12)}
    mine = [0.5, 5.0, 50.0]
    expected = continues(mine, 99, recorded, OBJ3, 3)
    for seed in range(20):
        items = list(recorded.items())
        random.Random(seed).shuffle(items)
        assert continues(mine, 99, dict(items), OBJ3, 3) == expected


def test_one_in_eta_of_a_full_rung_goes_on():
    """Judged as if each arrived last: exactly floor(n / eta) of n results continue."""
    rng = random.Random(2)
    for n, eta in [(9, 3), (10, 3), (8, 2), (12, 4)]:
        recorded = {k: [rng.random(), rng.random(), rng.random()] for k in range(n)}
        going_on = [k for k, v in recorded.items() if continues(v, k, recorded, OBJ3, eta)]
        assert len(going_on) == n // eta


def test_the_first_arrival_always_continues_and_a_dominated_second_stops():
    assert continues([0.1, 5, 5], 1, {}, OBJ3, 3)
    assert not continues([0.1, 5, 5], 1, {0: [0.9, 1, 1]}, OBJ3, 3)
    assert continues([0.9, 1, 1], 1, {0: [0.1, 5, 5]}, OBJ3, 3)


def test_stopping_is_deterministic_for_an_arrival_order():
    rng = random.Random(3)
    vectors = {n: [rng.random(), rng.random(), rng.random()] for n in range(10)}
    order = list(range(10))
    assert arrive(vectors, order, 3) == arrive(vectors, order, 3)


def test_the_board_gives_workers_a_snapshot_with_hardware_values_filled_in():
    board = RungBoard([2, 6], [("accuracy", "maximize"), ("latency_ms", "minimize")], 3)
    board.add(0, [{"step": 2, "metrics": {"accuracy": 0.5}, "continued": True}], {"latency_ms": 3.0})
    plan = board.plan(1)
    assert plan.recorded == {2: {0: [0.5, 3.0]}, 6: {}}
    board.add(1, [{"step": 2, "metrics": {"accuracy": 0.1}, "continued": False}], {"latency_ms": 4.0})
    assert plan.recorded[2] == {0: [0.5, 3.0]}  # the snapshot taken at submission does not change
    assert not plan.decide(2, {"accuracy": 0.1, "latency_ms": 4.0})  # dominated by trial 0
    assert plan.decide(2, {"accuracy": 0.6, "latency_ms": 2.0})
