"""Per-layer memory optimisation: knapsack candidates, greedy and ILP against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dip.planner.candidates import pareto_front, select_candidates
from dip.planner.memory import greedy_select, ilp_select, live_ranges

OPTIONS = [("none", 0.0, 10.0), ("selective", 1.0, 7.0), ("full", 4.0, 2.0)]


def brute_front(layers, options):
    points = {}
    for combo in itertools.product(range(len(options)), repeat=layers):
        t = sum(options[k][1] for k in combo)
        m = sum(options[k][2] for k in combo)
        points[(round(t, 9), round(m, 9))] = (t, m)
    pts = sorted(points.values(), key=lambda p: (p[1], p[0]))
    front, best = [], float("inf")
    for t, m in pts:
        if t < best - 1e-12:
            front.append((t, m))
            best = t
    return front


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_pareto_front_matches_brute_force(layers):
    secs, mem, counts = pareto_front(layers, OPTIONS)
    got = list(zip(secs.round(9), mem.round(9)))
    want = [(round(t, 9), round(m, 9)) for t, m in brute_front(layers, OPTIONS)]
    assert got == want
    assert (counts.sum(axis=1) == layers).all()


def test_candidate_selection_keeps_extremes_and_buckets():
    secs, mem, _ = pareto_front(8, OPTIONS)
    keep = select_candidates(secs, mem, 5)
    assert keep[0] == 0 and keep[-1] == len(mem) - 1 and len(keep) <= 5
    edges = np.linspace(mem[0], mem[-1], 4)
    for a, b in itertools.pairwise(edges):  # each bucket's fastest point is kept
        inside = [i for i in range(len(mem)) if a <= mem[i] <= b]
        assert min(inside, key=lambda i: secs[i]) in keep or not inside


def tiny_instance(rng):
    """One rank, 4 stage pairs in the order F0 F1 B0 F2 B1 F3 B2 B3; 3 candidates each."""
    order = [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (3, 0), (2, 1), (3, 1)]  # (stage, op)
    task_stage = np.array([s for s, _ in order], np.int64)
    task_op = np.array([op for _, op in order], np.int64)
    ptr = np.array([0, len(order)], np.int64)
    tasks = np.arange(len(order), dtype=np.int64)
    mem = np.sort(rng.uniform(1, 10, (4, 3)), axis=1)
    cand_t = -np.sort(-rng.uniform(1, 5, (4, 3)), axis=1)  # more memory, less time
    count = np.full(4, 3, np.int64)
    return ptr, tasks, task_op, task_stage, cand_t, mem, count


def brute_best(ptr, tasks, task_op, task_stage, cand_t, mem, count, cap):
    stages, first, last = live_ranges(ptr, tasks, task_op, task_stage, 4, 0)
    best = None
    for choice in itertools.product(range(3), repeat=4):
        load = [sum(mem[s, choice[s]] for s in stages if first[s] <= i <= last[s]) for i in range(len(stages))]
        if max(load) <= cap + 1e-9:
            t = sum(cand_t[s, choice[s]] for s in range(4))
            if best is None or t < best[0] - 1e-12:
                best = (t, choice)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_greedy_is_feasible_and_ilp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    ptr, tasks, task_op, task_stage, cand_t, mem, count = tiny_instance(rng)
    cap = float(rng.uniform(mem[:, 0].sum() * 0.6, mem[:, 2].sum()))
    best = brute_best(ptr, tasks, task_op, task_stage, cand_t, mem, count, cap)
    choice, overflow = greedy_select(ptr, tasks, task_op, task_stage, cand_t, mem, count, np.array([cap]))
    if best is None:
        assert overflow[0] > 0
        return
    stages, first, last = live_ranges(ptr, tasks, task_op, task_stage, 4, 0)
    load = [sum(mem[s, choice[s]] for s in stages if first[s] <= i <= last[s]) for i in range(4)]
    assert max(load) <= cap + 1e-6
    greedy_time = sum(cand_t[s, choice[s]] for s in range(4))
    assert greedy_time >= best[0] - 1e-9
    exact = ilp_select(
        ptr, tasks, task_op, task_stage, cand_t, mem, count, np.array([cap]), 0, choice, gap=0.0, time_limit=None
    )
    final = choice if exact is None else exact
    assert abs(sum(cand_t[s, final[s]] for s in range(4)) - best[0]) < 1e-6


def test_live_ranges_follow_the_rank_order():
    rng = np.random.default_rng(0)
    ptr, tasks, task_op, task_stage, *_ = tiny_instance(rng)
    stages, first, last = live_ranges(ptr, tasks, task_op, task_stage, 4, 0)
    assert stages.tolist() == [0, 1, 2, 3]
    assert first.tolist() == [0, 1, 2, 3] and last.tolist() == [1, 2, 3, 3]
