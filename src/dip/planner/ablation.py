"""The paper's performance breakdown (Table 5), step by step on one batch.

1. ``megatron``: the Megatron-LM baseline as its users configure it (time-balanced mixed chunks,
   interleaved 1F1B, per rank the least recompute that fits; docs/baselines.md);
2. ``+partitioner``: DIP's modality-aware partition and sub-microbatches, scheduled by a plain greedy
   list scheduler (backward first), with the same per-rank memory rule as the baselines;
3. ``+interleaving``: the dual-queue interleaving with the default segment order, cheapest uniform
   strategy whose interleaving fits;
4. ``+reordering``: the segment search (MCTS and polishing) with that uniform strategy;
5. ``+memory``: full DIP with per-layer memory candidates, seeded with step 4's schedule.

Steps 3-5 start from the previous step's schedule, so each is never slower than the one before; step 2
is a different scheduler and is reported as measured. The fits rule: a step whose plan does not fit
(``fits`` false) has no ``speedup``, nor has any step when the Megatron-LM plan does not fit.
"""

from __future__ import annotations

import math

import numpy as np

from dip.planner.evaluate import PAPER_CONFIG, Evaluator
from dip.planner.options import SearchOptions
from dip.planner.problem import build_problem
from dip.planner.result import build_result, default_partition
from dip.planner.schedules import plan_schedule
from dip.planner.search import search_problem
from dip.schedule.baselines.memory import UNIFORM_STRATEGIES
from dip.schedule.ir import Plan
from dip.sim import TaskGraph, list_schedule, stage_costs
from dip.sim.plans import SimulatedPlan, fit_memory
from dip.sim.topology import Topology
from dip.spec.hardware import usable_memory_bytes

__all__ = ["ablation"]


def _list_scheduled(model, batch, cost_model, hardware, partition, limit) -> SimulatedPlan:
    """Step 2: DIP's partition under the simulator's greedy list scheduler (order from pass times
    without recompute), with the baselines' per-rank memory rule."""
    units, flows = partition.units(model, batch)
    topo = Topology.from_hardware(hardware, tp=cost_model.tp)
    costs = stage_costs(partition.graph, units, flows, model, cost_model, batch)
    tg = TaskGraph.build(partition.graph, units, flows, costs, topo)
    plan = Plan(partition.graph, units, flows, list_schedule(tg), schedule="list")
    return fit_memory(plan, model, cost_model, batch, hardware, limit)


def ablation(
    model,
    batch,
    cost_model,
    hardware,
    budget_s: float = 2.0,
    rollouts: int | None = None,
    memory_limit_bytes: float | None = None,
    seed: int = 0,
) -> list[dict]:
    """Rows ``{"step", "time_s", "strategy", "fits", "speedup"}`` of the five steps (module docstring);
    ``speedup`` over step 1 is ``None`` where either plan does not fit."""
    limit = float(memory_limit_bytes if memory_limit_bytes is not None else usable_memory_bytes(hardware))
    rows = []
    mega = plan_schedule("megatron", model, batch, cost_model, hardware, memory_limit_bytes=limit)
    rows.append(
        {
            "step": "megatron",
            "time_s": float(mega.result.iteration_time),
            "strategy": mega.plan.meta.get("memory_strategy"),
            "fits": not mega.result.oom,
        }
    )
    partition = default_partition(model, cost_model)
    listed = _list_scheduled(model, batch, cost_model, hardware, partition, limit)
    rows.append(
        {
            "step": "+partitioner",
            "time_s": float(listed.result.iteration_time),
            "strategy": listed.plan.meta["memory_strategy"],
            "fits": listed.fits,
        }
    )
    uniform_problem, plain = None, None
    for strategy in UNIFORM_STRATEGIES:
        uniform_problem = build_problem(model, partition, batch, cost_model, hardware, limit, uniform=strategy)
        plain = Evaluator(uniform_problem, passes=1).evaluate(uniform_problem.default_sequence, PAPER_CONFIG)
        if plain.feasible:
            break
    rows.append({"step": "+interleaving", "time_s": plain.makespan, "strategy": strategy, "fits": plain.feasible})
    search = SearchOptions(budget_s=budget_s, rollouts=rollouts, seed=seed)
    state, _ = search_problem(uniform_problem, search.replace(seeds=((plain.ptr, plain.tasks, plain.choice),)))
    reordered = state.best
    rows.append({"step": "+reordering", "time_s": reordered.makespan, "strategy": strategy, "fits": reordered.feasible})
    full = build_problem(model, partition, batch, cost_model, hardware, limit)
    choice = _matching_choice(full, uniform_problem)
    state, stats = search_problem(full, search.replace(seeds=((reordered.ptr, reordered.tasks, choice),)))
    result = build_result(full, state.best, state.initial, stats, cost_model, hardware)
    rows.append({"step": "+memory", "time_s": result.time_s, "strategy": "per-layer", "fits": not result.sim.oom})
    base = rows[0]["time_s"] if rows[0]["fits"] else None
    for row in rows:
        ok = base is not None and row["fits"] and row["time_s"] and math.isfinite(row["time_s"])
        row["speedup"] = base / row["time_s"] if ok else None
    return rows


def _matching_choice(problem, uniform_problem) -> np.ndarray:
    """Per stage, the fastest candidate using no more memory than the uniform strategy of
    ``uniform_problem`` (the uniform point itself when it is on the Pareto front, else one dominating it)."""
    target = uniform_problem.cand.mem[:, 0] + 1.0
    cand = problem.cand
    ok = (cand.mem <= target[:, None]) & (np.arange(cand.mem.shape[1])[None, :] < cand.count[:, None])
    return (ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)).astype(np.int64)
