"""A plan together with the stage costs and the simulation that scored it, and the baselines'
uniform memory rule (the cheapest strategy for every layer that fits, chosen by simulating each).

Like Megatron's ``--recompute-granularity``, a baseline applies one strategy to every layer of every
chunk: ``none``, else ``selective`` (attention core recomputed), else ``full`` (each layer recomputed
from its input). Each candidate is timed by the simulator; the first without an out-of-memory rank
wins, ``full`` when none fits (the result then reports the OOM).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dip.data.meta import BatchMeta
from dip.schedule.baselines.memory import UNIFORM_STRATEGIES, uniform_strategies
from dip.schedule.ir import Plan
from dip.schedule.partition import Partition
from dip.sim.costs import StageCosts, stage_costs
from dip.sim.simulate import SimResult, simulate
from dip.spec.model import ModelSpec

__all__ = ["SimulatedPlan", "fit_uniform_memory", "simulate_plan"]

logger = logging.getLogger(__name__)


@dataclass
class SimulatedPlan:
    """A plan with the stage costs and the simulation result it was scored with; ``partition`` is the
    layer placement DIP's planner chose for it (``None`` for the baselines)."""

    plan: Plan
    costs: StageCosts
    result: SimResult
    partition: Partition | None = None

    @property
    def fits(self) -> bool:
        return not self.result.oom


def simulate_plan(
    plan: Plan,
    model: ModelSpec,
    cost_model,
    batch: BatchMeta,
    hardware,
    memory_limit_bytes: float | None = None,
    dp: int | None = None,
) -> SimulatedPlan:
    """Cost and simulate ``plan`` with its own memory strategies."""
    costs = stage_costs(plan.graph, plan.units, plan.flows, model, cost_model, batch, plan.strategies)
    result = simulate(plan, costs, hardware, memory_limit_bytes, dp or model.parallel.dp)
    return SimulatedPlan(plan, costs, result)


def fit_uniform_memory(
    plan: Plan,
    model: ModelSpec,
    cost_model,
    batch: BatchMeta,
    hardware,
    memory_limit_bytes: float | None = None,
    dp: int | None = None,
) -> SimulatedPlan:
    """Set ``plan.strategies`` to the cheapest uniform strategy that fits; record it in ``plan.meta``."""
    sim: SimulatedPlan | None = None
    for strategy in UNIFORM_STRATEGIES:
        plan.strategies = uniform_strategies(plan, strategy)
        plan.meta["memory_strategy"] = strategy
        sim = simulate_plan(plan, model, cost_model, batch, hardware, memory_limit_bytes, dp)
        logger.debug(
            "%s: uniform memory strategy %s %s (%.3f s)",
            plan.schedule,
            strategy,
            "fits" if sim.fits else "does not fit",
            sim.result.iteration_time,
        )
        if sim.fits:
            break
    assert sim is not None
    plan.meta["fits_memory"] = sim.fits
    return sim
