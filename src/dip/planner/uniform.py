"""Schedule-only studies: DIP's search on one chain with equal per-chunk pass costs.

``plan_uniform(pp, m, chunks, f, i, w)`` searches an order for ``pp * chunks`` chunks (chunk ``c`` on
rank ``c mod pp``) and ``m`` micro-batches where every forward costs ``f`` and every backward
``i + w``, with free communication and no memory limit, so it can be compared with the textbook
schedules' closed forms.
"""

from __future__ import annotations

from dip.planner.options import SearchOptions
from dip.planner.problem import uniform_problem
from dip.planner.result import SearchStats, schedule_to_plan
from dip.planner.search import search_problem
from dip.schedule.ir import Plan
from dip.sim import SimResult, simulate

__all__ = ["plan_uniform"]


def plan_uniform(
    pp: int,
    m: int,
    chunks: int = 1,
    f: float = 1.0,
    i: float = 1.0,
    w: float = 1.0,
    *,
    options: SearchOptions = SearchOptions(),
) -> tuple[Plan, SimResult, float, SearchStats]:
    """Search and simulate a uniform chain; returns ``(plan, sim result, lower bound, stats)``."""
    problem = uniform_problem(pp, m, chunks, f, i, w)
    state, stats = search_problem(problem, options)
    plan = schedule_to_plan(problem, state.best)
    plan.meta.update({"uniform": True, "chunks_per_rank": chunks})
    result = simulate(plan, problem.costs, None)
    return plan, result, problem.lower_bound, stats
