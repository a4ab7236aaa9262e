"""Exact reference for small instances: the same scheduling problem as a CP-SAT model.

Same partition, units, dependencies and p2p delays as the planner; every stage at the memory candidate
the planner chose (or at its fastest). Variables: one start per task (integer microseconds); constraints:
dependencies with their
delays, one ``NoOverlap`` per rank, and, when ``memory`` is on, one ``Cumulative`` per rank in which
each stage holds its activation bytes from its forward's start to its backward's end (capacity = the
rank's limit minus static memory). Objective: the makespan. The solver is hinted with the planner's
order. The optimal order is re-simulated with the exact (float) durations, so the reported time is
directly comparable with the planner's; ``status`` says whether CP-SAT proved optimality and
``bound_s`` is its proven lower bound.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np

from dip.errors import BadInput
from dip.planner.problem import PlanProblem
from dip.schedule.ir import Action, Op
from dip.sim.kernel import OK, simulate_arrays

__all__ = ["KIB", "MAX_TASKS", "SCALE", "ExactResult", "solve_exact", "symmetry_classes"]

SCALE = 1e6  # microseconds
MAX_TASKS = 4000
KIB = 2**10


@dataclass
class ExactResult:
    """The best order CP-SAT found (re-simulated), its proof status and the proven bound."""

    time_s: float
    status: str
    bound_s: float
    wall_s: float
    memory: bool
    orders: list[list[int]] | None = None

    def summary(self) -> dict:
        return {
            "exact_time_s": self.time_s,
            "exact_status": self.status,
            "exact_bound_s": self.bound_s,
            "exact_wall_s": self.wall_s,
            "exact_memory": self.memory,
        }


def _arrays(problem: PlanProblem, choice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    duration, _ = problem.task_durations(choice)
    stage_act = problem.cand.mem[np.arange(len(choice)), choice]
    return duration, stage_act


def _order_makespan(
    problem: PlanProblem, per_rank: list[list[int]], duration: np.ndarray, stage_act: np.ndarray | None = None
) -> float:
    """Simulated makespan of an order (inf if it deadlocks or, with ``stage_act``, overflows memory)."""
    tg = problem.tg
    lengths = [len(x) for x in per_rank]
    ptr = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    tasks = np.asarray([t for x in per_rank for t in x], np.int64)
    act = np.zeros(tg.num_tasks) if stage_act is None else stage_act[tg.task_stage]
    is_f = tg.task_op == 0
    alloc, free = np.where(is_f, act, 0.0), np.where(is_f, 0.0, act)
    holds = np.where(is_f, 1, -1).astype(np.int64)
    status, makespan, _, _, _, _, peak, *_ = simulate_arrays(
        ptr, tasks, *tg.kernel_arrays(duration, alloc, free, holds)
    )
    if status != OK or (stage_act is not None and np.any(peak > problem.safe_cap + 1e-6)):
        return math.inf
    return float(makespan)


def solve_exact(
    problem: PlanProblem,
    time_limit_s: float = 120.0,
    hint=None,
    memory: bool | None = False,
    costs: str = "plan",
    workers: int = 2,
    seed: int = 0,
) -> ExactResult:
    """Solve ``problem`` exactly (see module docstring). ``hint``: a :class:`PlanResult` or a per-rank
    list of task ids. ``costs``: "plan" (the hint's chosen memory candidates, so the optimum is over
    orders of exactly the planner's stage costs) or "fastest". ``memory``: False (a relaxation: the
    optimum is a lower bound for memory-feasible plans too), True, or None (on when it could bind)."""
    from ortools.sat.python import cp_model  # heavy (about a second to import): only the exact solver needs it

    t_start = time.perf_counter()
    tg = problem.tg
    n = tg.num_tasks
    if n > MAX_TASKS:
        raise BadInput(
            f"the exact solver handles at most {MAX_TASKS} tasks; this batch has {n} (use fewer --microbatches)"
        )
    choice = problem.cand.fastest.astype(np.int64)
    if costs == "plan" and getattr(hint, "schedule", None) is not None:
        choice = np.asarray(hint.schedule.choice, np.int64)
    duration, stage_act = _arrays(problem, choice)
    dur = np.maximum(np.rint(duration * SCALE).astype(np.int64), 0)
    delay = np.rint(tg.pred_delay * SCALE).astype(np.int64)
    if memory is None:
        memory = _memory_may_bind(problem, stage_act)
    check_act = stage_act if memory else None
    hint_orders = _hint_orders(problem, hint)
    hint_time = _order_makespan(problem, hint_orders, duration, check_act) if hint_orders else math.inf
    hint_start = None
    if hint_orders:
        hint_start = np.rint(
            _hint_starts(problem, hint_orders, dur.astype(np.float64), delay.astype(np.float64))
        ).astype(np.int64)
    head, tail = _heads_tails(problem, dur, delay)
    if hint_start is not None and math.isfinite(hint_time):
        horizon = int((hint_start + dur).max())
    else:
        horizon = int(dur.sum() + delay.sum())
    model = cp_model.CpModel()
    start = [
        model.NewIntVar(int(head[t]), max(int(head[t]), horizon - int(dur[t]) - int(tail[t])), f"s{t}")
        for t in range(n)
    ]
    end = [start[t] + int(dur[t]) for t in range(n)]
    intervals = [model.NewFixedSizeIntervalVar(start[t], int(dur[t]), f"i{t}") for t in range(n)]
    for t in range(n):
        for e in range(tg.pred_ptr[t], tg.pred_ptr[t + 1]):
            model.Add(start[t] >= end[int(tg.pred_idx[e])] + int(delay[e]))
    for r in range(problem.num_ranks):
        model.AddNoOverlap([intervals[t] for t in range(n) if tg.task_rank[t] == r])
    classes = symmetry_classes(problem, dur)
    for members in classes:
        for a, b in itertools.pairwise(members):
            model.Add(start[a[0]] <= start[b[0]])
    if memory:
        _add_memory(model, problem, start, end, stage_act, horizon)
    makespan = model.NewIntVar(0, horizon, "makespan")
    model.AddMaxEquality(makespan, end)
    model.Minimize(makespan)
    if hint_start is not None:
        hint_start = _relabel(hint_start, classes)
        for t in range(n):
            model.AddHint(start[t], int(hint_start[t]))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.num_search_workers = int(workers)
    solver.parameters.random_seed = int(seed)
    code = solver.Solve(model)
    status = solver.StatusName(code).lower()
    best_time, best_orders = hint_time, hint_orders
    if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        values = np.asarray([solver.Value(s) for s in start])
        orders = [
            sorted((t for t in range(n) if tg.task_rank[t] == r), key=lambda t: (values[t], t))
            for r in range(problem.num_ranks)
        ]
        found = _order_makespan(problem, orders, duration, check_act)
        if found < best_time:
            best_time, best_orders = found, orders
    bound = solver.BestObjectiveBound() / SCALE if code in (cp_model.OPTIMAL, cp_model.FEASIBLE) else 0.0
    bound = max(min(bound, best_time), 0.0) if math.isfinite(best_time) else bound
    return ExactResult(float(best_time), status, float(bound), time.perf_counter() - t_start, bool(memory), best_orders)


def _heads_tails(problem: PlanProblem, dur: np.ndarray, delay: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Earliest start (longest path from a source) and tail (longest path after the end) of every task."""
    tg = problem.tg
    n = tg.num_tasks
    remaining = np.diff(tg.pred_ptr).astype(np.int64)
    queue = [t for t in range(n) if remaining[t] == 0]
    order = []
    head = np.zeros(n, np.int64)
    while queue:
        t = queue.pop()
        order.append(t)
        for e in range(tg.pred_ptr[t], tg.pred_ptr[t + 1]):
            p = int(tg.pred_idx[e])
            head[t] = max(head[t], head[p] + dur[p] + delay[e])
        for e in range(tg.succ_ptr[t], tg.succ_ptr[t + 1]):
            u = int(tg.succ_idx[e])
            remaining[u] -= 1
            if remaining[u] == 0:
                queue.append(u)
    tail = np.zeros(n, np.int64)
    for t in reversed(order):
        for e in range(tg.pred_ptr[t], tg.pred_ptr[t + 1]):
            p = int(tg.pred_idx[e])
            tail[p] = max(tail[p], tail[t] + dur[t] + delay[e])
    return head, tail


