"""The dual-queue greedy interleaving on hand-checked chains, including the memory cap."""

from __future__ import annotations

import math

import numpy as np

from dip.planner.evaluate import Evaluator, TrackConfig, active_items, tail_keys
from dip.planner.interleave import interleave, rank_orders
from dip.planner.problem import uniform_problem


def run(problem, cap=None, alternate=True, reserve=0.0, drain=False):
    tg = problem.tg
    duration, _ = problem.task_durations(problem.cand.fastest)
    act = problem.cand.mem[np.arange(len(problem.cand.count)), 0].astype(float)
    cap = problem.cap if cap is None else np.full(problem.num_ranks, float(cap))
    seq, _start, end, peak, forced = interleave(
        problem.num_ranks,
        tg.task_rank,
        tg.task_op,
        tg.task_stage,
        duration,
        act,
        cap,
        problem.priorities(problem.default_sequence),
        tg.pred_ptr,
        tg.succ_ptr,
        tg.succ_idx,
        problem.succ_delay,
        reserve,
        alternate,
        drain,
    )
    ptr, tasks = rank_orders(seq, tg.task_rank, problem.num_ranks)
    orders = {r: " ".join(str(tg.actions[t]) for t in tasks[ptr[r] : ptr[r + 1]]) for r in range(problem.num_ranks)}
    return orders, float(end.max()), peak, forced


def test_two_ranks_two_microbatches_is_1f1b():
    problem = uniform_problem(2, 2, 1, f=1.0, i=1.0, w=1.0)
    orders, makespan, _, forced = run(problem)
    assert orders == {0: "0F0 0F1 0B0 0B1", 1: "1F0 1B0 1F1 1B1"}
    assert makespan == (2 + 2 - 1) * 3 and forced == 0  # the 1F1B closed form (m + p - 1)(f + b)


def test_four_ranks_many_microbatches_reaches_the_closed_form():
    problem = uniform_problem(4, 8, 1, f=1.0, i=1.0, w=1.0)
    _, makespan, _peak, _ = run(problem)
    assert makespan == (8 + 4 - 1) * 3
    assert math.isclose(makespan, max(problem.tg.busiest_rank_bound(), problem.tg.critical_path_bound()) + 9)


def test_alternation_after_warmup():
    orders, _, _, _ = run(uniform_problem(3, 5, 1, 1.0, 1.0, 1.0))
    last = orders[2].split()
    assert last[:4] == ["2F0", "2B0", "2F1", "2B1"]  # the last rank alternates forward and backward
    first = orders[0].split()
    assert first[:3] == ["0F0", "0F1", "0F2"]  # warm-up: the first rank runs ahead


def test_memory_cap_disables_the_forward_queue():
    problem = uniform_problem(2, 4, 1, 1.0, 1.0, 1.0, act_bytes=1.0)
    orders, makespan, peak, forced = run(problem, cap=1.0)
    assert forced == 0 and peak.max() <= 1.0
    assert orders[0] == "0F0 0B0 0F1 0B1 0F2 0B2 0F3 0B3"  # one activation at a time
    unlimited, fast, _, _ = run(problem)
    assert fast < makespan and unlimited[0].startswith("0F0 0F1")


def test_over_capacity_is_forced_and_flagged():
    problem = uniform_problem(2, 2, 1, 1.0, 1.0, 1.0, act_bytes=1.0)
    _, _, peak, forced = run(problem, cap=0.5)
    assert forced > 0 and peak.max() > 0.5


def test_priority_mode_runs_all_forwards_first_when_they_rank_higher():
    problem = uniform_problem(2, 3, 1, 1.0, 1.0, 1.0)
    f_items = [i for i in problem.default_sequence if problem.items[i].direction == 0]
    b_items = [i for i in problem.default_sequence if problem.items[i].direction == 1]
    problem.default_sequence = np.asarray(f_items + b_items)
    orders, _, _, _ = run(problem, alternate=False)
    assert orders[1].split()[:3] == ["1F0", "1F1", "1F2"]


def test_evaluator_matches_the_simulator():
    from dip.planner.result import schedule_to_plan
    from dip.sim import simulate

    problem = uniform_problem(3, 6, 2, 1.0, 0.7, 0.5)
    sched = Evaluator(problem).evaluate(problem.default_sequence, TrackConfig(0.0, "fast"))
    plan = schedule_to_plan(problem, sched)
    assert math.isclose(simulate(plan, problem.costs, None).makespan, sched.makespan)


