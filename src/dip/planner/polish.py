"""After the tree search: polishing the best schedule (the starting point is tuned in
:mod:`dip.planner.tuning`).

* :func:`polish` (beyond the paper) improves one schedule in four steps, each kept only when it helps:
  :func:`refine` re-interleaves it with its own chosen candidates (bytes and durations);
  :func:`priority_search` climbs over the priorities of unit passes (finer than MCTS's items);
  :func:`ilp_polish` solves the per-rank memory ILP of §5.3 on its order; :func:`move_search` runs an
  iterated local search on the rank orders themselves (:mod:`dip.planner.local_search`).

Budget mode splits the time given by the deadline; a rollout budget (deterministic mode) sizes each
step by work instead (evaluations, task-steps), so results never depend on the clock.
"""

from __future__ import annotations

import math
import time

import numpy as np

from dip.planner.evaluate import Evaluator
from dip.planner.local_search import move_descent, move_item, unit_descent
from dip.planner.memory import ilp_select
from dip.planner.problem import PlanProblem

__all__ = [
    "ILP_MAX_COLUMNS",
    "ILP_NODE_LIMIT",
    "ILP_SHARE",
    "ILP_TIME_LIMIT_S",
    "MOVE_CHUNK_WORK",
    "MOVE_KICK",
    "MOVE_MAX_EVALS",
    "MOVE_PATIENCE",
    "MOVE_REACH",
    "MOVE_WORK",
    "PRIO_EVALS_PER_ROLLOUT",
    "PRIO_KICK",
    "PRIO_PATIENCE",
    "PRIO_REACH",
    "PRIO_SHARE",
    "PRIO_WORK",
    "REFINE_ROUNDS",
    "UNIT_REACH",
    "ilp_polish",
    "move_search",
    "polish",
    "priority_search",
    "refine",
]

REFINE_ROUNDS = 6
PRIO_SHARE = 0.3  # of the polishing time (after 10% for refining); the ILP gets ILP_SHARE, moves the rest
ILP_SHARE = 0.15
MOVE_REACH = 6
UNIT_REACH = 3
MOVE_KICK = 3
MOVE_PATIENCE = 60  # kicks without improvement before the iterated local search stops
MOVE_MAX_EVALS = 300_000
MOVE_CHUNK_WORK = 2e6
MOVE_WORK = 5e7
PRIO_REACH = 4
PRIO_WORK = 2e6
PRIO_EVALS_PER_ROLLOUT = 100
PRIO_KICK = 3
PRIO_PATIENCE = 30
ILP_TIME_LIMIT_S = 0.5
ILP_NODE_LIMIT = 200
ILP_MAX_COLUMNS = 1500