def symmetry_classes(problem: PlanProblem, dur: np.ndarray) -> list[list[list[int]]]:
    """Classes of interchangeable units: same group and micro-batch, same producers and consumers, equal
    durations on every chunk. Each unit is given as its task ids in a fixed (chunk, op) order, the
    first being its forward on the group's first chunk. Swapping two such units maps schedules onto
    schedules, so ordering their first forwards is a valid symmetry break."""
    tg = problem.tg
    ids = tg.task_ids
    flows_of: dict[tuple[str, int], list] = {}
    for f in problem.flows:
        flows_of.setdefault((f.src_group, f.src_unit), []).append(("out", f.dst_group, f.dst_unit))
        flows_of.setdefault((f.dst_group, f.dst_unit), []).append(("in", f.src_group, f.src_unit))
    classes = []
    for g, units in problem.units.items():
        chunks = [c.id for c in tg.graph.group_chunks(g)]
        sig: dict[tuple, list[list[int]]] = {}
        for u in units:
            tasks = [ids[Action(c, op, u.index)] for op in (Op.F, Op.B) for c in chunks]
            key = (u.mb, tuple(sorted(flows_of.get((g, u.index), []))), tuple(int(dur[t]) for t in tasks))
            sig.setdefault(key, []).append(tasks)
        classes += [members for members in sig.values() if len(members) > 1]
    return classes


