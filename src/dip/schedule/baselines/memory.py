"""Memory strategy of the baselines: the cheapest *uniform* strategy that fits the memory limit.

Like Megatron's ``--recompute-granularity``, a baseline applies one strategy to every layer of every
chunk: ``none``, else ``selective`` (attention core recomputed), else ``full`` (each layer recomputed
from its input). Each candidate is timed by the simulator; the first without an out-of-memory rank
wins, ``full`` when none fits (the result then reports the OOM).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dip.data.meta import BatchMeta
from dip.schedule.ir import Plan
from dip.spec.model import ModelSpec

UNIFORM_STRATEGIES: tuple[str, ...] = ("none", "selective", "full")


@dataclass
class SimulatedPlan:
    """A plan with the stage costs and the simulation result it was scored with."""

    plan: Plan
    costs: Any
    result: Any

    @property
    def fits(self) -> bool:
        return not self.result.oom


def uniform_strategies(plan: Plan, strategy: str) -> dict[tuple[int, int], tuple[str, ...]]:
    """``strategy`` for every layer of every (chunk, unit); empty for ``none`` (the default)."""
    if strategy == "none":
        return {}
    out: dict[tuple[int, int], tuple[str, ...]] = {}
    for c in plan.graph.chunks:
        per_layer = (strategy,) * sum(p.layers for p in c.parts)
        for u in plan.units[c.group]:
            out[(c.id, u.index)] = per_layer
    return out


def simulate_plan(plan: Plan, model: ModelSpec, cost_model, batch: BatchMeta, hardware,
                  memory_limit_bytes: float | None = None, dp: int | None = None) -> SimulatedPlan:
    """Cost and simulate ``plan`` with its own memory strategies."""
    from dip.sim import simulate, stage_costs

    costs = stage_costs(plan.graph, plan.units, plan.flows, model, cost_model, batch, plan.strategies)
    result = simulate(plan, costs, hardware, memory_limit_bytes, dp or model.parallel.dp)
    return SimulatedPlan(plan, costs, result)


def fit_uniform_memory(plan: Plan, model: ModelSpec, cost_model, batch: BatchMeta, hardware,
                       memory_limit_bytes: float | None = None, dp: int | None = None) -> SimulatedPlan:
    """Set ``plan.strategies`` to the cheapest uniform strategy that fits; record it in ``plan.meta``."""
    sim: SimulatedPlan | None = None
    for strategy in UNIFORM_STRATEGIES:
        plan.strategies = uniform_strategies(plan, strategy)
        plan.meta["memory_strategy"] = strategy
        sim = simulate_plan(plan, model, cost_model, batch, hardware, memory_limit_bytes, dp)
        if sim.fits:
            break
    plan.meta["fits_memory"] = sim.fits
    return sim