def polish(
    ev: Evaluator, problem: PlanProblem, state, deadline: float, rollouts: int | None = None, seed: int = 0
) -> None:
    """Refine the incumbent with its own candidates, reorder unit passes, solve the memory ILP per rank,
    then move stages (orders are polished last, for the memory candidates they will run with). ``rollouts``
    (deterministic mode) sizes the work; otherwise ``deadline`` stops it."""
    deterministic = rollouts is not None
    now = time.perf_counter()
    left = max(deadline - now, 0.0) if math.isfinite(deadline) else 0.0

    def until(fraction: float) -> float:
        return deadline if not math.isfinite(deadline) else now + fraction * left

    state.phase = "refine"
    refine(ev, problem, state, until(0.1), deterministic)
    prio_evals = None
    if deterministic:
        prio_evals = int(min(PRIO_EVALS_PER_ROLLOUT * max(rollouts, 1), PRIO_WORK // max(problem.num_tasks, 1)))
    state.phase = "priorities"
    priority_search(ev, problem, state, until(PRIO_SHARE), prio_evals, seed)
    state.phase = "ilp"
    ilp_polish(ev, problem, state, until(PRIO_SHARE + ILP_SHARE), deterministic)
    state.phase = "moves"
    move_search(ev, problem, state, deadline, deterministic, seed)


def refine(ev: Evaluator, problem: PlanProblem, state, deadline: float, deterministic: bool) -> None:
    """Re-interleave the incumbent with its own candidates' bytes and durations while that helps."""
    best = state.best
    rows = np.arange(len(best.choice))
    for _ in range(REFINE_ROUNDS):
        if not deterministic and time.perf_counter() >= deadline:
            return
        duration, _ = problem.task_durations(best.choice)
        act = problem.cand.mem[rows, best.choice].astype(np.float64)
        sched = ev.evaluate_tracked(best.items, duration, act, best.config)
        if not state.offer(sched):
            break
        best = sched


def ilp_polish(ev: Evaluator, problem: PlanProblem, state, deadline: float, deterministic: bool) -> None:
    """The per-rank memory ILP on the incumbent's order, warm-started from its choice."""
    best = state.best
    choice = best.choice
    cand = problem.cand
    changed = False
    for r in range(problem.num_ranks):
        left = deadline - time.perf_counter()
        if not deterministic and left <= 0.01:
            break
        limit = None if deterministic else min(ILP_TIME_LIMIT_S, left / (problem.num_ranks - r))
        better = ilp_select(
            best.ptr,
            best.tasks,
            problem.tg.task_op,
            problem.tg.task_stage,
            ev.cand_t,
            cand.mem,
            cand.count,
            ev.cap,
            r,
            choice,
            time_limit=limit,
            node_limit=ILP_NODE_LIMIT,
            max_columns=ILP_MAX_COLUMNS if deterministic else None,
        )
        if better is not None:
            choice, changed = better, True
    if changed:
        sched = ev.simulate(
            best.sequence, best.ptr, best.tasks, choice, best.config, best.items, best.overflow, problem.num_ranks
        )
        state.offer(sched)


def move_search(
    ev: Evaluator, problem: PlanProblem, state, deadline: float, deterministic: bool, seed: int = 0
) -> None:
    """Iterated local search on the incumbent's order: insertion moves of single stages and of whole
    unit passes until a local optimum, then a random kick (a few unit moves) and again, keeping the
    best order; finally a fresh memory choice for it. Deterministic searches get ``MOVE_WORK``
    task-steps of simulation."""
    best = state.best
    tg = problem.tg
    duration, act = problem.task_durations(best.choice)
    is_f = tg.task_op == 0
    alloc, free = np.where(is_f, act, 0.0), np.where(is_f, 0.0, act)
    n = tg.num_tasks
    sim = (*tg.kernel_arrays(duration, alloc, free, ev.holds), ev.cap)
    budget = min(max(int(MOVE_WORK // max(n, 1)), 4 * n), MOVE_MAX_EVALS)
    n_items = problem.num_unit_items
    step = max(50, int(MOVE_CHUNK_WORK // max(n, 1)))  # evaluations between clock checks (~0.1 s)
    rng = np.random.default_rng(seed)
    used = 0

    def out_of_time() -> bool:
        return used >= budget or (not deterministic and time.perf_counter() >= deadline)

    def descend(tasks: np.ndarray, span: float) -> tuple[np.ndarray, float]:
        nonlocal used
        offset = 0
        while not out_of_time():
            chunk = min(step, budget - used)
            tasks, span, evals, offset = move_descent(best.ptr, tasks, sim, MOVE_REACH, chunk, offset)
            used += evals
            local_optimum = evals < chunk
            if n_items and not out_of_time():
                before = span
                tasks, span, evals = unit_descent(
                    best.ptr, tasks, sim, problem.task_unit_item, n_items, UNIT_REACH, min(step, budget - used)
                )
                used += evals
                local_optimum = local_optimum and span >= before
            if local_optimum:
                break
        return tasks, span

    top, top_span = descend(best.tasks, best.makespan)
    stale = 0
    while n_items and stale < MOVE_PATIENCE and not out_of_time():
        trial = top.copy()
        for _ in range(MOVE_KICK):
            shift = int(rng.integers(1, UNIT_REACH + 1)) * (1 if rng.random() < 0.5 else -1)
            move_item(trial, best.ptr, problem.task_unit_item, int(rng.integers(n_items)), shift)
        trial, span = descend(trial, np.inf)
        stale += 1
        if span < top_span:
            top, top_span, stale = trial, span, 0
    if top_span < best.makespan:
        sched = ev.simulate(best.sequence, best.ptr, top, best.choice, best.config, best.items, best.overflow)
        state.offer(sched)
        state.offer(ev.finish(best.sequence, best.ptr, top, best.config, best.items, False))


def priority_search(
    ev: Evaluator, problem: PlanProblem, state, deadline: float, max_evals: int | None = None, seed: int = 0
) -> None:
    """Iterated hill climbing over the priorities of *unit items* (one pass of one sub-microbatch), a
    finer granularity than MCTS's micro-batch items, decoded by the same interleaving.

    The start is the incumbent's own order of unit passes; a move shifts one unit item by up to
    ``PRIO_REACH`` places; at a local optimum a few random swaps perturb the best order and the climb
    restarts. ``max_evals`` bounds a deterministic search; otherwise ``deadline`` stops it."""
    best = state.best
    if problem.task_unit_item is None or problem.num_tasks == 0:
        return
    n_items = problem.num_unit_items
    first = np.full(n_items, np.inf)
    np.minimum.at(first, problem.task_unit_item, best.start)
    rows = np.arange(len(best.choice))
    duration, _ = problem.task_durations(best.choice)
    act = problem.cand.mem[rows, best.choice].astype(np.float64)
    deterministic = max_evals is not None
    budget = max_evals if deterministic else int(1e12)
    rng = np.random.default_rng(seed)
    used = 0

    def score(order: np.ndarray):
        nonlocal used
        used += 1
        sched = ev.evaluate_tracked(best.items, duration, act, best.config, prio=problem.unit_priorities(order))
        state.offer(sched)
        return sched

    def out_of_time() -> bool:
        return used >= budget or (not deterministic and time.perf_counter() >= deadline)

    top_seq = np.argsort(first, kind="stable").astype(np.int64)
    top = score(top_seq)
    seq, current = top_seq, top
    kicks = 0
    while not out_of_time() and kicks <= PRIO_PATIENCE:
        stale, i = 0, 0
        while stale < n_items and not out_of_time():
            moved = False
            for d in (1, -1, 2, -2, PRIO_REACH, -PRIO_REACH):
                j = i + d
                if j < 0 or j >= n_items or out_of_time():
                    continue
                trial = np.insert(np.delete(seq, i), j, seq[i])
                sched = score(trial)
                if sched.score < current.score - 1e-12:
                    seq, current, moved = trial, sched, True
                    break
            stale = 0 if moved else stale + 1
            i = (i + (0 if moved else 1)) % n_items
        kicks += 1
        if current.score < top.score - 1e-12:
            top_seq, top, kicks = seq, current, 0
        seq = top_seq.copy()
        for _ in range(PRIO_KICK):
            k = int(rng.integers(max(n_items - 1, 1)))
            seq[k], seq[k + 1] = seq[k + 1], seq[k]
        current = score(seq)
