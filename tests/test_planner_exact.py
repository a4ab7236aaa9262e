"""The CP-SAT exact reference against brute force on a tiny instance."""

from __future__ import annotations

import itertools

import numpy as np

from dip.planner.exact import solve_exact
from dip.planner.problem import uniform_problem
from dip.sim.kernel import OK, simulate_arrays


def brute_force(problem) -> float:
    tg = problem.tg
    duration, _ = problem.task_durations(problem.cand.fastest)
    per_rank = [[t for t in range(tg.num_tasks) if tg.task_rank[t] == r] for r in range(problem.num_ranks)]
    zeros = np.zeros(tg.num_tasks)
    holds = np.zeros(tg.num_tasks, np.int64)
    best = np.inf
    for orders in itertools.product(*(itertools.permutations(ts) for ts in per_rank)):
        ptr = np.concatenate(([0], np.cumsum([len(o) for o in orders]))).astype(np.int64)
        tasks = np.asarray([t for o in orders for t in o], np.int64)
        status, span, *_ = simulate_arrays(
            ptr, tasks, duration, tg.pred_ptr, tg.pred_idx, tg.pred_delay, tg.succ_ptr, tg.succ_idx, zeros, zeros, holds
        )
        if status == OK:
            best = min(best, span)
    return float(best)


def test_exact_matches_brute_force_and_bounds():
    problem = uniform_problem(2, 2, 1, f=1.0, i=1.5, w=0.5)
    want = brute_force(problem)
    got = solve_exact(problem, time_limit_s=20, workers=1, costs="fastest")
    assert got.status == "optimal"
    assert abs(got.time_s - want) < 1e-6
    assert problem.lower_bound <= got.time_s + 1e-9 and abs(got.bound_s - got.time_s) < 1e-6


def test_exact_never_worse_than_its_hint_and_respects_memory():
    problem = uniform_problem(2, 3, 1, f=1.0, i=1.0, w=1.0, act_bytes=1.0, memory_limit_bytes=1.0)
    from dip.planner.evaluate import Evaluator, TrackConfig

    sched = Evaluator(problem).evaluate(problem.default_sequence, TrackConfig(0.0, "fast"))
    hint = [list(sched.tasks[sched.ptr[r] : sched.ptr[r + 1]]) for r in range(problem.num_ranks)]
    got = solve_exact(problem, time_limit_s=20, hint=hint, memory=True, workers=1, costs="fastest")
    assert got.memory and got.time_s <= sched.makespan + 1e-9
    assert got.time_s >= (3 + 2 - 1) * 3 - 1e-9  # one activation per rank at a time: no better than 1F1B