def _chain_arrays(edges, n):
    """Predecessor / successor CSR arrays of ``n`` tasks from ``(src, dst)`` edges (no delays)."""
    preds = [[s for s, d in edges if d == t] for t in range(n)]
    succs = [[d for s, d in edges if s == t] for t in range(n)]
    pred_ptr = np.cumsum([0] + [len(p) for p in preds]).astype(np.int64)
    succ_ptr = np.cumsum([0] + [len(s) for s in succs]).astype(np.int64)
    succ_idx = np.asarray([d for s in succs for d in s], np.int64)
    return pred_ptr, succ_ptr, succ_idx, np.zeros(len(succ_idx))


def test_a_blocked_ready_forward_does_not_hide_a_pending_one_that_fits():
    # rank 1 runs X, which releases F_b on rank 0 at t = 1. F_a is ready on rank 0 at t = 0 but blocked:
    # with reserve, it must leave room for F_b (higher priority). F_b fits once released and runs first;
    # after B_b frees its bytes F_a fits too, so nothing is forced over the cap.
    x, fb, bb, fa, ba = range(5)
    pred_ptr, succ_ptr, succ_idx, delay = _chain_arrays([(x, fb), (fb, bb), (fa, ba)], 5)
    rank = np.array([1, 0, 0, 0, 0], np.int64)
    op = np.array([0, 0, 1, 0, 1], np.int64)
    stage = np.array([2, 0, 0, 1, 1], np.int64)
    act = np.array([1.0, 1.0, 0.0])
    prio = np.array([0, 0, 1, 2, 3], np.int64)
    seq, start, _, peak, forced = interleave(
        2, rank, op, stage, np.ones(5), act, np.array([1.5, 10.0]), prio, pred_ptr, succ_ptr, succ_idx, delay, 1.0, True
    )
    assert forced == 0 and peak[0] <= 1.5
    assert [int(t) for t in seq if rank[t] == 0] == [fb, bb, fa, ba]
    assert start[fb] == 1.0 and start[fa] == 3.0


def test_drain_runs_forwards_first_once_every_micro_batch_started():
    problem = uniform_problem(3, 4, 1, 1.0, 1.0, 1.0)
    plain, _plain_span, _, _ = run(problem)
    drained, _span, _, forced = run(problem, drain=True)
    assert forced == 0 and plain != drained
    last = drained[2].split()
    assert last.index("2F3") < last.index("2B2")  # the last forward no longer waits behind a backward
    assert plain[2].split().index("2F3") > plain[2].split().index("2B2")


def test_tail_keys_rank_tasks_by_the_work_still_ahead():
    problem = uniform_problem(3, 4, 2, 1.0, 0.7, 0.5)
    tg = problem.tg
    duration, _ = problem.task_durations(problem.cand.fastest)
    keys = tail_keys(problem, duration)
    for t in range(tg.num_tasks):
        for e in range(tg.succ_ptr[t], tg.succ_ptr[t + 1]):
            assert keys[t] < keys[tg.succ_idx[e]]  # a predecessor has the longer path ahead
    sched = Evaluator(problem).evaluate(problem.default_sequence, TrackConfig(0.0, "fast", backward="tail", drain=True))
    assert sched.feasible and "backward=tail" in str(sched.config) and "drain" in str(sched.config)


def test_backward_items_are_inactive_under_tail_ordering():
    problem = uniform_problem(3, 5, 2, 1.0, 0.7, 0.5)
    config = TrackConfig(0.0, "fast", backward="tail", drain=True)
    mask = active_items(problem, config)
    assert mask is not None and active_items(problem, TrackConfig(0.0, "fast")) is None
    assert all(mask[i] == (it.direction == 0) for i, it in enumerate(problem.items))
    ev = Evaluator(problem, passes=1)
    seq = problem.default_sequence
    forwards, backwards = [i for i in seq if mask[i]], [i for i in seq if not mask[i]]
    a = ev.evaluate(np.asarray(forwards + backwards), config)
    b = ev.evaluate(np.asarray(forwards + backwards[::-1]), config)
    assert a.tasks.tolist() == b.tasks.tolist()  # backward items' order is never read
    c = ev.evaluate(np.asarray(forwards + backwards[::-1]), TrackConfig(0.0, "fast", alternate=False))
    d = ev.evaluate(np.asarray(forwards + backwards), TrackConfig(0.0, "fast", alternate=False))
    assert c.tasks.tolist() != d.tasks.tolist()  # ...while the priority mode reads it
