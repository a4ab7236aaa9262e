"""Loading every compiled kernel once per process, before any timed search (a planner service pays
this at start-up only)."""

from __future__ import annotations

import logging
import time

import numpy as np

from dip.planner.evaluate import Evaluator, TrackConfig
from dip.planner.memory import ilp_select
from dip.planner.polish import polish
from dip.planner.problem import uniform_problem
from dip.planner.state import SearchState

__all__ = ["warm_up"]

logger = logging.getLogger(__name__)
_WARM = False


def warm_up() -> float:
    """Run every kernel of the search once on a tiny chain; returns the seconds it took (0 when this
    process is already warm)."""
    global _WARM
    if _WARM:
        return 0.0
    t0 = time.perf_counter()
    problem = uniform_problem(2, 3, 2, 1.0, 1.0, 0.5, act_bytes=1.0, memory_limit_bytes=4.0)
    ev = Evaluator(problem)
    sched = ev.evaluate(problem.default_sequence, TrackConfig(0.0, "memory", 1.0))
    polish(ev, problem, SearchState(t0, sched, sched), time.perf_counter() + 1.0, 1)
    ilp_select(
        sched.ptr,
        sched.tasks,
        problem.tg.task_op,
        problem.tg.task_stage,
        ev.cand_t,
        problem.cand.mem,
        problem.cand.count,
        np.asarray(ev.cap, float),
        0,
        sched.choice,
        time_limit=0.1,
    )
    _WARM = True
    took = time.perf_counter() - t0
    logger.debug("planner kernels loaded in %.2f s", took)
    return took