def _relabel(hint_start: np.ndarray, classes: list[list[list[int]]]) -> np.ndarray:
    """Permute interchangeable units in a hint so that it satisfies the symmetry break."""
    out = hint_start.copy()
    for members in classes:
        order = sorted(range(len(members)), key=lambda k: (hint_start[members[k][0]], k))
        for dst, src in zip(members, (members[k] for k in order)):
            out[dst] = hint_start[src]
    return out


def _memory_may_bind(problem: PlanProblem, stage_act: np.ndarray) -> bool:
    """Whether all fastest-candidate activations of a rank together could exceed its capacity."""
    per_rank = np.bincount(problem.stage_rank, stage_act, minlength=problem.num_ranks)
    return bool(np.any(per_rank > problem.cap))


def _add_memory(model, problem: PlanProblem, start, end, stage_act: np.ndarray, horizon: int) -> None:
    tg = problem.tg
    f_task = np.full(len(stage_act), -1, np.int64)
    b_task = np.full(len(stage_act), -1, np.int64)
    for t in range(tg.num_tasks):
        (f_task if tg.task_op[t] == 0 else b_task)[tg.task_stage[t]] = t
    for r in range(problem.num_ranks):
        stages = np.nonzero(problem.stage_rank == r)[0]
        intervals, demands = [], []
        for s in stages:
            size = model.NewIntVar(0, horizon, f"live{s}")
            model.Add(size == end[int(b_task[s])] - start[int(f_task[s])])
            intervals.append(model.NewIntervalVar(start[int(f_task[s])], size, end[int(b_task[s])], f"m{s}"))
            demands.append(math.ceil(stage_act[s] / KIB))
        # one KiB of rounding slack per stage; orders are re-checked in bytes afterwards
        model.AddCumulative(intervals, demands, max(math.ceil(problem.cap[r] / KIB) + len(stages), 0))


def _hint_orders(problem: PlanProblem, hint) -> list[list[int]] | None:
    if hint is None:
        return None
    if hasattr(hint, "plan"):
        ids = problem.tg.task_ids
        return [[ids[a] for a in hint.plan.order.get(r, [])] for r in range(problem.num_ranks)]
    return [list(map(int, x)) for x in hint]


def _hint_starts(problem: PlanProblem, orders: list[list[int]], duration: np.ndarray, delay: np.ndarray) -> np.ndarray:
    """Start times of an order in the integer model (integer durations and delays, so the hint is exact)."""
    tg = problem.tg
    ptr = np.concatenate(([0], np.cumsum([len(x) for x in orders]))).astype(np.int64)
    tasks = np.asarray([t for x in orders for t in x], np.int64)
    zeros = np.zeros(tg.num_tasks)
    _, _, start, *_ = simulate_arrays(
        ptr, tasks, *tg.kernel_arrays(duration, zeros, zeros, np.zeros(tg.num_tasks, np.int64), delay)
    )
    return np.nan_to_num(start)
