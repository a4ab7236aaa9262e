"""Schedule-only studies: DIP's search on one chain with equal per-chunk pass costs.

``plan_uniform(pp, m, chunks, f, i, w)`` searches an order for ``pp * chunks`` chunks (chunk ``c`` on
rank ``c mod pp``) and ``m`` micro-batches where every forward costs ``f`` and every backward
``i + w``, with free communication and no memory limit, so it can be compared with the textbook
schedules' closed forms. :func:`warm_up` runs it once on a tiny chain so that the compiled kernels
are loaded before any timed search.
"""
from __future__ import annotations

import math
import time

import numpy as np

from dip.planner.candidates import pack_candidates
from dip.planner.partitioner import Partition
from dip.planner.problem import PlanProblem, problem_from_costs
from dip.schedule.ir import Plan
from dip.schedule.units import linear_stage_graph, uniform_units
from dip.sim import simulate, uniform_stage_costs
from dip.sim.topology import Topology

GROUP = "model"
_WARM = False


def uniform_problem(pp: int, m: int, chunks: int = 1, f: float = 1.0, i: float = 1.0, w: float = 1.0,
                    act_bytes: float = 1.0, memory_limit_bytes: float = math.inf) -> PlanProblem:
    """The problem of one uniform chain (single memory candidate per stage)."""
    graph = linear_stage_graph(pp, chunks, module=GROUP)
    units = uniform_units(GROUP, m)
    costs = uniform_stage_costs(graph, units, f, i, w, act_bytes)
    cand = pack_candidates([[(f, i + w, act_bytes, ("none",))] for _ in costs.keys])
    layouts = {GROUP: tuple((c, c + 1) for c in range(pp * chunks))}
    partition = Partition(graph, {GROUP: None}, {GROUP: chunks}, layouts, {"uniform": True})
    return problem_from_costs(partition, units, (), costs, Topology(), cand, memory_limit_bytes)


def plan_uniform(pp: int, m: int, chunks: int = 1, f: float = 1.0, i: float = 1.0, w: float = 1.0,
                 budget_s: float | None = None, rollouts: int | None = None, seed: int = 0, **options):
    """Search and simulate a uniform chain; returns ``(plan, sim result, lower bound, stats)``."""
    from dip.planner.result import schedule_to_plan
    from dip.planner.search import search_problem

    problem = uniform_problem(pp, m, chunks, f, i, w)
    state, stats = search_problem(problem, budget_s, rollouts, seed=seed, **options)
    plan: Plan = schedule_to_plan(problem, state.best)
    plan.meta.update({"uniform": True, "chunks_per_rank": chunks})
    result = simulate(plan, problem.costs, None)
    return plan, result, problem.lower_bound, stats


def warm_up() -> float:
    """Load every compiled kernel once per process (a planner service pays this at start-up only).
    Returns the seconds it took."""
    global _WARM
    if _WARM:
        return 0.0
    t0 = time.perf_counter()
    problem = uniform_problem(2, 3, 2, 1.0, 1.0, 0.5, act_bytes=1.0, memory_limit_bytes=4.0)
    from dip.planner.evaluate import Evaluator, TrackConfig
    from dip.planner.memory import ilp_select

    from dip.planner.polish import polish

    ev = Evaluator(problem)
    sched = ev.evaluate(problem.default_sequence, TrackConfig(0.0, "memory", 1.0))

    class _State:
        best = sched
        phase = ""

        def offer(self, other):
            return False

    polish(ev, problem, _State(), time.perf_counter() + 1.0, 1)
    ilp_select(sched.ptr, sched.tasks, problem.tg.task_op, problem.tg.task_stage, ev.cand_t, problem.cand.mem,
               problem.cand.count, np.asarray(ev.cap, float), 0, sched.choice, time_limit=0.1)
    _WARM = True
    return time.perf_counter() - t0
